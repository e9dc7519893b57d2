//! Making outputs appear atomically: a lock on the output's directory, staging beside the
//! output, and the final rename (or exchange) that publishes it.
//!
//! For an output `dir/model.npk`:
//! - **The lock** is `flock(LOCK_EX)` on `dir` itself ([`lock_output`]), held for the whole
//!   conversion: conversions (and NumPack store changes, which lock the directory holding the
//!   store) into one directory run one after the other, never interleaved; when the output
//!   is an existing directory (a store), it is locked too, after `dir`. Usually nothing is
//!   created for it. An empty file `.npkio-lock` in a directory (mode 0666, so that every
//!   user who may write the directory can lock it; never removed) is locked as well, made if
//!   needed, where `flock` on the directory cannot serve every writer: the filesystem refuses
//!   `flock` on directories, the directory's mode lets some users write it without reading it
//!   (0733: they cannot open it to `flock` it), or this process cannot read it; an existing
//!   one is always locked too. A directory this process can neither read nor write (a 0711
//!   parent of its store) is not locked: nothing can be renamed there, and the store's own
//!   lock serves. A child forked while the lock is held does not keep it (see [`lock`]).
//! - **Staging**: `.model.npk.npkio-tmp-RRRRRRCCCCCC`, where `RRRRRR` is random and `CCCCCC` a
//!   check of the output's name and `RRRRRR`. A directory output is built in its subdirectory
//!   `new`; the staging directory also holds a marker file (`.npkio-staging`, a fixed first
//!   line and the output's name) that proves npkio made it. A file output is staged as a
//!   regular file of that name. Names longer than 200 bytes are shortened in these names
//!   (their first bytes and a hash), so that every valid output name works.
//! - **Publishing** a directory swaps `new` and the output with one
//!   `renameat2(RENAME_EXCHANGE)`. Where the filesystem has no exchange, the old output is
//!   first moved *aside* to `old` in the staging directory, then `new` renamed onto the
//!   output: a crash between the two leaves no output and the old one aside.
//! - **Recovery**, by every later lock of the same output (under the lock, so no live writer
//!   owns anything): an aside whose output is absent is renamed back (the old output
//!   restored); with the output present, what an interrupted conversion left is removed.
//!   Only what carries npkio's proof is touched: a staging directory owned by this user with
//!   a valid marker, a staging file owned by this user that is a regular file with a checked
//!   name. Links, FIFOs, other users' and unmarked entries are never followed or deleted (an
//!   *empty* directory of a checked name owned by this user, which npkio leaves if killed
//!   between creating a staging directory and its marker, is removed with `rmdir`).
//! - **Permissions**: a replaced or merged output keeps the old one's mode and group (where
//!   the process may set it): the directory's, and for the files npkio writes into it, the
//!   mode of the old `metadata.npkm`. A new output gets the umask-based defaults, like `cp`.
//!
//! A directory output is built in a [`Staging`] directory, which knows the output it is for:
//! an error about a file being built names that output (the name the user chose), with the
//! staging path in its message. A single file is staged with [`staging_file`] and
//! [`publish_file`]. A sharded checkpoint, written into a directory that may already hold
//! one, has its own protocol in [`sharded`].

mod lock;
pub(crate) mod sharded;

pub(crate) use lock::lock_output;
// Part of the lock's crate API, for the store's code.
#[allow(unused_imports)]
pub(crate) use lock::{lock_store, OutputLock};

use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use tempfile::{NamedTempFile, TempPath};

use crate::error::{Error, IoContext, Result};
use crate::sys::fsutil::sync_dir;

/// The marker file inside a staging directory.
const MARKER: &str = ".npkio-staging";
/// The first line of a marker file.
const MARKER_MAGIC: &str = "npkio staging directory, safe to remove when no npkio runs here";
/// Output names longer than this are shortened in staging names.
const LONG_NAME: usize = 200;

