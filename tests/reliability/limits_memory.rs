//! Running out of memory or address space is a resource error (I/O, exit 3), never
//! "invalid SafeTensors file" (malformed, exit 6): the command line run as a child under
//! `RLIMIT_AS`, on valid files whose mapping or header does not fit.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common;

const NPKIO: &str = env!("CARGO_BIN_EXE_npkio");

/// Runs the binary with its address space limited to `limit` bytes.
fn run_limited(limit: u64, args: &[&std::ffi::OsStr]) -> (i32, String) {
    let mut cmd = Command::new(NPKIO);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .env_remove("RUST_BACKTRACE");
    common::limit_child(&mut cmd, libc::RLIMIT_AS, limit);
    let out = cmd.output().expect("the npkio binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A valid SafeTensors file: `header` then `data_len` bytes of zeros (a hole: it takes no
/// disk space).
fn write_file(path: &Path, header: &str, data_len: u64) {
    let mut h = header.to_string();
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(h.as_bytes()).unwrap();
    f.set_len(8 + h.len() as u64 + data_len).unwrap();
}

/// The smallest address-space limit under which the binary still starts and reports a
/// usage error (so that a failure below is the file's doing, not the start-up's).
fn limit_that_starts() -> u64 {
    for mb in [48u64, 64, 96, 128, 192, 256] {
        let (code, _) = run_limited(mb << 20, &["--version".as_ref()]);
        if code == 0 {
            return mb << 20;
        }
    }
    panic!("the binary does not start under 256 MiB of address space");
}

#[test]
fn a_file_too_large_to_map_is_a_resource_error() {
    let tmp = tempfile::tempdir().unwrap();
    let base = limit_that_starts();
    // One tensor of 8 GiB (sparse): its mapping cannot fit under the limit.
    let path = tmp.path().join("big.safetensors");
    let n: u64 = 8 << 30;
    write_file(
        &path,
        &format!(r#"{{"w":{{"dtype":"U8","shape":[{n}],"data_offsets":[0,{n}]}}}}"#),
        n,
    );
    let limit = base + (64 << 20);
    let out = tmp.path().join("out.npk");
    for args in [
        vec!["inspect".as_ref(), path.as_os_str()],
        vec!["convert".as_ref(), path.as_os_str(), out.as_os_str()],
    ] {
        let (code, stderr) = run_limited(limit, &args);
        assert!(
            !stderr.contains("invalid SafeTensors") && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
        // Either it works (nothing needs the whole file mapped) or it is an I/O error.
        assert!(code == 0 || code == 3, "{args:?}: exit {code}: {stderr}");
    }
    // Without the limit the same file is valid.
    npkio::get_safetensors_metadata(&path).unwrap();
}

#[test]
fn a_header_too_large_for_memory_is_a_resource_error() {
    let tmp = tempfile::tempdir().unwrap();
    let base = limit_that_starts();
    // A valid header of about 60 MB (many tensors of one byte), under a limit that leaves
    // less than that free: the header buffer cannot be had.
    let path = tmp.path().join("many.safetensors");
    let n = 800_000u64;
    let mut h = String::with_capacity(70 << 20);
    h.push('{');
    for i in 0..n {
        if i > 0 {
            h.push(',');
        }
        h.push_str(&format!(
            r#""tensor.{i:09}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{}]}}"#,
            i + 1
        ));
    }
    h.push('}');
    assert!(h.len() > 50 << 20);
    write_file(&path, &h, n);
    // Too little for the header itself; enough for the header but not to parse it.
    for limit in [base + (16 << 20), base + 3 * h.len() as u64] {
        let (code, stderr) = run_limited(limit, &["inspect".as_ref(), path.as_os_str()]);
        assert!(
            !stderr.contains("invalid SafeTensors") && !stderr.contains("malformed"),
            "{stderr}"
        );
        // An I/O error naming the file, or (memory found after all) success; never the
        // malformed-input code, never an abort.
        assert_ne!(code, 6, "{stderr}");
        if code != 0 {
            assert_eq!(code, 3, "under {limit}: {stderr}");
            assert!(stderr.contains("many.safetensors"), "{stderr}");
        }
    }
}
