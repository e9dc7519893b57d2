//! Reading SafeTensors files by memory-mapping them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dtype::DType;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::view::TensorView;
use memmap2::Mmap;

pub use super::header::TensorInfo;
use super::header::{culprit, describe, read_metadata};

/// An owned, zero-copy tensor: it keeps the file's mapping alive, so it may outlive the
/// [`SafeTensorsFile`] it came from.
#[derive(Clone, Debug)]
pub struct Tensor {
    infos: Arc<Vec<TensorInfo>>,
    i: usize,
    map: Arc<Mmap>,
    start: usize,
    end: usize,
}

impl Tensor {
    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.infos[self.i].name
    }

    /// Its dtype.
    pub fn dtype(&self) -> DType {
        self.infos[self.i].dtype
    }

    /// Its shape.
    pub fn shape(&self) -> &[u64] {
        &self.infos[self.i].shape
    }

    /// Its bytes, borrowed from the mapping.
    pub fn data(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }
}

/// A SafeTensors file, mapped and validated.
///
/// Opening reads the header only, with `pread`; tensor bytes are read only when a view's
/// data is used.
///
/// An open `SafeTensorsFile` holds no file descriptor: the mapping keeps the file, and the
/// descriptor used to read the header and map it is closed before `open` returns, so a
/// checkpoint of any number of shards can be open under a small open-file limit. Copies
/// that read with `pread` open the file again with [`SafeTensorsFile::reopen`], which
/// checks that it is still the file that was validated.
///
/// The mapping reflects the file: if another process truncates it while views are in use,
/// touching the missing pages raises SIGBUS. npkio's conversions never read tensor bytes
/// through the mapping (they use `pread`-style copies that report a short file as an error);
/// only the zero-copy view API does, and its users must not let the file be truncated.
#[derive(Debug)]
pub struct SafeTensorsFile {
    path: PathBuf,
    /// How to open the file again, and what it must be when opened.
    reopener: Reopener,
    map: Arc<Mmap>,
    /// The header JSON, padding included, as read with `pread`.
    header: String,
    header_len: u64,
    /// In file order; shared with the [`Tensor`]s handed out.
    tensors: Arc<Vec<TensorInfo>>,
    /// Positions in `tensors` sorted by name, for lookups by name (no second copy of every
    /// name, as a hash map would keep).
    by_name: Vec<usize>,
    metadata: Option<Vec<(String, String)>>,
}

/// Opens a validated file again and checks that it is still that file.
#[derive(Clone, Debug)]
pub(crate) struct Reopener {
    path: PathBuf,
    route: Reopen,
    id: FileId,
}

impl Reopener {
    /// For `file`, just opened and checked as `name` inside `dir` (a NumPack data file, say):
    /// [`Reopener::open`] opens it again the same way (`safe_open::open_inside`) and checks
    /// that it is still this file.
    pub(crate) fn inside(
        dir: &Path,
        name: &str,
        what: &'static str,
        file: &File,
    ) -> Result<Reopener> {
        let path = dir.join(name);
        let md = file.metadata().ctx(&path, "inspecting")?;
        Ok(Reopener {
            path,
            route: Reopen::Inside {
                dir: dir.to_path_buf(),
                name: name.to_string(),
                what,
            },
            id: FileId::of(&md),
        })
    }

    /// See [`SafeTensorsFile::reopen`].
    pub(crate) fn open(&self) -> Result<File> {
        let file = match &self.route {
            Reopen::Path => open_nonblocking(&self.path)?,
            Reopen::Inside { dir, name, what } => {
                crate::sys::safe_open::open_inside(dir, name, what)?.file
            }
        };
        let md = file.metadata().ctx(&self.path, "inspecting")?;
        let now = FileId::of(&md);
        if now != self.id {
            let what = if (now.dev, now.ino) != (self.id.dev, self.id.ino) {
                "replaced by another file".to_string()
            } else {
                format!("{} bytes long, not {}", now.len, self.id.len)
            };
            return Err(Error::malformed(
                &self.path,
                format!("the file changed while being read: it is now {what}"),
            ));
        }
        Ok(file)
    }
}

