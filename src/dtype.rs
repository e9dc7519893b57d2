//! One dtype model for both formats.
//!
//! [`DType`] covers the 22 SafeTensors dtypes and NumPack's `complex128`. The single table
//! [`DTYPES`] says, for each, its width in bits, its SafeTensors name, its NumPy name (the
//! `ml_dtypes` name for types NumPy lacks), its native NumPack code if it has one, and the
//! NumPack code it is *stored* under. Types NumPack 0.7 cannot name (BF16, the FP8 kinds,
//! F4, F6) are stored under an unsigned integer code of the same storage width; the
//! conversion layer records the true dtype beside the data (see `numpack::sidecar`).

use std::fmt;

/// An element type. The discriminants are stable: the C ABI exposes them as `NpkioDtype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DType {
    /// Boolean, one byte.
    Bool = 0,
    /// MX FP4 (E2M1), 4 bits an element.
    F4 = 1,
    /// MX FP6 E2M3, 6 bits an element.
    F6E2M3 = 2,
    /// MX FP6 E3M2, 6 bits an element.
    F6E3M2 = 3,
    /// Unsigned 8-bit integer.
    U8 = 4,
    /// Signed 8-bit integer.
    I8 = 5,
    /// FP8 E5M2.
    F8E5M2 = 6,
    /// FP8 E4M3 (the "fn" variant: finite, NaN only).
    F8E4M3 = 7,
    /// FP8 E8M0 (MX scale).
    F8E8M0 = 8,
    /// FP8 E4M3 FNUZ.
    F8E4M3Fnuz = 9,
    /// FP8 E5M2 FNUZ.
    F8E5M2Fnuz = 10,
    /// Signed 16-bit integer.
    I16 = 11,
    /// Unsigned 16-bit integer.
    U16 = 12,
    /// IEEE half precision.
    F16 = 13,
    /// bfloat16.
    BF16 = 14,
    /// Signed 32-bit integer.
    I32 = 15,
    /// Unsigned 32-bit integer.
    U32 = 16,
    /// IEEE single precision.
    F32 = 17,
    /// Complex of two f32.
    C64 = 18,
    /// IEEE double precision.
    F64 = 19,
    /// Signed 64-bit integer.
    I64 = 20,
    /// Unsigned 64-bit integer.
    U64 = 21,
    /// Complex of two f64 (NumPack only; SafeTensors has no such dtype).
    C128 = 22,
}

/// One row of the dtype table.
#[derive(Clone, Copy, Debug)]
pub struct DTypeInfo {
    /// The dtype this row describes.
    pub dtype: DType,
    /// Bits an element.
    pub bits: u32,
    /// SafeTensors name, `None` for complex128.
    pub safetensors: Option<&'static str>,
    /// NumPy name (`ml_dtypes` name for dtypes NumPy lacks).
    pub numpy: &'static str,
    /// Native NumPack 0.7 code, `None` when NumPack cannot name the dtype.
    pub numpack_code: Option<u8>,
    /// The NumPack code the bytes are stored under (the native code, or an unsigned
    /// integer code of the same storage width).
    pub storage_code: u8,
}

const fn row(
    dtype: DType,
    bits: u32,
    safetensors: Option<&'static str>,
    numpy: &'static str,
    numpack_code: Option<u8>,
    storage_code: u8,
) -> DTypeInfo {
    DTypeInfo {
        dtype,
        bits,
        safetensors,
        numpy,
        numpack_code,
        storage_code,
    }
}

