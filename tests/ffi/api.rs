//! The C ABI used as C uses it, through the `extern "C"` functions: views against the
//! fixtures' reference hashes, iteration, metadata, NumPack handles and the conversions.

use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::path::Path;
use std::ptr;

use crate::common::{fixture, last_message};
use crate::{c, ok};
use npkio::ffi::*;
use sha2::{Digest, Sha256};

/// Copies out what a view shows: name, dtype name, shape and the bytes.
///
/// # Safety
///
/// `v` must come from a live handle.
unsafe fn read_view(v: &NpkioTensorView) -> (String, String, Vec<u64>, Vec<u8>) {
    // SAFETY: the view's pointers are valid while its handle lives (the caller's contract);
    // NULL only for ndim 0 / nbytes 0, handled here.
    unsafe {
        let name = std::slice::from_raw_parts(v.name.cast::<u8>(), v.name_len);
        assert_eq!(*v.name.add(v.name_len), 0, "names are NUL-terminated");
        let shape = if v.ndim == 0 {
            assert!(v.shape.is_null());
            vec![]
        } else {
            std::slice::from_raw_parts(v.shape, v.ndim).to_vec()
        };
        let data = if v.nbytes == 0 {
            assert!(v.data.is_null());
            vec![]
        } else {
            std::slice::from_raw_parts(v.data, v.nbytes).to_vec()
        };
        let dtype = CStr::from_ptr(npkio_dtype_name(v.dtype as u32))
            .to_str()
            .unwrap()
            .to_string();
        (
            String::from_utf8(name.to_vec()).unwrap(),
            dtype,
            shape,
            data,
        )
    }
}

fn expected_safetensors() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("safetensors/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn safetensors_views_match_the_reference_hashes() {
    let expected = expected_safetensors();
    for (file, want) in expected.as_object().unwrap() {
        let path = c(fixture(&format!("safetensors/{file}")));
        let tensors = want["tensors"].as_object().unwrap();
        let mut st = ptr::null_mut();
        // SAFETY: valid C strings and out-pointers; the handle is freed at the end.
        unsafe {
            ok(npkio_safetensors_open(path.as_ptr(), &mut st));
            let mut count = 0;
            ok(npkio_safetensors_count(st, &mut count));
            assert_eq!(count, tensors.len(), "{file}");
            for i in 0..count {
                let mut v = std::mem::zeroed();
                ok(npkio_safetensors_get(st, i, &mut v));
                let (name, dtype, shape, data) = read_view(&v);
                let t = &tensors[&name];
                assert_eq!(dtype, t["dtype"].as_str().unwrap(), "{file} {name}");
                let want_shape: Vec<u64> = t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap())
                    .collect();
                assert_eq!(shape, want_shape, "{file} {name}");
                assert_eq!(
                    hex::encode(Sha256::digest(&data)),
                    t["sha256"].as_str().unwrap(),
                    "{file} {name}"
                );
                // find gives the same view and index.
                let cname = CString::new(name.clone()).unwrap();
                let mut w = std::mem::zeroed();
                let mut idx = usize::MAX;
                ok(npkio_safetensors_find(st, cname.as_ptr(), &mut w, &mut idx));
                assert_eq!(idx, i);
                assert_eq!(w.data, v.data);
            }
            let mut n = 0;
            ok(npkio_safetensors_metadata_count(st, &mut n));
            let meta = want["metadata"].as_object().unwrap();
            assert_eq!(n, meta.len(), "{file}");
            for i in 0..n {
                let (mut k, mut kl, mut val, mut vl) = (ptr::null(), 0, ptr::null(), 0);
                ok(npkio_safetensors_metadata_get(
                    st, i, &mut k, &mut kl, &mut val, &mut vl,
                ));
                let k = CStr::from_ptr(k).to_str().unwrap();
                let val = CStr::from_ptr(val).to_str().unwrap();
                assert_eq!((k.len(), val.len()), (kl, vl));
                assert_eq!(meta[k].as_str().unwrap(), val, "{file} {k}");
            }
            npkio_safetensors_free(st);
        }
    }
}

