//! Small filesystem helpers shared by the NumPack writer and the conversions.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{IoContext, Result};

/// Writes `bytes` to `dir/name` through a temporary file renamed into place, so that a
/// reader sees the old content or the new, never a mix. A file replaced keeps its mode and
/// group (where the process may set it). With `durable`, the data is synced before the
/// rename and the directory after it.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], durable: bool) -> Result<()> {
    let target = dir.join(name);
    let mut tmp = temp_file_in(dir, ".npkio-tmp-")?;
    crate::publish::keep_file_mode(tmp.as_file(), &target)
        .ctx(tmp.path(), "setting the permissions of")?;
    tmp.write_all(bytes).ctx(tmp.path(), "writing")?;
    if durable {
        tmp.as_file().sync_all().ctx(tmp.path(), "syncing")?;
    }
    tmp.persist(&target)
        .map_err(|e| e.error)
        .ctx(&target, "renaming a temporary file onto")?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

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
