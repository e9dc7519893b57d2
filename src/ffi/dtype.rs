//! Dtypes and the two tensor structs C sees: [`NpkioTensorView`] (out) and
//! [`NpkioTensorDesc`] (in).
//!
//! # One dtype table
//!
//! Everything about a dtype is written once, in the core's table (`crate::dtype`). The C
//! enum [`NpkioDtype`] is the one thing written again, as names and numbers only, because
//! it is the C contract and cbindgen reads enums as written (it does not expand macros).
//! Each C name is the SafeTensors name (`NPKIO_DTYPE_F8_E4M3`, `NPKIO_DTYPE_BOOL`), or the
//! core's name for a dtype SafeTensors lacks (`NPKIO_DTYPE_C128`).
//!
//! Everything else here is generated from the core's table by `c_dtypes!`: the
//! conversions both ways between `DType` and `NpkioDtype` (exhaustive matches, so a dtype
//! missing on either side fails to compile), a compile-time check that each C value is the
//! core's number, and the static C strings `npkio_dtype_name` and `npkio_dtype_numpy_name`
//! return.

use std::ffi::{c_char, c_void, CStr};

use super::error::{FfiError, FfiResult};
use super::handle::{data_ptr, shape_ptr};
use super::panic::value_boundary;
use crate::dtype::DType;

/// An element type: the SafeTensors dtypes by their SafeTensors names (`NPKIO_DTYPE_BF16`
/// is SafeTensors' `BF16`), plus NumPack's complex128 (`NPKIO_DTYPE_C128`). The numbers
/// are stable (they are the Rust core's `DType` numbers). `npkio_dtype_name`,
/// `npkio_dtype_numpy_name` and `npkio_dtype_bits` describe each one (F4 takes 4 bits an
/// element, the F6 kinds 6).
///
/// npkio hands dtypes out as this enum (a 32-bit unsigned integer). Functions and structs
/// that take a dtype from the caller take a plain `uint32_t` and check it, so any number
/// can be passed safely: one that is no dtype gives `NPKIO_STATUS_INVALID_ARGUMENT`.
#[repr(u32)]
#[allow(non_camel_case_types)] // spelled as SafeTensors spells them
#[allow(missing_docs)] // documented once, in the core's table (`crate::DType`)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NpkioDtype {
    BOOL = 0,
    F4 = 1,
    F6_E2M3 = 2,
    F6_E3M2 = 3,
    U8 = 4,
    I8 = 5,
    F8_E5M2 = 6,
    F8_E4M3 = 7,
    F8_E8M0 = 8,
    F8_E4M3FNUZ = 9,
    F8_E5M2FNUZ = 10,
    I16 = 11,
    U16 = 12,
    F16 = 13,
    BF16 = 14,
    I32 = 15,
    U32 = 16,
    F32 = 17,
    C64 = 18,
    F64 = 19,
    I64 = 20,
    U64 = 21,
    C128 = 22,
}

/// The C spelling of a table row: the SafeTensors name, else the core's.
macro_rules! c_variant {
    ($v:ident) => {
        NpkioDtype::$v
    };
    ($v:ident $st:ident) => {
        NpkioDtype::$st
    };
}

/// A static C string, checked at compile time.
macro_rules! c_str {
    ($with_nul:expr) => {
        const {
            match CStr::from_bytes_with_nul($with_nul.as_bytes()) {
                Ok(c) => c,
                Err(_) => panic!("a dtype name holds a NUL"),
            }
        }
    };
}

/// The name `npkio_dtype_name` gives a table row: the SafeTensors name, else the NumPy one.
macro_rules! c_name_of {
    ($np:literal) => {
        c_str!(concat!($np, "\0"))
    };
    ($np:literal $st:ident) => {
        c_str!(concat!(stringify!($st), "\0"))
    };
}

