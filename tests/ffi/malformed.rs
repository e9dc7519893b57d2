//! Every malformed fixture through the C API: a status and a message naming the input,
//! never a crash, and nothing written.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::ptr;

use crate::common::last_message;
use npkio::ffi::*;

fn malformed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/malformed")
}

fn cases() -> Vec<String> {
    let text = std::fs::read_to_string(malformed_dir().join("cases.json")).unwrap();
    let cases: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    cases.keys().cloned().collect()
}

/// A refusal: not OK, not a panic, and a message that names the input.
fn refused(status: NpkioStatus, case: &str, call: &str) {
    let msg = last_message();
    assert_ne!(status, NpkioStatus::Ok, "{case}: {call} accepted it");
    assert_ne!(status, NpkioStatus::Panic, "{case}: {call} panicked: {msg}");
    assert!(
        matches!(
            status,
            NpkioStatus::Malformed | NpkioStatus::Unsupported | NpkioStatus::NotFound
        ),
        "{case}: {call} gave {status:?}: {msg}"
    );
    assert!(
        msg.contains(case),
        "{case}: {call}: message does not name it: {msg}"
    );
}

#[test]
fn every_malformed_fixture_is_refused_with_a_message() {
    let cases = cases();
    assert_eq!(cases.len(), 21, "cases.json changed: review this test");
    let tmp = tempfile::tempdir().unwrap();
    let out_npk = CString::new(tmp.path().join("out.npk").to_str().unwrap()).unwrap();
    let out_st = CString::new(tmp.path().join("out.safetensors").to_str().unwrap()).unwrap();
    for case in &cases {
        let path = CString::new(malformed_dir().join(case).to_str().unwrap()).unwrap();
        // SAFETY: valid C strings and out-pointers; nothing is returned on failure.
        unsafe {
            if case.ends_with(".safetensors") {
                let mut st = ptr::null_mut();
                let s = npkio_safetensors_open(path.as_ptr(), &mut st);
                refused(s, case, "npkio_safetensors_open");
                assert!(st.is_null());
                let mut it = ptr::null_mut();
                let s = npkio_safetensors_iter_open(path.as_ptr(), ptr::null(), 0, &mut it);
                refused(s, case, "npkio_safetensors_iter_open");
                assert!(it.is_null());
                let s = npkio_from_safetensors_file(
                    path.as_ptr(),
                    out_npk.as_ptr(),
                    ptr::null(),
                    0,
                    true,
                    NPKIO_DEFAULT_CHUNK_SIZE,
                    0,
                    0,
                );
                refused(s, case, "npkio_from_safetensors_file");
            } else {
                let mut h = ptr::null_mut();
                let s = npkio_numpack_open(path.as_ptr(), &mut h);
                if s == NpkioStatus::Ok {
                    // A damaged array does not make the store unreadable: it is refused
                    // when read.
                    let mut count = 0usize;
                    assert_eq!(npkio_numpack_count(h, &mut count), NpkioStatus::Ok);
                    let mut refusals = 0;
                    for i in 0..count {
                        let (mut name, mut name_len) = (ptr::null(), 0usize);
                        assert_eq!(
                            npkio_numpack_name(h, i, &mut name, &mut name_len),
                            NpkioStatus::Ok
                        );
                        let mut view = std::mem::zeroed();
                        let s = npkio_numpack_view(h, name, &mut view);
                        if s != NpkioStatus::Ok {
                            refused(s, case, "npkio_numpack_view");
                            refusals += 1;
                        }
                    }
                    assert!(refusals > 0, "{case}: every array was read");
                    npkio_numpack_free(h);
                } else {
                    refused(s, case, "npkio_numpack_open");
                    assert!(h.is_null());
                }
                let mut t = ptr::null_mut();
                let s = npkio_to_safetensors(path.as_ptr(), ptr::null(), 0, &mut t);
                refused(s, case, "npkio_to_safetensors");
                assert!(t.is_null());
                let s = npkio_to_safetensors_file(
                    path.as_ptr(),
                    out_st.as_ptr(),
                    ptr::null(),
                    0,
                    ptr::null(),
                    ptr::null(),
                    0,
                    NPKIO_DEFAULT_CHUNK_SIZE,
                    0,
                    0,
                );
                refused(s, case, "npkio_to_safetensors_file");
            }
        }
        assert!(
            !tmp.path().join("out.npk").exists(),
            "{case} left an output"
        );
        assert!(
            !tmp.path().join("out.safetensors").exists(),
            "{case} left an output"
        );
    }
}