/// The route by which a file was opened, taken again by [`SafeTensorsFile::reopen`].
#[derive(Clone, Debug)]
enum Reopen {
    /// A path the caller named.
    Path,
    /// A name inside a directory (`safe_open::open_inside`): a shard inside the index's
    /// directory, or a NumPack data file; `what` names it in messages.
    Inside {
        dir: PathBuf,
        name: String,
        what: &'static str,
    },
}

/// What identifies the file that was validated: device, inode and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
}

impl FileId {
    fn of(md: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: md.dev(),
            ino: md.ino(),
            len: md.len(),
        }
    }
}

/// Opens `path` for reading without blocking (a FIFO is refused, not waited on).
fn open_nonblocking(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ctx(path, "opening")
}

impl SafeTensorsFile {
    /// Opens and validates `path`.
    ///
    /// The file is opened without blocking (a FIFO is refused, not waited on) and must be a
    /// regular file.
    pub fn open(path: impl AsRef<Path>) -> Result<SafeTensorsFile> {
        let path = path.as_ref();
        let file = open_nonblocking(path)?;
        let md = file.metadata().ctx(path, "inspecting")?;
        Self::from_file(path, file, md, Reopen::Path)
    }

    /// Opens `name`, a shard file name read from an index, inside `dir` (see `safe_open`:
    /// never through a link leading out, never blocking, a regular file).
    pub(crate) fn open_inside(dir: &Path, name: &str) -> Result<SafeTensorsFile> {
        let opened = crate::sys::safe_open::open_inside(dir, name, "shard")?;
        let md = opened.file.metadata().ctx(&opened.path, "inspecting")?;
        let reopen = Reopen::Inside {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            what: "shard",
        };
        Self::from_file(&opened.path, opened.file, md, reopen)
    }

    /// Opens the file again (by the same route as at first: the path, or the shard name
    /// inside the index's directory) for reading with `pread`. The file opened must be the
    /// one validated: same device, inode and length; a file replaced or resized since is an
    /// error of kind `Malformed` naming it.
    pub fn reopen(&self) -> Result<File> {
        self.reopener.open()
    }

    /// What [`SafeTensorsFile::reopen`] needs, without the mapping and the header.
    pub(crate) fn reopener(&self) -> Reopener {
        self.reopener.clone()
    }