#[test]
fn iteration_follows_the_keys_and_refuses_unknown_ones() {
    let path = c(fixture("safetensors/with_metadata.safetensors"));
    let keys = [c"encoder.weight".as_ptr(), c"encoder.bias".as_ptr()];
    // SAFETY: valid C strings, arrays and out-pointers; handles freed.
    unsafe {
        let mut it = ptr::null_mut();
        ok(npkio_safetensors_iter_open(
            path.as_ptr(),
            keys.as_ptr(),
            2,
            &mut it,
        ));
        let mut names = vec![];
        let mut v = std::mem::zeroed();
        let mut more = false;
        loop {
            ok(npkio_safetensors_iter_next(it, &mut v, &mut more));
            if !more {
                break;
            }
            names.push(read_view(&v).0);
        }
        assert_eq!(names, ["encoder.weight", "encoder.bias"]);
        npkio_safetensors_iter_free(it);

        // keys != NULL with count 0 selects nothing; NULL selects everything.
        ok(npkio_safetensors_iter_open(
            path.as_ptr(),
            keys.as_ptr(),
            0,
            &mut it,
        ));
        ok(npkio_safetensors_iter_next(it, &mut v, &mut more));
        assert!(!more);
        npkio_safetensors_iter_free(it);

        let bad = [c"nope".as_ptr()];
        let mut it2 = ptr::null_mut();
        assert_eq!(
            npkio_safetensors_iter_open(path.as_ptr(), bad.as_ptr(), 1, &mut it2),
            NpkioStatus::KeyNotFound
        );
        assert!(it2.is_null(), "out-pointer untouched on failure");
        assert!(last_message().contains("nope"), "{}", last_message());
    }
}

#[test]
fn conversions_round_trip_with_keys_metadata_and_drop() {
    let tmp = tempfile::tempdir().unwrap();
    let src = c(fixture("safetensors/with_metadata.safetensors"));
    let npk = c(tmp.path().join("m.npk"));
    let out = c(tmp.path().join("m.safetensors"));
    // SAFETY: valid C strings and arrays.
    unsafe {
        ok(npkio_from_safetensors_file(
            src.as_ptr(),
            npk.as_ptr(),
            ptr::null(),
            0,
            false,
            NPKIO_DEFAULT_CHUNK_SIZE,
            0,
            0,
        ));
        ok(npkio_to_safetensors_file(
            npk.as_ptr(),
            out.as_ptr(),
            ptr::null(),
            0,
            ptr::null(),
            ptr::null(),
            0,
            4096,
            2,
            NPKIO_FLAG_DURABLE,
        ));
    }
    assert_eq!(
        std::fs::read(fixture("safetensors/with_metadata.safetensors")).unwrap(),
        std::fs::read(tmp.path().join("m.safetensors")).unwrap()
    );
    // Selected keys, replacing the output; new metadata on the way back.
    let keys = [c"encoder.bias".as_ptr()];
    let (mk, mv) = ([c"quantization".as_ptr()], [c"int8".as_ptr()]);
    // SAFETY: as above.
    unsafe {
        ok(npkio_from_safetensors_file(
            src.as_ptr(),
            npk.as_ptr(),
            keys.as_ptr(),
            1,
            true,
            7,
            1,
            0,
        ));
        ok(npkio_to_safetensors_file(
            npk.as_ptr(),
            out.as_ptr(),
            ptr::null(),
            0,
            mk.as_ptr(),
            mv.as_ptr(),
            1,
            NPKIO_DEFAULT_CHUNK_SIZE,
            0,
            0,
        ));
    }
    let meta = npkio::get_safetensors_metadata(tmp.path().join("m.safetensors")).unwrap();
    assert_eq!(meta.tensors.len(), 1);
    assert_eq!(
        meta.metadata,
        Some(vec![("quantization".to_string(), "int8".to_string())])
    );
    // chunk_size 0 and unknown flags are refused like the Rust API refuses them.
    // SAFETY: as above.
    unsafe {
        let st =
            npkio_from_safetensors_file(src.as_ptr(), npk.as_ptr(), ptr::null(), 0, true, 0, 0, 0);
        assert_eq!(st, NpkioStatus::InvalidArgument);
        assert!(last_message().contains("chunk_size"));
        let st = npkio_from_safetensors_file(
            src.as_ptr(),
            npk.as_ptr(),
            ptr::null(),
            0,
            true,
            1024,
            0,
            0x80,
        );
        assert_eq!(st, NpkioStatus::InvalidArgument);
    }
}

