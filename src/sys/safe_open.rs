//! Opening the files of a directory npkio reads (a NumPack directory, the shards beside a
//! SafeTensors index) without leaving it and without blocking.
//!
//! Every such file is opened through [`open_inside`]:
//!
//! - the relative path read from a file is checked first (`paths::checked_relative`: no
//!   `..`, no absolute path);
//! - each component is opened with `openat` relative to the one before, with `O_NOFOLLOW`,
//!   so that no symbolic link is followed on the way. Where a path does go through a link
//!   (accepted when it stays inside the directory), the whole path is resolved, refused if
//!   it leads outside, and the resolved path is then opened the same way, link-free;
//! - the last component is opened with `O_NONBLOCK`, so that a FIFO never hangs the open;
//! - the type is checked with `fstat` on the open descriptor (a regular file, nothing else),
//!   not with a separate `stat` that a swap could race.
//!
//! The length returned is the one `fstat` saw, for the caller to check against its limit
//! before reading anything ([`read_to_vec`]).

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use super::io::{cstr, openat};
use super::paths::checked_relative;
use crate::error::{Error, ErrorKind, IoContext, Result};

/// A regular file opened inside a directory, with the length `fstat` gave.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) file: File,
    pub(crate) len: u64,
    /// The path opened (the directory joined with the relative path), for messages.
    pub(crate) path: PathBuf,
}

/// Opens the directory `dir` itself (the caller named it: links to it are followed).
fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let c = cstr(dir.as_os_str())?;
    // O_PATH: searching a directory needs only its execute permission, as for any path.
    openat(libc::AT_FDCWD, &c, libc::O_PATH | libc::O_DIRECTORY, 0)
}

/// What kind of non-regular file a type is, for messages.
fn describe_type(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Why opening failed.
enum Failure {
    /// A symbolic link on the way (`ELOOP` with `O_NOFOLLOW`).
    Link,
    /// Something that is not a regular file (its description).
    NotRegular(&'static str),
    Io(io::Error),
}

/// Opens `comps` below `root`, following no link: directories with `O_DIRECTORY`, the file
/// with `O_NONBLOCK`; then checks with `fstat` that it is a regular file.
fn walk(root: &OwnedFd, comps: &[&OsStr], look: bool) -> std::result::Result<(File, u64), Failure> {
    let nofollow = libc::O_RDONLY | libc::O_NOFOLLOW;
    let mut owned: Option<OwnedFd> = None;
    let (last, dirs) = comps.split_last().expect("a checked path has a component");
    for c in dirs {
        let cur = owned.as_ref().unwrap_or(root).as_raw_fd();
        let name = cstr(c).map_err(Failure::Io)?;
        match openat(
            cur,
            &name,
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY,
            0,
        ) {
            Ok(fd) => owned = Some(fd),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(Failure::Link),
            // O_DIRECTORY|O_NOFOLLOW on a link may also say ENOTDIR: look at what it is.
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(match lstat_at(cur, &name) {
                    Ok(Kind::Symlink) => Failure::Link,
                    _ => Failure::Io(e),
                })
            }
            Err(e) => return Err(Failure::Io(e)),
        }
    }
    let cur = owned.as_ref().unwrap_or(root).as_raw_fd();
    let name = cstr(last).map_err(Failure::Io)?;
    // Look before opening, so that a device is not even opened (opening some has effects);
    // the check that counts is the fstat below, on what was opened.
    if look {
        match lstat_at(cur, &name) {
            Ok(Kind::Symlink) => return Err(Failure::Link),
            Ok(Kind::Other(kind)) => return Err(Failure::NotRegular(kind)),
            Ok(Kind::Regular) => {}
            Err(e) => return Err(Failure::Io(e)),
        }
    }
    let fd = match openat(cur, &name, nofollow | libc::O_NONBLOCK | libc::O_NOCTTY, 0) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(Failure::Link),
        Err(e) => return Err(Failure::Io(e)),
    };
    let file = File::from(fd);
    let md = file.metadata().map_err(Failure::Io)?;
    if !md.file_type().is_file() {
        return Err(Failure::NotRegular(describe_type(md.file_type())));
    }
    Ok((file, md.len()))
}

/// A file's type, from `lstat` of its name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Regular,
    Symlink,
    /// Anything else, described.
    Other(&'static str),
}

