//! The unique id: 128 bytes that rank 0 creates and the user hands to every rank out of
//! band (an environment variable, a file, MPI), as with `ncclGetUniqueId`. It holds the
//! bootstrap root's address and a 256-bit random secret; connections that do not present
//! the secret are refused.
//!
//! Layout: `"OXID"`, version, address family, port, 16 address bytes, 32 secret bytes,
//! zeros. As a string it is 256 hexadecimal digits.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use crate::error::{Error, Result};

/// Bytes in a unique id (NCCL's `NCCL_UNIQUE_ID_BYTES`).
pub const UNIQUE_ID_BYTES: usize = 128;
/// Bytes of the shared secret.
pub const SECRET_BYTES: usize = 32;
const VERSION: u8 = 1;

/// The secret a job's ranks share.
pub type Secret = [u8; SECRET_BYTES];

/// Where the bootstrap root listens and the job's secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UniqueId {
    root: SocketAddr,
    secret: Secret,
}

impl UniqueId {
    /// Bytes in a unique id (`NCCL_UNIQUE_ID_BYTES`).
    pub const BYTES: usize = UNIQUE_ID_BYTES;

    /// An id for a root at `root` with a fresh random secret (the root itself is started
    /// by [`UniqueId::new`] or by rank 0 in `Comm::init_rank`).
    pub fn for_root(root: SocketAddr) -> Result<UniqueId> {
        Ok(UniqueId { root, secret: random_secret()? })
    }

    /// An id with a given secret (all ranks must derive the same one).
    pub fn with_secret(root: SocketAddr, secret: Secret) -> UniqueId {
        UniqueId { root, secret }
    }

    /// The root's address.
    pub fn root(&self) -> SocketAddr {
        self.root
    }

    /// The shared secret.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// The 128-byte form.
    pub fn to_bytes(&self) -> [u8; UNIQUE_ID_BYTES] {
        let mut b = [0u8; UNIQUE_ID_BYTES];
        b[..4].copy_from_slice(b"OXID");
        b[4] = VERSION;
        let (fam, ip) = match self.root.ip() {
            IpAddr::V4(a) => {
                let mut x = [0u8; 16];
                x[..4].copy_from_slice(&a.octets());
                (4u8, x)
            }
            IpAddr::V6(a) => (6u8, a.octets()),
        };
        b[5] = fam;
        b[6..8].copy_from_slice(&self.root.port().to_le_bytes());
        b[8..24].copy_from_slice(&ip);
        b[24..24 + SECRET_BYTES].copy_from_slice(&self.secret);
        b
    }

    /// Parses the 128-byte form.
    pub fn from_bytes(b: &[u8]) -> Result<UniqueId> {
        let bad = |why: &str| Error::invalid_argument(format!("not an oxccl unique id: {why}"));
        if b.len() != UNIQUE_ID_BYTES {
            return Err(bad(&format!("{} bytes instead of {UNIQUE_ID_BYTES}", b.len())));
        }
        if &b[..4] != b"OXID" {
            return Err(bad("bad magic"));
        }
        if b[4] != VERSION {
            return Err(bad(&format!("version {} (this oxccl reads version {VERSION})", b[4])));
        }
        let port = u16::from_le_bytes([b[6], b[7]]);
        let ip = match b[5] {
            // One form per id: the 12 bytes after an IPv4 address are zero.
            4 if b[12..24].iter().any(|&x| x != 0) => return Err(bad("non-zero padding after the IPv4 address")),
            4 => IpAddr::V4(Ipv4Addr::new(b[8], b[9], b[10], b[11])),
            6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&b[8..24]).expect("16 bytes"))),
            f => return Err(bad(&format!("address family {f}"))),
        };
        if b[24 + SECRET_BYTES..].iter().any(|&x| x != 0) {
            return Err(bad("reserved bytes are not zero"));
        }
        let mut secret = [0u8; SECRET_BYTES];
        secret.copy_from_slice(&b[24..24 + SECRET_BYTES]);
        Ok(UniqueId { root: SocketAddr::new(ip, port), secret })
    }
}

