//! The lock of an output's directory (see the module docs of `publish`), and what keeps a
//! forked child from holding it.
//!
//! `flock` belongs to the open file description, which `fork` shares with the child: a
//! child forked while a conversion runs (a DataLoader worker, a multiprocessing pool) would
//! keep the directory locked for its whole life after the parent released it. So every
//! descriptor a lock is taken through is recorded in a fixed table of atomics ([`FDS`]),
//! and a `pthread_atfork` child handler, registered once, points each of them in the child
//! at `/` instead (`dup3`): the child's copy no longer refers to the locked description,
//! the parent's lock is untouched, and the descriptor number stays valid for whatever the
//! child later closes. The handler only reads atomics and calls `open`, `dup3` and `close`
//! (async-signal-safe, no allocation, no lock). Descriptors are opened and closed inside
//! [`ForkGuard`], which the prepare handler also takes, so the table matches the open lock
//! descriptors at the instant of the fork; the table of held locks ([`HELD`]) is locked
//! under it too, so that a child never finds that mutex held by a thread it does not have.
//! While locks are held, the parent handler waits for the child's word (one byte through a
//! pipe made by the prepare handler) that it let go of them, so that when `fork` returns in
//! the parent, no child shares its locks: the cost, only while a lock is held, is one pipe
//! and one switch to the child per fork.
//! `O_CLOEXEC` keeps the descriptors from an `exec` (`posix_spawn` and `vfork` run no fork
//! handlers, and exec at once).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::mem::ManuallyDrop;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::{AsRawFd, IntoRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use super::{euid, openat, recover, split};
use crate::error::{Error, ErrorKind, IoContext, Result};

/// The lock file of a directory whose filesystem refuses `flock` on directories.
const FALLBACK_LOCK: &str = ".npkio-lock";

/// An exclusive lock on the directory holding an output, and on the output itself when it
/// is a directory (see [`lock_output`]), held until dropped (by any thread).
#[derive(Debug)]
pub(crate) struct OutputLock {
    /// The entries of [`HELD`] this guard counts in.
    owners: Vec<Owner>,
}

/// Who holds a directory's lock: a thread of a process, and the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    pid: u32,
    thread: std::thread::ThreadId,
    dir: (u64, u64),
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        let mut released = Vec::new();
        {
            let mut held = held();
            // The output's own lock first: the reverse of the order taken.
            for owner in self.owners.iter().rev() {
                if let Some(i) = held.iter().position(|x| x.owner == *owner) {
                    held[i].depth -= 1;
                    if held[i].depth == 0 {
                        released.push(held.remove(i));
                    }
                }
            }
            if held.is_empty() {
                // Nothing stays allocated between conversions (a host's leak checker sees
                // no memory npkio keeps).
                *held = Vec::new();
            }
        }
        // Closing the descriptors releases the locks (outside the table's guard: closing
        // takes the fork guard itself).
        drop(released);
    }
}

/// A directory lock held by a thread, with the number of guards handed out for it.
struct Held {
    owner: Owner,
    /// The descriptors locked: the directory's, its lock file's, or both.
    _files: Vec<LockFd>,
    depth: usize,
    /// Outputs recovered under this lock.
    recovered: Vec<String>,
}

/// The directory locks held in this process.
static HELD: std::sync::Mutex<Vec<Held>> = std::sync::Mutex::new(Vec::new());

/// The table of held locks, taken under the fork guard too, so that no fork happens while
/// another thread holds the table's mutex (a forked child would find it locked forever).
/// No descriptor may be opened or closed while it is held.
fn held() -> HeldTable {
    let fork = ForkGuard::take();
    HeldTable {
        table: HELD.lock().unwrap_or_else(|e| e.into_inner()),
        _fork: fork,
    }
}

/// [`HELD`], locked (fields drop in order: the mutex, then the fork guard).
struct HeldTable {
    table: std::sync::MutexGuard<'static, Vec<Held>>,
    _fork: ForkGuard,
}

impl std::ops::Deref for HeldTable {
    type Target = Vec<Held>;
    fn deref(&self) -> &Vec<Held> {
        &self.table
    }
}

