//! Tensors held in the caller's memory straight to SafeTensors, with no NumPack directory in
//! between: `npkio_save_safetensors_file` writes a file, `npkio_safetensors_header` lays one
//! out for a caller that assembles the bytes itself (a bytes object, a socket). Both give
//! what the `safetensors` crate's `serialize` gives for the same tensors.

use std::ffi::c_char;

use super::args::{desc_input, metadata_arg, path_arg, slice_arg, Out, OutArray};
use super::convert::{NPKIO_FLAG_DURABLE, NPKIO_FLAG_NO_WAIT};
use super::dtype::NpkioTensorDesc;
use super::error::{FfiError, FfiResult, NpkioStatus};
use super::panic::status_boundary;
use crate::convert::Options;
use crate::numpack::ArrayInput;
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
) -> FfiResult<Vec<ArrayInput<'a>>> {
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
        // SAFETY: the caller's contract above.
        let order = unsafe { OutArray::new(order, count, "order") }?;
        let plan = safetensors_header(&inputs, metadata.as_deref())?;
        let needed = plan.header.len();
        len_out.set(needed);
        if header_capacity < needed {
            return Err(FfiError::new(
                NpkioStatus::BufferTooSmall,
                format!("the header takes {needed} bytes; the buffer has {header_capacity}"),
            ));
        }
        // SAFETY: the caller's contract above (`header_capacity >= needed` bytes).
        unsafe { OutArray::new(header, needed, "header") }?.set(&plan.header);
        order.set(&plan.order);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use super::*;
    use crate::ffi::dtype::NpkioDtype;

    fn desc(name: &CString, dtype: NpkioDtype, shape: &[u64], data: &[u8]) -> NpkioTensorDesc {
        NpkioTensorDesc {
            name: name.as_ptr(),
            dtype: dtype as u32,
            ndim: shape.len(),
            shape: shape.as_ptr(),
            data: data.as_ptr().cast(),
            nbytes: data.len(),
        }
    }

    /// The header and order, with the data appended, are the `safetensors` crate's bytes;
    /// the file is the same; a short buffer gets the length and BUFFER_TOO_SMALL.
    #[test]
    fn header_and_file_are_the_crates_bytes() {
        use ::safetensors::tensor::TensorView;
        let (a, b) = (CString::new("b.w").unwrap(), CString::new("a.x").unwrap());
        let (da, db) = ([1u8, 2, 3, 4, 5, 6, 7, 8], [9u8, 10]);
        let (sa, sb) = ([2u64], [2u64]);
        let descs = [
            desc(&a, NpkioDtype::F32, &sa, &da),
            desc(&b, NpkioDtype::U8, &sb, &db),
        ];
        let views = vec![
            (
                "b.w",
                TensorView::new(::safetensors::Dtype::F32, vec![2], &da).unwrap(),
            ),
            (
                "a.x",
                TensorView::new(::safetensors::Dtype::U8, vec![2], &db).unwrap(),
            ),
        ];
        let want = ::safetensors::serialize(views, None).unwrap();

        let (mut len, mut order) = (0usize, [0usize; 2]);
        // SAFETY: valid descriptions; NULL buffer with capacity 0 asks for the size.
        let st = unsafe {
            npkio_safetensors_header(
                descs.as_ptr(),
                2,
                std::ptr::null(),
                std::ptr::null(),
                0,
                std::ptr::null_mut(),
                0,
                &mut len,
                order.as_mut_ptr(),
            )
        };
        assert_eq!(st, NpkioStatus::BufferTooSmall);
        let mut buf = vec![0u8; len];
        // SAFETY: as above, with a buffer of the length asked for.
        let st = unsafe {
            npkio_safetensors_header(
                descs.as_ptr(),
                2,
                std::ptr::null(),
                std::ptr::null(),
                0,
                buf.as_mut_ptr(),
                buf.len(),
                &mut len,
                order.as_mut_ptr(),
            )
        };
        assert_eq!(st, NpkioStatus::Ok);
        assert_eq!(order, [0, 1]); // F32 before U8
        buf.extend_from_slice(&da);
        buf.extend_from_slice(&db);
        assert_eq!(buf, want);

        let dir = tempfile::tempdir().unwrap();
        let out = CString::new(dir.path().join("m.safetensors").to_str().unwrap()).unwrap();
        let save = |flags| {
            // SAFETY: valid descriptions and path.
            unsafe {
                npkio_save_safetensors_file(
                    descs.as_ptr(),
                    2,
                    std::ptr::null(),
                    std::ptr::null(),
                    0,
                    out.as_ptr(),
                    flags,
                )
            }
        };
        assert_eq!(save(0), NpkioStatus::Ok);
        assert_eq!(
            std::fs::read(dir.path().join("m.safetensors")).unwrap(),
            want
        );
        // Flag bit 4 is unknown.
        assert_eq!(save(4), NpkioStatus::InvalidArgument);
    }
}
