//! Misuse through the C API: NULL in every pointer argument, NULL with count 0, freeing
//! NULL, bad numbers and bad UTF-8. Each must give a status and a message, write no
//! out-parameter, and never crash.
//!
//! Not testable, and documented as the caller's error in the header: freeing a handle
//! twice, and using a view after its handle is freed.

use std::ffi::{c_char, CString};
use std::ptr::{null, null_mut};

use crate::common::last_message;
use npkio::ffi::*;

const N: NpkioStatus = NpkioStatus::NullArgument;

/// Asserts a NULL-argument failure whose message names the argument.
#[track_caller]
fn null_arg(status: NpkioStatus, arg: &str) {
    assert_eq!(status, N, "{}", last_message());
    assert!(
        last_message().contains(&format!("`{arg}`")),
        "message does not name `{arg}`: {}",
        last_message()
    );
}

fn fixture(rel: &str) -> CString {
    CString::new(crate::common::fixture(rel).to_str().unwrap()).unwrap()
}

#[test]
fn freeing_null_is_a_no_op() {
    // SAFETY: NULL is documented as a no-op for every _free function.
    unsafe {
        npkio_safetensors_free(null_mut());
        npkio_safetensors_iter_free(null_mut());
        npkio_tensors_free(null_mut());
        npkio_numpack_free(null_mut());
    }
    // SAFETY: NULL is refused by close.
    null_arg(unsafe { npkio_numpack_close(null_mut()) }, "npk");
}

#[test]
fn null_everywhere_in_the_conversions() {
    let st = fixture("safetensors/with_metadata.safetensors");
    let npk = fixture("numpack-0.7/basic.npk");
    let tmp = tempfile::tempdir().unwrap();
    let out = CString::new(tmp.path().join("o").to_str().unwrap()).unwrap();
    let d = NPKIO_DEFAULT_CHUNK_SIZE;
    // SAFETY: every pointer is NULL or valid; NULLs are checked by npkio.
    unsafe {
        null_arg(
            npkio_from_safetensors_file(null(), out.as_ptr(), null(), 0, false, d, 0, 0),
            "input_path",
        );
        null_arg(
            npkio_from_safetensors_file(st.as_ptr(), null(), null(), 0, false, d, 0, 0),
            "output_path",
        );
        // keys NULL with a count is an error, not "all".
        null_arg(
            npkio_from_safetensors_file(st.as_ptr(), out.as_ptr(), null(), 3, false, d, 0, 0),
            "keys",
        );
        let keys = [c"encoder.bias".as_ptr(), null()];
        null_arg(
            npkio_from_safetensors_file(st.as_ptr(), out.as_ptr(), keys.as_ptr(), 2, true, d, 0, 0),
            "keys[1]",
        );
        null_arg(
            npkio_to_safetensors_file(null(), out.as_ptr(), null(), 0, null(), null(), 0, d, 0, 0),
            "input_path",
        );
        null_arg(
            npkio_to_safetensors_file(npk.as_ptr(), null(), null(), 0, null(), null(), 0, d, 0, 0),
            "output_path",
        );
        null_arg(
            npkio_to_safetensors_file(
                npk.as_ptr(),
                out.as_ptr(),
                null(),
                1,
                null(),
                null(),
                0,
                d,
                0,
                0,
            ),
            "array_names",
        );
        let mk = [c"k".as_ptr()];
        null_arg(
            npkio_to_safetensors_file(
                npk.as_ptr(),
                out.as_ptr(),
                null(),
                0,
                mk.as_ptr(),
                null(),
                1,
                d,
                0,
                0,
            ),
            "metadata_values",
        );
        null_arg(
            npkio_from_safetensors(null(), 1, out.as_ptr(), false, d, 0, 0),
            "tensors",
        );
        null_arg(
            npkio_from_safetensors(null(), 0, null(), false, d, 0, 0),
            "output_path",
        );
        let desc = NpkioTensorDesc {
            name: null(),
            dtype: 17,
            ndim: 1,
            shape: [1u64].as_ptr(),
            data: [0f32].as_ptr().cast(),
            nbytes: 4,
        };
        null_arg(
            npkio_from_safetensors(&desc, 1, out.as_ptr(), false, d, 0, 0),
            "tensors[0].name",
        );
        let desc = NpkioTensorDesc {
            name: c"x".as_ptr(),
            shape: null(),
            ..desc
        };
        null_arg(
            npkio_from_safetensors(&desc, 1, out.as_ptr(), false, d, 0, 0),
            "tensors[0].shape",
        );
        let desc = NpkioTensorDesc {
            shape: [1u64].as_ptr(),
            data: null(),
            ..desc
        };
        null_arg(
            npkio_from_safetensors(&desc, 1, out.as_ptr(), false, d, 0, 0),
            "tensors[0].data",
        );
        let mut t = null_mut();
        null_arg(
            npkio_to_safetensors(null(), null(), 0, &mut t),
            "input_path",
        );
        null_arg(
            npkio_to_safetensors(npk.as_ptr(), null(), 0, null_mut()),
            "out",
        );
        null_arg(
            npkio_to_safetensors(npk.as_ptr(), null(), 2, &mut t),
            "array_names",
        );
        assert!(t.is_null());

        // Count 0 with a NULL array is fine: an empty in-memory save, an empty store.
        assert_eq!(
            npkio_from_safetensors(null(), 0, out.as_ptr(), true, d, 0, 0),
            NpkioStatus::Ok,
            "{}",
            last_message()
        );
    }
    assert!(tmp.path().join("o/metadata.npkm").exists());
}

