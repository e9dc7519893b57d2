//! Small filesystem helpers shared by the NumPack store, the conversions and the copy engine.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{IoContext, Result};

/// Writes `bytes` to `dir/name` through a temporary file renamed into place, so that a
/// reader sees the old content or the new, never a mix. A file replaced keeps its mode and
/// group (where the process may set it). With `durable`, the data is synced before the
/// rename and the directory after it.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], durable: bool) -> Result<()> {
    replace_contents(dir, name, bytes, durable, true)?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// [`write_atomic`] without syncing the directory (the caller does it) and, unless
/// `keep_mode`, without keeping the replaced file's mode and group.
pub(crate) fn replace_contents(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    durable: bool,
    keep_mode: bool,
) -> Result<()> {
    let target = dir.join(name);
    let mut tmp = temp_file_in(dir, TMP_PREFIX)?;
    if keep_mode {
        keep_file_mode(tmp.as_file(), &target).ctx(tmp.path(), "setting the permissions of")?;
    }
    tmp.write_all(bytes).ctx(tmp.path(), "writing")?;
    if durable {
        tmp.as_file().sync_all().ctx(tmp.path(), "syncing")?;
    }
    tmp.persist(&target)
        .map_err(|e| e.error)
        .ctx(&target, "renaming a temporary file onto")?;
    Ok(())
}

/// The prefix of npkio's temporary files in a directory.
pub(crate) const TMP_PREFIX: &str = ".npkio-tmp-";

/// fsync a directory so that renames inside it survive power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(dir, "syncing directory")
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A temporary file in `dir` named `<prefix>XXXXXX`, created with the permissions an
/// ordinary new file gets (0666 less the umask), not tempfile's private 0600: it becomes a
/// published output.
pub fn temp_file_in(dir: &Path, prefix: &str) -> Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .ctx(dir, "creating a temporary file in")
}

/// Size `file` to `len` bytes, reserving the blocks where the filesystem can.
///
/// On Linux this is `fallocate` (which never shrinks), falling back to `set_len` where the
/// filesystem does not support it; the file is then set to exactly `len` bytes. Elsewhere it is
/// `set_len`.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    if len > 0 {
        fallocate(file, len)?;
    }
    // fallocate grows but never shrinks; set_len makes the length exactly `len` (a no-op when
    // fallocate already did it).
    if file.metadata()?.len() != len {
        file.set_len(len)?;
    }
    Ok(())
}

/// `fallocate(file, 0, 0, len)`: reserves the first `len` bytes of `file`, growing it to
/// `len` if shorter. `Ok(false)` where the filesystem (or the system) cannot, and nothing
/// was done.
pub(crate) fn fallocate(file: &File, len: u64) -> io::Result<bool> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let off_len = libc::off_t::try_from(len).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "length does not fit in off_t")
        })?;
        loop {
            // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by
            // `file`, which outlives the call.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off_len) };
            if rc == 0 {
                return Ok(true);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => return Ok(false),
                _ => return Err(err),
            }
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (file, len);
        Ok(false)
    }
}

/// Gives `file` the group `gid` (where the process may) and the mode `mode`.
pub(crate) fn set_owner_mode(file: &File, gid: u32, mode: u32) -> io::Result<()> {
    // SAFETY: fchown on a descriptor we own; -1 keeps the owner. Failing (not allowed to
    // give that group) leaves the default group.
    let _ = unsafe { libc::fchown(file.as_raw_fd(), u32::MAX, gid) };
    // After the chown, which may clear set-id bits.
    file.set_permissions(fs::Permissions::from_mode(mode))
}

/// Gives the new file `file`, about to replace the existing `old`, the old one's mode and
/// group. Nothing to do when `old` does not exist or is not a regular file.
pub(crate) fn keep_file_mode(file: &File, old: &Path) -> io::Result<()> {
    match fs::symlink_metadata(old) {
        Ok(md) if md.is_file() => set_owner_mode(file, md.gid(), md.mode() & 0o7777),
        _ => Ok(()),
    }
}
