//! The bodies of the list functions: `npkio_*_count`, `_get` and `_find` for the handles
//! that hold tensors, `npkio_*_metadata_count` and `_metadata_get` for those that carry
//! metadata. Each exported function is one call into here, so every list checks its
//! arguments, indices and names the same way; a handle only says how long its list is and
//! what is at an index ([`TensorList`], [`MetadataList`]).

use std::ffi::c_char;
use std::path::Path;

use super::args::{optional_out, str_arg, Out};
use super::dtype::NpkioTensorView;
use super::error::{FfiError, FfiResult, NpkioStatus};
use super::handle::{handle_ref, Handle};
use super::panic::status_boundary;

/// A handle holding a list of tensors, numbered from 0.
pub(crate) trait TensorList: Handle {
    /// Number of tensors.
    fn len(&self) -> usize;

    /// The file or directory read, named in error messages.
    fn path(&self) -> &Path;

    /// The view of tensor `i`, for `i < len()`. Its pointers belong to the handle.
    fn view(&self, i: usize) -> FfiResult<NpkioTensorView>;

    /// The position of the tensor called `name`; `KEY_NOT_FOUND` naming the container when
    /// there is none.
    fn position(&self, name: &str) -> FfiResult<usize>;

    /// `i` if it is below [`TensorList::len`], else `INDEX_OUT_OF_RANGE`.
    fn check_index(&self, i: usize) -> FfiResult<usize> {
        if i < self.len() {
            Ok(i)
        } else {
            Err(FfiError::out_of_range(
                Some(self.path()),
                "tensor",
                i,
                self.len(),
                "tensors",
            ))
        }
    }
}

/// A handle carrying SafeTensors `__metadata__` entries, numbered from 0.
pub(crate) trait MetadataList: Handle {
    /// Number of entries.
    fn metadata_len(&self) -> usize;

    /// Entry `i` (for `i < metadata_len()`): key and value, each as a pointer to UTF-8
    /// bytes followed by a NUL and a length without the NUL. The strings belong to the
    /// handle.
    fn metadata_entry(&self, i: usize) -> FfiResult<[(*const c_char, usize); 2]>;
}

/// Writes `len(handle)` to `*count`: the body of every `_count` function.
///
/// # Safety
///
/// `handle` NULL or a live handle; `count` NULL or a writable `size_t`.
pub(crate) unsafe fn count<H: Handle>(
    handle: *const H,
    count: *mut usize,
    len: impl FnOnce(&H) -> usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (h, count) = unsafe { (handle_ref(handle, H::ARG)?, Out::new(count, "count")?) };
        count.set(len(h));
        Ok(())
    })
}

/// Fills `*view` with tensor `index`: the body of `npkio_safetensors_get`,
/// `npkio_tensors_get` and `npkio_load_get`.
///
/// # Safety
///
/// `list` NULL or a live handle; `view` NULL or writable.
pub(crate) unsafe fn get<L: TensorList>(
    list: *const L,
    index: usize,
    view: *mut NpkioTensorView,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (l, view) = unsafe { (handle_ref(list, L::ARG)?, Out::new(view, "view")?) };
        view.set(l.view(l.check_index(index)?)?);
        Ok(())
    })
}

/// Fills `*view` with the tensor called `name` and `*index`, when `index` is not NULL,
/// with its position: the body of `npkio_safetensors_find`, `npkio_tensors_find` and
/// `npkio_load_find`.
///
/// # Safety
///
/// `list` NULL or a live handle; `name` NULL or a NUL-terminated string; `view` NULL or
/// writable; `index` NULL or a writable `size_t`.
pub(crate) unsafe fn find<L: TensorList>(
    list: *const L,
    name: *const c_char,
    view: *mut NpkioTensorView,
    index: *mut usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (l, name, view, index) = unsafe {
            (
                handle_ref(list, L::ARG)?,
                str_arg(name, "name")?,
                Out::new(view, "view")?,
                optional_out(index, "index")?,
            )
        };
        let i = l.position(name)?;
        view.set(l.view(l.check_index(i)?)?);
        if let Some(index) = index {
            index.set(i);
        }
        Ok(())
    })
}

/// Writes metadata entry `index`: the body of every `_metadata_get` function.
///
/// # Safety
///
/// `handle` NULL or a live handle; the four out-pointers NULL or writable.
pub(crate) unsafe fn metadata_get<M: MetadataList>(
    handle: *const M,
    index: usize,
    key: *mut *const c_char,
    key_len: *mut usize,
    value: *mut *const c_char,
    value_len: *mut usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (h, key, key_len, value, value_len) = unsafe {
            (
                handle_ref(handle, M::ARG)?,
                Out::new(key, "key")?,
                Out::new(key_len, "key_len")?,
                Out::new(value, "value")?,
                Out::new(value_len, "value_len")?,
            )
        };
        let len = h.metadata_len();
        if index >= len {
            return Err(FfiError::out_of_range(
                None, "metadata", index, len, "entries",
            ));
        }
        let [(k, kl), (v, vl)] = h.metadata_entry(index)?;
        key.set(k);
        key_len.set(kl);
        value.set(v);
        value_len.set(vl);
        Ok(())
    })
}
