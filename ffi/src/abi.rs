//! The C types of `nccl.h`, as Rust sees them: result codes, the unique id, the
//! configuration struct, and the conversions of enum arguments into oxccl's types.
//!
//! This module owns the layout side of the ABI and nothing else: no entry point lives
//! here. C enums are `int`-sized, so enum arguments arrive as `c_int` and are checked
//! here, never transmuted.

use std::ffi::{c_char, c_int, c_uint};

use oxccl::{DataType, Error, NCCL_RESULTS, Result};

/// `ncclResult_t`: a C enum, `int`-sized.
pub type NcclResult = c_int;

/// `ncclSuccess` (the codes come from the library's one table, [`oxccl::NCCL_RESULTS`]).
pub const SUCCESS: NcclResult = NCCL_RESULTS[0].code;
/// `ncclInternalError`.
pub const INTERNAL_ERROR: NcclResult = NCCL_RESULTS[3].code;
/// `ncclInvalidArgument`.
pub const INVALID_ARGUMENT: NcclResult = NCCL_RESULTS[4].code;
/// `ncclInvalidUsage`.
pub const INVALID_USAGE: NcclResult = NCCL_RESULTS[5].code;
/// `ncclInProgress`.
pub const IN_PROGRESS: NcclResult = NCCL_RESULTS[7].code;
/// `ncclNumResults`: one past the last result code.
pub const NUM_RESULTS: NcclResult = NCCL_RESULTS.len() as NcclResult;

/// `ncclNumOps`: the first value of a custom reduction operation.
pub const NUM_OPS: c_int = 5;

/// `NCCL_VERSION_CODE` of the API the header declares (2.30.7).
pub const VERSION_CODE: c_int = 23007;

/// `NCCL_API_MAGIC`: the magic number of an initialized `ncclConfig_t`.
pub const API_MAGIC: c_uint = 0xcafe_beef;

/// `NCCL_CONFIG_UNDEF_INT`.
pub const UNDEF_INT: c_int = c_int::MIN;

/// `NCCL_SPLIT_NOCOLOR`.
pub const SPLIT_NOCOLOR: c_int = -1;

/// `ncclUniqueId`: 128 opaque bytes, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NcclUniqueId {
    /// The bytes of [`oxccl::UniqueId::to_bytes`].
    pub internal: [c_char; 128],
}

/// `ncclConfig_t` as NCCL 2.30 lays it out. Callers built against an older header pass
/// a shorter struct (its `size` says how long): read it with [`ConfigReader`] only.
#[repr(C)]
pub struct NcclConfig {
    /// `sizeof(ncclConfig_t)` of the caller's header.
    pub size: usize,
    /// [`API_MAGIC`].
    pub magic: c_uint,
    /// `NCCL_VERSION_CODE` of the caller's header.
    pub version: c_uint,
    /// 1: calls block; 0: calls may return `ncclInProgress`.
    pub blocking: c_int,
    /// GPU tuning (ignored on host memory).
    pub cga_cluster_size: c_int,
    /// GPU tuning (ignored).
    pub min_ctas: c_int,
    /// GPU tuning (ignored).
    pub max_ctas: c_int,
    /// The network plugin to use (ignored: oxccl picks its links).
    pub net_name: *const c_char,
    /// Share resources with the parent on split (ignored).
    pub split_share: c_int,
    /// Network traffic class (ignored).
    pub traffic_class: c_int,
    /// A name for logs (ignored).
    pub comm_name: *const c_char,
    /// CollNet (ignored).
    pub collnet_enable: c_int,
    /// CTA policy (ignored).
    pub cta_policy: c_int,
    /// Share resources on shrink (ignored).
    pub shrink_share: c_int,
    /// NVLS tuning (ignored).
    pub nvls_ctas: c_int,
    /// Network tuning (ignored).
    pub n_channels_per_net_peer: c_int,
    /// NVLink scheduling (ignored).
    pub nvlink_centric_sched: c_int,
    /// CUDA graph usage (ignored).
    pub graph_usage_mode: c_int,
    /// RMA contexts (ignored).
    pub num_rma_ctx: c_int,
    /// P2P peers (ignored).
    pub max_p2p_peers: c_int,
    /// CUDA graph stream ordering (ignored).
    pub graph_stream_ordering: c_int,
}

/// What oxccl takes from an `ncclConfig_t`.
#[derive(Clone, Debug, Default)]
pub struct ConfigRead {
    /// `blocking`, if set: 0 or 1.
    pub blocking: Option<bool>,
}

/// Reads an `ncclConfig_t` of any version: the header first, then only the fields that
/// lie within the caller's `size`.
pub struct ConfigReader;

