//! Making outputs appear atomically: a lock per output, staging beside it, and the final
//! rename (or exchange) that publishes it.
//!
//! For an output `dir/model.npk` npkio uses, in `dir`:
//! - `.model.npk.npkio-lock`: locked with `flock` for the whole conversion, so that two
//!   conversions into the same output run one after the other, never interleaved. The file
//!   stays (removing a lock file others may be waiting on is racy); it is empty.
//! - `.model.npk.npkio-tmp-XXXXXX`: the output being built. It is renamed onto the output
//!   only when complete; a directory output is swapped in with one `renameat2(RENAME_EXCHANGE)`
//!   on Linux. A conversion that dies leaves this behind; the next conversion to the same
//!   output removes it (it holds the lock, so no live conversion owns it).

use std::fs::{self, File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use tempfile::{NamedTempFile, TempDir};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::sync_dir;

/// An exclusive lock on an output, held until dropped.
#[derive(Debug)]
pub(crate) struct OutputLock {
    _file: File,
}

/// The directory holding `output` and the output's file name.
pub(crate) fn split(output: &Path) -> Result<(PathBuf, String)> {
    let name = output
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid_argument("output path has no usable file name").at(output))?;
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name.to_string()))
}

fn tmp_prefix(name: &str) -> String {
    format!(".{name}.npkio-tmp-")
}

/// Takes the output's lock and removes what earlier, interrupted conversions left behind.
/// When another conversion holds the lock, waits for it with `wait`, else fails with
/// [`ErrorKind::Busy`](crate::ErrorKind::Busy).
pub(crate) fn lock_output(output: &Path, wait: bool) -> Result<OutputLock> {
    let (parent, name) = split(output)?;
    if !parent.is_dir() {
        return Err(Error::new(
            crate::ErrorKind::NotFound,
            "the output's directory does not exist",
        )
        .at(&parent));
    }
    let lock_path = parent.join(format!(".{name}.npkio-lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .ctx(&lock_path, "creating lock file")?;
    let mut op = libc::LOCK_EX | libc::LOCK_NB;
    loop {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        match err.kind() {
            std::io::ErrorKind::Interrupted => {}
            std::io::ErrorKind::WouldBlock if wait => op = libc::LOCK_EX,
            std::io::ErrorKind::WouldBlock => {
                return Err(Error::new(
                    crate::ErrorKind::Busy,
                    "another conversion into this output is running",
                )
                .at(output))
            }
            _ => return Err(Error::io(&lock_path, "locking", err)),
        }
    }
    let prefix = tmp_prefix(&name);
    if let Ok(entries) = fs::read_dir(&parent) {
        for e in entries.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
            {
                let p = e.path();
                let _ = match e.file_type() {
                    Ok(t) if t.is_dir() => fs::remove_dir_all(&p),
                    _ => fs::remove_file(&p),
                };
            }
        }
    }
    Ok(OutputLock { _file: file })
}

/// Removes what an interrupted conversion left *inside* the existing directory `dir`: the
/// temporary files of a sharded checkpoint written into it (`.<shard>.npkio-tmp-*`, and the
/// index's `.npkio-tmp-*`). Call it holding `dir`'s lock, so that no live conversion owns
/// them.
pub(crate) fn remove_leftovers_inside(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        let shard_tmp = n.starts_with('.') && n.contains(".safetensors.npkio-tmp-");
        let ours = shard_tmp || n.starts_with(".npkio-tmp-");
        if ours && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// A fresh staging directory beside `output`.
pub(crate) fn staging_dir(output: &Path) -> Result<TempDir> {
    let (parent, name) = split(output)?;
    crate::fsutil::temp_dir_in(&parent, &tmp_prefix(&name))
}

/// A fresh staging file beside `output`.
pub(crate) fn staging_file(output: &Path) -> Result<NamedTempFile> {
    let (parent, name) = split(output)?;
    crate::fsutil::temp_file_in(&parent, &tmp_prefix(&name))
}

/// Publishes a complete staging directory as `output`, replacing what was there in one
/// step. The old output (if any) ends up in the staging path and is removed with it.
pub(crate) fn publish_dir(staging: TempDir, output: &Path, durable: bool) -> Result<()> {
    let (parent, _) = split(output)?;
    if durable {
        sync_dir(staging.path())?;
    }
    let exists = fs::symlink_metadata(output).is_ok();
    if !exists {
        fs::rename(staging.path(), output).ctx(output, "renaming the finished output onto")?;
        // The staging path is gone; nothing to clean up.
        let _ = staging.keep();
    } else if !exchange(staging.path(), output)? {
        // No atomic exchange here: move the old output aside, then the new one in.
        let aside = crate::fsutil::temp_dir_in(&parent, &tmp_prefix(&split(output)?.1))?;
        let old = aside.path().join("old");
        fs::rename(output, &old).ctx(output, "moving the old output aside")?;
        if let Err(e) = fs::rename(staging.path(), output) {
            let _ = fs::rename(&old, output);
            return Err(Error::io(output, "renaming the finished output onto", e));
        }
        let _ = staging.keep();
        drop(aside);
    }
    // On exchange, `staging` now holds the old output and is removed when dropped.
    if durable {
        sync_dir(&parent)?;
    }
    Ok(())
}

/// Publishes a complete staging file as `output` (rename, replacing any old file).
pub(crate) fn publish_file(staging: NamedTempFile, output: &Path, durable: bool) -> Result<()> {
    if durable {
        staging
            .as_file()
            .sync_all()
            .ctx(staging.path(), "syncing")?;
    }
    staging
        .persist(output)
        .map_err(|e| e.error)
        .ctx(output, "renaming the finished output onto")?;
    if durable {
        sync_dir(&split(output)?.0)?;
    }
    Ok(())
}

/// Swaps two paths atomically where the OS can; `Ok(false)` where it cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())
        .map_err(|_| Error::invalid_argument("path has a NUL byte").at(a))?;
    let cb = CString::new(b.as_os_str().as_bytes())
        .map_err(|_| Error::invalid_argument("path has a NUL byte").at(b))?;
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(Error::io(b, "swapping in the finished output at", err)),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> Result<bool> {
    Ok(false)
}