impl std::ops::DerefMut for HeldTable {
    fn deref_mut(&mut self) -> &mut Vec<Held> {
        &mut self.table
    }
}

/// Takes the lock of the directory holding `output` and, when `output` is an existing
/// directory (a NumPack store, a checkpoint directory), the lock of `output` itself (see
/// the module docs), and recovers what earlier, interrupted conversions into `output` left
/// behind: an old output moved aside is restored when `output` is absent, the rest removed.
/// When another conversion or store change holds the lock, waits for it with `wait`, else
/// fails with [`ErrorKind::Busy`].
///
/// Where the directory holding `output` can be neither read nor written by this process
/// (a store of this user's inside a parent of mode 0711), nothing can be renamed there, and
/// the lock of the existing directory `output` alone is taken: what can change is inside it.
///
/// The lock is re-entrant within a thread: a thread that holds it gets a nested guard at
/// once. Anything that writes `output` (or changes a NumPack store at `output`) must hold it.
/// A child forked while it is held does not hold it (see the module docs).
pub(crate) fn lock_output(output: &Path, wait: bool) -> Result<OutputLock> {
    let (parent, name) = split(output)?;
    let mut guard = OutputLock { owners: Vec::new() };
    let refused = match take(&parent, false, output, wait)? {
        Taken::Locked(owner) => {
            guard.owners.push(owner);
            let first = held()
                .iter_mut()
                .find(|x| x.owner == owner)
                .is_some_and(|x| {
                    let first = !x.recovered.contains(&name);
                    if first {
                        x.recovered.push(name.clone());
                    }
                    first
                });
            if first {
                recover(&parent, &name, output)?;
            }
            None
        }
        Taken::Refused(e) => Some(e),
    };
    if fs::symlink_metadata(output).is_ok_and(|m| m.is_dir()) {
        match take(output, true, output, wait) {
            Ok(Taken::Locked(owner)) => guard.owners.push(owner),
            // Locked through its parent alone, as before it was a directory.
            Ok(Taken::Refused(_)) if refused.is_none() => {}
            Ok(Taken::Refused(e)) => return Err(e),
            // No longer a directory (removed, or a link put there by another program since
            // it was looked at): the parent's lock serves, as for any other output.
            Err(_)
                if refused.is_none() && !fs::symlink_metadata(output).is_ok_and(|m| m.is_dir()) => {
            }
            Err(e) => return Err(e),
        }
    } else if let Some(e) = refused {
        return Err(e);
    }
    Ok(guard)
}

/// Takes the lock a change to the NumPack store `dir` holds: the same one conversions into
/// `dir` take ([`lock_output`]).
#[allow(dead_code)]
pub(crate) fn lock_store(dir: &Path, wait: bool) -> Result<OutputLock> {
    lock_output(dir, wait)
}

/// What [`take`] did.
enum Taken {
    /// Locked (or already held by this thread: one more guard).
    Locked(Owner),
    /// The directory can be neither read nor written here: no lock can be taken (the
    /// error says why).
    Refused(Error),
}

/// Locks the directory `dir` for this thread (see the module docs: `flock` on the
/// directory, and on its lock file where there must be one), `nofollow` refusing a link at
/// `dir` itself.
fn take(dir: &Path, nofollow: bool, output: &Path, wait: bool) -> Result<Taken> {
    for _ in 0..16 {
        let opened = open_dir(dir, nofollow)?;
        let md = opened.file().metadata().ctx(dir, "inspecting")?;
        let owner = Owner {
            pid: std::process::id(),
            thread: std::thread::current().id(),
            dir: (md.dev(), md.ino()),
        };
        let nested = held()
            .iter_mut()
            .find(|x| x.owner == owner)
            .map(|x| x.depth += 1)
            .is_some();
        if nested {
            // `opened` is closed on the way out, with the table's guard released.
            return Ok(Taken::Locked(owner));
        }
        let files = match opened {
            Opened::Readable(d) => lock_readable(d, md.mode(), dir, output, wait)?,
            Opened::SearchOnly(base, e) => match lock_file(&base, dir, output, wait, true) {
                // Required: opened, or an error.
                Ok(f) => f.into_iter().collect(),
                Err(denied)
                    if matches!(
                        denied.io_kind(),
                        io::ErrorKind::PermissionDenied
                            | io::ErrorKind::ReadOnlyFilesystem
                            // Not allowed to create it, and not there.
                            | io::ErrorKind::NotFound
                    ) =>
                {
                    return Ok(Taken::Refused(e));
                }
                Err(other) => return Err(other),
            },
        };
        // The path must still name the directory locked (it may have been renamed meanwhile).
        match fs::metadata(dir) {
            Ok(now) if (now.dev(), now.ino()) == owner.dir => {}
            _ => continue,
        }
        held().push(Held {
            owner,
            _files: files,
            depth: 1,
            recovered: Vec::new(),
        });
        return Ok(Taken::Locked(owner));
    }
    Err(Error::new(
        ErrorKind::Busy,
        "the output's directory keeps being replaced while npkio locks it",
    )
    .at(dir))
}