#[test]
fn null_everywhere_on_the_safetensors_handle() {
    let path = fixture("safetensors/with_metadata.safetensors");
    // SAFETY: every pointer is NULL or valid; the handle is freed at the end.
    unsafe {
        let mut st = null_mut();
        null_arg(npkio_safetensors_open(null(), &mut st), "path");
        null_arg(npkio_safetensors_open(path.as_ptr(), null_mut()), "out");
        assert!(st.is_null());
        assert_eq!(
            npkio_safetensors_open(path.as_ptr(), &mut st),
            NpkioStatus::Ok
        );

        let mut n = 42usize;
        let mut v = std::mem::zeroed::<NpkioTensorView>();
        let mut b = false;
        let (mut k, mut kl, mut val, mut vl) = (null(), 0usize, null(), 0usize);
        null_arg(npkio_safetensors_count(null(), &mut n), "st");
        null_arg(npkio_safetensors_count(st, null_mut()), "count");
        null_arg(npkio_safetensors_get(null(), 0, &mut v), "st");
        null_arg(npkio_safetensors_get(st, 0, null_mut()), "view");
        null_arg(
            npkio_safetensors_find(null(), c"encoder.bias".as_ptr(), &mut v, null_mut()),
            "st",
        );
        null_arg(
            npkio_safetensors_find(st, null(), &mut v, null_mut()),
            "name",
        );
        null_arg(
            npkio_safetensors_find(st, c"encoder.bias".as_ptr(), null_mut(), &mut n),
            "view",
        );
        null_arg(npkio_safetensors_has_metadata(null(), &mut b), "st");
        null_arg(npkio_safetensors_has_metadata(st, null_mut()), "present");
        null_arg(npkio_safetensors_metadata_count(null(), &mut n), "st");
        null_arg(npkio_safetensors_metadata_count(st, null_mut()), "count");
        null_arg(
            npkio_safetensors_metadata_get(null(), 0, &mut k, &mut kl, &mut val, &mut vl),
            "st",
        );
        null_arg(
            npkio_safetensors_metadata_get(st, 0, null_mut(), &mut kl, &mut val, &mut vl),
            "key",
        );
        null_arg(
            npkio_safetensors_metadata_get(st, 0, &mut k, null_mut(), &mut val, &mut vl),
            "key_len",
        );
        null_arg(
            npkio_safetensors_metadata_get(st, 0, &mut k, &mut kl, null_mut(), &mut vl),
            "value",
        );
        null_arg(
            npkio_safetensors_metadata_get(st, 0, &mut k, &mut kl, &mut val, null_mut()),
            "value_len",
        );
        // Nothing was written on any failure.
        assert_eq!(n, 42);
        assert!(v.name.is_null() && k.is_null() && val.is_null() && !b);

        // Out of range and unknown names: a status, the out-pointers untouched.
        assert_eq!(
            npkio_safetensors_get(st, 2, &mut v),
            NpkioStatus::IndexOutOfRange
        );
        assert_eq!(
            npkio_safetensors_get(st, usize::MAX, &mut v),
            NpkioStatus::IndexOutOfRange
        );
        assert_eq!(
            npkio_safetensors_metadata_get(st, 3, &mut k, &mut kl, &mut val, &mut vl),
            NpkioStatus::IndexOutOfRange
        );
        assert_eq!(
            npkio_safetensors_find(st, c"Encoder.Bias".as_ptr(), &mut v, &mut n),
            NpkioStatus::KeyNotFound
        );
        assert!(v.name.is_null() && n == 42);
        let bad_utf8 = [0xffu8 as c_char, 0xfe_u8 as c_char, 0];
        assert_eq!(
            npkio_safetensors_find(st, bad_utf8.as_ptr(), &mut v, null_mut()),
            NpkioStatus::InvalidUtf8
        );
        // A misaligned out-pointer is refused rather than written.
        let mut raw = [0u64; 3];
        let misaligned = (raw.as_mut_ptr() as *mut u8).add(1) as *mut usize;
        assert_eq!(
            npkio_safetensors_count(st, misaligned),
            NpkioStatus::InvalidArgument
        );
        assert_eq!(raw, [0; 3]);
        npkio_safetensors_free(st);

        // The iterator.
        let mut it = null_mut();
        null_arg(
            npkio_safetensors_iter_open(null(), null(), 0, &mut it),
            "path",
        );
        null_arg(
            npkio_safetensors_iter_open(path.as_ptr(), null(), 1, &mut it),
            "keys",
        );
        null_arg(
            npkio_safetensors_iter_open(path.as_ptr(), null(), 0, null_mut()),
            "out",
        );
        assert_eq!(
            npkio_safetensors_iter_open(path.as_ptr(), null(), 0, &mut it),
            NpkioStatus::Ok
        );
        null_arg(
            npkio_safetensors_iter_next(null_mut(), &mut v, &mut b),
            "iter",
        );
        null_arg(npkio_safetensors_iter_next(it, null_mut(), &mut b), "view");
        null_arg(
            npkio_safetensors_iter_next(it, &mut v, null_mut()),
            "has_view",
        );
        npkio_safetensors_iter_free(it);

        // The tensors handle.
        let npk = fixture("numpack-0.7/basic.npk");
        let mut t = null_mut();
        assert_eq!(
            npkio_to_safetensors(npk.as_ptr(), null(), 0, &mut t),
            NpkioStatus::Ok
        );
        null_arg(npkio_tensors_count(null(), &mut n), "tensors");
        null_arg(npkio_tensors_count(t, null_mut()), "count");
        null_arg(npkio_tensors_get(null(), 0, &mut v), "tensors");
        null_arg(npkio_tensors_get(t, 0, null_mut()), "view");
        null_arg(
            npkio_tensors_find(null(), c"f32_2d".as_ptr(), &mut v, null_mut()),
            "tensors",
        );
        null_arg(npkio_tensors_find(t, null(), &mut v, null_mut()), "name");
        null_arg(
            npkio_tensors_find(t, c"f32_2d".as_ptr(), null_mut(), null_mut()),
            "view",
        );
        npkio_tensors_free(t);
    }
}

