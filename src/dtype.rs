//! One dtype model for both formats.
//!
//! [`DType`] covers the 22 SafeTensors dtypes and NumPack's `complex128`. Everything npkio
//! knows about a dtype is written once, in one row of the table inside `dtype_table!`
//! below: its stable number, its doc, its width in bits, its SafeTensors name (also the
//! `safetensors` crate's variant), its NumPy name (the `ml_dtypes` name for types NumPy
//! lacks), and its NumPack code: `numpack N` for a dtype NumPack 0.7 can name, `stored_as
//! N` for one it cannot (BF16, the FP8 kinds, F4, F6), whose bytes are stored under an
//! unsigned integer code of the same storage width while the conversion layer records the
//! true dtype beside the data (see `numpack::sidecar`).
//!
//! From that one table, `define_dtypes!` generates [`DType`], [`DTYPES`] (the table as
//! data, indexed by number), [`ALL`] and the conversions to and from the `safetensors`
//! crate's `Dtype`. The C ABI reads the same table (`crate::ffi::dtype` hands it to its own
//! macro) to derive its names and the conversions to its `NpkioDtype`, so a dtype added here
//! appears in the C API, or the crate fails to compile until `NpkioDtype` lists it.

use std::fmt;

/// The dtype table: one row a dtype, in number order (a compile-time check enforces it).
/// Expands to `$then! { rows }`, so each user of the table writes one macro that reads the
/// rows instead of copying them.
///
/// A row: doc, `Variant = number, bits B, [safetensors NAME,] numpy "name",` then
/// `numpack CODE` (NumPack names the dtype) or `stored_as CODE` (it does not; the bytes
/// are stored under that code). `NAME` is the SafeTensors spelling, which is also the
/// variant of the `safetensors` crate's `Dtype` and of the C enum; a dtype without one
/// (complex128) keeps its own name in C.
macro_rules! dtype_table {
    ($then:ident) => {
        $then! {
            /// Boolean, one byte.
            Bool = 0, bits 8, safetensors BOOL, numpy "bool", numpack 0;
            /// MX FP4 (E2M1), 4 bits an element.
            F4 = 1, bits 4, safetensors F4, numpy "float4_e2m1fn", stored_as 1;
            /// MX FP6 E2M3, 6 bits an element.
            F6E2M3 = 2, bits 6, safetensors F6_E2M3, numpy "float6_e2m3fn", stored_as 1;
            /// MX FP6 E3M2, 6 bits an element.
            F6E3M2 = 3, bits 6, safetensors F6_E3M2, numpy "float6_e3m2fn", stored_as 1;
            /// Unsigned 8-bit integer.
            U8 = 4, bits 8, safetensors U8, numpy "uint8", numpack 1;
            /// Signed 8-bit integer.
            I8 = 5, bits 8, safetensors I8, numpy "int8", numpack 5;
            /// FP8 E5M2.
            F8E5M2 = 6, bits 8, safetensors F8_E5M2, numpy "float8_e5m2", stored_as 1;
            /// FP8 E4M3 (the "fn" variant: finite, NaN only).
            F8E4M3 = 7, bits 8, safetensors F8_E4M3, numpy "float8_e4m3fn", stored_as 1;
            /// FP8 E8M0 (MX scale).
            F8E8M0 = 8, bits 8, safetensors F8_E8M0, numpy "float8_e8m0fnu", stored_as 1;
            /// FP8 E4M3 FNUZ.
            F8E4M3Fnuz = 9, bits 8, safetensors F8_E4M3FNUZ, numpy "float8_e4m3fnuz",
                stored_as 1;
            /// FP8 E5M2 FNUZ.
            F8E5M2Fnuz = 10, bits 8, safetensors F8_E5M2FNUZ, numpy "float8_e5m2fnuz",
                stored_as 1;
            /// Signed 16-bit integer.
            I16 = 11, bits 16, safetensors I16, numpy "int16", numpack 6;
            /// Unsigned 16-bit integer.
            U16 = 12, bits 16, safetensors U16, numpy "uint16", numpack 2;
            /// IEEE half precision.
            F16 = 13, bits 16, safetensors F16, numpy "float16", numpack 9;
            /// bfloat16.
            BF16 = 14, bits 16, safetensors BF16, numpy "bfloat16", stored_as 2;
            /// Signed 32-bit integer.
            I32 = 15, bits 32, safetensors I32, numpy "int32", numpack 7;
            /// Unsigned 32-bit integer.
            U32 = 16, bits 32, safetensors U32, numpy "uint32", numpack 3;
            /// IEEE single precision.
            F32 = 17, bits 32, safetensors F32, numpy "float32", numpack 10;
            /// Complex of two f32.
            C64 = 18, bits 64, safetensors C64, numpy "complex64", numpack 12;
            /// IEEE double precision.
            F64 = 19, bits 64, safetensors F64, numpy "float64", numpack 11;
            /// Signed 64-bit integer.
            I64 = 20, bits 64, safetensors I64, numpy "int64", numpack 8;
            /// Unsigned 64-bit integer.
            U64 = 21, bits 64, safetensors U64, numpy "uint64", numpack 4;
            /// Complex of two f64 (NumPack only; SafeTensors has no such dtype).
            C128 = 22, bits 128, numpy "complex128", numpack 13;
        }
    };
}
pub(crate) use dtype_table;