/// Reads the core's dtype table (see the module docs).
macro_rules! c_dtypes {
    ($(
        $(#[doc = $doc:literal])*
        $v:ident = $n:literal, bits $bits:literal, $(safetensors $st:ident,)? numpy $np:literal,
        $(numpack $code:literal)? $(stored_as $stored:literal)?;
    )*) => {
        impl From<DType> for NpkioDtype {
            fn from(d: DType) -> NpkioDtype {
                match d {
                    $(DType::$v => c_variant!($v $($st)?),)*
                }
            }
        }

        impl From<NpkioDtype> for DType {
            fn from(d: NpkioDtype) -> DType {
                match d {
                    $(c_variant!($v $($st)?) => DType::$v,)*
                }
            }
        }

        // Each C value is the core's number.
        const _: () = {
            $(assert!(
                c_variant!($v $($st)?) as u32 == $n && DType::$v as u32 == $n,
                concat!("NpkioDtype for DType::", stringify!($v), " has another number"),
            );)*
        };

        /// The name `npkio_dtype_name` gives (the SafeTensors name, the NumPy name for
        /// complex128) and the NumPy name, as static C strings: no allocation, nothing for
        /// a leak checker to see.
        fn c_names(d: DType) -> (&'static CStr, &'static CStr) {
            match d {
                $(DType::$v => (c_name_of!($np $($st)?), c_str!(concat!($np, "\0"))),)*
            }
        }
    };
}

crate::dtype::dtype_table!(c_dtypes);

/// The dtype of a number taken from C.
pub(crate) fn dtype_arg(n: u32) -> FfiResult<DType> {
    u8::try_from(n)
        .ok()
        .and_then(DType::from_u8)
        .ok_or_else(|| FfiError::invalid(format!("{n} is not an NpkioDtype number")))
}

/// The name of a dtype number: its SafeTensors name (`"F32"`, `"BF16"`), or `"complex128"`
/// for `NPKIO_DTYPE_C128`, which SafeTensors lacks. NULL for a number that is no dtype.
/// The string is static: never free it.
#[no_mangle]
pub extern "C" fn npkio_dtype_name(dtype: u32) -> *const c_char {
    value_boundary(std::ptr::null(), || {
        dtype_arg(dtype).map_or(std::ptr::null(), |d| c_names(d).0.as_ptr())
    })
}

/// The NumPy name of a dtype number (`"float32"`; the `ml_dtypes` name, such as
/// `"bfloat16"`, for dtypes NumPy lacks). NULL for a number that is no dtype. The string
/// is static: never free it.
#[no_mangle]
pub extern "C" fn npkio_dtype_numpy_name(dtype: u32) -> *const c_char {
    value_boundary(std::ptr::null(), || {
        dtype_arg(dtype).map_or(std::ptr::null(), |d| c_names(d).1.as_ptr())
    })
}

/// Bits an element of a dtype number takes (4 for F4, 6 for the F6 kinds, 32 for F32);
/// 0 for a number that is no dtype.
#[no_mangle]
pub extern "C" fn npkio_dtype_bits(dtype: u32) -> u32 {
    value_boundary(0, || dtype_arg(dtype).map_or(0, |d| d.bits()))
}

/// A borrowed view of a tensor, filled by npkio through an out-pointer.
///
/// Every pointer in it belongs to the handle that filled it and stays valid until that
/// handle is freed. Using a view after its handle is freed is the caller's error (the
/// memory is unmapped or reused). The bytes are read-only: never write through `data`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NpkioTensorView {
    /// The name: `name_len` bytes of UTF-8 followed by a NUL byte, so it is also a C string
    /// unless the name itself holds a NUL.
    pub name: *const c_char,
    /// Bytes in the name, without the NUL.
    pub name_len: usize,
    /// The element type.
    pub dtype: NpkioDtype,
    /// Number of dimensions (0 for a scalar).
    pub ndim: usize,
    /// `ndim` dimension sizes, outermost first; NULL when `ndim` is 0.
    pub shape: *const u64,
    /// The bytes, in C order, exactly as stored in the file (little-endian); NULL when
    /// `nbytes` is 0.
    pub data: *const u8,
    /// Bytes at `data`.
    pub nbytes: usize,
}

impl NpkioTensorView {
    /// The view C receives of a tensor: `name` is a pointer to UTF-8 bytes followed by a
    /// NUL and the length without the NUL; `shape` and `data` are the tensor's. Every
    /// pointer must stay valid as long as the handle filling the view: the caller passes
    /// memory the handle owns (its mapping, its interned names and shapes).
    pub(crate) fn new(
        (name, name_len): (*const c_char, usize),
        dtype: DType,
        shape: &[u64],
        data: &[u8],
    ) -> NpkioTensorView {
        NpkioTensorView {
            name,
            name_len,
            dtype: dtype.into(),
            ndim: shape.len(),
            shape: shape_ptr(shape),
            data: data_ptr(data),
            nbytes: data.len(),
        }
    }
}

/// A tensor handed to npkio (`npkio_from_safetensors`, `npkio_numpack_save`). npkio reads
/// it during the call only and keeps no pointer to it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NpkioTensorDesc {
    /// The name, NUL-terminated UTF-8.
    pub name: *const c_char,
    /// An `NpkioDtype` number.
    pub dtype: u32,
    /// Number of dimensions (0 for a scalar).
    pub ndim: usize,
    /// `ndim` dimension sizes; ignored (may be NULL) when `ndim` is 0.
    pub shape: *const u64,
    /// The bytes in C order; ignored (may be NULL) when `nbytes` is 0.
    pub data: *const c_void,
    /// Bytes at `data`: exactly what dtype and shape need.
    pub nbytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::ALL;
    use crate::ffi::error::tests::enum_values;

    #[test]
    fn npkio_dtype_numbers_are_the_core_numbers() {
        for d in ALL {
            assert_eq!(NpkioDtype::from(d) as u32, d as u32, "{d}");
            assert_eq!(DType::from(NpkioDtype::from(d)), d);
            assert_eq!(dtype_arg(d as u32).unwrap(), d);
        }
        assert!(dtype_arg(23).is_err());
        assert!(dtype_arg(256 + 17).is_err());
    }

    #[test]
    fn names_are_the_core_names() {
        for d in ALL {
            let (st, np) = c_names(d);
            assert_eq!(st.to_str().unwrap(), d.to_string(), "{d}");
            assert_eq!(np.to_str().unwrap(), d.numpy_name(), "{d}");
        }
    }

    #[test]
    fn header_names_are_the_safetensors_names() {
        let header = include_str!("../../include/npkio.h");
        let in_header = enum_values(header, "NPKIO_DTYPE_");
        let expected: Vec<(String, u32)> = ALL
            .iter()
            .map(|&d| {
                let name = d.safetensors_name().unwrap_or("C128");
                (format!("NPKIO_DTYPE_{name}"), d as u32)
            })
            .collect();
        assert_eq!(in_header, expected);
    }
}