/// Holds the lock a running conversion into `output` holds, until dropped.
fn hold_output_lock(output: &Path) -> std::fs::File {
    use std::os::unix::io::AsRawFd;
    // The lock of the directory holding the output.
    let lock = std::fs::File::open(output.parent().unwrap()).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    lock
}

/// A one-dimensional U8 tensor named "t" over `data`.
fn u8_tensor(data: &[u8], shape: &[u64]) -> NpkioTensorDesc {
    NpkioTensorDesc {
        name: c"t".as_ptr(),
        dtype: NpkioDtype::U8 as u32,
        ndim: shape.len(),
        shape: shape.as_ptr(),
        data: data.as_ptr().cast(),
        nbytes: data.len(),
    }
}

#[test]
fn no_wait_flag_fails_fast_on_a_busy_output() {
    let tmp = tempfile::tempdir().unwrap();
    let src = c(fixture("safetensors/with_metadata.safetensors"));
    let npk_path = tmp.path().join("m.npk");
    let npk = c(&npk_path);
    // SAFETY: valid C strings.
    unsafe {
        ok(npkio_from_safetensors_file(
            src.as_ptr(),
            npk.as_ptr(),
            ptr::null(),
            0,
            false,
            NPKIO_DEFAULT_CHUNK_SIZE,
            0,
            0,
        ));
    }
    let busy_npk = tmp.path().join("busy.npk");
    let busy_st = tmp.path().join("busy.safetensors");
    let busy_ckpt = tmp.path().join("busy-ckpt");
    std::fs::create_dir(&busy_ckpt).unwrap();
    let (c_npk, c_st, c_ckpt) = (c(&busy_npk), c(&busy_st), c(&busy_ckpt));
    // One lock holds all three: they share their directory, whose lock it is.
    let locks = [hold_output_lock(&busy_npk)];
    let (data, shape) = ([1u8, 2, 3, 4], [4u64]);
    let desc = u8_tensor(&data, &shape);
    let flags = NPKIO_FLAG_NO_WAIT | NPKIO_FLAG_DURABLE;
    // SAFETY: valid C strings and arrays.
    let statuses = unsafe {
        [
            npkio_from_safetensors_file(
                src.as_ptr(),
                c_npk.as_ptr(),
                ptr::null(),
                0,
                false,
                NPKIO_DEFAULT_CHUNK_SIZE,
                0,
                flags,
            ),
            npkio_from_safetensors(&desc, 1, c_npk.as_ptr(), false, 4096, 0, flags),
            npkio_to_safetensors_file(
                npk.as_ptr(),
                c_st.as_ptr(),
                ptr::null(),
                0,
                ptr::null(),
                ptr::null(),
                0,
                NPKIO_DEFAULT_CHUNK_SIZE,
                0,
                flags,
            ),
            npkio_to_safetensors_file_sharded(
                npk.as_ptr(),
                c_ckpt.as_ptr(),
                ptr::null(),
                0,
                ptr::null(),
                ptr::null(),
                0,
                16,
                NPKIO_DEFAULT_CHUNK_SIZE,
                0,
                flags,
            ),
        ]
    };
    for (i, st) in statuses.into_iter().enumerate() {
        assert_eq!(st, NpkioStatus::Busy, "call {i}: {}", last_message());
        assert_eq!(npkio_last_error_status(), NpkioStatus::Busy);
    }
    assert!(!busy_npk.exists() && !busy_st.exists());
    assert_eq!(std::fs::read_dir(&busy_ckpt).unwrap().count(), 0);
    // Without the flag a conversion waits for the lock and then runs (it never reports
    // Busy); with it, a free output converts as usual.
    let waiter = std::thread::spawn(move || {
        let desc = u8_tensor(&data, &shape);
        // SAFETY: a valid C string; the description points into this thread's arrays.
        unsafe { npkio_from_safetensors(&desc, 1, c_npk.as_ptr(), false, 4096, 0, 0) }
    });
    drop(locks);
    ok(waiter.join().unwrap());
    let c_npk = c(&busy_npk);
    // SAFETY: valid C strings.
    unsafe {
        ok(npkio_to_safetensors_file(
            c_npk.as_ptr(),
            c_st.as_ptr(),
            ptr::null(),
            0,
            ptr::null(),
            ptr::null(),
            0,
            NPKIO_DEFAULT_CHUNK_SIZE,
            0,
            NPKIO_FLAG_NO_WAIT,
        ));
    }
    let meta = npkio::get_safetensors_metadata(&busy_st).unwrap();
    assert_eq!(meta.tensors.len(), 1);
}

