//! `NpkioTensors`: arrays of a NumPack directory read as tensors (`npkio_to_safetensors`).

use std::ffi::c_char;
use std::path::Path;

use super::args::{path_arg, str_list_arg, Out};
use super::dtype::NpkioTensorView;
use super::error::{FfiError, FfiResult, NpkioStatus};
use super::handle::{c_name, free_handle, into_handle, name_parts, Handle};
use super::list::{self, TensorList};
use super::panic::status_boundary;
use crate::convert::{to_safetensors, Tensors};

/// NumPack arrays loaded as tensors (opaque). Made by `npkio_to_safetensors`, freed by
/// `npkio_tensors_free`. It holds the directory open and read-only.
#[derive(Debug)]
pub struct NpkioTensors {
    tensors: Tensors,
    /// The selected names as C strings, in selection order.
    names: Vec<Box<[u8]>>,
}

impl Handle for NpkioTensors {
    const ARG: &'static str = "tensors";
}

impl TensorList for NpkioTensors {
    fn len(&self) -> usize {
        self.tensors.len()
    }

    fn path(&self) -> &Path {
        self.tensors.store().path()
    }

    fn view(&self, i: usize) -> FfiResult<NpkioTensorView> {
        let v = self.tensors.get(&self.tensors.names()[i])?;
        Ok(NpkioTensorView::new(
            name_parts(&self.names[i]),
            v.dtype,
            v.shape,
            v.data,
        ))
    }

    fn position(&self, name: &str) -> FfiResult<usize> {
        self.tensors
            .names()
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| FfiError::from(self.tensors.store().not_found(name)))
    }
}

/// Opens the NumPack directory `input_path` and selects arrays to read as tensors: all
/// of them (sorted by name) when `array_names` is NULL, else the `names_count` arrays
/// named, in that order (duplicates skipped; `names_count == 0` with `array_names != NULL`
/// selects none). An unknown name is `NPKIO_STATUS_KEY_NOT_FOUND`.
///
/// On success `*out` receives a new handle that the caller frees with
/// `npkio_tensors_free`. Views are zero-copy where the array is one file with no deleted
/// rows, else gathered once into memory the handle keeps; either way they stay valid until
/// the handle is freed.
///
/// # Safety
///
/// `input_path` NULL or a NUL-terminated string; `array_names` NULL or `names_count`
/// pointers to NUL-terminated strings; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn npkio_to_safetensors(
    input_path: *const c_char,
    array_names: *const *const c_char,
    names_count: usize,
    out: *mut *mut NpkioTensors,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (path, names, out) = unsafe {
            (
                path_arg(input_path, "input_path")?,
                str_list_arg(array_names, names_count, "array_names")?,
                Out::new(out, "out")?,
            )
        };
        let tensors = to_safetensors(path, names.as_deref())?;
        let names = tensors.names().iter().map(|n| c_name(n)).collect();
        out.set(into_handle(NpkioTensors { tensors, names }));
        Ok(())
    })
}

/// Frees a handle from `npkio_to_safetensors`; every view taken from it becomes invalid.
/// NULL is a no-op.
///
/// # Safety
///
/// `tensors` must be NULL or a handle not freed yet; it must not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn npkio_tensors_free(tensors: *mut NpkioTensors) {
    // SAFETY: the caller's contract above.
    unsafe { free_handle(tensors) }
}

/// Writes the number of selected tensors to `*count`.
///
/// # Safety
///
/// `tensors` NULL or a live handle; `count` NULL or a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_tensors_count(
    tensors: *const NpkioTensors,
    count: *mut usize,
) -> NpkioStatus {
    // SAFETY: the caller's contract above.
    unsafe { list::count(tensors, count, TensorList::len) }
}

/// Fills `*view` with the `index`-th selected tensor (`NPKIO_STATUS_INDEX_OUT_OF_RANGE`
/// past the end). Its pointers stay valid until `npkio_tensors_free(tensors)`.
///
/// # Safety
///
/// `tensors` NULL or a live handle; `view` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn npkio_tensors_get(
    tensors: *const NpkioTensors,
    index: usize,
    view: *mut NpkioTensorView,
) -> NpkioStatus {
    // SAFETY: the caller's contract above.
    unsafe { list::get(tensors, index, view) }
}

/// Fills `*view` with the selected tensor called `name`, and `*index` (when not NULL) with
/// its position; `NPKIO_STATUS_KEY_NOT_FOUND` when it was not selected. The view's
/// pointers stay valid until `npkio_tensors_free(tensors)`.
///
/// # Safety
///
/// `tensors` NULL or a live handle; `name` NULL or a NUL-terminated string; `view` NULL or
/// writable; `index` NULL or a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_tensors_find(
    tensors: *const NpkioTensors,
    name: *const c_char,
    view: *mut NpkioTensorView,
    index: *mut usize,
) -> NpkioStatus {
    // SAFETY: the caller's contract above.
    unsafe { list::find(tensors, name, view, index) }
}
