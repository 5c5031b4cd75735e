//! Which RDMA devices, ports and GID a rank uses: NCCL's `OXCCL_IB_HCA` syntax, the
//! RoCE v2 GID found in sysfs, and the other `OXCCL_IB_*` settings. Pure parsing and
//! choosing, testable without any RDMA device.

use crate::error::{Error, Result};

/// A parsed `OXCCL_IB_HCA`: `mlx5_0:1,mlx5_1` names devices (and optionally a port);
/// a leading `^` excludes them instead, a leading `=` makes the names exact rather than
/// prefixes (`^=mlx5_0` both). Empty: every device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HcaFilter {
    exclude: bool,
    exact: bool,
    items: Vec<(String, Option<u8>)>,
}

impl HcaFilter {
    /// Parses NCCL's syntax; a port that is not a number 1-255 is an error.
    pub fn parse(spec: &str) -> Result<HcaFilter> {
        let mut s = spec.trim();
        let mut f = HcaFilter::default();
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
                    let port = p.trim().parse::<u8>().ok().filter(|&p| p > 0).ok_or_else(|| {
                        Error::invalid_argument(format!("OXCCL_IB_HCA: bad port '{p}' in '{item}' (want 1-255)"))
                    })?;
                    (n.trim(), Some(port))
                }
                None => (item, None),
            };
            if name.is_empty() {
                return Err(Error::invalid_argument(format!("OXCCL_IB_HCA: empty device name in '{item}'")));
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
}

/// One GID table entry as sysfs shows it: index, type (`IB/RoCE v1`, `RoCE v2`) and the
/// GID in its colon-separated form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GidEntry {
    /// Its index in the port's table.
    pub index: u32,
    /// `gid_attrs/types/<index>`.
    pub kind: String,
    /// `gids/<index>`.
    pub gid: String,
}

/// The index of the first RoCE v2 GID holding an IPv4 address (`::ffff:a.b.c.d`), as NCCL
/// picks by default; else the first RoCE v2 GID that is not link-local or zero.
pub fn roce_v2_gid(entries: &[GidEntry]) -> Option<u32> {
    let v2 = |e: &&GidEntry| e.kind.trim().eq_ignore_ascii_case("RoCE v2");
    let zero = |g: &str| g.chars().all(|c| c == '0' || c == ':');
    let ipv4 = |g: &str| g.to_ascii_lowercase().starts_with("0000:0000:0000:0000:0000:ffff:");
    let link_local = |g: &str| g.to_ascii_lowercase().starts_with("fe80:");
    entries
        .iter()
        .filter(v2)
        .find(|e| ipv4(&e.gid))
        .or_else(|| entries.iter().filter(v2).find(|e| !zero(&e.gid) && !link_local(&e.gid)))
        .map(|e| e.index)
}

/// Reads port `port` of device `dev`'s GID table from sysfs (`/sys/class/infiniband`).
pub fn sysfs_gids(dev: &str, port: u8) -> Vec<GidEntry> {
    let base = format!("/sys/class/infiniband/{dev}/ports/{port}");
    let Ok(dir) = std::fs::read_dir(format!("{base}/gids")) else { return Vec::new() };
    let mut v: Vec<GidEntry> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|i| {
            let gid = std::fs::read_to_string(format!("{base}/gids/{i}")).ok()?.trim().to_string();
            let kind = std::fs::read_to_string(format!("{base}/gid_attrs/types/{i}")).unwrap_or_default();
            Some(GidEntry { index: i, kind: kind.trim().to_string(), gid })
        })
        .collect();
    v.sort_by_key(|e| e.index);
    v
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