#[test]
fn in_memory_tensors_and_the_to_safetensors_handle() {
    let tmp = tempfile::tempdir().unwrap();
    let npk = c(tmp.path().join("mem.npk"));
    let w: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
    let shape = [3u64, 4];
    let scalar = 7i64;
    let descs = [
        NpkioTensorDesc {
            name: c"w".as_ptr(),
            dtype: NpkioDtype::F32 as u32,
            ndim: 2,
            shape: shape.as_ptr(),
            data: w.as_ptr().cast(),
            nbytes: 48,
        },
        NpkioTensorDesc {
            name: c"s".as_ptr(),
            dtype: NpkioDtype::I64 as u32,
            ndim: 0,
            shape: ptr::null(),
            data: (&scalar as *const i64).cast(),
            nbytes: 8,
        },
    ];
    // SAFETY: the descriptions point at live buffers of the stated sizes.
    unsafe {
        ok(npkio_from_safetensors(
            descs.as_ptr(),
            2,
            npk.as_ptr(),
            false,
            NPKIO_DEFAULT_CHUNK_SIZE,
            0,
            0,
        ));
        let mut t = ptr::null_mut();
        ok(npkio_to_safetensors(npk.as_ptr(), ptr::null(), 0, &mut t));
        let mut n = 0;
        ok(npkio_tensors_count(t, &mut n));
        assert_eq!(n, 2);
        let mut v = std::mem::zeroed();
        ok(npkio_tensors_get(t, 0, &mut v)); // sorted: "s" first
        let (name, dtype, shape, data) = read_view(&v);
        assert_eq!((name.as_str(), dtype.as_str()), ("s", "I64"));
        assert!(shape.is_empty());
        assert_eq!(data, 7i64.to_le_bytes());
        let mut idx = 9;
        ok(npkio_tensors_find(t, c"w".as_ptr(), &mut v, &mut idx));
        assert_eq!(idx, 1);
        let (_, _, shape, data) = read_view(&v);
        assert_eq!(shape, [3, 4]);
        assert_eq!(data, bytemuck_f32(&w));
        assert_eq!(
            npkio_tensors_get(t, 2, &mut v),
            NpkioStatus::IndexOutOfRange
        );
        npkio_tensors_free(t);

        // A selection naming an unknown array fails; a wrong byte count is refused.
        let names = [c"zzz".as_ptr()];
        let mut t2 = ptr::null_mut();
        assert_eq!(
            npkio_to_safetensors(npk.as_ptr(), names.as_ptr(), 1, &mut t2),
            NpkioStatus::KeyNotFound
        );
        let mut bad = descs;
        bad[0].nbytes = 47;
        assert_eq!(
            npkio_from_safetensors(bad.as_ptr(), 1, npk.as_ptr(), false, 1 << 20, 0, 0),
            NpkioStatus::InvalidArgument
        );
        bad[0].nbytes = 48;
        bad[0].dtype = 99;
        assert_eq!(
            npkio_from_safetensors(bad.as_ptr(), 1, npk.as_ptr(), false, 1 << 20, 0, 0),
            NpkioStatus::InvalidArgument
        );
        assert!(last_message().contains("99"));
    }
}

