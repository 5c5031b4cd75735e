//! Data types, reduction operations and the [`Element`] trait.
//!
//! This module owns the vocabulary shared by every layer: which element types exist
//! ([`DataType`], numbered exactly as NCCL's `ncclDataType_t`), which reductions exist
//! ([`ReduceOp`], numbered as `ncclRedOp_t`), and how a Rust type maps onto a data type
//! ([`Element`]). It holds no arithmetic: the kernels live in `reduce/`.

mod fp8;

pub use fp8::{F8E4M3, F8E5M2};

use std::fmt;
use std::str::FromStr;

use half::{bf16, f16};

/// An element type, with NCCL's order and integer values (`ncclDataType_t`).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    /// `ncclInt8`, also `ncclChar`.
    Int8 = 0,
    /// `ncclUint8`.
    Uint8 = 1,
    /// `ncclInt32`, also `ncclInt`.
    Int32 = 2,
    /// `ncclUint32`.
    Uint32 = 3,
    /// `ncclInt64`.
    Int64 = 4,
    /// `ncclUint64`.
    Uint64 = 5,
    /// `ncclFloat16`, also `ncclHalf`: IEEE binary16 ([`half::f16`]).
    Float16 = 6,
    /// `ncclFloat32`, also `ncclFloat`.
    Float32 = 7,
    /// `ncclFloat64`, also `ncclDouble`.
    Float64 = 8,
    /// `ncclBfloat16` ([`half::bf16`]).
    Bfloat16 = 9,
    /// `ncclFloat8e4m3` ([`F8E4M3`]).
    Float8E4M3 = 10,
    /// `ncclFloat8e5m2` ([`F8E5M2`]).
    Float8E5M2 = 11,
}

impl DataType {
    /// Every data type, in NCCL's order.
    pub const ALL: [DataType; 12] = [
        DataType::Int8,
        DataType::Uint8,
        DataType::Int32,
        DataType::Uint32,
        DataType::Int64,
        DataType::Uint64,
        DataType::Float16,
        DataType::Float32,
        DataType::Float64,
        DataType::Bfloat16,
        DataType::Float8E4M3,
        DataType::Float8E5M2,
    ];

    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            DataType::Int8 | DataType::Uint8 | DataType::Float8E4M3 | DataType::Float8E5M2 => 1,
            DataType::Float16 | DataType::Bfloat16 => 2,
            DataType::Int32 | DataType::Uint32 | DataType::Float32 => 4,
            DataType::Int64 | DataType::Uint64 | DataType::Float64 => 8,
        }
    }

    /// True for the floating-point types (including f16, bf16 and fp8).
    pub const fn is_float(self) -> bool {
        matches!(
            self,
            DataType::Float16
                | DataType::Float32
                | DataType::Float64
                | DataType::Bfloat16
                | DataType::Float8E4M3
                | DataType::Float8E5M2
        )
    }

    /// The name nccl-tests uses on its command line and in its tables (`float`, `half`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DataType::Int8 => "int8",
            DataType::Uint8 => "uint8",
            DataType::Int32 => "int32",
            DataType::Uint32 => "uint32",
            DataType::Int64 => "int64",
            DataType::Uint64 => "uint64",
            DataType::Float16 => "half",
            DataType::Float32 => "float",
            DataType::Float64 => "double",
            DataType::Bfloat16 => "bfloat16",
            DataType::Float8E4M3 => "f8e4m3",
            DataType::Float8E5M2 => "f8e5m2",
        }
    }

    /// The data type with NCCL's integer value `v`, if there is one.
    pub const fn from_i32(v: i32) -> Option<DataType> {
        if v >= 0 && (v as usize) < Self::ALL.len() { Some(Self::ALL[v as usize]) } else { None }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DataType {
    type Err = String;

    /// Accepts nccl-tests' names (`int8 uint8 int32 uint32 int64 uint64 half float double
    /// bfloat16 f8e4m3 f8e5m2`) and common aliases (`f32`, `float32`, `fp16`, `bf16`, ...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = match s.to_ascii_lowercase().as_str() {
            "int8" | "i8" | "char" => DataType::Int8,
            "uint8" | "u8" => DataType::Uint8,
            "int32" | "i32" | "int" => DataType::Int32,
            "uint32" | "u32" => DataType::Uint32,
            "int64" | "i64" => DataType::Int64,
            "uint64" | "u64" => DataType::Uint64,
            "half" | "float16" | "f16" | "fp16" => DataType::Float16,
            "float" | "float32" | "f32" | "fp32" => DataType::Float32,
            "double" | "float64" | "f64" | "fp64" => DataType::Float64,
            "bfloat16" | "bf16" => DataType::Bfloat16,
            "f8e4m3" | "fp8e4m3" | "float8e4m3" | "e4m3" => DataType::Float8E4M3,
            "f8e5m2" | "fp8e5m2" | "float8e5m2" | "e5m2" => DataType::Float8E5M2,
            _ => {
                return Err(format!(
                    "unknown data type '{s}' (expected one of int8 uint8 int32 uint32 int64 uint64 half float double bfloat16 f8e4m3 f8e5m2)"
                ));
            }
        };
        Ok(t)
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A Rust type that oxccl can move and reduce: one of i8, u8, i32, u32, i64, u64,
/// [`half::f16`], f32, f64, [`half::bf16`], [`F8E4M3`] and [`F8E5M2`].
///
/// The trait is sealed: the engine reinterprets buffers as raw bytes of `DTYPE`, which is
/// sound only for these plain-old-data types (every bit pattern valid, no padding).
pub trait Element: sealed::Sealed + Copy + Send + Sync + Default + fmt::Debug + 'static {
    /// The data type this Rust type stands for.
    const DTYPE: DataType;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DataType = DataType::$d;
        }
    )*};
}