#[test]
fn null_everywhere_on_the_numpack_handle() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CString::new(tmp.path().join("m.npk").to_str().unwrap()).unwrap();
    // SAFETY: every pointer is NULL or valid; the handle is freed at the end.
    unsafe {
        let mut h = null_mut();
        null_arg(npkio_numpack_open(null(), &mut h), "path");
        null_arg(npkio_numpack_create(null(), false, &mut h), "path");
        null_arg(npkio_numpack_create(dir.as_ptr(), false, null_mut()), "out");
        assert_eq!(
            npkio_numpack_open(c"".as_ptr(), &mut h),
            NpkioStatus::InvalidArgument
        );
        assert!(h.is_null());
        assert_eq!(
            npkio_numpack_create(dir.as_ptr(), false, &mut h),
            NpkioStatus::Ok
        );

        let mut n = 0usize;
        let (mut p, mut l) = (null(), 0usize);
        let mut info = std::mem::zeroed::<NpkioArrayInfo>();
        let mut v = std::mem::zeroed::<NpkioTensorView>();
        null_arg(npkio_numpack_set_durable(null_mut(), true), "npk");
        null_arg(npkio_numpack_count(null(), &mut n), "npk");
        null_arg(npkio_numpack_count(h, null_mut()), "count");
        null_arg(npkio_numpack_name(null(), 0, &mut p, &mut l), "npk");
        null_arg(npkio_numpack_name(h, 0, null_mut(), &mut l), "name");
        null_arg(npkio_numpack_name(h, 0, &mut p, null_mut()), "name_len");
        null_arg(npkio_numpack_info(null(), c"x".as_ptr(), &mut info), "npk");
        null_arg(npkio_numpack_info(h, null(), &mut info), "name");
        null_arg(npkio_numpack_info(h, c"x".as_ptr(), null_mut()), "info");
        null_arg(npkio_numpack_view(null(), c"x".as_ptr(), &mut v), "npk");
        null_arg(npkio_numpack_view(h, null(), &mut v), "name");
        null_arg(npkio_numpack_view(h, c"x".as_ptr(), null_mut()), "view");
        null_arg(npkio_numpack_save(null_mut(), null(), 0), "npk");
        null_arg(npkio_numpack_save(h, null(), 1), "arrays");
        null_arg(
            npkio_numpack_append(null_mut(), c"x".as_ptr(), null(), 0),
            "npk",
        );
        null_arg(npkio_numpack_append(h, null(), null(), 0), "name");
        null_arg(npkio_numpack_append(h, c"x".as_ptr(), null(), 4), "data");
        null_arg(
            npkio_numpack_drop_rows(null_mut(), c"x".as_ptr(), null(), 0),
            "npk",
        );
        null_arg(npkio_numpack_drop_rows(h, null(), null(), 0), "name");
        null_arg(npkio_numpack_drop_rows(h, c"x".as_ptr(), null(), 1), "rows");
        null_arg(npkio_numpack_delete(null_mut(), c"x".as_ptr()), "npk");
        null_arg(npkio_numpack_delete(h, null()), "name");
        let rows = npkio::ffi::numpack::NpkioRows {
            indices: null(),
            count: 1,
            is_slice: 0,
            has_start: 0,
            has_stop: 0,
            start: 0,
            stop: 0,
            step: 1,
            skip_out_of_range: 0,
        };
        let x = c"x".as_ptr();
        null_arg(npkio_numpack_get_rows(null_mut(), x, &rows, &mut v), "npk");
        null_arg(npkio_numpack_get_rows(h, null(), &rows, &mut v), "name");
        null_arg(npkio_numpack_get_rows(h, x, null(), &mut v), "rows");
        let none = npkio::ffi::numpack::NpkioRows { count: 0, ..rows };
        null_arg(npkio_numpack_get_rows(h, x, &none, null_mut()), "view");
        null_arg(npkio_numpack_get_rows(h, x, &rows, &mut v), "rows.indices");
        null_arg(npkio_numpack_drop_rows_at(null_mut(), x, &rows), "npk");
        null_arg(npkio_numpack_drop_rows_at(h, null(), &rows), "name");
        null_arg(npkio_numpack_drop_rows_at(h, x, null()), "rows");
        null_arg(
            npkio_numpack_replace_rows(null_mut(), null(), 0, &rows),
            "npk",
        );
        null_arg(npkio_numpack_replace_rows(h, null(), 1, &rows), "values");
        null_arg(npkio_numpack_replace_rows(h, null(), 0, null()), "rows");
        null_arg(npkio_numpack_metadata_count(null(), &mut n), "npk");
        null_arg(npkio_numpack_metadata_count(h, null_mut()), "count");
        null_arg(
            npkio_numpack_metadata_get(null(), 0, &mut p, &mut l, &mut p, &mut l),
            "npk",
        );
        null_arg(
            npkio_numpack_set_metadata(null_mut(), null(), null(), 0),
            "npk",
        );
        null_arg(
            npkio_numpack_set_metadata(h, null(), null(), 1),
            "metadata_keys",
        );

        // Count 0 with NULL: an empty save is fine; dropping no rows of a missing array
        // is still a missing array.
        assert_eq!(npkio_numpack_save(h, null(), 0), NpkioStatus::Ok);
        assert_eq!(
            npkio_numpack_drop_rows(h, c"x".as_ptr(), null(), 0),
            NpkioStatus::KeyNotFound
        );
        assert_eq!(
            npkio_numpack_view(h, c"x".as_ptr(), &mut v),
            NpkioStatus::KeyNotFound
        );
        assert!(v.name.is_null() && info.name.is_null() && p.is_null());
        // A count whose byte size overflows is refused before anything is read.
        let row = 0u64;
        assert_eq!(
            npkio_numpack_drop_rows(h, c"x".as_ptr(), &row, usize::MAX),
            NpkioStatus::InvalidArgument
        );
        assert!(last_message().contains("too large"));
        assert_eq!(npkio_numpack_close(h), NpkioStatus::Ok);
    }
}
