//! Which RDMA devices, ports and GID a rank uses: the ports that the `OXCCL_IB_*`
//! settings ([`IbSettings`]) allow, and the RoCE v2 GID found in sysfs. Pure choosing,
//! testable without any RDMA device.

use crate::settings::IbSettings;

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

    fn cands(list: &[(&str, u8)]) -> Vec<(String, u8)> {
        list.iter().map(|(d, p)| (d.to_string(), *p)).collect()
    }

    fn names(v: Vec<&(String, u8)>) -> Vec<String> {
        v.into_iter().map(|(d, p)| format!("{d}:{p}")).collect()
    }

    fn settings(pairs: &[(&str, &str)]) -> IbSettings {
        crate::settings::Settings::from_env(|k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
            .unwrap()
            .ib
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