/// The table, indexed by the `DType` discriminant.
pub const DTYPES: [DTypeInfo; 23] = [
    row(DType::Bool, 8, Some("BOOL"), "bool", Some(0), 0),
    row(DType::F4, 4, Some("F4"), "float4_e2m1fn", None, 1),
    row(DType::F6E2M3, 6, Some("F6_E2M3"), "float6_e2m3fn", None, 1),
    row(DType::F6E3M2, 6, Some("F6_E3M2"), "float6_e3m2fn", None, 1),
    row(DType::U8, 8, Some("U8"), "uint8", Some(1), 1),
    row(DType::I8, 8, Some("I8"), "int8", Some(5), 5),
    row(DType::F8E5M2, 8, Some("F8_E5M2"), "float8_e5m2", None, 1),
    row(DType::F8E4M3, 8, Some("F8_E4M3"), "float8_e4m3fn", None, 1),
    row(DType::F8E8M0, 8, Some("F8_E8M0"), "float8_e8m0fnu", None, 1),
    row(
        DType::F8E4M3Fnuz,
        8,
        Some("F8_E4M3FNUZ"),
        "float8_e4m3fnuz",
        None,
        1,
    ),
    row(
        DType::F8E5M2Fnuz,
        8,
        Some("F8_E5M2FNUZ"),
        "float8_e5m2fnuz",
        None,
        1,
    ),
    row(DType::I16, 16, Some("I16"), "int16", Some(6), 6),
    row(DType::U16, 16, Some("U16"), "uint16", Some(2), 2),
    row(DType::F16, 16, Some("F16"), "float16", Some(9), 9),
    row(DType::BF16, 16, Some("BF16"), "bfloat16", None, 2),
    row(DType::I32, 32, Some("I32"), "int32", Some(7), 7),
    row(DType::U32, 32, Some("U32"), "uint32", Some(3), 3),
    row(DType::F32, 32, Some("F32"), "float32", Some(10), 10),
    row(DType::C64, 64, Some("C64"), "complex64", Some(12), 12),
    row(DType::F64, 64, Some("F64"), "float64", Some(11), 11),
    row(DType::I64, 64, Some("I64"), "int64", Some(8), 8),
    row(DType::U64, 64, Some("U64"), "uint64", Some(4), 4),
    row(DType::C128, 128, None, "complex128", Some(13), 13),
];

/// Every dtype, in discriminant order.
pub const ALL: [DType; 23] = {
    let mut all = [DType::Bool; 23];
    let mut i = 0;
    while i < 23 {
        all[i] = DTYPES[i].dtype;
        i += 1;
    }
    all
};

impl DType {
    /// This dtype's row of [`DTYPES`].
    pub const fn info(self) -> &'static DTypeInfo {
        &DTYPES[self as usize]
    }

    /// Bits an element.
    pub const fn bits(self) -> u32 {
        self.info().bits
    }

    /// Whether an element is a whole number of bytes (false for F4 and F6).
    pub const fn is_byte_sized(self) -> bool {
        self.bits() % 8 == 0
    }

    /// The SafeTensors name (`"F32"`), `None` for complex128.
    pub const fn safetensors_name(self) -> Option<&'static str> {
        self.info().safetensors
    }

    /// The NumPy (or `ml_dtypes`) name, such as `"float32"` or `"bfloat16"`.
    pub const fn numpy_name(self) -> &'static str {
        self.info().numpy
    }

    /// The native NumPack code, if NumPack 0.7 can name this dtype.
    pub const fn numpack_code(self) -> Option<u8> {
        self.info().numpack_code
    }

    /// The NumPack code this dtype's bytes are stored under.
    pub const fn storage_code(self) -> u8 {
        self.info().storage_code
    }

    /// The dtype NumPack 0.7 sees for the stored bytes.
    pub fn storage_dtype(self) -> DType {
        // Every storage code is some dtype's native code.
        DType::from_numpack_code(self.storage_code()).unwrap_or(DType::U8)
    }

    /// The dtype of a NumPack code, `None` for an unknown code.
    pub fn from_numpack_code(code: u8) -> Option<DType> {
        DTYPES
            .iter()
            .find(|r| r.numpack_code == Some(code))
            .map(|r| r.dtype)
    }

    /// The dtype of a SafeTensors name (`"BF16"`).
    pub fn from_safetensors_name(name: &str) -> Option<DType> {
        DTYPES
            .iter()
            .find(|r| r.safetensors == Some(name))
            .map(|r| r.dtype)
    }

    /// The dtype of a NumPy or `ml_dtypes` name (`"float32"`, `"bfloat16"`).
    pub fn from_numpy_name(name: &str) -> Option<DType> {
        DTYPES.iter().find(|r| r.numpy == name).map(|r| r.dtype)
    }

    /// The dtype with the stable number `n` (the C ABI's `NpkioDtype`).
    pub fn from_u8(n: u8) -> Option<DType> {
        ALL.get(usize::from(n)).copied()
    }

    /// The `safetensors` crate's `Dtype`, `None` for complex128.
    pub fn to_safetensors(self) -> Option<::safetensors::Dtype> {
        use ::safetensors::Dtype as S;
        Some(match self {
            DType::Bool => S::BOOL,
            DType::F4 => S::F4,
            DType::F6E2M3 => S::F6_E2M3,
            DType::F6E3M2 => S::F6_E3M2,
            DType::U8 => S::U8,
            DType::I8 => S::I8,
            DType::F8E5M2 => S::F8_E5M2,
            DType::F8E4M3 => S::F8_E4M3,
            DType::F8E8M0 => S::F8_E8M0,
            DType::F8E4M3Fnuz => S::F8_E4M3FNUZ,
            DType::F8E5M2Fnuz => S::F8_E5M2FNUZ,
            DType::I16 => S::I16,
            DType::U16 => S::U16,
            DType::F16 => S::F16,
            DType::BF16 => S::BF16,
            DType::I32 => S::I32,
            DType::U32 => S::U32,
            DType::F32 => S::F32,
            DType::C64 => S::C64,
            DType::F64 => S::F64,
            DType::I64 => S::I64,
            DType::U64 => S::U64,
            DType::C128 => return None,
        })
    }

    /// From the `safetensors` crate's `Dtype` (`None` for a dtype newer than this table).
    pub fn from_safetensors(dtype: ::safetensors::Dtype) -> Option<DType> {
        ALL.iter()
            .copied()
            .find(|d| d.to_safetensors() == Some(dtype))
    }

    /// Bytes taken by `elements` elements, `None` on overflow or when the bit count is not
    /// a whole number of bytes.
    pub fn byte_len(self, elements: u64) -> Option<u64> {
        let bits = elements.checked_mul(u64::from(self.bits()))?;
        (bits % 8 == 0).then_some(bits / 8)
    }
}