/// The directory holding `output` and the output's file name (as staging names spell it:
/// bytes that are not UTF-8 replaced).
pub(crate) fn split(output: &Path) -> Result<(PathBuf, String)> {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::invalid_argument("output path has no usable file name").at(output))?;
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// `openat` of `name` in the directory `dir`.
fn openat(dir: &File, name: &str, flags: i32, mode: libc::mode_t) -> io::Result<File> {
    let c = crate::sys::io::cstr(OsStr::new(name))?;
    crate::sys::io::openat(dir.as_raw_fd(), &c, flags, mode).map(File::from)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

// ---------------------------------------------------------------------------------------
// Staging names.

/// 64-bit FNV-1a: a stable hash for names (no secret involved).
fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The output's name as staging names spell it: itself, or for a long name its first bytes
/// and a hash of the whole, so that staging names stay within NAME_MAX.
fn stem(name: &str) -> String {
    if name.len() <= LONG_NAME {
        return name.to_string();
    }
    let mut cut = 150;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{:016x}", &name[..cut], fnv64(&[name.as_bytes()]))
}

/// The common start of every staging name of the output `name`.
fn staging_prefix(name: &str) -> String {
    format!(".{}.npkio-tmp-", stem(name))
}

/// The check part of a staging name with the random part `random`.
fn check(name: &str, random: &str) -> String {
    format!(
        "{:06x}",
        fnv64(&[b"npkio-staging", name.as_bytes(), random.as_bytes()]) & 0xff_ffff
    )
}

/// A fresh staging name for the output `name`.
fn staging_name(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let r = fnv64(&[
        &nanos.to_le_bytes(),
        &std::process::id().to_le_bytes(),
        &n.to_le_bytes(),
    ]);
    let random = format!("{:06x}", r & 0xff_ffff);
    format!("{}{random}{}", staging_prefix(name), check(name, &random))
}

/// Whether `entry` is a staging name of the output `name` (prefix and check).
fn is_staging_name(entry: &OsStr, name: &str) -> bool {
    let Some(e) = entry.to_str() else {
        return false;
    };
    let Some(rest) = e.strip_prefix(&staging_prefix(name)) else {
        return false;
    };
    rest.len() == 12
        && rest
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && rest[6..] == check(name, &rest[..6])
}

// ---------------------------------------------------------------------------------------
// Recovery.

/// Under the lock of `parent`: restores an old output moved aside by an interrupted
/// replacement when `output` is absent, and removes what interrupted conversions into
/// `output` left (see the module docs).
fn recover(parent: &Path, name: &str, output: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Ok(());
    };
    let me = euid();
    let mut marked = Vec::new();
    for e in entries.flatten() {
        if !is_staging_name(&e.file_name(), name) {
            continue;
        }
        // DirEntry::metadata does not follow links.
        let Ok(md) = e.metadata() else { continue };
        if md.uid() != me {
            continue;
        }
        let path = e.path();
        if md.file_type().is_file() {
            let _ = fs::remove_file(&path);
        } else if md.file_type().is_dir() {
            if has_marker(&path, name) {
                marked.push(path);
            } else {
                // Killed between creating it and finishing its marker: empty, or holding
                // only a partly written marker. Anything else stays.
                remove_unfinished(&path, name);
            }
        }
    }
    if marked.is_empty() {
        return Ok(());
    }
    if !exists(output) {
        if let Some(w) = marked.iter().find(|w| exists(&w.join("old"))) {
            fs::rename(w.join("old"), output).ctx(
                output,
                "restoring the old output moved aside by an interrupted conversion",
            )?;
        }
    }
    for w in &marked {
        discard(w, output);
    }
    Ok(())
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// Whether the directory `w` holds npkio's marker naming the output `name`.
fn has_marker(w: &Path, name: &str) -> bool {
    let Ok(dir) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(w)
    else {
        return false;
    };
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let Ok(marker) = openat(&dir, MARKER, flags, 0) else {
        return false;
    };
    let want = marker_text(name);
    match marker.metadata() {
        Ok(md) if md.file_type().is_file() && md.len() == want.len() as u64 => {}
        _ => return false,
    }
    let mut text = Vec::new();
    (&marker)
        .take(want.len() as u64)
        .read_to_end(&mut text)
        .is_ok()
        && text == want.as_bytes()
}

/// Removes the staging directory `w` (of a checked name, owned by this user) when it holds
/// nothing or only the start of its marker: what a conversion killed while creating it
/// leaves. `rmdir` removes nothing else.
fn remove_unfinished(w: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(w) else {
        return;
    };
    let want = marker_text(name);
    for e in entries {
        let Ok(e) = e else { return };
        let partial_marker = e.file_name() == MARKER
            && e.metadata()
                .is_ok_and(|m| m.is_file() && m.uid() == euid() && m.len() < want.len() as u64);
        if !partial_marker {
            return;
        }
    }
    let _ = fs::remove_file(w.join(MARKER));
    let _ = fs::remove_dir(w);
}

fn marker_text(name: &str) -> String {
    format!("{MARKER_MAGIC}\n{name}\n")
}

/// Removes the marked staging directory `w` of `output`, best effort. An old output in it
/// (`old`) is removed only while `output` exists: with `output` absent, `w` stays, for
/// recovery to restore it. The old output is first renamed to `trash`, so that a removal cut
/// short never leaves a partial old output that recovery would restore; the marker goes
/// last.
fn discard(w: &Path, output: &Path) {
    if exists(&w.join("old")) && !exists(output) {
        return;
    }
    let trash = w.join("trash");
    if exists(&trash) {
        let _ = fs::remove_dir_all(&trash);
    }
    let old = w.join("old");
    if exists(&old) && fs::rename(&old, &trash).is_ok() {
        let _ = remove_any(&trash);
    }
    let _ = remove_any(&w.join("new"));
    let _ = remove_any(&trash);
    if fs::remove_file(w.join(MARKER)).is_ok() {
        let _ = fs::remove_dir(w);
    }
}

/// Removes `p` whatever it is, never following a link.
fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) => Err(e),
    }
}