/// A directory opened for locking.
enum Opened {
    /// Opened for reading: `flock` works on it.
    Readable(LockFd),
    /// Without read permission: opened `O_PATH` (search permission suffices), for its lock
    /// file to be opened relative to it; the error opening it for reading gave.
    SearchOnly(File, Error),
}

impl Opened {
    fn file(&self) -> &File {
        match self {
            Opened::Readable(d) => d.file(),
            Opened::SearchOnly(f, _) => f,
        }
    }
}

/// Opens a directory for locking, without creating anything: for reading where this process
/// may, else `O_PATH`.
fn open_dir(dir: &Path, nofollow: bool) -> Result<Opened> {
    let flags = libc::O_DIRECTORY | libc::O_CLOEXEC | if nofollow { libc::O_NOFOLLOW } else { 0 };
    let opened = LockFd::open(|| OpenOptions::new().read(true).custom_flags(flags).open(dir));
    let err = match opened {
        Ok(f) => return Ok(Opened::Readable(f)),
        Err(e) => e,
    };
    let error = |e: io::Error| match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR) => {
            Error::new(ErrorKind::NotFound, "the output's directory does not exist").at(dir)
        }
        _ => Error::io(dir, "opening the output's directory to lock it", e),
    };
    if err.raw_os_error() != Some(libc::EACCES) {
        return Err(error(err));
    }
    let path = OpenOptions::new()
        .read(true)
        .custom_flags(flags | libc::O_PATH)
        .open(dir)
        .map_err(error)?;
    Ok(Opened::SearchOnly(path, error(err)))
}

/// Whether a directory of mode `mode` lets some users write it without reading it (one of
/// its owner, group and other classes has write and search permission but not read, as in
/// 0733 or 0730): those users lock it through its lock file, and so must everyone.
fn writable_unread(mode: u32) -> bool {
    [6, 3, 0].iter().any(|shift| (mode >> shift) & 0o7 == 0o3)
}

/// Locks the directory `dir` (`path`) opened for reading: `flock` on it, and on its lock
/// file where its mode lets users write it unread, where the filesystem refuses `flock` on
/// a directory, or where one exists (a user who could not read the directory made it).
fn lock_readable(
    dir: LockFd,
    mode: u32,
    path: &Path,
    output: &Path,
    wait: bool,
) -> Result<Vec<LockFd>> {
    #[cfg(test)]
    let refused = tests::REFUSE_DIRECTORY_FLOCK.get();
    #[cfg(not(test))]
    let refused = false;
    let locked = if refused {
        Err(io::Error::from_raw_os_error(libc::ENOLCK))
    } else {
        flock(dir.file(), wait)
    };
    let mut need_file = writable_unread(mode);
    match locked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(busy(output)),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EBADF | libc::ENOLCK | libc::EOPNOTSUPP | libc::EINVAL)
            ) =>
        {
            need_file = true
        }
        Err(e) => return Err(Error::io(path, "locking", e)),
    }
    let file = lock_file(dir.file(), path, output, wait, need_file)?;
    // The directory's descriptor is kept (locked or not: it costs nothing) with the file's.
    Ok([Some(dir), file].into_iter().flatten().collect())
}