impl IbSettings {
    /// Reads the settings through `env` (a variable's value, if set).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<IbSettings> {
        let get = |k: &str| env(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let num = |k: &str| -> Result<Option<u64>> {
            get(k)
                .map(|v| v.parse::<u64>().map_err(|_| Error::invalid_argument(format!("{k}={v}: not a number"))))
                .transpose()
        };
        let qps = num("OXCCL_IB_QPS_PER_CONNECTION")?.unwrap_or(1);
        if !(1..=64).contains(&qps) {
            return Err(Error::invalid_argument(format!("OXCCL_IB_QPS_PER_CONNECTION={qps}: want 1 to 64")));
        }
        let gid_index = num("OXCCL_IB_GID_INDEX")?;
        if gid_index.is_some_and(|g| g > 255) {
            return Err(Error::invalid_argument(format!(
                "OXCCL_IB_GID_INDEX={}: want 0 to 255",
                gid_index.unwrap_or(0)
            )));
        }
        let d = QpTuning::default();
        let ranged = |k: &str, lo: u64, hi: u64, default: u8| -> Result<u8> {
            match num(k)? {
                None => Ok(default),
                Some(v) if (lo..=hi).contains(&v) => Ok(v as u8),
                Some(v) => Err(Error::invalid_argument(format!("{k}={v}: want {lo} to {hi}"))),
            }
        };
        let tuning = QpTuning {
            // (0 would be "wait forever" for an acknowledgement: a dead peer would hang.)
            timeout: ranged("OXCCL_IB_TIMEOUT", 1, 31, d.timeout)?,
            retry_cnt: ranged("OXCCL_IB_RETRY_CNT", 0, 7, d.retry_cnt)?,
            service_level: ranged("OXCCL_IB_SL", 0, 15, d.service_level)?,
            traffic_class: ranged("OXCCL_IB_TC", 0, 255, d.traffic_class)?,
        };
        Ok(IbSettings {
            disabled: get("OXCCL_IB_DISABLE").is_some_and(|v| v != "0"),
            hca: HcaFilter::parse(&get("OXCCL_IB_HCA").unwrap_or_default())?,
            gid_index: gid_index.map(|g| g as u32),
            qps_per_connection: qps as usize,
            tuning,
        })
    }
}