/// Removes what an interrupted conversion left *inside* the existing directory `dir`: the
/// temporary files of a sharded checkpoint written into it (`.<shard>.npkio-tmp-*`, and the
/// index's `.npkio-tmp-*`), when they are regular files of this user. Call it holding
/// `dir`'s lock, so that no live conversion owns them.
pub(crate) fn remove_leftovers_inside(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let me = euid();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        let shard_tmp = n.starts_with('.') && n.contains(".safetensors.npkio-tmp-");
        let ours = shard_tmp || n.starts_with(".npkio-tmp-");
        if ours && e.metadata().is_ok_and(|m| m.is_file() && m.uid() == me) {
            let _ = fs::remove_file(e.path());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Permissions.

/// What a replaced or merged output keeps of the old one.
#[derive(Debug, Clone, Copy)]
struct Kept {
    dir_mode: u32,
    file_mode: u32,
    gid: u32,
}

/// The permissions of an existing directory output to keep: its own, and for new files the
/// mode of its file `mode_of` (a store's `metadata.npkm`; else the directory's without the
/// execute bits).
fn kept_of(output: &Path, mode_of: &str) -> Option<Kept> {
    let md = fs::symlink_metadata(output).ok()?;
    if !md.is_dir() {
        return None;
    }
    let dir_mode = md.mode() & 0o7777;
    let file_mode = match fs::symlink_metadata(output.join(mode_of)) {
        Ok(m) if m.is_file() => m.mode() & 0o7777,
        _ => dir_mode & 0o666,
    };
    Some(Kept {
        dir_mode,
        file_mode,
        gid: md.gid(),
    })
}

// ---------------------------------------------------------------------------------------
// Staging a directory.

/// A directory output being built: the directory `new` of a staging directory beside the
/// output, and the output.
///
/// Errors about anything inside the staging directory are reported against the output, the
/// staging path kept in the message: `dir/out.npk: creating
/// dir/.out.npk.npkio-tmp-X/new/data_a.npkd (staged for this output): No space left on
/// device`. Dropping it unpublished removes the staging directory.
#[derive(Debug)]
pub(crate) struct Staging {
    /// The staging directory (holding the marker and `new`).
    wrapper: PathBuf,
    /// The directory being built.
    new: PathBuf,
    output: PathBuf,
    /// The old output's permissions, for a replaced or merged output.
    kept: Option<Kept>,
    done: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            discard(&self.wrapper, &self.output);
        }
    }
}