fn bytemuck_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn numpack_handle_views_outlive_changes_until_free() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = c(tmp.path().join("s.npk"));
    let rows: Vec<i32> = (0..12).collect();
    let shape = [4u64, 3];
    let desc = NpkioTensorDesc {
        name: c"x".as_ptr(),
        dtype: NpkioDtype::I32 as u32,
        ndim: 2,
        shape: shape.as_ptr(),
        data: rows.as_ptr().cast(),
        nbytes: 48,
    };
    // SAFETY: valid strings, descriptions and out-pointers; the handle is freed last, and
    // every view is read before that.
    unsafe {
        let mut h = ptr::null_mut();
        ok(npkio_numpack_create(dir.as_ptr(), true, &mut h));
        ok(npkio_numpack_set_durable(h, true));
        ok(npkio_numpack_save(h, &desc, 1));
        let mut v = std::mem::zeroed();
        ok(npkio_numpack_view(h, c"x".as_ptr(), &mut v));
        let before = read_view(&v);

        let more: Vec<i32> = (100..103).collect();
        ok(npkio_numpack_append(
            h,
            c"x".as_ptr(),
            more.as_ptr().cast(),
            12,
        ));
        ok(npkio_numpack_drop_rows(
            h,
            c"x".as_ptr(),
            [0u64, 2].as_ptr(),
            2,
        ));
        let mut info = std::mem::zeroed::<NpkioArrayInfo>();
        ok(npkio_numpack_info(h, c"x".as_ptr(), &mut info));
        assert_eq!(std::slice::from_raw_parts(info.shape, info.ndim), [3, 3]);
        assert_eq!(info.deleted_rows, 2);
        assert!(!info.zero_copy);
        let mut v2 = std::mem::zeroed();
        ok(npkio_numpack_view(h, c"x".as_ptr(), &mut v2));
        let after = read_view(&v2);
        let want: Vec<u8> = [3, 4, 5, 9, 10, 11, 100, 101, 102]
            .iter()
            .flat_map(|x: &i32| x.to_le_bytes())
            .collect();
        assert_eq!(after.3, want);

        ok(npkio_numpack_delete(h, c"x".as_ptr()));
        let mut n = 9;
        ok(npkio_numpack_count(h, &mut n));
        assert_eq!(n, 0);
        // The old views still read as they did, since the handle is alive.
        assert_eq!(read_view(&v), before);
        assert_eq!(read_view(&v2), after);

        // Names and metadata.
        ok(npkio_numpack_save(h, &desc, 1));
        let (mut name, mut len) = (ptr::null(), 0);
        ok(npkio_numpack_name(h, 0, &mut name, &mut len));
        assert_eq!(CStr::from_ptr(name).to_bytes(), b"x");
        assert_eq!(
            npkio_numpack_name(h, 1, &mut name, &mut len),
            NpkioStatus::IndexOutOfRange
        );
        let (k, val) = (
            [c"a".as_ptr(), c"b".as_ptr()],
            [c"1".as_ptr(), c"2".as_ptr()],
        );
        ok(npkio_numpack_set_metadata(h, k.as_ptr(), val.as_ptr(), 2));
        ok(npkio_numpack_metadata_count(h, &mut n));
        assert_eq!(n, 2);
        let (mut kp, mut kl, mut vp, mut vl) = (ptr::null(), 0, ptr::null(), 0);
        ok(npkio_numpack_metadata_get(
            h, 1, &mut kp, &mut kl, &mut vp, &mut vl,
        ));
        assert_eq!(CStr::from_ptr(kp).to_bytes(), b"b");
        assert_eq!(CStr::from_ptr(vp).to_bytes(), b"2");
        let dup = [c"a".as_ptr(), c"a".as_ptr()];
        assert_eq!(
            npkio_numpack_set_metadata(h, dup.as_ptr(), val.as_ptr(), 2),
            NpkioStatus::InvalidArgument
        );
        ok(npkio_numpack_close(h));
    }
}

