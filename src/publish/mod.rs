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
//!
//! A directory output is built in a [`Staging`] directory, which knows the output it is for:
//! an error about a file being built names that output (the name the user chose), with the
//! staging path in its message. A single file is staged with [`staging_file`] and
//! [`publish_file`]. A sharded checkpoint, written into a directory that may already hold
//! one, has its own protocol in [`sharded`].

pub(crate) mod sharded;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use tempfile::{NamedTempFile, TempDir};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, sync_dir};

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

/// A directory output being built: a staging directory beside the output, and the output.
///
/// Errors about anything inside the staging directory are reported against the output, the
/// staging path kept in the message: `dir/out.npk: creating
/// dir/.out.npk.npkio-tmp-X/data_a.npkd (staged for this output): No space left on device`.
/// Dropping it unpublished removes the staging directory.
#[derive(Debug)]
pub(crate) struct Staging {
    dir: TempDir,
    output: PathBuf,
}

impl Staging {
    /// A fresh staging directory beside `output`.
    pub(crate) fn new(output: &Path) -> Result<Staging> {
        let (parent, name) = split(output)?;
        let dir = fsutil::temp_dir_in(&parent, &tmp_prefix(&name))?;
        Ok(Staging {
            dir,
            output: output.to_path_buf(),
        })
    }

    /// The staging directory.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// An I/O error while `doing` something to `path` (the staging directory or a file in
    /// it), reported against the output.
    pub(crate) fn error(&self, path: &Path, doing: &str, source: io::Error) -> Error {
        Error::io(&self.output, &staged(doing, path), source)
    }

    /// `result` with its error reported as [`Staging::error`] does.
    pub(crate) fn ctx<T>(&self, result: io::Result<T>, path: &Path, doing: &str) -> Result<T> {
        result.map_err(|e| self.error(path, doing, e))
    }

    /// A new temporary file `<prefix>XXXXXX` in the staging directory.
    pub(crate) fn temp_file(&self, prefix: &str) -> Result<NamedTempFile> {
        let dir = self.path();
        self.ctx(
            new_temp_file(dir, prefix),
            dir,
            "creating a temporary file in",
        )
    }

    /// Writes the file `name` of the staging directory through a temporary file renamed into
    /// place (as `fsutil::write_atomic` does), synced with `durable`.
    pub(crate) fn write_file(&self, name: &str, bytes: &[u8], durable: bool) -> Result<()> {
        let dir = self.path();
        let target = dir.join(name);
        let mut tmp = self.temp_file(".npkio-tmp-")?;
        self.ctx(tmp.write_all(bytes), tmp.path(), "writing")?;
        if durable {
            self.ctx(tmp.as_file().sync_all(), tmp.path(), "syncing")?;
        }
        let persisted = tmp.persist(&target).map(drop).map_err(|e| e.error);
        self.ctx(persisted, &target, "renaming a temporary file onto")?;
        if durable {
            self.sync_dir(dir)?;
        }
        Ok(())
    }

    /// Publishes the complete temporary file `tmp` of the staging directory as its file
    /// `name` (see [`publish_file`]).
    pub(crate) fn publish_file(&self, tmp: NamedTempFile, name: &str, durable: bool) -> Result<()> {
        if durable {
            self.ctx(tmp.as_file().sync_all(), tmp.path(), "syncing")?;
        }
        let target = self.path().join(name);
        let persisted = tmp.persist(&target).map(drop).map_err(|e| e.error);
        self.ctx(persisted, &target, "renaming the finished output onto")?;
        if durable {
            self.sync_dir(self.path())?;
        }
        Ok(())
    }

    /// Publishes the complete staging directory as the output, replacing what was there in
    /// one step. The old output (if any) ends up in the staging path and is removed with it.
    pub(crate) fn publish(self, durable: bool) -> Result<()> {
        let output = self.output.as_path();
        let (parent, name) = split(output)?;
        if durable {
            self.sync_dir(self.path())?;
        }
        let exists = fs::symlink_metadata(output).is_ok();
        if !exists {
            fs::rename(self.path(), output).ctx(output, "renaming the finished output onto")?;
            // The staging path is gone; nothing to clean up.
            let _ = self.dir.keep();
        } else if !exchange(&self)? {
            // No atomic exchange here: move the old output aside, then the new one in.
            let aside = fsutil::temp_dir_in(&parent, &tmp_prefix(&name))?;
            let old = aside.path().join("old");
            fs::rename(output, &old).ctx(output, "moving the old output aside")?;
            if let Err(e) = fs::rename(self.path(), output) {
                let _ = fs::rename(&old, output);
                return Err(Error::io(output, "renaming the finished output onto", e));
            }
            let _ = self.dir.keep();
            drop(aside);
        }
        // On exchange, the staging directory now holds the old output and is removed when
        // dropped.
        if durable {
            sync_dir(&parent)?;
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        self.ctx(
            File::open(dir).and_then(|d| d.sync_all()),
            dir,
            "syncing directory",
        )
    }
}

/// The message of an error about the staged `path`.
fn staged(doing: &str, path: &Path) -> String {
    format!("{doing} {} (staged for this output)", path.display())
}

/// A temporary file in `dir` named `<prefix>XXXXXX`, with the permissions of an ordinary new
/// file, as `fsutil::temp_file_in` makes it; the caller names the error.
fn new_temp_file(dir: &Path, prefix: &str) -> io::Result<NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
}

/// A fresh staging file beside `output`.
pub(crate) fn staging_file(output: &Path) -> Result<NamedTempFile> {
    let (parent, name) = split(output)?;
    fsutil::temp_file_in(&parent, &tmp_prefix(&name))
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

/// Swaps the staging directory and the output atomically where the OS can; `Ok(false)` where
/// it cannot.
#[cfg(target_os = "linux")]
fn exchange(staging: &Staging) -> Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let (a, b) = (staging.path(), staging.output.as_path());
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(|_| {
        Error::invalid_argument(staged("path has a NUL byte", a)).at(&staging.output)
    })?;
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
fn exchange(_staging: &Staging) -> Result<bool> {
    Ok(false)
}
