//! Tensors held in the caller's memory straight to SafeTensors, with no NumPack directory in
//! between: `npkio_save_safetensors_file` writes a file, `npkio_safetensors_header` lays one
//! out for a caller that assembles the bytes itself (a bytes object, a socket). Both give
//! what the `safetensors` crate's `serialize` gives for the same tensors.

use std::ffi::c_char;

use super::args::{desc_input, metadata_arg, path_arg, slice_arg, Out};
use super::convert::{NPKIO_FLAG_DURABLE, NPKIO_FLAG_NO_WAIT};
use super::dtype::NpkioTensorDesc;
use super::error::{FfiError, FfiResult, NpkioStatus};
use super::panic::status_boundary;
use crate::convert::{Options, TensorInput};
use crate::save::{safetensors_header, save_safetensors_file};

/// The options `flags` ask for (`NPKIO_FLAG_DURABLE`, `NPKIO_FLAG_NO_WAIT`).
fn flag_options(flags: u32) -> FfiResult<Options> {
    let unknown = flags & !(NPKIO_FLAG_DURABLE | NPKIO_FLAG_NO_WAIT);
    if unknown != 0 {
        return Err(FfiError::invalid(format!("unknown flag bits {unknown:#x}")));
    }
    Ok(Options {
        durable: flags & NPKIO_FLAG_DURABLE != 0,
        wait_for_lock: flags & NPKIO_FLAG_NO_WAIT == 0,
        ..Options::default()
    })
}

/// The core's inputs for `count` C descriptions.
///
/// # Safety
///
/// `tensors` NULL (only when `count` is 0) or `count` descriptions following
/// `NpkioTensorDesc`'s rules for `'a`.
unsafe fn inputs<'a>(
    tensors: *const NpkioTensorDesc,
    count: usize,
) -> FfiResult<Vec<TensorInput<'a>>> {
    // SAFETY: forwarded contract.
    let descs = unsafe { slice_arg(tensors, count, "tensors") }?;
    descs
        .iter()
        .enumerate()
        // SAFETY: each description follows NpkioTensorDesc's rules (the contract).
        .map(|(i, d)| unsafe { desc_input(d, i) })
        .collect()
}

/// Writes `count` tensors held in the caller's memory to the SafeTensors file
/// `output_path`: the bytes the `safetensors` crate's `serialize_to_file` writes for them
/// (tensors ordered by dtype, largest alignment first, then by name; header padded with
/// spaces to a multiple of 8). `metadata_keys == NULL` writes no `__metadata__`; otherwise
/// the `metadata_count` pairs, in that order (`metadata_count == 0` writes an empty one).
/// The file is written beside `output_path` and renamed into place, as the conversions
/// write theirs; `flags` takes `NPKIO_FLAG_DURABLE` and `NPKIO_FLAG_NO_WAIT`. npkio reads
/// the tensors during the call only.
///
/// # Safety
///
/// `tensors` NULL (only when `count` is 0) or `count` descriptions following
/// `NpkioTensorDesc`'s rules; the metadata arrays NULL or `metadata_count` pointers to
/// NUL-terminated strings; `output_path` NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn npkio_save_safetensors_file(
    tensors: *const NpkioTensorDesc,
    count: usize,
    metadata_keys: *const *const c_char,
    metadata_values: *const *const c_char,
    metadata_count: usize,
    output_path: *const c_char,
    flags: u32,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (inputs, metadata, output) = unsafe {
            (
                inputs(tensors, count)?,
                metadata_arg(metadata_keys, metadata_values, metadata_count)?,
                path_arg(output_path, "output_path")?,
            )
        };
        let opts = flag_options(flags)?;
        save_safetensors_file(&inputs, metadata.as_deref(), output, &opts)?;
        Ok(())
    })
}

/// Lays out `count` tensors (and metadata, as `npkio_save_safetensors_file` takes it) as a
/// SafeTensors file, without writing anything: the file is the header, then each tensor's
/// bytes in the order `order` gives, packed.
///
/// `*header_len` receives the header's length (the 8-byte length prefix and the padded
/// JSON). When `header_capacity` is at least that, the header is copied to `header`,
/// `order[k]` receives the index (into `tensors`) of the k-th tensor in the file, and the
/// result is `NPKIO_STATUS_OK`. Otherwise nothing else is written and the result is
/// `NPKIO_STATUS_BUFFER_TOO_SMALL`: call again with a buffer of `*header_len` bytes.
/// Each description's `nbytes` must match its dtype and shape.
///
/// # Safety
///
/// As `npkio_save_safetensors_file` for the tensors and metadata; `header` NULL (only when
/// `header_capacity` is 0) or `header_capacity` writable bytes; `header_len` a writable
/// `size_t`; `order` NULL (only when `count` is 0) or `count` writable `size_t`s.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_header(
    tensors: *const NpkioTensorDesc,
    count: usize,
    metadata_keys: *const *const c_char,
    metadata_values: *const *const c_char,
    metadata_count: usize,
    header: *mut u8,
    header_capacity: usize,
    header_len: *mut usize,
    order: *mut usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (inputs, metadata, len_out) = unsafe {
            (
                inputs(tensors, count)?,
                metadata_arg(metadata_keys, metadata_values, metadata_count)?,
                Out::new(header_len, "header_len")?,
            )
        };
        if count > 0 && order.is_null() {
            return Err(FfiError::null("order"));
        }
        if !order.is_aligned() {
            return Err(FfiError::invalid(
                "argument `order` is not aligned for its type",
            ));
        }
        let plan = safetensors_header(&inputs, metadata.as_deref())?;
        let needed = plan.header.len();
        len_out.set(needed);
        if header_capacity < needed {
            return Err(FfiError::new(
                NpkioStatus::BufferTooSmall,
                format!("the header takes {needed} bytes; the buffer has {header_capacity}"),
            ));
        }
        if header.is_null() {
            return Err(FfiError::null("header"));
        }
        // SAFETY: `header` points to `header_capacity >= needed` writable bytes and
        // `order` (not NULL when count > 0, aligned) to `count` writable `size_t`s, the
        // caller's contract; npkio's buffers cannot overlap them.
        unsafe {
            std::ptr::copy_nonoverlapping(plan.header.as_ptr(), header, needed);
            for (k, &i) in plan.order.iter().enumerate() {
                order.add(k).write(i);
            }
        }
        Ok(())
    })
}