impl ConfigReader {
    /// Reads `config` (NULL: everything default).
    ///
    /// # Safety
    /// A non-NULL `config` must point to at least 16 readable bytes and, past those, to
    /// `config->size` readable bytes (what `NCCL_CONFIG_INITIALIZER` produces).
    pub unsafe fn read(config: *const NcclConfig) -> Result<ConfigRead> {
        let mut out = ConfigRead::default();
        if config.is_null() {
            return Ok(out);
        }
        let base = config as *const u8;
        // SAFETY: the caller guarantees the 16-byte header (size, magic, version).
        let (size, magic) = unsafe {
            (
                (base.wrapping_add(std::mem::offset_of!(NcclConfig, size)) as *const usize).read_unaligned(),
                (base.wrapping_add(std::mem::offset_of!(NcclConfig, magic)) as *const c_uint).read_unaligned(),
            )
        };
        if magic != API_MAGIC {
            return Err(Error::invalid_argument(format!(
                "config: magic is {magic:#x}, not NCCL_API_MAGIC ({API_MAGIC:#x}); initialize it with NCCL_CONFIG_INITIALIZER"
            )));
        }
        let header = std::mem::offset_of!(NcclConfig, blocking);
        if size < header {
            return Err(Error::invalid_argument(format!(
                "config: size {size} is smaller than its own header ({header} bytes); initialize it with NCCL_CONFIG_INITIALIZER"
            )));
        }
        let field = |offset: usize| -> Option<c_int> {
            // SAFETY: read only when the field lies within the caller's `size` bytes.
            (offset + std::mem::size_of::<c_int>() <= size)
                .then(|| unsafe { (base.wrapping_add(offset) as *const c_int).read_unaligned() })
        };
        match field(std::mem::offset_of!(NcclConfig, blocking)) {
            None | Some(UNDEF_INT) => {}
            Some(0) => out.blocking = Some(false),
            Some(1) => out.blocking = Some(true),
            Some(v) => {
                return Err(Error::invalid_argument(format!(
                    "config: blocking is {v}; it must be 0, 1 or NCCL_CONFIG_UNDEF_INT"
                )));
            }
        }
        Ok(out)
    }
}

/// The data type with NCCL's value `v`.
pub fn data_type(v: c_int) -> Result<DataType> {
    DataType::from_i32(v).ok_or_else(|| {
        Error::invalid_argument(format!("unknown data type {v} (ncclDataType_t runs from 0, ncclInt8, to 11)"))
    })
}

/// A non-negative `int` as an index, e.g. a root, a peer or a rank.
pub fn index(what: &str, v: c_int) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::invalid_argument(format!("{what} {v} is negative")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initializer() -> NcclConfig {
        NcclConfig {
            size: std::mem::size_of::<NcclConfig>(),
            magic: API_MAGIC,
            version: VERSION_CODE as c_uint,
            blocking: UNDEF_INT,
            cga_cluster_size: UNDEF_INT,
            min_ctas: UNDEF_INT,
            max_ctas: UNDEF_INT,
            net_name: std::ptr::null(),
            split_share: UNDEF_INT,
            traffic_class: UNDEF_INT,
            comm_name: std::ptr::null(),
            collnet_enable: UNDEF_INT,
            cta_policy: UNDEF_INT,
            shrink_share: UNDEF_INT,
            nvls_ctas: UNDEF_INT,
            n_channels_per_net_peer: UNDEF_INT,
            nvlink_centric_sched: UNDEF_INT,
            graph_usage_mode: UNDEF_INT,
            num_rma_ctx: UNDEF_INT,
            max_p2p_peers: UNDEF_INT,
            graph_stream_ordering: UNDEF_INT,
        }
    }

    /// Reads a whole struct (its `size` may claim less).
    fn read(c: &NcclConfig) -> Result<ConfigRead> {
        // SAFETY: `c` is a whole NcclConfig, so every size up to its own is readable.
        unsafe { ConfigReader::read(c) }
    }

    #[test]
    fn configs_are_read_within_their_size() {
        let mut c = initializer();
        assert_eq!(read(&c).unwrap().blocking, None);
        c.blocking = 0;
        assert_eq!(read(&c).unwrap().blocking, Some(false));
        // A struct from a header that ends before `blocking`: the field is not read.
        c.size = 16;
        assert_eq!(read(&c).unwrap().blocking, None);
        c.size = 8;
        assert!(read(&c).is_err());
        let mut c = initializer();
        c.blocking = 7;
        assert!(read(&c).is_err());
        c.blocking = 1;
        c.magic = 0;
        assert!(read(&c).is_err());
        // SAFETY: NULL is allowed.
        assert!(unsafe { ConfigReader::read(std::ptr::null()) }.is_ok());
    }

    #[test]
    fn enums_are_checked() {
        assert_eq!(data_type(11).unwrap(), DataType::Float8E5M2);
        assert!(data_type(12).is_err());
        assert!(data_type(-1).is_err());
        assert!(index("root", -1).is_err());
        assert_eq!(index("root", 3).unwrap(), 3);
        assert_eq!(std::mem::size_of::<NcclUniqueId>(), 128);
    }
}