#[test]
fn names_versions_and_the_error_copy() {
    // SAFETY: static strings from npkio; a local buffer of the stated length.
    unsafe {
        assert_eq!(
            CStr::from_ptr(npkio_version()).to_str().unwrap(),
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(CStr::from_ptr(npkio_dtype_name(17)).to_bytes(), b"F32");
        assert_eq!(
            CStr::from_ptr(npkio_dtype_numpy_name(14)).to_bytes(),
            b"bfloat16"
        );
        assert_eq!(npkio_dtype_bits(NpkioDtype::F4 as u32), 4);
        assert!(npkio_dtype_name(23).is_null());
        assert_eq!(npkio_dtype_bits(u32::MAX), 0);
        let mut names = HashMap::new();
        for n in 0..300u32 {
            let p = npkio_status_name(n);
            if !p.is_null() {
                names.insert(n, CStr::from_ptr(p).to_str().unwrap().to_string());
            }
        }
        assert_eq!(names.len(), 14);
        assert_eq!(names[&5], "NPKIO_STATUS_KEY_NOT_FOUND");
        assert_eq!(names[&100], "NPKIO_STATUS_NULL_ARGUMENT");

        let missing = c"/nonexistent/npkio/file.safetensors";
        let mut st = ptr::null_mut();
        assert_eq!(
            npkio_safetensors_open(missing.as_ptr(), &mut st),
            NpkioStatus::NotFound
        );
        assert_eq!(npkio_last_error_status(), NpkioStatus::NotFound);
        let msg = last_message();
        let mut needed = 0;
        assert_eq!(
            npkio_last_error_copy(ptr::null_mut(), 0, &mut needed),
            NpkioStatus::BufferTooSmall
        );
        assert_eq!(needed, msg.len() + 1);
        let mut small = [1 as c_char; 8];
        assert_eq!(
            npkio_last_error_copy(small.as_mut_ptr(), 8, ptr::null_mut()),
            NpkioStatus::BufferTooSmall
        );
        assert_eq!(
            CStr::from_ptr(small.as_ptr()).to_bytes(),
            &msg.as_bytes()[..7]
        );
        let mut buf = vec![0 as c_char; needed];
        assert_eq!(
            npkio_last_error_copy(buf.as_mut_ptr(), needed, ptr::null_mut()),
            NpkioStatus::Ok
        );
        assert_eq!(CStr::from_ptr(buf.as_ptr()).to_str().unwrap(), msg);
        // The query functions leave the error alone; the next status call clears it.
        assert_eq!(last_message(), msg);
        let mut n = 0;
        let ok_path = c(fixture("safetensors/with_metadata.safetensors"));
        ok(npkio_safetensors_open(ok_path.as_ptr(), &mut st));
        assert_eq!(last_message(), "");
        assert_eq!(npkio_last_error_status(), NpkioStatus::Ok);
        ok(npkio_safetensors_count(st, &mut n));
        npkio_safetensors_free(st);
    }
}

#[test]
fn no_clobber_flag_keeps_an_existing_export() {
    let tmp = tempfile::tempdir().unwrap();
    let src = c(fixture("safetensors/with_metadata.safetensors"));
    let npk = c(tmp.path().join("m.npk"));
    let out_path = tmp.path().join("out.safetensors");
    let out = c(&out_path);
    let ckpt_path = tmp.path().join("ckpt");
    let ckpt = c(&ckpt_path);
    // SAFETY: valid C strings.
    unsafe {
        ok(npkio_from_safetensors_file(
            src.as_ptr(),
            npk.as_ptr(),
            ptr::null(),
            0,
            false,
            NPKIO_DEFAULT_CHUNK_SIZE,
            0,
            0,
        ));
    }
    let export = |flags: u32| {
        // SAFETY: valid C strings; no names, no metadata.
        unsafe {
            npkio_to_safetensors_file(
                npk.as_ptr(),
                out.as_ptr(),
                ptr::null(),
                0,
                ptr::null(),
                ptr::null(),
                0,
                NPKIO_DEFAULT_CHUNK_SIZE,
                0,
                flags,
            )
        }
    };
    let sharded = |flags: u32| {
        // SAFETY: valid C strings; no names, no metadata.
        unsafe {
            npkio_to_safetensors_file_sharded(
                npk.as_ptr(),
                ckpt.as_ptr(),
                ptr::null(),
                0,
                ptr::null(),
                ptr::null(),
                0,
                64,
                NPKIO_DEFAULT_CHUNK_SIZE,
                0,
                flags,
            )
        }
    };
    // Absent: written.
    ok(export(NPKIO_FLAG_NO_CLOBBER));
    ok(sharded(NPKIO_FLAG_NO_CLOBBER));
    std::fs::write(&out_path, b"mine").unwrap();
    let before: Vec<_> = std::fs::read_dir(&ckpt_path)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    // Present: refused, nothing touched.
    assert_eq!(export(NPKIO_FLAG_NO_CLOBBER), NpkioStatus::AlreadyExists);
    assert_eq!(sharded(NPKIO_FLAG_NO_CLOBBER), NpkioStatus::AlreadyExists);
    assert_eq!(std::fs::read(&out_path).unwrap(), b"mine");
    let after: Vec<_> = std::fs::read_dir(&ckpt_path)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(before, after);
    // Without the flag the export replaces, as before.
    ok(export(0));
    assert_ne!(std::fs::read(&out_path).unwrap(), b"mine");
}

/// The bytes at `[offset, offset + len)` of a descriptor the library handed out, which the
/// test then closes.
fn read_fd(fd: std::ffi::c_int, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::FromRawFd;
    assert!(fd >= 0);
    // SAFETY: the library gave this descriptor to the caller to own.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn descriptors_for_private_mappings_show_the_validated_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("m.safetensors");
    std::fs::copy(fixture("safetensors/with_metadata.safetensors"), &copy).unwrap();
    let path = c(&copy);
    let dir = c(tmp.path().join("s.npk"));
    let rows: Vec<u8> = (0..12).collect();
    let shape = [4u64, 3];
    let desc = u8_tensor(&rows, &shape);
    // SAFETY: valid strings, descriptions and out-pointers; handles freed at the end.
    unsafe {
        let mut st = ptr::null_mut();
        ok(npkio_safetensors_open(path.as_ptr(), &mut st));
        let mut count = 0;
        ok(npkio_safetensors_count(st, &mut count));
        for i in 0..count {
            let mut v = std::mem::zeroed();
            ok(npkio_safetensors_get(st, i, &mut v));
            let (name, _, _, data) = read_view(&v);
            let (mut fd, mut offset) = (-1, 0u64);
            ok(npkio_safetensors_tensor_fd(st, i, &mut fd, &mut offset));
            assert_eq!(read_fd(fd, offset, data.len()), data, "{name}");
        }
        let (mut fd, mut offset) = (-1, 0u64);
        assert_eq!(
            npkio_safetensors_tensor_fd(st, count, &mut fd, &mut offset),
            NpkioStatus::IndexOutOfRange
        );
        assert_eq!(
            npkio_safetensors_tensor_fd(st, 0, ptr::null_mut(), &mut offset),
            NpkioStatus::NullArgument
        );
        // A file replaced since it was validated is refused, not mapped.
        std::fs::remove_file(&copy).unwrap();
        std::fs::write(&copy, b"something else").unwrap();
        assert_eq!(
            npkio_safetensors_tensor_fd(st, 0, &mut fd, &mut offset),
            NpkioStatus::Malformed,
            "{}",
            last_message()
        );
        assert_eq!((fd, offset), (-1, 0), "nothing written on failure");
        npkio_safetensors_free(st);

        let mut h = ptr::null_mut();
        ok(npkio_numpack_create(dir.as_ptr(), true, &mut h));
        ok(npkio_numpack_save(h, &desc, 1));
        let (mut fd, mut len) = (-1, 0u64);
        ok(npkio_numpack_data_fd(h, c"t".as_ptr(), &mut fd, &mut len));
        assert_eq!(len, 12);
        assert_eq!(read_fd(fd, 0, 12), rows);
        // Dropped rows: the view gathers them, so there is no file to map.
        ok(npkio_numpack_drop_rows(
            h,
            c"t".as_ptr(),
            [1u64].as_ptr(),
            1,
        ));
        ok(npkio_numpack_data_fd(h, c"t".as_ptr(), &mut fd, &mut len));
        assert_eq!((fd, len), (-1, 0));
        assert_eq!(
            npkio_numpack_data_fd(h, c"nope".as_ptr(), &mut fd, &mut len),
            NpkioStatus::KeyNotFound
        );
        npkio_numpack_free(h);
    }
}