/// Locks the lock file of the directory `dir` (`path`): created if `required`, else only
/// when there is a regular file at its name (`None` otherwise).
fn lock_file(
    dir: &File,
    path: &Path,
    output: &Path,
    wait: bool,
    required: bool,
) -> Result<Option<LockFd>> {
    let lock_path = path.join(FALLBACK_LOCK);
    let file = if required {
        open_fallback_lock(dir, &lock_path)?
    } else {
        // Absent (the usual case), or a link or anything else npkio did not make: looked at
        // before opening, so that a device there is not even opened.
        if kind_at(dir, FALLBACK_LOCK) != Some(libc::S_IFREG) {
            return Ok(None);
        }
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        match LockFd::open(|| openat(dir, FALLBACK_LOCK, flags | libc::O_NOCTTY, 0)) {
            Ok(f) if f.file().metadata().is_ok_and(|m| m.is_file()) => f,
            _ => return Ok(None),
        }
    };
    match flock(file.file(), wait) {
        Ok(()) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(busy(output)),
        Err(e) => Err(Error::io(&lock_path, "locking", e)),
    }
}

fn busy(output: &Path) -> Error {
    Error::new(
        ErrorKind::Busy,
        "another conversion (or NumPack store change) into this directory is running",
    )
    .at(output)
}

/// `flock(LOCK_EX)`, waiting with `wait`, else failing with `WouldBlock`.
fn flock(file: &File, wait: bool) -> io::Result<()> {
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Opens (creating it if needed) the fallback lock file in the directory `dir`: never
/// following a link, never blocking on a FIFO, refusing anything but a regular file.
fn open_fallback_lock(dir: &File, lock_path: &Path) -> Result<LockFd> {
    let not_regular = || {
        Error::new(
            ErrorKind::AlreadyExists,
            "is not a regular file; npkio locks this directory through it",
        )
        .at(lock_path)
    };
    // Looked at before opening, so that a device there is not even opened; the check that
    // counts is the `fstat` below, of what was opened.
    if kind_at(dir, FALLBACK_LOCK).is_some_and(|k| k != libc::S_IFREG) {
        return Err(not_regular());
    }
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    let mut created = true;
    let opened = LockFd::open(|| {
        openat(
            dir,
            FALLBACK_LOCK,
            libc::O_RDWR | libc::O_CREAT | flags,
            0o666,
        )
    });
    let fd = match opened {
        Ok(fd) => fd,
        // Another user's file (in a sticky directory `O_CREAT` of it may be refused): a
        // lock needs no write access.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
            created = false;
            LockFd::open(|| openat(dir, FALLBACK_LOCK, libc::O_RDONLY | flags, 0))
                .map_err(|e| Error::io(lock_path, "opening the lock file", e))?
        }
        Err(e) => return Err(Error::io(lock_path, "opening the lock file", e)),
    };
    let md = fd.file().metadata().ctx(lock_path, "inspecting")?;
    if !md.file_type().is_file() {
        return Err(not_regular());
    }
    if created && md.uid() == euid() && md.mode() & 0o777 != 0o666 {
        // Every user who may write the directory must be able to lock it.
        let _ = fd.file().set_permissions(fs::Permissions::from_mode(0o666));
    }
    Ok(fd)
}

/// The type (`S_IFMT` bits) of `name` in the directory `dir`, not following a link; `None`
/// when it cannot be seen (absent, most often).
fn kind_at(dir: &File, name: &str) -> Option<libc::mode_t> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid directory descriptor, NUL-terminated name and out pointer; `st` is
    // read only after success.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    // SAFETY: fstatat succeeded, so `st` is initialized.
    (r == 0).then(|| unsafe { st.assume_init() }.st_mode & libc::S_IFMT)
}

// ---------------------------------------------------------------------------------------
// Keeping the lock out of forked children.

/// How many lock descriptors the fork handler knows of at once. A process holding more
/// (more than this many conversions at once) still locks; a child forked then may keep the
/// locks beyond the first this many.
const SLOTS: usize = 256;

/// The lock descriptors open in this process, `-1` for a free slot.
static FDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];

/// Held while a lock descriptor is opened and recorded, or forgotten and closed, and by the
/// fork prepare handler until the fork is done: no fork falls between the two.
static FORK_GUARD: AtomicBool = AtomicBool::new(false);

