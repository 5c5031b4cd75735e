//! Which network interface and address a rank listens on.
//!
//! `OXCCL_SOCKET_IFNAME` selects interfaces as NCCL_SOCKET_IFNAME does: a comma-separated
//! list of name prefixes (`eth,ib`), `^` to exclude them instead (`^docker,lo`), and `=`
//! for exact names (`=eth0`). Without it, the first interface that is up and is neither
//! loopback nor a container bridge wins, and loopback is the fallback. IPv4 addresses
//! are preferred over IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::{Error, Result};

/// An interface address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfAddr {
    /// Interface name.
    pub name: String,
    /// Address.
    pub ip: IpAddr,
}

/// Every address of every interface that is up, in the system's order.
pub fn list() -> Result<Vec<IfAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(Error::system("listing network interfaces (getifaddrs)", std::io::Error::last_os_error()));
    }
    let mut out = Vec::new();
    let mut p = head;
    while !p.is_null() {
        // SAFETY: `p` is a node of the list getifaddrs returned, valid until freeifaddrs;
        // ifa_name is a NUL-terminated string and ifa_addr, when non-null, points to a
        // sockaddr of the family it declares.
        unsafe {
            let ifa = &*p;
            p = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_flags & libc::IFF_UP as libc::c_uint == 0 {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
            let ip = match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                    if ip.segments()[0] & 0xffc0 == 0xfe80 {
                        continue; // link-local needs a scope id: not usable as a plain address
                    }
                    IpAddr::V6(ip)
                }
                _ => continue,
            };
            out.push(IfAddr { name, ip });
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Whether interface `name` passes an `OXCCL_SOCKET_IFNAME`-style filter.
pub fn matches(spec: &str, name: &str) -> bool {
    let (exclude, list) = match spec.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, spec),
    };
    let hit = list.split(',').map(str::trim).filter(|s| !s.is_empty()).any(|p| match p.strip_prefix('=') {
        Some(exact) => name == exact,
        None => name.starts_with(p),
    });
    hit != exclude
}

/// The address to listen on: filtered by `spec` (`OXCCL_SOCKET_IFNAME`) when given.
pub fn pick(spec: Option<&str>) -> Result<IfAddr> {
    let all = list()?;
    choose(&all, spec).ok_or_else(|| {
        let names: Vec<&str> = all.iter().map(|a| a.name.as_str()).collect();
        Error::invalid_argument(match spec {
            Some(s) => format!("OXCCL_SOCKET_IFNAME={s} matches no interface that is up (interfaces: {names:?})"),
            None => format!("no usable network interface (interfaces: {names:?})"),
        })
    })
}

fn choose(all: &[IfAddr], spec: Option<&str>) -> Option<IfAddr> {
    let v4_first =
        |v: Vec<&IfAddr>| -> Option<IfAddr> { v.iter().find(|a| a.ip.is_ipv4()).or(v.first()).map(|a| (*a).clone()) };
    if let Some(s) = spec.filter(|s| !s.is_empty()) {
        return v4_first(all.iter().filter(|a| matches(s, &a.name)).collect());
    }
    let good = |a: &&IfAddr| !a.ip.is_loopback() && !a.name.starts_with("docker") && !a.name.starts_with("lo");
    v4_first(all.iter().filter(good).collect())
        .or_else(|| v4_first(all.iter().filter(|a| a.ip.is_loopback()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(name: &str, ip: &str) -> IfAddr {
        IfAddr { name: name.into(), ip: ip.parse().unwrap() }
    }

    #[test]
    fn filters_follow_nccl_syntax() {
        assert!(matches("eth", "eth0"));
        assert!(!matches("eth", "ib0"));
        assert!(matches("eth,ib", "ib1"));
        assert!(!matches("^lo,docker", "lo"));
        assert!(matches("^lo,docker", "eth0"));
        assert!(matches("=eth0", "eth0"));
        assert!(!matches("=eth0", "eth01"));
    }

    #[test]
    fn picks_a_real_interface_before_loopback_and_v4_before_v6() {
        let all = [a("lo", "127.0.0.1"), a("docker0", "172.17.0.1"), a("eth0", "fd00::2"), a("eth0", "192.0.2.2")];
        assert_eq!(choose(&all, None).unwrap(), a("eth0", "192.0.2.2"));
        assert_eq!(choose(&all, Some("lo")).unwrap(), a("lo", "127.0.0.1"));
        assert_eq!(choose(&all, Some("^eth,docker")).unwrap(), a("lo", "127.0.0.1"));
        assert!(choose(&all, Some("ib")).is_none());
        assert_eq!(choose(&all[..1], None).unwrap(), a("lo", "127.0.0.1"));
        assert!(!list().unwrap().is_empty());
    }
}
