//! Sources that shrink underneath a conversion: a SafeTensors file, or a NumPack data file,
//! truncated while a conversion copies it gives a clear error naming the source, never a
//! SIGBUS that kills the process; the output is left as it was and no temporary remains.
//! Every copy method is tried, in both directions.
//!
//! The conversion runs in a child process. Its progress callback stops every copy worker
//! once a quarter of the bytes are copied (three eighths for an export, see `pause_at`)
//! and tells the parent, which truncates the source
//! and lets the child go on: the truncation lands in the middle of the copy every time.
//!
//! The zero-copy view API is different: it hands out slices of a mapping, and a view of a
//! file truncated by someone else faults when touched. That risk is documented; the last
//! test shows it is real, so that the documentation stays honest.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Once};

use crate::common::contents::*;
use crate::common::rerun;
use npkio::CopyMethod;
use npkio::{DType, Options};

const ALL: Option<&[&str]> = None;
const CHILD_ENV: &str = "NPKIO_TRUNCATION_CHILD";
const SOURCE_MIB: usize = 256;

const METHODS: [CopyMethod; 5] = [
    CopyMethod::Auto,
    CopyMethod::Mmap,
    CopyMethod::ReadWrite,
    CopyMethod::CopyFileRange,
    CopyMethod::MmapSource,
];

fn method(name: &str) -> CopyMethod {
    *METHODS
        .iter()
        .find(|m| format!("{m:?}") == name)
        .expect("a known method")
}

/// Where the child pauses, in bytes copied of `total`. An import reads one SafeTensors file,
/// open from the start: a quarter. An export reads the store's data files in name order
/// (`small`, `w0`, `w1`, ...) and opens each when its first chunk is taken, so the victim,
/// `w1` (from 64 MiB on), must already be under way: at three eighths (96 MiB), bytes past
/// `w0` have been copied, `w1` is open and half read, and its second half is still to read.
/// A pause at a quarter fell on the boundary, and `w1` was sometimes first opened after the
/// truncation (then found short on opening: a `Malformed` error, not the read's `Io`).
fn pause_at(dir: &str, total: u64) -> u64 {
    if dir == "import" {
        total / 4
    } else {
        total / 8 * 3
    }
}

/// Runs in the child: converts, pausing every copy worker at `pause_at` until
/// the parent says go.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let p: Vec<&str> = spec.split('|').collect();
    let (dir, src, out) = (p[0], p[1], p[2]);
    let total: u64 = p[4].parse().unwrap();
    let pause_at = pause_at(dir, total);
    let pause = Arc::new(Once::new());
    let progress = {
        let pause = pause.clone();
        move |copied: u64, _total: u64| {
            if copied >= pause_at {
                // Every worker that gets here waits until the parent has truncated.
                pause.call_once(|| {
                    println!("PAUSED");
                    std::io::stdout().flush().unwrap();
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).unwrap();
                });
            }
        }
    };
    let mut opts = Options::default();
    opts.method = method(p[3]);
    opts.progress = Some(Arc::new(progress));
    let r = match dir {
        "import" => npkio::from_safetensors_file_with(src, out, ALL, false, &opts),
        _ => npkio::to_safetensors_file_with(src, out, ALL, None, &opts),
    };
    match r {
        Ok(()) => println!("CHILD-OK"),
        Err(e) => println!("CHILD-ERROR: {:?}: {e}", e.kind()),
    }
}

/// Runs one conversion, truncating `victim` to `keep` bytes once the child has paused.
/// Returns the child's error message; panics if the child died or succeeded.
fn convert_and_truncate(
    dir: &str,
    src: &Path,
    out: &Path,
    method: CopyMethod,
    total: u64,
    victim: &Path,
    keep: u64,
) -> String {
    let spec = format!(
        "{dir}|{}|{}|{method:?}|{total}",
        src.display(),
        out.display()
    );
    let mut c = rerun(module_path!(), "child_entry", CHILD_ENV, &spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(c.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            panic!("{dir} {method:?}: the child ended before pausing: {seen}");
        }
        seen.push_str(&line);
        if line.trim_end().ends_with("PAUSED") {
            break;
        }
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(victim)
        .unwrap();
    f.set_len(keep).unwrap();
    drop(f);
    let mut stdin = c.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    let mut rest = String::new();
    for line in stdout.lines() {
        rest.push_str(&line.unwrap());
        rest.push('\n');
    }
    let status = c.wait().unwrap();
    assert_eq!(
        status.signal(),
        None,
        "{dir} {method:?}: the child was killed by signal {:?} (SIGBUS is 7): {rest}",
        status.signal()
    );
    assert!(status.success(), "{dir} {method:?}: child failed: {rest}");
    assert!(
        !rest.contains("CHILD-OK"),
        "{dir} {method:?}: succeeded from a truncated source"
    );
    child_error(&rest).unwrap_or_else(|| panic!("{dir} {method:?}: no error reported: {rest}"))
}

/// A big source: a few large tensors and a couple of small ones.
fn big_contents() -> Contents {
    let mut c = Contents::new();
    let big = (SOURCE_MIB << 20) / 4;
    for (i, dtype) in [DType::F32, DType::BF16, DType::U8, DType::I64]
        .into_iter()
        .enumerate()
    {
        c.insert(format!("w{i}"), tensor(i as u64 + 1, dtype, big));
    }
    c.insert("small".into(), tensor(9, DType::F32, 10_000));
    c
}

#[test]
fn safetensors_source_truncated_mid_import_is_an_error_for_every_copy_method() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine.safetensors");
    let src_c = big_contents();
    let total: u64 = src_c.values().map(|t| t.data.len() as u64).sum();
    write_safetensors(&src_c, &pristine);
    let len = std::fs::metadata(&pristine).unwrap().len();
    // An existing output that must survive, and a fresh one that must not appear.
    let old_c = big_contents_small_old();
    let old = dir.path().join("old.npk");
    write_numpack(&old_c, &old);
    for (i, m) in METHODS.into_iter().enumerate() {
        let src = dir.path().join("src.safetensors");
        std::fs::copy(&pristine, &src).unwrap();
        let out = dir.path().join(format!("out-{i}.npk"));
        let fresh = i % 2 == 0;
        if !fresh {
            copy_tree(&old, &out);
        }
        let before = snapshot(&out);
        // Cut the data section at a third, or the whole file (header included).
        let keep = if i % 3 == 2 { 0 } else { len / 3 };
        let err = convert_and_truncate("import", &src, &out, m, total, &src, keep);
        eprintln!("import {m:?}, truncated to {keep}: {err}");
        assert!(err.starts_with("Io: "), "{m:?}: {err}");
        assert!(err.contains(&src.display().to_string()), "{m:?}: {err}");
        assert!(err.contains("reading"), "{m:?}: {err}");
        assert_eq!(snapshot(&out), before, "{m:?}: the output changed");
        let tmps = temporaries(dir.path(), 1);
        assert!(tmps.is_empty(), "{m:?}: left behind: {tmps:?}");
    }
}

