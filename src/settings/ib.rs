//! The `OXCCL_IB_*` settings: which RDMA devices and ports a rank may use (NCCL's
//! `NCCL_IB_HCA` syntax) and how its queue pairs retry. Pure parsing; the transport
//! (`transport::ib::select`) applies them to the devices it finds.

/// A parsed `OXCCL_IB_HCA`: `mlx5_0:1,mlx5_1` names devices (and optionally a port);
/// a leading `^` excludes them instead, a leading `=` makes the names exact rather than
/// prefixes (`^=mlx5_0` both). Empty: every device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HcaFilter {
    exclude: bool,
    exact: bool,
    items: Vec<(String, Option<u8>)>,
    /// The text it was parsed from.
    spec: String,
}

impl HcaFilter {
    /// Parses NCCL's syntax; a port that is not a number 1-255 is an error.
    pub fn parse(spec: &str) -> Result<HcaFilter, String> {
        let mut s = spec.trim();
        let mut f = HcaFilter { spec: s.to_string(), ..HcaFilter::default() };
        if let Some(rest) = s.strip_prefix('^') {
            f.exclude = true;
            s = rest;
        }
        if let Some(rest) = s.strip_prefix('=') {
            f.exact = true;
            s = rest;
        }
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, port) = match item.split_once(':') {
                Some((n, p)) => {
                    let port = p
                        .trim()
                        .parse::<u8>()
                        .ok()
                        .filter(|&p| p > 0)
                        .ok_or_else(|| format!("bad port '{p}' in '{item}' (want 1-255)"))?;
                    (n.trim(), Some(port))
                }
                None => (item, None),
            };
            if name.is_empty() {
                return Err(format!("empty device name in '{item}'"));
            }
            f.items.push((name.to_string(), port));
        }
        Ok(f)
    }

    /// Whether port `port` of device `dev` may be used.
    pub fn accepts(&self, dev: &str, port: u8) -> bool {
        if self.items.is_empty() {
            return true;
        }
        let listed = self.items.iter().any(|(name, p)| {
            let name_ok = if self.exact { dev == name } else { dev.starts_with(name.as_str()) };
            name_ok && p.is_none_or(|p| p == port)
        });
        listed != self.exclude
    }

    /// The text it was parsed from ("" for every device).
    pub fn spec(&self) -> &str {
        &self.spec
    }
}

/// The `OXCCL_IB_*` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IbSettings {
    /// `OXCCL_IB_DISABLE=1`: never use RDMA.
    pub disabled: bool,
    /// `OXCCL_IB_HCA`.
    pub hca: HcaFilter,
    /// `OXCCL_IB_GID_INDEX`: forced GID index (else RoCE v2 is detected).
    pub gid_index: Option<u32>,
    /// `OXCCL_IB_QPS_PER_CONNECTION` (default 1).
    pub qps_per_connection: usize,
    /// `OXCCL_IB_TIMEOUT`, `OXCCL_IB_RETRY_CNT`, `OXCCL_IB_SL`, `OXCCL_IB_TC`.
    pub tuning: QpTuning,
}

impl Default for IbSettings {
    /// Every device, RoCE v2 GID detected, one queue pair per connection.
    fn default() -> IbSettings {
        IbSettings {
            disabled: false,
            hca: HcaFilter::default(),
            gid_index: None,
            qps_per_connection: 1,
            tuning: QpTuning::default(),
        }
    }
}

/// How a queue pair's packets travel and are retried (NCCL's `NCCL_IB_TIMEOUT`,
/// `NCCL_IB_RETRY_CNT`, `NCCL_IB_SL`, `NCCL_IB_TC`, under `OXCCL_IB_*` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpTuning {
    /// Local ACK timeout exponent: a retry after 4.096 µs × 2^timeout (1-31).
    pub timeout: u8,
    /// Transport retries before an error completion (0-7).
    pub retry_cnt: u8,
    /// InfiniBand service level (0-15).
    pub service_level: u8,
    /// Traffic class of the global route header (RoCE: DSCP << 2 | ECN), 0-255.
    pub traffic_class: u8,
}

impl Default for QpTuning {
    /// Timeout 14 (67 ms) and 6 retries: a peer whose queue pair is gone shows as an
    /// error completion within about half a second. (NCCL uses 20 and 7, a minute and
    /// more; Soft-RoCE was seen to retry forever with 7.) Service level and traffic
    /// class 0.
    fn default() -> QpTuning {
        QpTuning { timeout: 14, retry_cnt: 6, service_level: 0, traffic_class: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hca_names_match_as_prefixes_with_optional_ports() {
        let f = HcaFilter::parse("mlx5_0:1, mlx5_1").unwrap();
        assert!(f.accepts("mlx5_0", 1));
        assert!(!f.accepts("mlx5_0", 2));
        assert!(f.accepts("mlx5_1", 2));
        assert!(f.accepts("mlx5_10", 1), "prefix match, as NCCL");
        assert!(!f.accepts("rxe0", 1));
        let all = HcaFilter::parse("").unwrap();
        assert!(all.accepts("anything", 7));
    }

    #[test]
    fn caret_excludes_and_equals_is_exact() {
        let f = HcaFilter::parse("^mlx5_0").unwrap();
        assert!(!f.accepts("mlx5_0", 1) && !f.accepts("mlx5_01", 1));
        assert!(f.accepts("rxe0", 1));
        let f = HcaFilter::parse("=mlx5_1").unwrap();
        assert!(f.accepts("mlx5_1", 1) && !f.accepts("mlx5_10", 1));
        let f = HcaFilter::parse("^=rxe0:1").unwrap();
        assert!(!f.accepts("rxe0", 1) && f.accepts("rxe0", 2) && f.accepts("rxe00", 1));
    }

    #[test]
    fn bad_hca_specs_are_errors() {
        for bad in ["mlx5_0:x", "mlx5_0:0", "mlx5_0:300", ":1"] {
            assert!(HcaFilter::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hca_spec_edge_cases() {
        // Whitespace around items and ports, empty items, and a `^` or `=` alone.
        let f = HcaFilter::parse("  mlx5_0 : 1 , , mlx5_1 ").unwrap();
        assert!(f.accepts("mlx5_0", 1) && !f.accepts("mlx5_0", 2) && f.accepts("mlx5_1", 3));
        assert!(HcaFilter::parse("^").unwrap().accepts("rxe0", 1));
        assert!(HcaFilter::parse("=").unwrap().accepts("rxe0", 1));
        // `=` before `^` is not NCCL's syntax: `^` is then part of a name that matches nothing.
        assert!(!HcaFilter::parse("=^rxe0").unwrap().accepts("rxe0", 1));
        // Highest port, and a port given twice for one device.
        let f = HcaFilter::parse("=rxe0:255,rxe0:2").unwrap();
        assert!(f.accepts("rxe0", 255) && f.accepts("rxe0", 2) && !f.accepts("rxe0", 1));
        for bad in ["rxe0:", "rxe0:1:2", "rxe0:-1", "^=:1", "rxe0:1,:2"] {
            assert!(HcaFilter::parse(bad).is_err(), "{bad}");
        }
    }
}
