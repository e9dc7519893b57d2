//! Dtypes and the two tensor structs C sees: [`NpkioTensorView`] (out) and
//! [`NpkioTensorDesc`] (in).

use std::ffi::{c_char, c_void, CStr};

use super::error::{FfiError, FfiResult};
use super::{slice_arg, str_arg};
use crate::dtype::DType;
use crate::numpack::ArrayInput;

/// An element type. The numbers are stable (they are the Rust core's `DType` numbers).
///
/// npkio hands dtypes out as this enum (a 32-bit unsigned integer). Functions and structs
/// that take a dtype from the caller take a plain `uint32_t` and check it, so any number
/// can be passed safely: one that is no dtype gives `NPKIO_STATUS_INVALID_ARGUMENT`.
#[repr(u32)]
#[allow(non_camel_case_types)] // spelled as SafeTensors spells them
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NpkioDtype {
    /// Boolean, one byte.
    Bool = 0,
    /// MX FP4 (E2M1), 4 bits an element.
    F4 = 1,
    /// MX FP6 E2M3, 6 bits an element.
    F6_E2M3 = 2,
    /// MX FP6 E3M2, 6 bits an element.
    F6_E3M2 = 3,
    /// Unsigned 8-bit integer.
    U8 = 4,
    /// Signed 8-bit integer.
    I8 = 5,
    /// FP8 E5M2.
    F8_E5M2 = 6,
    /// FP8 E4M3 (finite, NaN only).
    F8_E4M3 = 7,
    /// FP8 E8M0 (MX scale).
    F8_E8M0 = 8,
    /// FP8 E4M3 FNUZ.
    F8_E4M3FNUZ = 9,
    /// FP8 E5M2 FNUZ.
    F8_E5M2FNUZ = 10,
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

impl From<DType> for NpkioDtype {
    fn from(d: DType) -> NpkioDtype {
        match d {
            DType::Bool => NpkioDtype::Bool,
            DType::F4 => NpkioDtype::F4,
            DType::F6E2M3 => NpkioDtype::F6_E2M3,
            DType::F6E3M2 => NpkioDtype::F6_E3M2,
            DType::U8 => NpkioDtype::U8,
            DType::I8 => NpkioDtype::I8,
            DType::F8E5M2 => NpkioDtype::F8_E5M2,
            DType::F8E4M3 => NpkioDtype::F8_E4M3,
            DType::F8E8M0 => NpkioDtype::F8_E8M0,
            DType::F8E4M3Fnuz => NpkioDtype::F8_E4M3FNUZ,
            DType::F8E5M2Fnuz => NpkioDtype::F8_E5M2FNUZ,
            DType::I16 => NpkioDtype::I16,
            DType::U16 => NpkioDtype::U16,
            DType::F16 => NpkioDtype::F16,
            DType::BF16 => NpkioDtype::BF16,
            DType::I32 => NpkioDtype::I32,
            DType::U32 => NpkioDtype::U32,
            DType::F32 => NpkioDtype::F32,
            DType::C64 => NpkioDtype::C64,
            DType::F64 => NpkioDtype::F64,
            DType::I64 => NpkioDtype::I64,
            DType::U64 => NpkioDtype::U64,
            DType::C128 => NpkioDtype::C128,
        }
    }
}

/// The dtype of a number taken from C.
pub(crate) fn dtype_arg(n: u32) -> FfiResult<DType> {
    u8::try_from(n)
        .ok()
        .and_then(DType::from_u8)
        .ok_or_else(|| FfiError::invalid(format!("{n} is not an NpkioDtype number")))
}

/// The SafeTensors names (NumPy's for complex128) and NumPy names, by dtype number, as
/// static C strings: no allocation, nothing for a leak checker to see. A test checks them
/// against the core's table.
const NAMES: [(&CStr, &CStr); 23] = [
    (c"BOOL", c"bool"),
    (c"F4", c"float4_e2m1fn"),
    (c"F6_E2M3", c"float6_e2m3fn"),
    (c"F6_E3M2", c"float6_e3m2fn"),
    (c"U8", c"uint8"),
    (c"I8", c"int8"),
    (c"F8_E5M2", c"float8_e5m2"),
    (c"F8_E4M3", c"float8_e4m3fn"),
    (c"F8_E8M0", c"float8_e8m0fnu"),
    (c"F8_E4M3FNUZ", c"float8_e4m3fnuz"),
    (c"F8_E5M2FNUZ", c"float8_e5m2fnuz"),
    (c"I16", c"int16"),
    (c"U16", c"uint16"),
    (c"F16", c"float16"),
    (c"BF16", c"bfloat16"),
    (c"I32", c"int32"),
    (c"U32", c"uint32"),
    (c"F32", c"float32"),
    (c"C64", c"complex64"),
    (c"F64", c"float64"),
    (c"I64", c"int64"),
    (c"U64", c"uint64"),
    (c"complex128", c"complex128"),
];

/// The name of a dtype number: its SafeTensors name (`"F32"`, `"BF16"`), or `"complex128"`
/// for `NPKIO_DTYPE_C128`, which SafeTensors lacks. NULL for a number that is no dtype.
/// The string is static: never free it.
#[no_mangle]
pub extern "C" fn npkio_dtype_name(dtype: u32) -> *const c_char {
    super::panic::value_boundary(std::ptr::null(), || match dtype_arg(dtype) {
        Ok(d) => NAMES[d as usize].0.as_ptr(),
        Err(_) => std::ptr::null(),
    })
}

/// The NumPy name of a dtype number (`"float32"`; the `ml_dtypes` name, such as
/// `"bfloat16"`, for dtypes NumPy lacks). NULL for a number that is no dtype. The string
/// is static: never free it.
#[no_mangle]
pub extern "C" fn npkio_dtype_numpy_name(dtype: u32) -> *const c_char {
    super::panic::value_boundary(std::ptr::null(), || match dtype_arg(dtype) {
        Ok(d) => NAMES[d as usize].1.as_ptr(),
        Err(_) => std::ptr::null(),
    })
}

/// Bits an element of a dtype number takes (4 for F4, 6 for the F6 kinds, 32 for F32);
/// 0 for a number that is no dtype.
#[no_mangle]
pub extern "C" fn npkio_dtype_bits(dtype: u32) -> u32 {
    super::panic::value_boundary(0, || dtype_arg(dtype).map_or(0, |d| d.bits()))
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

/// The core's input for a C description.
///
/// # Safety
///
/// The pointers in `d` must satisfy the rules of [`NpkioTensorDesc`] for `'a`.
pub(crate) unsafe fn desc_input<'a>(d: &NpkioTensorDesc, i: usize) -> FfiResult<ArrayInput<'a>> {
    // SAFETY: the caller's contract on the description's pointers.
    unsafe {
        Ok(ArrayInput {
            name: str_arg(d.name, &format!("tensors[{i}].name"))?,
            dtype: dtype_arg(d.dtype)?,
            shape: slice_arg(d.shape, d.ndim, &format!("tensors[{i}].shape"))?,
            data: slice_arg(d.data.cast::<u8>(), d.nbytes, &format!("tensors[{i}].data"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::ALL;

    #[test]
    fn npkio_dtype_numbers_are_the_core_numbers() {
        for d in ALL {
            assert_eq!(NpkioDtype::from(d) as u32, d as u32, "{d}");
            assert_eq!(dtype_arg(d as u32).unwrap(), d);
        }
        assert!(dtype_arg(23).is_err());
        assert_eq!(NAMES.len(), ALL.len());
        for d in ALL {
            let (st, np) = NAMES[d as usize];
            assert_eq!(st.to_str().unwrap(), d.to_string(), "{d}");
            assert_eq!(np.to_str().unwrap(), d.numpy_name(), "{d}");
        }
        assert!(dtype_arg(256 + 17).is_err());
    }
}