impl Staging {
    /// A fresh staging directory beside `output`. Call it holding the output's lock: the
    /// permissions of an existing output are read here, to be kept (for the files written
    /// into it, those of its file `mode_of`).
    pub(crate) fn new(output: &Path, mode_of: &str) -> Result<Staging> {
        let (parent, name) = split(output)?;
        let mut tries = 0;
        let wrapper = loop {
            let w = parent.join(staging_name(&name));
            match fs::DirBuilder::new().mode(0o700).create(&w) {
                Ok(()) => break w,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 100 => tries += 1,
                Err(e) => return Err(Error::io(&parent, "creating a staging directory in", e)),
            }
        };
        let mut staging = Staging {
            new: wrapper.join("new"),
            wrapper,
            output: output.to_path_buf(),
            kept: kept_of(output, mode_of),
            done: false,
        };
        let marker = staging.wrapper.join(MARKER);
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&marker)
            .and_then(|mut f| f.write_all(marker_text(&name).as_bytes()));
        if let Err(e) = written {
            // Not marked: remove it by hand (`discard` wants the marker).
            let _ = fs::remove_file(&marker);
            let _ = fs::remove_dir(&staging.wrapper);
            staging.done = true;
            return Err(staging.error(&marker, "creating", e));
        }
        let created = fs::DirBuilder::new().mode(0o777).create(&staging.new);
        staging.ctx(created, &staging.new.clone(), "creating")?;
        Ok(staging)
    }

    /// The staging directory.
    pub(crate) fn path(&self) -> &Path {
        &self.new
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

    /// Gives a file npkio created in the staging directory the permissions it must have:
    /// the old output's (see [`Kept`]), or the umask-based default it was created with.
    fn set_mode(&self, file: &File) -> io::Result<()> {
        match self.kept {
            Some(k) => crate::sys::fsutil::set_owner_mode(file, k.gid, k.file_mode),
            None => Ok(()),
        }
    }

    /// Creates the new file `path` (in the staging directory) for reading and writing.
    pub(crate) fn create_file(&self, path: &Path) -> Result<File> {
        let created = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path);
        let f = self.ctx(created, path, "creating")?;
        self.ctx(self.set_mode(&f), path, "setting the permissions of")?;
        Ok(f)
    }

    /// A new temporary file `<prefix>XXXXXX` in the staging directory.
    pub(crate) fn temp_file(&self, prefix: &str) -> Result<NamedTempFile> {
        let dir = self.path();
        let tmp = self.ctx(
            new_temp_file(dir, prefix),
            dir,
            "creating a temporary file in",
        )?;
        self.ctx(
            self.set_mode(tmp.as_file()),
            tmp.path(),
            "setting the permissions of",
        )?;
        Ok(tmp)
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
    /// one step (see the module docs: exchange, else aside and rename, recovered by the
    /// next lock of the output if cut short). The old output is then removed.
    pub(crate) fn publish(mut self, durable: bool) -> Result<()> {
        let output = self.output.clone();
        let (parent, _) = split(&output)?;
        // The old directory's mode, set now (a read-only one would have kept npkio from
        // writing), or for a mode without the owner's write permission just after the
        // rename (renaming a directory to another parent needs it).
        let kept = self.kept;
        let set_mode = |dir: &Path| {
            kept.map_or(Ok(()), |k| {
                File::open(dir)
                    .and_then(|d| crate::sys::fsutil::set_owner_mode(&d, k.gid, k.dir_mode))
            })
        };
        let writable = kept.is_none_or(|k| k.dir_mode & 0o200 != 0);
        if writable {
            self.ctx(
                set_mode(&self.new),
                &self.new.clone(),
                "setting the permissions of",
            )?;
        }
        if durable {
            self.sync_dir(&self.new.clone())?;
        }
        if !exists(&output) {
            fs::rename(&self.new, &output).ctx(&output, "renaming the finished output onto")?;
        } else if !exchange(&self.new, &output)? {
            // No atomic exchange here: move the old output aside, then the new one in. A
            // crash between the two is undone by the next lock of the output.
            let old = self.wrapper.join("old");
            fs::rename(&output, &old).ctx(&output, "moving the old output aside")?;
            if let Err(e) = fs::rename(&self.new, &output) {
                let _ = fs::rename(&old, &output);
                return Err(Error::io(&output, "renaming the finished output onto", e));
            }
        }
        if !writable {
            set_mode(&output).ctx(&output, "setting the permissions of")?;
        }
        if durable {
            sync_dir(&parent)?;
        }
        // The old output (swapped into `new`, or in `old`) goes with the staging directory.
        self.done = true;
        discard(&self.wrapper, &output);
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
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
}

// ---------------------------------------------------------------------------------------
// Staging a file.

/// A fresh staging file beside `output`: a regular file of a checked staging name, created
/// with the permissions of an ordinary new file (0666 less the umask).
pub(crate) fn staging_file(output: &Path) -> Result<NamedTempFile> {
    let (parent, name) = split(output)?;
    let mut tries = 0;
    loop {
        let path = parent.join(staging_name(&name));
        let created = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o666)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path);
        match created {
            Ok(f) => {
                let path = TempPath::try_from_path(path).ctx(&parent, "resolving")?;
                return Ok(NamedTempFile::from_parts(f, path));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 100 => tries += 1,
            Err(e) => return Err(Error::io(&parent, "creating a temporary file in", e)),
        }
    }
}

