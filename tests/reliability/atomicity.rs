//! A conversion that fails halfway leaves the previous output exactly as it was and no
//! temporary files behind. The failure is real: the conversion runs in a child process
//! whose file size limit (RLIMIT_FSIZE) makes writing the third tensor fail with EFBIG.

use crate::common;

use std::path::Path;

use common::ALL;
use npkio::ArrayInput;
use npkio::{DType, NumPack};

const CHILD_ENV: &str = "NPKIO_ATOMICITY_CHILD";
const LIMIT: u64 = 64 * 1024;

/// Five tensors; the third ("c") is larger than the child's file size limit.
fn source(dir: &Path) -> std::path::PathBuf {
    let small = vec![1u8; 4096];
    let big = vec![2u8; 2 * LIMIT as usize];
    let tensors: [(&str, &[u8]); 5] = [
        ("a", &small),
        ("b", &small),
        ("c", &big),
        ("d", &small),
        ("e", &small),
    ];
    let shapes: Vec<[u64; 1]> = tensors.iter().map(|(_, d)| [d.len() as u64]).collect();
    let inputs: Vec<ArrayInput<'_>> = tensors
        .iter()
        .zip(&shapes)
        .map(|((name, data), shape)| ArrayInput {
            name,
            dtype: DType::U8,
            shape,
            data,
        })
        .collect();
    let npk = dir.join("src.npk");
    npkio::from_safetensors(&inputs, &npk, true).unwrap();
    let st = dir.join("src.safetensors");
    npkio::to_safetensors_file(&npk, &st, ALL, None, 1 << 20).unwrap();
    st
}

/// Runs in the child: limit file sizes, then run the conversion named by the env var.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    // SAFETY: plain libc calls with valid arguments.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: LIMIT,
            rlim_max: LIMIT,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    let r = match parts[0] {
        "from" => {
            npkio::from_safetensors_file(parts[1], parts[2], ALL, parts[3] == "drop", 16 * 1024)
        }
        "to" => npkio::to_safetensors_file(parts[1], parts[2], ALL, None, 16 * 1024),
        _ => unreachable!(),
    };
    let e = r.expect_err("the conversion must fail under the file size limit");
    println!("CHILD-ERROR: {e}");
}

fn run_child(spec: &str) -> String {
    let out = common::rerun(module_path!(), "child_entry", CHILD_ENV, spec)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.split_once("CHILD-ERROR: ").map(|p| p.1))
        .expect("child reported its error")
        .to_string()
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn assert_no_temporaries(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.contains("npkio-tmp"), "temporary left behind: {n}");
    }
}

#[test]
fn failed_import_leaves_the_old_output_untouched() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let st = source(dir.path());
    for mode in ["merge", "drop"] {
        let out = dir.path().join(format!("out-{mode}.npk"));
        let mut old = NumPack::create(&out, false).unwrap();
        old.save(&[ArrayInput {
            name: "a",
            dtype: DType::F32,
            shape: &[2],
            data: &[9; 8],
        }])
        .unwrap();
        drop(old);
        let before = snapshot(&out);
        let err = run_child(&format!("from|{}|{}|{mode}", st.display(), out.display()));
        assert!(err.contains("\"c\""), "error names the tensor: {err}");
        assert!(
            err.contains("File too large") || err.contains("too large"),
            "{err}"
        );
        assert_eq!(snapshot(&out), before, "{mode}: old output changed");
        assert_no_temporaries(dir.path());
        // A later conversion without the limit succeeds and replaces it.
        npkio::from_safetensors_file(&st, &out, ALL, mode == "drop", 4096).unwrap();
        assert_eq!(NumPack::open(&out).unwrap().len(), 5); // "a" replaced in both modes
    }
    // Into a new output: nothing appears.
    let fresh = dir.path().join("fresh.npk");
    run_child(&format!("from|{}|{}|merge", st.display(), fresh.display()));
    assert!(!fresh.exists());
    assert_no_temporaries(dir.path());
}

#[test]
fn failed_export_leaves_the_old_file_untouched() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let st = source(dir.path());
    let npk = dir.path().join("src.npk");
    let out = dir.path().join("old.safetensors");
    std::fs::write(&out, b"previous content").unwrap();
    let err = run_child(&format!("to|{}|{}", npk.display(), out.display()));
    assert!(
        err.contains("old.safetensors"),
        "error names the output: {err}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"previous content");
    assert_no_temporaries(dir.path());
    assert!(st.exists());
}

#[test]
fn a_busy_output_waits_or_fails_fast() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    use std::os::unix::io::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let st = source(dir.path());
    let out = dir.path().join("busy.npk");
    // Hold the output's lock (its directory's) as a running conversion would.
    let lock = std::fs::File::open(dir.path()).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let mut opts = npkio::Options::default();
    opts.wait_for_lock = false;
    let e = npkio::from_safetensors_file_with(&st, &out, ALL, false, &opts).unwrap_err();
    assert_eq!(e.kind(), npkio::ErrorKind::Busy, "{e}");
    assert!(!out.exists());
    // Waiting: the conversion finishes once the lock is released.
    let waiter = std::thread::spawn({
        let (st, out) = (st.clone(), out.clone());
        move || npkio::from_safetensors_file(&st, &out, ALL, false, 4096)
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!out.exists(), "must wait for the lock");
    drop(lock);
    waiter.join().unwrap().unwrap();
    assert_eq!(NumPack::open(&out).unwrap().len(), 5);
}