struct ForkGuard;

impl ForkGuard {
    fn take() -> ForkGuard {
        take_fork_guard();
        ForkGuard
    }
}

impl Drop for ForkGuard {
    fn drop(&mut self) {
        FORK_GUARD.store(false, Ordering::Release);
    }
}

fn take_fork_guard() {
    while FORK_GUARD
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::thread::yield_now();
    }
}

/// Registers the fork handlers, once per process.
fn register_fork_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the three handlers are `extern "C"` functions that live for the whole
        // process; registering cannot fail but for lack of memory, and then forked children
        // merely keep the lock (as before this existed).
        unsafe {
            libc::pthread_atfork(Some(before_fork), Some(after_fork_parent), Some(in_child));
        }
    });
}

/// The pipe through which a forked child tells its parent it let go of the lock
/// descriptors (`-1` when no fork is under way or no lock was held).
static HANDOFF: [AtomicI32; 2] = [const { AtomicI32::new(-1) }; 2];
/// How long the parent waits for a forked child's word, at most (milliseconds).
const HANDOFF_WAIT_MS: libc::c_int = 2000;

/// Before a fork: no lock descriptor is opened or closed until it is done, and when locks
/// are held, a pipe for the child's word.
extern "C" fn before_fork() {
    take_fork_guard();
    if FDS.iter().all(|s| s.load(Ordering::Relaxed) < 0) {
        return;
    }
    let mut pipe = [-1; 2];
    // SAFETY: a valid array of two descriptors; on failure the parent just does not wait.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } == 0 {
        HANDOFF[0].store(pipe[0], Ordering::Relaxed);
        HANDOFF[1].store(pipe[1], Ordering::Relaxed);
    }
}

/// After a fork, in the parent: waits until the child has let go of the lock descriptors
/// (its first act), so that when `fork` returns no child shares a lock with this process.
extern "C" fn after_fork_parent() {
    let (r, w) = (
        HANDOFF[0].swap(-1, Ordering::Relaxed),
        HANDOFF[1].swap(-1, Ordering::Relaxed),
    );
    if r >= 0 {
        // SAFETY: the pipe made before the fork. Closing the write end first makes the read
        // end at the child's end (should the child die before writing). The wait is bounded
        // (another library's fork handler, run before npkio's, might hang the child): past
        // it, the child lets go of the lock whenever its handler runs.
        unsafe {
            libc::close(w);
            let mut p = libc::pollfd {
                fd: r,
                events: libc::POLLIN,
                revents: 0,
            };
            let mut waits = 0;
            while libc::poll(&mut p, 1, HANDOFF_WAIT_MS) < 0
                && *libc::__errno_location() == libc::EINTR
                && waits < 8
            {
                waits += 1;
            }
            libc::close(r);
        }
    }
    FORK_GUARD.store(false, Ordering::Release);
}