/// `Some` of the one argument, `None` for none.
macro_rules! optional {
    () => {
        None
    };
    ($x:expr) => {
        Some($x)
    };
}

/// Reads the table's rows into [`DType`], [`DTYPES`] and the `safetensors` conversions.
macro_rules! define_dtypes {
    ($(
        $(#[doc = $doc:literal])*
        $v:ident = $n:literal, bits $bits:literal, $(safetensors $st:ident,)? numpy $np:literal,
        $(numpack $code:literal)? $(stored_as $stored:literal)?;
    )*) => {
        /// An element type. The numbers are stable: the C ABI exposes them as `NpkioDtype`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        #[non_exhaustive]
        pub enum DType {
            $($(#[doc = $doc])* $v = $n,)*
        }

        /// The table, indexed by the `DType` number.
        pub const DTYPES: [DTypeInfo; [$($n),*].len()] = [$(
            DTypeInfo {
                dtype: DType::$v,
                bits: $bits,
                safetensors: optional!($(stringify!($st))?),
                numpy: $np,
                numpack_code: optional!($($code)?),
                // Exactly one of `numpack` and `stored_as` per row.
                storage_code: $($code)? $($stored)?,
            },
        )*];

        impl DType {
            /// The `safetensors` crate's `Dtype`, `None` for complex128.
            pub fn to_safetensors(self) -> Option<::safetensors::Dtype> {
                match self {
                    $(DType::$v => optional!($(::safetensors::Dtype::$st)?),)*
                }
            }

            /// From the `safetensors` crate's `Dtype` (`None` for a dtype newer than this
            /// table).
            pub fn from_safetensors(dtype: ::safetensors::Dtype) -> Option<DType> {
                match dtype {
                    $($(::safetensors::Dtype::$st => Some(DType::$v),)?)*
                    _ => None,
                }
            }
        }
    };
}

dtype_table!(define_dtypes);

// The rows are in number order, so `DTYPES[d as usize]` is `d`'s row.
const _: () = {
    let mut i = 0;
    while i < DTYPES.len() {
        assert!(
            DTYPES[i].dtype as usize == i,
            "dtype rows out of number order"
        );
        i += 1;
    }
};

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

/// Every dtype, in number order.
pub const ALL: [DType; DTYPES.len()] = {
    let mut all = [DType::Bool; DTYPES.len()];
    let mut i = 0;
    while i < all.len() {
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

    /// Bytes taken by `elements` elements, `None` on overflow or when the bit count is not
    /// a whole number of bytes.
    pub fn byte_len(self, elements: u64) -> Option<u64> {
        // In 128 bits: the count of bits may pass 2^64 when the bytes do not.
        let bits = u128::from(elements) * u128::from(self.bits());
        (bits % 8 == 0).then(|| u64::try_from(bits / 8).ok())?
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
    fn byte_lengths_are_exact_up_to_2_pow_64_and_none_past_it() {
        // The count of bits passes 2^64 while the bytes fit.
        assert_eq!(DType::U8.byte_len(1 << 62), Some(1 << 62));
        assert_eq!(DType::F16.byte_len(u64::MAX / 2), Some(u64::MAX - 1));
        assert_eq!(DType::F32.byte_len(1 << 62), None);
        assert_eq!(DType::U8.byte_len(u64::MAX), Some(u64::MAX));
        assert_eq!(DType::F4.byte_len(u64::MAX), None); // fractional bytes
        assert_eq!(DType::F4.byte_len(u64::MAX - 1), Some(u64::MAX / 2));
    }

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