    fn from_file(
        path: &Path,
        file: File,
        md: std::fs::Metadata,
        reopen: Reopen,
    ) -> Result<SafeTensorsFile> {
        if md.is_dir() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "is a directory, not a SafeTensors file",
            )
            .at(path));
        }
        if !md.is_file() {
            return Err(Error::malformed(
                path,
                "not a SafeTensors file: not a regular file (a FIFO, socket or device)",
            ));
        }
        if md.len() < 8 {
            return Err(Error::malformed(
                path,
                format!(
                    "not a SafeTensors file: {} bytes, shorter than the 8-byte header length",
                    md.len()
                ),
            ));
        }
        let file_len = md.len();
        // The header is read with pread, not through a mapping: a file that another process
        // truncates while we open it yields an error, never SIGBUS.
        let shrank = || {
            Error::malformed(
                path,
                "not a SafeTensors file any more: it shrank while being opened",
            )
        };
        let head = parse_header(path, file_len, |buf: &mut [u8], at: u64| -> Result<()> {
            use std::os::unix::fs::FileExt;
            match file.read_exact_at(buf, at) {
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(shrank()),
                r => r.ctx(path, "reading"),
            }
        })?;
        // The mapping serves the zero-copy views only. It must show the file that was
        // validated: if the file changed size since, refuse it.
        // SAFETY: the mapping is read-only. If another process shrinks the file while it is
        // mapped, touching pages past the new end raises SIGBUS; only the zero-copy view API
        // reads through the mapping, and its documentation says so. Conversions read through
        // `pread`.
        let map = unsafe { Mmap::map(&file) }.ctx(path, "mapping")?;
        if map.len() as u64 != file_len {
            return Err(Error::malformed(
                path,
                "the file changed size while being opened",
            ));
        }
        // The mapping keeps the file: the descriptor is not needed any more.
        drop(file);
        let ParsedHeader {
            header,
            tensors,
            by_name,
            metadata,
        } = head;
        let header_len = header.len() as u64;
        Ok(SafeTensorsFile {
            path: path.to_path_buf(),
            reopener: Reopener {
                path: path.to_path_buf(),
                route: reopen,
                id: FileId::of(&md),
            },
            map: Arc::new(map),
            header,
            header_len,
            by_name,
            tensors: Arc::new(tensors),
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Offset of the data section in the file: 8 + header length.
    pub fn data_start(&self) -> u64 {
        8 + self.header_len
    }

    /// The header JSON, padding included (the crate has checked that it is UTF-8).
    pub fn header_json(&self) -> &str {
        &self.header
    }

    /// Total file length.
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Tensors in file order (by data offset).
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = &TensorInfo> {
        self.tensors.iter()
    }

    /// The header entries in file order, taken out of the file (without a copy unless a
    /// [`Tensor`] of the file is still alive); the mapping and the header are released.
    pub(crate) fn into_tensors(self) -> Vec<TensorInfo> {
        Arc::try_unwrap(self.tensors).unwrap_or_else(|shared| (*shared).clone())
    }

    /// Tensors in file order, as a slice.
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the file has no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The position of a tensor in file order.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.by_name
            .binary_search_by(|&i| self.tensors[i].name.as_str().cmp(name))
            .ok()
            .map(|k| self.by_name[k])
    }

    /// A tensor's header entry.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.position(name).map(|i| &self.tensors[i])
    }

    /// The `i`-th tensor's header entry, in file order.
    pub fn tensor_info(&self, i: usize) -> Option<&TensorInfo> {
        self.tensors.get(i)
    }

    /// The `__metadata__` pairs in file order, `None` when the header has none.
    pub fn metadata(&self) -> Option<&[(String, String)]> {
        self.metadata.as_deref()
    }

    fn range(&self, t: &TensorInfo) -> (usize, usize) {
        let s = self.data_start() + t.data_offsets.0;
        let e = self.data_start() + t.data_offsets.1;
        (s as usize, e as usize)
    }

    /// A borrowed view of the `i`-th tensor in file order.
    pub fn view(&self, i: usize) -> Option<TensorView<'_>> {
        let t = self.tensors.get(i)?;
        let (s, e) = self.range(t);
        Some(TensorView {
            name: &t.name,
            dtype: t.dtype,
            shape: &t.shape,
            data: &self.map[s..e],
            borrowed: true,
        })
    }

    /// A borrowed view of a tensor by name.
    pub fn get(&self, name: &str) -> Option<TensorView<'_>> {
        self.view(self.position(name)?)
    }

    /// An owned zero-copy tensor (keeps the mapping alive).
    pub fn tensor(&self, i: usize) -> Option<Tensor> {
        let t = self.tensors.get(i)?;
        let (start, end) = self.range(t);
        Some(Tensor {
            infos: Arc::clone(&self.tensors),
            i,
            map: Arc::clone(&self.map),
            start,
            end,
        })
    }
}

/// Headers longer than this are parsed only when [`PARSE_MEMORY_FACTOR`] times their length
/// can be reserved.
const PARSE_PROBE_FROM: u64 = 1 << 20;
/// Memory a header takes while parsed, per byte of header (measured: about 7 for a header
/// of a million one-dimensional tensors).
const PARSE_MEMORY_FACTOR: usize = 10;

/// A SafeTensors header read and validated: its text, its tensors in file order, their
/// order by name, and `__metadata__`.
pub(crate) struct ParsedHeader {
    pub(crate) header: String,
    pub(crate) tensors: Vec<TensorInfo>,
    pub(crate) by_name: Vec<usize>,
    pub(crate) metadata: Option<Vec<(String, String)>>,
}

