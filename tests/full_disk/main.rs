//! Full disks and failing writes: a conversion whose writes fail partway returns an error
//! naming the output, leaves the previous output exactly as it was (or no output), and
//! leaves no temporary file.
//!
//! Two ways to make writes fail:
//! - a small tmpfs mounted for the test (needs root or CAP_SYS_ADMIN; the test says why it
//!   skips when the mount is refused), filled up so that the space runs out at every stage
//!   of the conversion in turn: a coarse sweep of the free space, then page by page just
//!   below what the conversion needs, so that the very last allocation fails too;
//! - RLIMIT_FSIZE in a child process (works anywhere), with limits that make a different
//!   file of the output the first one too large.
//!
//! A test binary of its own: a child process started by a test of another file, sharing the
//! binary, would hold the small filesystem's files open until its `exec` (see `SERIAL`).

#[path = "../common/mod.rs"]
mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::common::contents::*;
use crate::common::rerun;
use npkio::{DType, Options};

const ALL: Option<&[&str]> = None;
const CHILD_ENV: &str = "NPKIO_FULL_DISK_CHILD";
const PAGE: u64 = 4096;

/// Held by each test of this file for its whole run, so that they never run side by side.
///
/// The file-size-limit test starts child processes. A child starts as a copy of this
/// process: until it calls `exec`, it holds every file this process has open, and every
/// shared mapping, close-on-exec or not. Were the tmpfs test running meanwhile, a child could
/// catch its filler file or a conversion's staging file open and keep their space on the
/// small tmpfs after the test had closed and removed them, for as long as the child took to
/// reach `exec` (long, on a loaded machine): the next attempt's set-up would then find the
/// filesystem still full and fail with ENOSPC.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`SERIAL`], whether or not a test that held it failed.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sources (outside the small filesystem) and golden old outputs.
type Fixture = Golden;

fn contents(tag: u64, sizes: &[usize]) -> Contents {
    let dtypes = [DType::F32, DType::BF16, DType::U8, DType::I64];
    let mut c = Contents::new();
    for (i, &size) in sizes.iter().enumerate() {
        c.insert(
            format!("t{i}"),
            tensor(tag * 100 + i as u64, dtypes[i % 4], size),
        );
    }
    c
}

impl Fixture {
    fn new(dir: &Path) -> Fixture {
        let src = contents(1, &[3 << 20, 1536 << 10, 1 << 20, 200_000, 30_000, 5_000]);
        // The old outputs share the name "t0" with the source (merge replaces it) and hold
        // arrays of their own.
        let old = [
            contents(2, &[300_000, 200_000]),
            contents(3, &[300_000, 100_000]),
            contents(4, &[300_000, 200_000, 100_000]),
        ];
        Golden::write(dir, src, old, 300_000)
    }

    fn output_in(&self, dir: &Path, mode: Mode) -> PathBuf {
        dir.join(mode.output_name())
    }

    fn convert(&self, mode: Mode, out: &Path, durable: bool) -> npkio::Result<()> {
        let mut opts = Options::default();
        opts.durable = durable;
        opts.chunk_size = 1 << 20;
        match mode {
            Mode::ImportMerge | Mode::ImportFresh => {
                npkio::from_safetensors_file_with(&self.st_src, out, ALL, false, &opts)
            }
            Mode::ImportReplace => {
                npkio::from_safetensors_file_with(&self.st_src, out, ALL, true, &opts)
            }
            Mode::ExportReplace | Mode::ExportFresh => {
                npkio::to_safetensors_file_with(&self.npk_src, out, ALL, None, &opts)
            }
            Mode::ShardedFresh | Mode::ShardedExisting => {
                opts.max_shard_size = Some(self.total / 3);
                npkio::to_safetensors_file_with(&self.npk_src, out, ALL, None, &opts)
            }
        }
    }

    fn read(&self, mode: Mode, out: &Path) -> Result<Contents, String> {
        match mode {
            Mode::ImportMerge | Mode::ImportReplace | Mode::ImportFresh => read_numpack(out),
            _ => read_safetensors(out),
        }
    }
}

/// Checks one failed or successful conversion: success gives the new output; failure
/// names the output, keeps the old one byte for byte, and leaves no temporary file.
fn check_outcome(
    fx: &Fixture,
    mode: Mode,
    out: &Path,
    before: &[(PathBuf, Vec<u8>)],
    result: Result<(), String>,
    context: &str,
) -> bool {
    let dir = out.parent().unwrap();
    let tmps = temporaries(dir, 2);
    assert!(tmps.is_empty(), "{context}: left behind: {tmps:?}");
    match result {
        Ok(()) => {
            let got = fx
                .read(mode, out)
                .unwrap_or_else(|e| panic!("{context}: succeeded, yet: {e}"));
            let new = fx.new_contents(mode);
            assert!(got == new, "{context}: {}", diff(&got, &new));
            true
        }
        Err(msg) => {
            assert!(
                msg.contains(&out.display().to_string()),
                "{context}: the error does not name the output: {msg}"
            );
            assert!(
                msg.contains("No space left") || msg.contains("File too large"),
                "{context}: the error does not say why: {msg}"
            );
            let after = snapshot(out);
            assert!(
                after == before,
                "{context}: the old output changed ({msg}); files before: {:?}, after: {:?}",
                before.iter().map(|f| &f.0).collect::<Vec<_>>(),
                after.iter().map(|f| &f.0).collect::<Vec<_>>()
            );
            if let Some((_, old)) = fx.old(mode) {
                let got = fx.read(mode, out).unwrap();
                assert!(&got == old, "{context}: {}", diff(&got, old));
            } else {
                assert!(
                    !out.exists(),
                    "{context}: a failed conversion made an output"
                );
            }
            false
        }
    }
}

