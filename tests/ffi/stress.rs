//! 8 threads × hundreds of C API calls mixing successes and failures: each thread sees its
//! own last-error messages, never another thread's, and shared handles work concurrently
//! through their `const` functions.

use std::ffi::CString;
use std::path::Path;
use std::ptr::{null, null_mut};
use std::sync::Barrier;

use crate::common::last_message;
use npkio::ffi::*;

const THREADS: usize = 8;
const ROUNDS: usize = 60; // × 6 calls a round = 360 calls a thread

/// A handle shared by the threads, used through `const` functions only.
struct Shared(*const NpkioSafetensors);
// SAFETY: the header allows concurrent use of `const` handle functions; the handle is
// freed after every thread has joined.
unsafe impl Sync for Shared {}

#[test]
fn each_thread_sees_its_own_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let good = CString::new(
        root.join("safetensors/with_metadata.safetensors")
            .to_str()
            .unwrap(),
    )
    .unwrap();
    let npk = CString::new(root.join("numpack-0.7/basic.npk").to_str().unwrap()).unwrap();
    let mut st = null_mut();
    // SAFETY: valid C string and out-pointer.
    assert_eq!(
        unsafe { npkio_safetensors_open(good.as_ptr(), &mut st) },
        NpkioStatus::Ok
    );
    let shared = Shared(st);
    let barrier = Barrier::new(THREADS);
    let tmp = tempfile::tempdir().unwrap();

    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (shared, barrier, good, npk) = (&shared, &barrier, &good, &npk);
            let tmp = tmp.path();
            s.spawn(move || {
                barrier.wait();
                let missing = CString::new(format!("/nonexistent/thread-{t}.safetensors")).unwrap();
                let key = CString::new(format!("no-such-tensor-{t}")).unwrap();
                let out = CString::new(tmp.join(format!("t{t}.npk")).to_str().unwrap()).unwrap();
                for round in 0..ROUNDS {
                    // SAFETY: valid C strings and out-pointers; handles freed in place.
                    unsafe {
                        // 1. Failure naming this thread's file.
                        let mut h = null_mut();
                        let s1 = npkio_safetensors_open(missing.as_ptr(), &mut h);
                        assert_eq!(s1, NpkioStatus::NotFound);
                        let m1 = last_message();
                        assert!(m1.contains(&format!("thread-{t}.")), "thread {t}: {m1}");

                        // 2. Success on the shared handle: the message is cleared.
                        let mut v = std::mem::zeroed();
                        assert_eq!(
                            npkio_safetensors_get(shared.0, round % 2, &mut v),
                            NpkioStatus::Ok
                        );
                        assert_eq!(last_message(), "");

                        // 3. Failure on the shared handle naming this thread's key.
                        let s3 = npkio_safetensors_find(shared.0, key.as_ptr(), &mut v, null_mut());
                        assert_eq!(s3, NpkioStatus::KeyNotFound);
                        let m3 = last_message();
                        assert!(
                            m3.contains(&format!("no-such-tensor-{t}\"")),
                            "thread {t}: {m3}"
                        );

                        // 4. A NumPack handle of its own, opened and freed.
                        let mut n = null_mut();
                        assert_eq!(npkio_numpack_open(npk.as_ptr(), &mut n), NpkioStatus::Ok);
                        let mut info = std::mem::zeroed();
                        assert_eq!(
                            npkio_numpack_info(n, c"f32_2d".as_ptr(), &mut info),
                            NpkioStatus::Ok
                        );
                        npkio_numpack_free(n);
                        assert_eq!(last_message(), "", "free leaves the (empty) message");

                        // 5. A NULL argument: its message, and freeing keeps it.
                        assert_eq!(
                            npkio_safetensors_count(null(), null_mut()),
                            NpkioStatus::NullArgument
                        );
                        npkio_safetensors_free(null_mut());
                        assert!(last_message().contains("`st`"));

                        // 6. Every tenth round, a real conversion (success) then a refused one.
                        if round % 10 == 0 {
                            let s6 = npkio_from_safetensors_file(
                                good.as_ptr(),
                                out.as_ptr(),
                                null(),
                                0,
                                true,
                                4096,
                                2,
                                0,
                            );
                            assert_eq!(s6, NpkioStatus::Ok, "thread {t}: {}", last_message());
                            let keys = [key.as_ptr()];
                            let s7 = npkio_from_safetensors_file(
                                good.as_ptr(),
                                out.as_ptr(),
                                keys.as_ptr(),
                                1,
                                true,
                                4096,
                                0,
                                0,
                            );
                            assert_eq!(s7, NpkioStatus::KeyNotFound);
                            assert!(last_message().contains(&format!("no-such-tensor-{t}\"")));
                        }
                    }
                }
            });
        }
    });
    // SAFETY: every thread has joined; the handle is freed once.
    unsafe { npkio_safetensors_free(st) };
    for t in 0..THREADS {
        assert!(tmp.path().join(format!("t{t}.npk/metadata.npkm")).exists());
    }
}