/// Reads the header of a SafeTensors file of `file_len` bytes (at least 8) through
/// `read_at(buf, offset)`, which fills `buf` exactly or fails, and validates it: the one
/// route for local files and objects in object storage alike. Errors name `path`.
pub(crate) fn parse_header(
    path: &Path,
    file_len: u64,
    mut read_at: impl FnMut(&mut [u8], u64) -> Result<()>,
) -> Result<ParsedHeader> {
    let mut len_bytes = [0u8; 8];
    read_at(&mut len_bytes, 0)?;
    let declared = u64::from_le_bytes(len_bytes);
    let past_end = declared > file_len - 8;
    let over_limit = declared > crate::safetensors::writer::MAX_HEADER_SIZE as u64;
    if past_end || over_limit {
        let mut msg = format!("invalid SafeTensors file: header length {declared}");
        if over_limit {
            msg.push_str(" is above the 100,000,000-byte limit");
        }
        if past_end {
            if over_limit {
                msg.push_str(" and");
            }
            msg.push_str(&format!(
                " points past the end of the file ({} bytes)",
                file_len
            ));
        }
        return Err(Error::malformed(path, msg));
    }
    // The header is at most 100 MB (checked above); failing to get that memory is a
    // resource error, not a malformed file.
    let mut head = Vec::new();
    head.try_reserve_exact(declared as usize).map_err(|_| {
        Error::io(
            path,
            "allocating memory for the header of",
            std::io::Error::from(std::io::ErrorKind::OutOfMemory),
        )
    })?;
    head.resize(declared as usize, 0);
    // Parsing a header takes several times its length in memory (names, shapes, maps),
    // and an allocation that fails while parsing aborts the process. Make sure that much
    // address space can be had first, so that a header too large for the memory
    // available (as under `ulimit -v`) is an error, not an abort.
    if declared > PARSE_PROBE_FROM {
        let mut probe: Vec<u8> = Vec::new();
        probe
            .try_reserve_exact((declared as usize).saturating_mul(PARSE_MEMORY_FACTOR))
            .map_err(|_| {
                Error::io(
                    path,
                    "finding memory to parse the header of",
                    std::io::Error::from(std::io::ErrorKind::OutOfMemory),
                )
            })?;
    }
    read_at(&mut head, 8)?;
    let header = String::from_utf8(head).map_err(|_| {
        Error::malformed(path, "invalid SafeTensors file: header is not valid UTF-8")
    })?;
    let parsed = read_metadata(&header, file_len).map_err(|e| {
        let mut err = Error::malformed(path, format!("invalid SafeTensors file: {}", describe(&e)));
        if let Some(name) = culprit(header.as_bytes(), &e) {
            err = err.array(name);
        }
        err
    })?;
    if let Some((name, dtype)) = parsed.unsupported {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("dtype {dtype} is not supported"),
        )
        .at(path)
        .array(name));
    }
    let tensors = parsed.tensors;
    let by_name = sorted_by_name(&tensors);
    if let Some(w) = by_name
        .windows(2)
        .find(|w| tensors[w[0]].name == tensors[w[1]].name)
    {
        return Err(Error::malformed(
            path,
            "invalid SafeTensors file: the header names the tensor twice",
        )
        .array(tensors[w[0]].name.clone()));
    }
    Ok(ParsedHeader {
        header,
        tensors,
        by_name,
        metadata: parsed.metadata,
    })
}

/// Positions of `tensors` sorted by name.
fn sorted_by_name(tensors: &[TensorInfo]) -> Vec<usize> {
    // Sorting the names beside their positions, not positions looking the names up, keeps
    // what each comparison reads together (a header may name a million tensors).
    let mut v: Vec<(&str, usize)> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    v.sort_unstable_by(|a, b| a.0.cmp(b.0));
    v.into_iter().map(|(_, i)| i).collect()
}