// ---------------------------------------------------------------------------------------
// A small tmpfs

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let target = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
        let opts = CString::new(format!("size={size}")).unwrap();
        // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes an unprivileged writer can still allocate.
    fn free(&self) -> u64 {
        let p = CString::new(self.path().as_os_str().as_bytes()).unwrap();
        // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
        unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(p.as_ptr(), &mut s), 0);
            s.f_bavail * s.f_frsize
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let p = CString::new(self.path().as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; a failure leaves a mount the OS cleans up.
        unsafe {
            libc::umount2(p.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// Sets up the output (old one copied in, or none), fills the filesystem so that `free`
/// bytes remain, converts, checks, and cleans up. Returns whether it succeeded.
fn attempt(fx: &Fixture, fs: &Tmpfs, mode: Mode, free: u64, durable: bool) -> bool {
    let out = fx.output_in(fs.path(), mode);
    remove(&out);
    if let Some((golden, _)) = fx.old(mode) {
        copy_tree(golden, &out);
    }
    let filler_path = fs.path().join("filler");
    let filler = std::fs::File::create(&filler_path).unwrap();
    let fill = fs.free().saturating_sub(free);
    if fill > 0 {
        npkio::internals::copy::preallocate(&filler, fill).unwrap();
    }
    let before = snapshot(&out);
    let context = format!("{mode:?} with {free} bytes free (durable={durable})");
    let r = fx.convert(mode, &out, durable).map_err(|e| {
        assert_eq!(e.kind(), npkio::ErrorKind::Io, "{context}: {e}");
        e.to_string()
    });
    let ok = check_outcome(fx, mode, &out, &before, r, &context);
    drop(filler);
    std::fs::remove_file(&filler_path).unwrap();
    remove(&out);
    ok
}

#[test]
fn full_tmpfs_at_every_stage_leaves_old_output_and_no_temporaries() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let _serial = serial();
    let fs = match Tmpfs::mount("16m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED full_tmpfs test: {why}; RLIMIT_FSIZE test still runs");
            return;
        }
    };
    let src_dir = tempfile::tempdir().unwrap();
    let fx = Fixture::new(src_dir.path());
    let mut rng = Rng::from_env("full tmpfs");
    let mut failures = 0;
    for mode in MODES {
        // The smallest free space with which the conversion succeeds, to a page.
        let (mut lo, mut hi) = (0u64, fs.free() / PAGE);
        assert!(
            attempt(&fx, &fs, mode, hi * PAGE, false),
            "{mode:?}: fails on an empty filesystem"
        );
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if attempt(&fx, &fs, mode, mid * PAGE, false) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        // Coarse: every 256 KiB below that; fine: the last 24 pages, so that each of the
        // last allocations (metadata, sidecar, index, header) is the one that fails.
        let mut frees: Vec<u64> = (0..hi * PAGE).step_by(256 << 10).collect();
        frees.extend((hi.saturating_sub(24)..hi).map(|p| p * PAGE));
        for free in frees {
            if !attempt(&fx, &fs, mode, free, rng.chance(30)) {
                failures += 1;
            }
        }
        eprintln!("{mode:?}: needs {} KiB free", hi * PAGE / 1024);
    }
    eprintln!("full tmpfs: {failures} failing conversions checked");
}

// ---------------------------------------------------------------------------------------
// RLIMIT_FSIZE in a child

/// Runs in the child: set the file size limit, convert, report the error.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let p: Vec<&str> = spec.split('|').collect();
    let limit: u64 = p[0].parse().unwrap();
    let mode = MODES[p[1].parse::<usize>().unwrap()];
    let fx = Fixture::at(Path::new(p[2]), p[5].parse().unwrap());
    let out = PathBuf::from(p[3]);
    // SAFETY: plain libc calls with valid arguments.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    match fx.convert(mode, &out, p[4] == "durable") {
        Ok(()) => println!("CHILD-OK"),
        Err(e) => println!("CHILD-ERROR: {e}"),
    }
}

#[test]
fn file_size_limit_at_each_file_leaves_old_output_and_no_temporaries() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let fx_dir = dir.path().join("fixture");
    std::fs::create_dir(&fx_dir).unwrap();
    let fx = Fixture::new(&fx_dir);
    // Limits between the sizes of the files a conversion writes, so that each is in turn
    // the first one too large.
    let limits = [1, 4096, 20_000, 150_000, 1 << 20, 2 << 20, 4 << 20];
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut checked = 0;
    for (m, mode) in MODES.iter().enumerate() {
        for (k, &limit) in limits.iter().enumerate() {
            let out = fx.output_in(&work, *mode);
            remove(&out);
            if let Some((golden, _)) = fx.old(*mode) {
                copy_tree(golden, &out);
            }
            let before = snapshot(&out);
            let durable = k % 2 == 1;
            let spec = format!(
                "{limit}|{m}|{}|{}|{}|{}",
                fx_dir.display(),
                out.display(),
                if durable { "durable" } else { "fast" },
                fx.total
            );
            let o = rerun(module_path!(), "child_entry", CHILD_ENV, &spec)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success(),
                "child failed: {stdout}\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            let context = format!("{mode:?} under a {limit}-byte file size limit");
            let result = match child_error(&stdout) {
                Some(msg) => {
                    checked += 1;
                    Err(msg)
                }
                None => {
                    assert!(stdout.contains("CHILD-OK"), "{context}: {stdout}");
                    Ok(())
                }
            };
            check_outcome(&fx, *mode, &out, &before, result, &context);
        }
    }
    assert!(checked >= 20, "only {checked} conversions failed");
}