/// Publishes a complete staging file as `output` (rename, replacing any old file, whose
/// mode and group the new one keeps).
pub(crate) fn publish_file(staging: NamedTempFile, output: &Path, durable: bool) -> Result<()> {
    crate::sys::fsutil::keep_file_mode(staging.as_file(), output)
        .ctx(staging.path(), "setting the permissions of")?;
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

/// Swaps the directories `a` and `b` atomically where the OS can; `Ok(false)` where it
/// cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<bool> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn staging_names_fit_name_max_and_carry_their_check() {
        for len in [1, 100, 200, 201, 242, 255] {
            let name = "n".repeat(len);
            let s = staging_name(&name);
            assert!(s.len() <= 255, "{len}: {}", s.len());
            assert!(is_staging_name(OsStr::new(&s), &name));
            // Another output's name, or a name without the check, is not it.
            assert!(!is_staging_name(OsStr::new(&s), &format!("{name}x")));
            let forged = format!("{}xyz", staging_prefix(&name));
            assert!(!is_staging_name(OsStr::new(&forged), &name));
        }
        // A multi-byte name is cut at a character boundary.
        let name = "é".repeat(127);
        assert!(staging_name(&name).len() <= 255);
    }

    #[test]
    fn the_lock_is_reentrant_within_a_thread_and_exclusive_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let outer = lock_output(&a, false).unwrap();
        let inner = lock_output(&dir.path().join("b"), false).unwrap();
        let other = std::thread::spawn({
            let a = a.clone();
            move || lock_output(&a, false).map(drop).unwrap_err().kind()
        });
        assert_eq!(other.join().unwrap(), ErrorKind::Busy);
        drop(inner);
        let other = std::thread::spawn({
            let a = a.clone();
            move || lock_output(&a, false).map(drop).unwrap_err().kind()
        });
        assert_eq!(
            other.join().unwrap(),
            ErrorKind::Busy,
            "still held by `outer`"
        );
        drop(outer);
        let other = std::thread::spawn(move || lock_output(&a, false).map(drop));
        other.join().unwrap().unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A NumPack store change holds the lock of the directory holding the store: a
    /// conversion into the store, or into any other output of that directory, waits for it
    /// (or fails fast with Busy).
    #[test]
    fn a_store_change_and_conversions_into_its_directory_exclude_each_other() {
        use crate::{ArrayInput, DType, Options};
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s.npk");
        let t = [ArrayInput {
            name: "a",
            dtype: DType::U8,
            shape: &[2],
            data: &[1, 2],
        }];
        crate::from_safetensors(&t, &store, false).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn({
            let store = store.clone();
            move || {
                let _lock = lock_store(&store, true).unwrap();
                tx.send(()).unwrap();
                done_rx.recv().unwrap();
            }
        });
        rx.recv().unwrap();
        let no_wait = Options {
            wait_for_lock: false,
            ..Options::default()
        };
        for out in [store.clone(), dir.path().join("other.npk")] {
            let e = crate::from_safetensors_with(&t, &out, false, &no_wait).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Busy, "{out:?}: {e}");
        }
        done_tx.send(()).unwrap();
        holder.join().unwrap();
        crate::from_safetensors_with(&t, &store, false, &no_wait).unwrap();
    }
}