element! {
    i8 => Int8, u8 => Uint8, i32 => Int32, u32 => Uint32, i64 => Int64, u64 => Uint64,
    f16 => Float16, f32 => Float32, f64 => Float64, bf16 => Bfloat16,
    F8E4M3 => Float8E4M3, F8E5M2 => Float8E5M2,
}

/// A typed scalar, for [`ReduceOp::PreMulSum`].
///
/// Like NCCL's `ncclRedOpCreatePreMulSum`, the scalar has the data type of the call it is
/// used with; using it with another data type is an `InvalidArgument` error.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scalar {
    dtype: DataType,
    bits: u64,
}

impl Scalar {
    /// Wraps a value of any element type.
    pub fn new<T: Element>(value: T) -> Scalar {
        let mut bits = 0u64;
        // SAFETY: T is a sealed plain-old-data element of at most 8 bytes
        // (DataType::size), so copying its bytes into the low bytes of a u64 is in bounds.
        unsafe {
            std::ptr::copy_nonoverlapping(
                &value as *const T as *const u8,
                &mut bits as *mut u64 as *mut u8,
                std::mem::size_of::<T>(),
            );
        }
        Scalar { dtype: T::DTYPE, bits }
    }

    /// Builds a scalar of `dtype` from raw little-endian bytes (at least `dtype.size()`).
    pub fn from_bytes(dtype: DataType, bytes: &[u8]) -> Option<Scalar> {
        let n = dtype.size();
        if bytes.len() < n {
            return None;
        }
        let mut raw = [0u8; 8];
        raw[..n].copy_from_slice(&bytes[..n]);
        Some(Scalar { dtype, bits: u64::from_le_bytes(raw) })
    }

    /// The data type of the scalar.
    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    /// The value, if it has type `T`.
    pub fn get<T: Element>(&self) -> Option<T> {
        if T::DTYPE != self.dtype {
            return None;
        }
        let mut v = T::default();
        // SAFETY: T has dtype self.dtype, whose bytes were stored in the low bytes of `bits`;
        // every bit pattern is a valid T (sealed plain-old-data element types).
        unsafe {
            std::ptr::copy_nonoverlapping(
                &self.bits as *const u64 as *const u8,
                &mut v as *mut T as *mut u8,
                std::mem::size_of::<T>(),
            );
        }
        Some(v)
    }

    /// The value widened to f64 (exact for every type except 64-bit integers above 2^53).
    pub fn to_f64(&self) -> f64 {
        let b = self.bits;
        match self.dtype {
            DataType::Int8 => b as u8 as i8 as f64,
            DataType::Uint8 => b as u8 as f64,
            DataType::Int32 => b as u32 as i32 as f64,
            DataType::Uint32 => b as u32 as f64,
            DataType::Int64 => b as i64 as f64,
            DataType::Uint64 => b as f64,
            DataType::Float16 => f16::from_bits(b as u16).to_f64(),
            DataType::Float32 => f32::from_bits(b as u32) as f64,
            DataType::Float64 => f64::from_bits(b),
            DataType::Bfloat16 => bf16::from_bits(b as u16).to_f64(),
            DataType::Float8E4M3 => F8E4M3::from_bits(b as u8).to_f32() as f64,
            DataType::Float8E5M2 => F8E5M2::from_bits(b as u8).to_f32() as f64,
        }
    }