impl IbSettings {
    /// The (device, port) pairs a rank may use, of `candidates` (every port of every
    /// device found, in the order found): none when `OXCCL_IB_DISABLE` is set, else the
    /// ones `OXCCL_IB_HCA` accepts, in the candidates' order.
    pub fn pick<'a>(&self, candidates: &'a [(String, u8)]) -> Vec<&'a (String, u8)> {
        if self.disabled {
            return Vec::new();
        }
        candidates.iter().filter(|(dev, port)| self.hca.accepts(dev, *port)).collect()
    }

    /// The GID index to send from on a port whose GID table is `entries`:
    /// `OXCCL_IB_GID_INDEX` when set (even if the table does not list it: sysfs may hide
    /// entries), else the RoCE v2 IPv4 GID ([`roce_v2_gid`]), else `None` (InfiniBand, or
    /// a RoCE port without a usable GID: the caller uses index 0 on InfiniBand).
    pub fn gid_index(&self, entries: &[GidEntry]) -> Option<u32> {
        self.gid_index.or_else(|| roce_v2_gid(entries))
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
    fn the_roce_v2_ipv4_gid_is_chosen() {
        let e = |index, kind: &str, gid: &str| GidEntry { index, kind: kind.into(), gid: gid.into() };
        let table = [
            e(0, "IB/RoCE v1", "fe80:0000:0000:0000:0000:00ff:fe00:0001"),
            e(1, "RoCE v2", "fe80:0000:0000:0000:0000:00ff:fe00:0001"),
            e(2, "IB/RoCE v1", "0000:0000:0000:0000:0000:ffff:0a63:0001"),
            e(3, "RoCE v2", "0000:0000:0000:0000:0000:ffff:0a63:0001"),
        ];
        assert_eq!(roce_v2_gid(&table), Some(3));
        // An IPv6-only RoCE v2 port: its global GID, not the link-local one.
        let v6 = [
            e(1, "RoCE v2", "fe80:0000:0000:0000:0000:00ff:fe00:0001"),
            e(5, "RoCE v2", "2001:0db8:0000:0000:0000:0000:0000:0001"),
        ];
        assert_eq!(roce_v2_gid(&v6), Some(5));
        assert_eq!(roce_v2_gid(&table[..1]), None);
    }

    #[test]
    fn settings_come_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let s = IbSettings::from_env(env(&[])).unwrap();
        assert!(!s.disabled && s.gid_index.is_none() && s.qps_per_connection == 1);
        let s = IbSettings::from_env(env(&[
            ("OXCCL_IB_DISABLE", "1"),
            ("OXCCL_IB_HCA", "=rxe1"),
            ("OXCCL_IB_GID_INDEX", "3"),
            ("OXCCL_IB_QPS_PER_CONNECTION", "4"),
        ]))
        .unwrap();
        assert!(s.disabled && s.gid_index == Some(3) && s.qps_per_connection == 4 && s.hca.accepts("rxe1", 1));
        assert!(IbSettings::from_env(env(&[("OXCCL_IB_QPS_PER_CONNECTION", "0")])).is_err());
        assert!(IbSettings::from_env(env(&[("OXCCL_IB_GID_INDEX", "x")])).is_err());
        assert!(IbSettings::from_env(env(&[("OXCCL_IB_GID_INDEX", "256")])).is_err());
    }

    #[test]
    fn queue_pair_tuning_comes_from_the_environment_within_its_ranges() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let d = IbSettings::from_env(env(&[])).unwrap().tuning;
        assert_eq!(d, QpTuning { timeout: 14, retry_cnt: 6, service_level: 0, traffic_class: 0 });
        let t = IbSettings::from_env(env(&[
            ("OXCCL_IB_TIMEOUT", "20"),
            ("OXCCL_IB_RETRY_CNT", "7"),
            ("OXCCL_IB_SL", "3"),
            ("OXCCL_IB_TC", "106"),
        ]))
        .unwrap()
        .tuning;
        assert_eq!(t, QpTuning { timeout: 20, retry_cnt: 7, service_level: 3, traffic_class: 106 });
        for (k, v, want) in [
            ("OXCCL_IB_TIMEOUT", "0", "OXCCL_IB_TIMEOUT=0: want 1 to 31"),
            ("OXCCL_IB_TIMEOUT", "32", "want 1 to 31"),
            ("OXCCL_IB_RETRY_CNT", "8", "OXCCL_IB_RETRY_CNT=8: want 0 to 7"),
            ("OXCCL_IB_SL", "16", "want 0 to 15"),
            ("OXCCL_IB_TC", "256", "want 0 to 255"),
            ("OXCCL_IB_TC", "af41", "not a number"),
        ] {
            let e = IbSettings::from_env(move |n: &str| (n == k).then(|| v.to_string())).unwrap_err().to_string();
            assert!(e.contains(want), "{k}={v}: {e}");
        }
    }

    fn cands(list: &[(&str, u8)]) -> Vec<(String, u8)> {
        list.iter().map(|(d, p)| (d.to_string(), *p)).collect()
    }

    fn names(v: Vec<&(String, u8)>) -> Vec<String> {
        v.into_iter().map(|(d, p)| format!("{d}:{p}")).collect()
    }

    fn settings(pairs: &[(&str, &str)]) -> IbSettings {
        IbSettings::from_env(|k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).unwrap()
    }

    #[test]
    fn pick_keeps_the_accepted_candidates_in_order() {
        let c = cands(&[("mlx5_0", 1), ("mlx5_0", 2), ("mlx5_1", 1), ("mlx5_10", 1), ("rxe0", 1)]);
        assert_eq!(names(settings(&[]).pick(&c)).len(), 5);
        assert_eq!(
            names(settings(&[("OXCCL_IB_HCA", "mlx5_0:1,mlx5_1")]).pick(&c)),
            ["mlx5_0:1", "mlx5_1:1", "mlx5_10:1"]
        );
        assert_eq!(names(settings(&[("OXCCL_IB_HCA", "=mlx5_0:1,mlx5_1")]).pick(&c)), ["mlx5_0:1", "mlx5_1:1"]);
        assert_eq!(names(settings(&[("OXCCL_IB_HCA", "^mlx5")]).pick(&c)), ["rxe0:1"]);
        assert_eq!(
            names(settings(&[("OXCCL_IB_HCA", "^=mlx5_0:2,mlx5_1")]).pick(&c)),
            ["mlx5_0:1", "mlx5_10:1", "rxe0:1"]
        );
        assert_eq!(names(settings(&[("OXCCL_IB_HCA", "^mlx5_0:2,mlx5_1")]).pick(&c)), ["mlx5_0:1", "rxe0:1"]);
        assert!(settings(&[("OXCCL_IB_HCA", "ib")]).pick(&c).is_empty());
        assert!(settings(&[]).pick(&[]).is_empty());
    }

    #[test]
    fn disable_picks_nothing() {
        let c = cands(&[("rxe0", 1), ("rxe1", 1)]);
        assert!(settings(&[("OXCCL_IB_DISABLE", "1")]).pick(&c).is_empty());
        assert!(settings(&[("OXCCL_IB_DISABLE", "1"), ("OXCCL_IB_HCA", "rxe0")]).pick(&c).is_empty());
        assert_eq!(settings(&[("OXCCL_IB_DISABLE", "0")]).pick(&c).len(), 2);
        assert_eq!(settings(&[("OXCCL_IB_DISABLE", "")]).pick(&c).len(), 2);
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

    #[test]
    fn gid_index_override_wins_over_detection() {
        let e = |index, kind: &str, gid: &str| GidEntry { index, kind: kind.into(), gid: gid.into() };
        let table = [
            e(0, "IB/RoCE v1", "fe80:0000:0000:0000:0000:00ff:fe00:0001"),
            e(1, "RoCE v2", "0000:0000:0000:0000:0000:ffff:0a63:0001"),
        ];
        assert_eq!(settings(&[]).gid_index(&table), Some(1));
        assert_eq!(settings(&[("OXCCL_IB_GID_INDEX", "0")]).gid_index(&table), Some(0));
        assert_eq!(settings(&[("OXCCL_IB_GID_INDEX", "7")]).gid_index(&[]), Some(7));
        assert_eq!(settings(&[]).gid_index(&[]), None);
    }

    #[test]
    fn roce_v2_detection_edge_cases() {
        let e = |index, kind: &str, gid: &str| GidEntry { index, kind: kind.into(), gid: gid.into() };
        // Types as sysfs writes them (trailing newline), in any case; zero GIDs (unused
        // slots) never chosen; the IPv4 one preferred even after a global IPv6 one.
        let table = [
            e(0, "RoCE v2\n", "0000:0000:0000:0000:0000:0000:0000:0000"),
            e(1, "roce v2", "2001:0db8:0000:0000:0000:0000:0000:0001"),
            e(4, "RoCE v2\n", "0000:0000:0000:0000:0000:ffff:c0a8:0101"),
        ];
        assert_eq!(roce_v2_gid(&table), Some(4));
        assert_eq!(roce_v2_gid(&table[..2]), Some(1));
        assert_eq!(roce_v2_gid(&table[..1]), None);
        let upper = [
            e(2, "RoCE v2", "FE80:0000:0000:0000:0000:00FF:FE00:0001"),
            e(3, "RoCE v2", "0000:0000:0000:0000:0000:FFFF:0A63:0001"),
        ];
        assert_eq!(roce_v2_gid(&upper), Some(3));
        assert_eq!(roce_v2_gid(&upper[..1]), None);
        // Only RoCE v1 / InfiniBand entries (kind empty where sysfs has no types/ file).
        let v1 = [
            e(0, "IB/RoCE v1", "0000:0000:0000:0000:0000:ffff:0a63:0001"),
            e(1, "", "fe80:0000:0000:0000:0002:c903:0000:0001"),
        ];
        assert_eq!(roce_v2_gid(&v1), None);
        assert_eq!(roce_v2_gid(&[]), None);
    }

    #[test]
    fn sysfs_gids_of_a_missing_device_is_empty() {
        assert!(sysfs_gids("oxccl_no_such_device", 1).is_empty());
    }
}