fn big_contents_small_old() -> Contents {
    let mut c = Contents::new();
    c.insert("w0".into(), tensor(50, DType::F32, 100_000));
    c.insert("kept".into(), tensor(51, DType::U8, 100_000));
    c
}

#[test]
fn numpack_data_file_truncated_mid_export_is_an_error_for_every_copy_method() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine.npk");
    let src_c = big_contents();
    let total: u64 = src_c.values().map(|t| t.data.len() as u64).sum();
    write_numpack(&src_c, &pristine);
    let np = npkio::NumPack::open(&pristine).unwrap();
    // The second array in copy order (sorted names: small, w0, w1, ...): w1's data file.
    let victim_rel: PathBuf = npkio::internals::numpack::array_files(&np, "w1").unwrap()[0].clone();
    drop(np);
    let old = dir.path().join("old.safetensors");
    write_safetensors(&big_contents_small_old(), &old);
    for (i, m) in METHODS.into_iter().enumerate() {
        let src = dir.path().join("src.npk");
        remove(&src);
        copy_tree(&pristine, &src);
        let victim = src.join(&victim_rel);
        let out = dir.path().join(format!("out-{i}.safetensors"));
        if i % 2 == 1 {
            std::fs::copy(&old, &out).unwrap();
        }
        let before = snapshot(&out);
        let keep = if i % 3 == 2 {
            0
        } else {
            std::fs::metadata(&victim).unwrap().len() / 3
        };
        let err = convert_and_truncate("export", &src, &out, m, total, &victim, keep);
        eprintln!("export {m:?}, truncated to {keep}: {err}");
        assert!(err.starts_with("Io: "), "{m:?}: {err}");
        assert!(err.contains(&victim.display().to_string()), "{m:?}: {err}");
        assert!(err.contains("\"w1\""), "{m:?}: names the array: {err}");
        assert_eq!(snapshot(&out), before, "{m:?}: the output changed");
        let tmps = temporaries(dir.path(), 1);
        assert!(tmps.is_empty(), "{m:?}: left behind: {tmps:?}");
    }
}

/// Runs in a child: opens a file, truncates it, touches a view of the lost bytes.
#[test]
fn view_child_entry() {
    let Ok(path) = std::env::var("NPKIO_TRUNCATION_VIEW_CHILD") else {
        return;
    };
    let f = npkio::SafeTensorsFile::open(&path).unwrap();
    let v = f.get("w").unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    // The view's bytes are gone from the file: this read faults.
    let sum: u64 = v.data.iter().map(|&b| u64::from(b)).sum();
    println!("READ {sum}");
}

/// The documented risk of the zero-copy view API: a view whose file is truncated by someone
/// else faults when touched (SIGBUS). Conversions never read through such a view.
#[test]
fn zero_copy_view_of_a_file_truncated_by_someone_else_faults_as_documented() {
    if std::env::var(CHILD_ENV).is_ok() || std::env::var("NPKIO_TRUNCATION_VIEW_CHILD").is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.safetensors");
    let mut c = Contents::new();
    c.insert("w".into(), tensor(1, DType::U8, 1 << 20));
    write_safetensors(&c, &path);
    let o = rerun(
        module_path!(),
        "view_child_entry",
        "NPKIO_TRUNCATION_VIEW_CHILD",
        path.display().to_string(),
    )
    .output()
    .unwrap();
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGBUS),
        "expected the documented SIGBUS; got {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout)
    );
}
