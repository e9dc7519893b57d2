//! The `npkio` binary as a user runs it: every subcommand on the fixtures, `--json` read
//! back, `verify` finding planted differences, the exit codes, one-line errors on malformed
//! inputs, and the progress bar under a pseudo-terminal and when piped.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod errors;
mod load;
mod progress;
mod sharded;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::{copy_dir, fixture};
use serde_json::Value;

/// The binary under test.
const NPKIO: &str = env!("CARGO_BIN_EXE_npkio");

/// What a run of the binary gave.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out: Output = Command::new(NPKIO)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the npkio binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Like [`run`], and the run must succeed silently on stderr.
fn ok<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let r = run(args);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stderr, "", "stderr not empty on success: {r:?}");
    r
}

fn expected(rel: &str) -> Value {
    let text = fs::read_to_string(fixture(rel)).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

fn inspect_json(path: &Path) -> Value {
    let r = ok([
        OsStr::new("inspect"),
        path.as_os_str(),
        OsStr::new("--json"),
    ]);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

/// An error run: the given exit code, nothing on stdout, exactly one line on stderr that
/// starts with `npkio: error:` and carries no panic or debug dump.
fn assert_one_line_error(r: &Run, code: i32) {
    assert_eq!(r.code, code, "{r:?}");
    assert_eq!(r.stdout, "", "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "not one line: {:?}", r.stderr);
    assert!(r.stderr.starts_with("npkio: error: "), "{:?}", r.stderr);
    for bad in ["panicked", "RUST_BACKTRACE", "Error {", "kind:"] {
        assert!(!r.stderr.contains(bad), "{bad:?} in {:?}", r.stderr);
    }
}

/// Offset of a SafeTensors file's data section.
fn data_start(bytes: &[u8]) -> usize {
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[..8]);
    8 + u64::from_le_bytes(n) as usize
}

/// Copies a SafeTensors file, replacing `from` by `to` (same length) in its header.
fn edit_header(src: &Path, dst: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mut bytes = fs::read(src).expect("read");
    let end = data_start(&bytes);
    let header = String::from_utf8(bytes[8..end].to_vec()).expect("utf-8 header");
    assert!(header.contains(from), "{from:?} not in {header}");
    let header = header.replacen(from, to, 1);
    bytes[8..end].copy_from_slice(header.as_bytes());
    fs::write(dst, bytes).expect("write");
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = fs::read(path).expect("read");
    bytes[at] ^= 0x40;
    fs::write(path, bytes).expect("write");
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}