/// In a forked child: every recorded lock descriptor is made to refer to `/` instead of the
/// locked file description, then the parent is told. Only async-signal-safe calls; nothing
/// allocated.
extern "C" fn in_child() {
    // SAFETY: a valid NUL-terminated path; O_PATH opens need no permission but search.
    let root = unsafe { libc::open(c"/".as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    for slot in &FDS {
        let fd = slot.load(Ordering::Relaxed);
        if fd < 0 {
            continue;
        }
        // SAFETY: `fd` is a lock descriptor this process had open at the fork (the guard
        // kept the table exact); replacing or closing it touches nothing else.
        unsafe {
            if root < 0 || libc::dup3(root, fd, libc::O_CLOEXEC) < 0 {
                // Without `/` to point at: close it, and forget it so nothing closes the
                // number again.
                libc::close(fd);
                slot.store(-1, Ordering::Relaxed);
            }
        }
    }
    let (r, w) = (
        HANDOFF[0].swap(-1, Ordering::Relaxed),
        HANDOFF[1].swap(-1, Ordering::Relaxed),
    );
    // SAFETY: closes the descriptors opened above and the child's copies of the pipe, after
    // one byte to the parent.
    unsafe {
        if root >= 0 {
            libc::close(root);
        }
        if w >= 0 {
            libc::write(w, b"x".as_ptr().cast(), 1);
            libc::close(w);
        }
        if r >= 0 {
            libc::close(r);
        }
    }
    FORK_GUARD.store(false, Ordering::Release);
}

/// A descriptor a lock is (or will be) taken through: recorded in [`FDS`] from its opening
/// to its closing, so that a forked child lets go of it.
#[derive(Debug)]
struct LockFd {
    file: ManuallyDrop<File>,
    /// The slot of [`FDS`] it is recorded in (none when the table was full).
    slot: Option<usize>,
}

impl LockFd {
    /// Opens a lock descriptor with `open` and records it, with no fork in between.
    fn open(open: impl FnOnce() -> io::Result<File>) -> io::Result<LockFd> {
        register_fork_handlers();
        let _guard = ForkGuard::take();
        let file = open()?;
        let fd = file.as_raw_fd();
        let slot = FDS.iter().position(|s| {
            s.compare_exchange(-1, fd, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        });
        Ok(LockFd {
            file: ManuallyDrop::new(file),
            slot,
        })
    }

    fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for LockFd {
    fn drop(&mut self) {
        let _guard = ForkGuard::take();
        // SAFETY: `file` is taken once, here, and not used again.
        let file = unsafe { ManuallyDrop::take(&mut self.file) };
        let fd = file.as_raw_fd();
        match self.slot {
            Some(i) => {
                if FDS[i]
                    .compare_exchange(fd, -1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    drop(file);
                } else {
                    // This is a forked child whose fork handler closed it already: the
                    // number may belong to something else now.
                    let _ = file.into_raw_fd();
                }
            }
            None => drop(file),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Makes `flock` on directories fail on this thread, as NFS does.
        pub(super) static REFUSE_DIRECTORY_FLOCK: std::cell::Cell<bool> =
            const { std::cell::Cell::new(false) };
    }

    #[test]
    fn the_modes_that_let_some_users_write_a_directory_unread() {
        for m in [0o733, 0o730, 0o703, 0o333, 0o1733, 0o2730, 0o731] {
            assert!(writable_unread(m), "{m:o}");
        }
        for m in [0o755, 0o711, 0o777, 0o1777, 0o700, 0o750, 0o722, 0o751] {
            assert!(!writable_unread(m), "{m:o}");
        }
    }

    /// A FIFO at the lock file's name is neither opened nor waited on: ignored where no
    /// lock file is needed, an error where one is.
    #[test]
    fn a_fifo_at_the_lock_files_name_is_ignored_or_refused_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join(FALLBACK_LOCK);
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
        let out = dir.path().join("out.npk");
        drop(lock_output(&out, false).unwrap());
        REFUSE_DIRECTORY_FLOCK.set(true);
        let e = lock_output(&out, false).map(drop);
        REFUSE_DIRECTORY_FLOCK.set(false);
        assert_eq!(e.unwrap_err().kind(), ErrorKind::AlreadyExists);
    }

    /// A child forked while the lock is held through the fallback lock file does not keep
    /// it either.
    #[test]
    fn a_forked_child_does_not_keep_the_fallback_lock_file_locked() {
        REFUSE_DIRECTORY_FLOCK.set(true);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.npk");
        let lock = lock_output(&out, false).unwrap();
        assert!(dir.path().join(FALLBACK_LOCK).is_file());
        let mut pipe = [0; 2];
        // SAFETY: a valid array of two descriptors.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child only waits for a byte and leaves (async-signal-safe calls).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let mut b = 0u8;
            unsafe {
                libc::read(pipe[0], (&mut b as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        assert!(pid > 0);
        drop(lock);
        let again = lock_output(&out, false).map(drop);
        REFUSE_DIRECTORY_FLOCK.set(false);
        let mut status = 0;
        // SAFETY: our pipe and our child.
        unsafe {
            libc::write(pipe[1], b"x".as_ptr().cast(), 1);
            libc::waitpid(pid, &mut status, 0);
            libc::close(pipe[0]);
            libc::close(pipe[1]);
        }
        again.expect("the lock file, released by the parent while its forked child lives");
    }
}