    /// The raw bits, little-endian in the low `dtype.size()` bytes.
    pub fn bits(&self) -> u64 {
        self.bits
    }
}

impl fmt::Debug for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.dtype, self.to_f64())
    }
}

/// A reduction operation, numbered as NCCL's `ncclRedOp_t` (see [`ReduceOp::code`]).
///
/// Semantics, as in NCCL:
/// - integer `Sum` and `Prod` wrap around (two's complement);
/// - `Avg` is the sum divided by the number of ranks; integer division truncates toward
///   zero; floats are divided once, after the sum;
/// - `PreMulSum(s)` multiplies every rank's input by `s`, then sums;
/// - f16, bf16 and fp8 are widened to f32 for each step and rounded back to the nearest
///   even value; fp8 conversions saturate to the largest finite value, as CUDA's
///   `__nv_fp8` types do;
/// - `Max` and `Min` ignore NaN (IEEE 754 maxNum/minNum, like CUDA's `fmaxf`, which NCCL
///   uses): the result is NaN only where every rank's input is NaN.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReduceOp {
    /// Sum (`ncclSum`).
    Sum,
    /// Product (`ncclProd`).
    Prod,
    /// Maximum (`ncclMax`).
    Max,
    /// Minimum (`ncclMin`).
    Min,
    /// Average: the sum divided by the number of ranks (`ncclAvg`).
    Avg,
    /// Multiply each input by the scalar, then sum (`ncclRedOpCreatePreMulSum`).
    PreMulSum(Scalar),
}

impl ReduceOp {
    /// The five built-in operations (everything but `PreMulSum`).
    pub const BUILTIN: [ReduceOp; 5] = [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Max, ReduceOp::Min, ReduceOp::Avg];

    /// `PreMulSum` with a scalar of type `T`.
    pub fn pre_mul_sum<T: Element>(scalar: T) -> ReduceOp {
        ReduceOp::PreMulSum(Scalar::new(scalar))
    }

    /// NCCL's integer value: Sum 0, Prod 1, Max 2, Min 3, Avg 4; `PreMulSum` has none
    /// (NCCL creates it dynamically) and reports 5 (`ncclNumOps`).
    pub fn code(&self) -> i32 {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Prod => 1,
            ReduceOp::Max => 2,
            ReduceOp::Min => 3,
            ReduceOp::Avg => 4,
            ReduceOp::PreMulSum(_) => 5,
        }
    }

    /// The name nccl-tests uses: `sum prod max min avg mulsum`.
    pub fn name(&self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Prod => "prod",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::Avg => "avg",
            ReduceOp::PreMulSum(_) => "mulsum",
        }
    }
}

impl fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReduceOp::PreMulSum(s) => write!(f, "mulsum({})", s.to_f64()),
            op => f.write_str(op.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nccl_values_and_sizes() {
        for (i, t) in DataType::ALL.iter().enumerate() {
            assert_eq!(*t as i32, i as i32);
            assert_eq!(DataType::from_i32(i as i32), Some(*t));
            assert_eq!(t.name().parse::<DataType>().unwrap(), *t);
        }
        assert_eq!(DataType::from_i32(12), None);
        assert_eq!(DataType::from_i32(-1), None);
        assert_eq!(DataType::Float8E5M2 as i32, 11);
        assert_eq!(DataType::Bfloat16.size(), 2);
        assert_eq!(std::mem::size_of::<F8E4M3>(), 1);
        assert!("float128".parse::<DataType>().is_err());
    }

    #[test]
    fn scalar_round_trips() {
        let s = Scalar::new(-3i8);
        assert_eq!(s.get::<i8>(), Some(-3));
        assert_eq!(s.get::<u8>(), None);
        assert_eq!(s.to_f64(), -3.0);
        let s = Scalar::new(bf16::from_f32(0.5));
        assert_eq!(s.to_f64(), 0.5);
        let s = Scalar::from_bytes(DataType::Float64, &2.5f64.to_le_bytes()).unwrap();
        assert_eq!(s.get::<f64>(), Some(2.5));
        assert_eq!(ReduceOp::pre_mul_sum(2.0f32).code(), 5);
        assert_eq!(ReduceOp::Avg.code(), 4);
    }
}