impl fmt::Display for DType {
    /// The SafeTensors name, or the NumPy name for complex128.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.safetensors_name().unwrap_or(self.numpy_name()))
    }
}

/// Number of elements of `shape`, `None` on overflow. A 0-d shape has one element.
pub fn element_count(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

/// Bytes of an array of `dtype` and `shape`, `None` on overflow or fractional bytes.
pub fn byte_len(dtype: DType, shape: &[u64]) -> Option<u64> {
    dtype.byte_len(element_count(shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_indexed_by_discriminant() {
        for (i, row) in DTYPES.iter().enumerate() {
            assert_eq!(row.dtype as usize, i);
        }
    }

    #[test]
    fn storage_code_keeps_the_storage_width() {
        for d in ALL {
            let storage = d.storage_dtype();
            assert!(storage.numpack_code().is_some());
            if d.is_byte_sized() {
                assert_eq!(storage.bits(), d.bits(), "{d}");
            } else {
                assert_eq!(storage, DType::U8, "{d}");
            }
            if let Some(code) = d.numpack_code() {
                assert_eq!(code, d.storage_code());
            }
        }
    }

    #[test]
    fn safetensors_names_round_trip_through_the_crate() {
        for d in ALL {
            match d.to_safetensors() {
                Some(s) => {
                    assert_eq!(s.to_string(), d.safetensors_name().unwrap());
                    assert_eq!(s.bitsize() as u32, d.bits());
                    assert_eq!(DType::from_safetensors(s), Some(d));
                }
                None => assert_eq!(d, DType::C128),
            }
        }
    }

    #[test]
    fn numpack_codes_are_the_spec_table() {
        let spec = [
            "bool",
            "uint8",
            "uint16",
            "uint32",
            "uint64",
            "int8",
            "int16",
            "int32",
            "int64",
            "float16",
            "float32",
            "float64",
            "complex64",
            "complex128",
        ];
        for (code, name) in spec.iter().enumerate() {
            let d = DType::from_numpack_code(code as u8).unwrap();
            assert_eq!(d.numpy_name(), *name);
        }
        assert_eq!(DType::from_numpack_code(14), None);
        assert_eq!(DType::from_numpack_code(99), None);
    }

    #[test]
    fn sub_byte_lengths() {
        assert_eq!(byte_len(DType::F4, &[2, 6]), Some(6));
        assert_eq!(byte_len(DType::F4, &[3]), None);
        assert_eq!(byte_len(DType::F6E2M3, &[4]), Some(3));
        assert_eq!(byte_len(DType::F32, &[]), Some(4));
        assert_eq!(byte_len(DType::F32, &[u64::MAX, 2]), None);
    }
}