fn lstat_at(dir: RawFd, name: &CStr) -> io::Result<Kind> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid string and out pointer; the result is checked before `st` is read.
    let r = unsafe {
        libc::fstatat(
            dir,
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatat succeeded, so `st` is initialized.
    let mode = unsafe { st.assume_init() }.st_mode & libc::S_IFMT;
    Ok(match mode {
        libc::S_IFREG => Kind::Regular,
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFDIR => Kind::Other("a directory"),
        libc::S_IFIFO => Kind::Other("a FIFO"),
        libc::S_IFSOCK => Kind::Other("a socket"),
        libc::S_IFCHR => Kind::Other("a character device"),
        libc::S_IFBLK => Kind::Other("a block device"),
        _ => Kind::Other("not a regular file"),
    })
}

/// Opens `rel`, a path read from a file, inside `dir`: a regular file, reached without
/// leaving `dir` (links inside it are accepted), opened without blocking. `what` names the
/// file in messages ("data file", "segment manifest", ...).
///
/// A missing file is an error of kind [`ErrorKind::NotFound`]; a path that leaves the
/// directory or a file that is not a regular file is [`ErrorKind::Malformed`].
pub(crate) fn open_inside(dir: &Path, rel: &str, what: &str) -> Result<Opened> {
    let checked =
        checked_relative(rel).map_err(|m| Error::malformed(dir, format!("{what}: {m}")))?;
    open_checked(dir, &checked, rel, what)
}

/// [`open_inside`] for a path already checked by `checked_relative`.
pub(crate) fn open_checked(dir: &Path, checked: &Path, rel: &str, what: &str) -> Result<Opened> {
    let root = dir_handle(dir)?;
    let (file, len) = open_below(&root, dir, checked, rel, what, false)?;
    Ok(Opened {
        file,
        len,
        path: dir.join(checked),
    })
}

/// The directory `dir` itself, opened once (`O_PATH`: no read permission needed, no
/// listing), for [`open_below`] to open its files relative to it.
pub(crate) fn dir_handle(dir: &Path) -> Result<OwnedFd> {
    open_dir(dir).ctx(dir, "opening the directory")
}

/// The named components of `path` (what `checked_relative` leaves: no root, `.` or `..`).
fn normal_components(path: &Path) -> Vec<&OsStr> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// Opens `checked` (a path checked by `checked_relative`) below `root`, the directory `dir`
/// opened by [`dir_handle`], as [`open_inside`] does: one `openat` per component, no link
/// followed out of the directory, no blocking, and a regular file by `fstat` of the
/// descriptor. Returns the file and the length `fstat` saw.
///
/// `listed_regular` says that a listing of the directory showed a regular file under this
/// (one-component) name: the look before opening (`fstatat`, so that a device is not even
/// opened) is then skipped. The `fstat` of what was opened still decides; a device put in
/// its place since the listing needs the rights to make device nodes in the directory.
pub(crate) fn open_below(
    root: &OwnedFd,
    dir: &Path,
    checked: &Path,
    rel: &str,
    what: &str,
    listed_regular: bool,
) -> Result<(File, u64)> {
    let comps = normal_components(checked);
    if comps.is_empty() {
        return Err(Error::malformed(
            dir,
            format!("{what} {rel:?} names the directory"),
        ));
    }
    let fail = |f: Failure, at: &Path| -> Error {
        match f {
            Failure::Link => Error::malformed(
                dir,
                format!("{what} {rel:?}: a symbolic link changed while being opened"),
            ),
            Failure::NotRegular(kind) => {
                Error::malformed(at, format!("{what} {rel:?} is {kind}, not a regular file"))
            }
            Failure::Io(e) if e.kind() == io::ErrorKind::NotFound => {
                Error::new(ErrorKind::NotFound, format!("{what} {rel:?} is missing")).at(dir)
            }
            Failure::Io(e) => Error::io(at, "opening", e),
        }
    };
    let look = !(listed_regular && comps.len() == 1);
    match walk(root, &comps, look) {
        Ok(opened) => return Ok(opened),
        Err(Failure::Link) => {}
        Err(f) => return Err(fail(f, &dir.join(checked))),
    }
    // A link on the way: resolve the whole path, refuse it if it leaves the directory, and
    // open what it resolves to, link-free, below the resolved directory.
    let path = dir.join(checked);
    let canon_dir = dir.canonicalize().ctx(dir, "resolving")?;
    let canon = path
        .canonicalize()
        .map_err(|e| fail(Failure::Io(e), &path))?;
    let inner = canon.strip_prefix(&canon_dir).map_err(|_| {
        Error::malformed(dir, format!("{what} {rel:?} leads outside the directory"))
    })?;
    let comps = normal_components(inner);
    if comps.is_empty() {
        return Err(Error::malformed(
            dir,
            format!("{what} {rel:?} leads to the directory itself"),
        ));
    }
    let root = open_dir(&canon_dir).ctx(dir, "opening the directory")?;
    walk(&root, &comps, true).map_err(|f| fail(f, &path))
}

/// Calls `each(name, type)` for the entries of the directory `root` (opened by
/// [`dir_handle`]) but `.` and `..`, with the type `getdents` gave (`libc::DT_*`;
/// `DT_UNKNOWN` where the filesystem does not say): one pass over the directory, nothing
/// kept (the caller keeps what it needs).
pub(crate) fn list_dir(root: &OwnedFd, mut each: impl FnMut(&[u8], u8)) -> io::Result<()> {
    let fd = openat(
        root.as_raw_fd(),
        c".",
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )?;
    // SAFETY: `fd` is an open directory descriptor; fdopendir takes it over (closedir below
    // closes it), so it is released from the OwnedFd first.
    let dirp = unsafe { libc::fdopendir(fd.as_raw_fd()) };
    if dirp.is_null() {
        return Err(io::Error::last_os_error());
    }
    let _ = fd.into_raw_fd();
    let result = loop {
        // SAFETY: errno is thread-local; cleared so that an end of directory (NULL with errno
        // 0) is told from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `dirp` is a live DIR stream owned by this function.
        let ent = unsafe { libc::readdir64(dirp) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break match e.raw_os_error() {
                Some(0) | None => Ok(()),
                _ => Err(e),
            };
        }
        // SAFETY: readdir returned a valid entry, live until the next readdir call; its
        // name is NUL-terminated.
        let (name, kind) = unsafe {
            let ent = &*ent;
            (CStr::from_ptr(ent.d_name.as_ptr()).to_bytes(), ent.d_type)
        };
        if name != b"." && name != b".." {
            each(name, kind);
        }
    };
    // SAFETY: `dirp` came from fdopendir and is closed once.
    unsafe { libc::closedir(dirp) };
    result
}

/// [`open_inside`] relative to `root`, the directory `dir` opened by [`dir_handle`] (no
/// directory open per file). `listed_regular` as in [`open_below`].
pub(crate) fn open_member(
    root: &OwnedFd,
    dir: &Path,
    rel: &str,
    what: &str,
    listed_regular: bool,
) -> Result<Opened> {
    let checked =
        checked_relative(rel).map_err(|m| Error::malformed(dir, format!("{what}: {m}")))?;
    let (file, len) = open_below(root, dir, &checked, rel, what, listed_regular)?;
    Ok(Opened {
        file,
        len,
        path: dir.join(checked),
    })
}

/// Like [`open_inside`], `None` when the file does not exist.
pub(crate) fn open_inside_if_present(dir: &Path, rel: &str, what: &str) -> Result<Option<Opened>> {
    match open_inside(dir, rel, what) {
        Ok(o) => Ok(Some(o)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens a file the caller named (links are followed: the user chose the path), without
/// blocking, and checks that it is a regular file.
pub(crate) fn open_regular(path: &Path, what: &str) -> Result<Opened> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblock()
        .open(path)
        .ctx(path, "opening")?;
    let md = file.metadata().ctx(path, "inspecting")?;
    if !md.file_type().is_file() {
        let kind = describe_type(md.file_type());
        let k = if md.is_dir() {
            ErrorKind::InvalidArgument
        } else {
            ErrorKind::Malformed
        };
        return Err(Error::new(k, format!("{what} is {kind}, not a regular file")).at(path));
    }
    Ok(Opened {
        file,
        len: md.len(),
        path: path.to_path_buf(),
    })
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
    }
}

/// Reads the whole of `o`, refusing more than `limit` bytes before reading anything (and
/// never reading past it, should the file grow meanwhile).
pub(crate) fn read_to_vec(o: Opened, limit: u64, what: &str) -> Result<Vec<u8>> {
    if o.len > limit {
        return Err(Error::malformed(
            &o.path,
            format!("{what} is {} bytes, more than the {limit} allowed", o.len),
        ));
    }
    let mut buf = Vec::new();
    buf.try_reserve_exact(o.len as usize).map_err(|_| {
        Error::io(
            &o.path,
            "reading",
            io::Error::from(io::ErrorKind::OutOfMemory),
        )
    })?;
    (&o.file)
        .take(limit)
        .read_to_end(&mut buf)
        .ctx(&o.path, "reading")?;
    Ok(buf)
}