impl fmt::Display for UniqueId {
    /// 256 lowercase hexadecimal digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for x in self.to_bytes() {
            write!(f, "{x:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for UniqueId {
    /// The root address only: the secret is not printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UniqueId(root {}, secret ...)", self.root)
    }
}

impl FromStr for UniqueId {
    type Err = Error;

    fn from_str(s: &str) -> Result<UniqueId> {
        let s = s.trim();
        if s.len() != 2 * UNIQUE_ID_BYTES || !s.is_ascii() {
            return Err(Error::invalid_argument(format!(
                "a unique id string has {} hexadecimal digits, got {} characters",
                2 * UNIQUE_ID_BYTES,
                s.len()
            )));
        }
        // Digits only (from_str_radix alone would also take a '+' sign).
        if let Some(c) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(Error::invalid_argument(format!("unique id: {c:?} is not a hexadecimal digit")));
        }
        let mut b = [0u8; UNIQUE_ID_BYTES];
        for (i, x) in b.iter_mut().enumerate() {
            *x = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| {
                Error::invalid_argument(format!("unique id: '{}' is not hexadecimal", &s[2 * i..2 * i + 2]))
            })?;
        }
        UniqueId::from_bytes(&b)
    }
}

/// 32 bytes from the kernel's random source.
pub fn random_secret() -> Result<Secret> {
    let mut s = [0u8; SECRET_BYTES];
    crate::sys::random_bytes(&mut s, "the job secret")?;
    Ok(s)
}

/// Compares secrets without an early exit.
pub fn same_secret(a: &Secret, b: &[u8]) -> bool {
    b.len() == a.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_bytes_and_strings() {
        for root in ["10.0.0.7:29500", "[fd00::1]:1234"] {
            let id = UniqueId::for_root(root.parse().unwrap()).unwrap();
            assert_eq!(UniqueId::from_bytes(&id.to_bytes()).unwrap(), id);
            let s = id.to_string();
            assert_eq!(s.len(), 256);
            assert_eq!(s.parse::<UniqueId>().unwrap(), id);
            assert!(!format!("{id:?}").contains(&s[48..112]), "Debug must not show the secret");
        }
        let a = UniqueId::for_root("1.2.3.4:5".parse().unwrap()).unwrap();
        let b = UniqueId::for_root("1.2.3.4:5".parse().unwrap()).unwrap();
        assert_ne!(a.secret(), b.secret(), "secrets are random");
    }

    #[test]
    fn malformed_ids_are_errors() {
        let id = UniqueId::for_root("1.2.3.4:5".parse().unwrap()).unwrap();
        let mut b = id.to_bytes();
        assert!(UniqueId::from_bytes(&b[..100]).is_err());
        b[0] = b'X';
        assert!(UniqueId::from_bytes(&b).is_err());
        let mut b = id.to_bytes();
        b[5] = 9;
        assert!(UniqueId::from_bytes(&b).is_err());
        let mut b = id.to_bytes();
        b[127] = 1;
        assert!(UniqueId::from_bytes(&b).is_err());
        assert!("zz".parse::<UniqueId>().is_err());
        assert!("g".repeat(256).parse::<UniqueId>().is_err());
        assert!(same_secret(id.secret(), id.secret()));
        assert!(!same_secret(id.secret(), &[0u8; 32]));
    }

    /// Found by the unique_id fuzz target: an IPv4 id with non-zero padding parsed, so
    /// two ids printed differently were equal. The same class: a '+' where a hex digit
    /// belongs.
    #[test]
    fn unique_ids_have_one_form() {
        let id = UniqueId::for_root("10.1.2.3:29500".parse().unwrap()).unwrap();
        let mut b = id.to_bytes();
        b[23] = 1;
        let e = UniqueId::from_bytes(&b).unwrap_err().to_string();
        assert!(e.contains("non-zero padding"), "{e}");
        let s = id.to_string();
        let plus = format!("+{}", &s[1..]);
        assert!(plus.parse::<UniqueId>().is_err(), "a sign is not a digit");
        assert_eq!(s.to_uppercase().parse::<UniqueId>().unwrap(), id, "either case");
    }
}
