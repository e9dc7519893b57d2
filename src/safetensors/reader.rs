//! Reading SafeTensors files by memory-mapping them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde::Deserialize;

use crate::dtype::DType;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::view::TensorView;

/// One tensor's entry in the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Its dtype.
    pub dtype: DType,
    /// Its shape (empty for a 0-d tensor).
    pub shape: Vec<u64>,
    /// `[begin, end)` relative to the start of the data section.
    pub data_offsets: (u64, u64),
}

impl TensorInfo {
    /// Byte length.
    pub fn len(&self) -> u64 {
        self.data_offsets.1 - self.data_offsets.0
    }

    /// Whether the tensor has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

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
                crate::safe_open::open_inside(dir, name, what)?.file
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
        let opened = crate::safe_open::open_inside(dir, name, "shard")?;
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
        let read_at = |buf: &mut [u8], at: u64| -> Result<()> {
            use std::os::unix::fs::FileExt;
            match file.read_exact_at(buf, at) {
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(shrank()),
                r => r.ctx(path, "reading"),
            }
        };
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
            let mut err =
                Error::malformed(path, format!("invalid SafeTensors file: {}", describe(&e)));
            if let Some(name) = culprit(header.as_bytes(), &e) {
                err = err.array(name);
            }
            err
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
        let header_len = header.len() as u64;
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
            metadata: parsed.metadata,
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

/// A header, parsed and validated.
struct Parsed {
    /// In file order (by data offset).
    tensors: Vec<TensorInfo>,
    /// `__metadata__` in the header's order.
    metadata: Option<Vec<(String, String)>>,
    /// The first tensor whose dtype npkio does not support, and that dtype.
    unsupported: Option<(String, ::safetensors::Dtype)>,
}

/// The header's entries in the order they are written: each tensor's entry as the crate's
/// own `TensorInfo` deserializes it, and `__metadata__` as ordered pairs of strings (the
/// crate keeps a `HashMap`, which loses the order).
struct HeaderEntries {
    tensors: Vec<(String, Entry)>,
    metadata: Option<Vec<(String, String)>>,
}

/// One tensor's entry as the crate's own `TensorInfo` deserializes it (same fields, same
/// types, same names in messages), the dtype as the crate's, but the shape in npkio's
/// `u64`s, so that it moves into npkio's table without a copy.
#[derive(Deserialize)]
#[serde(rename = "TensorInfo")]
struct Entry {
    dtype: ::safetensors::Dtype,
    #[serde(deserialize_with = "shape_of_usizes")]
    shape: Vec<u64>,
    data_offsets: (usize, usize),
}

/// A sequence of `usize`s (what the crate's `Vec<usize>` accepts, with its messages),
/// kept as `u64`s.
fn shape_of_usizes<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<u64>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Vec<u64>, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(d) = seq.next_element::<usize>()? {
                v.push(d as u64);
            }
            Ok(v)
        }
    }
    d.deserialize_seq(V)
}

impl HeaderEntries {
    /// Parses `text` as `serde_json::from_str` would, with room for `capacity` tensors.
    fn parse(text: &str, capacity: usize) -> serde_json::Result<HeaderEntries> {
        struct Pairs(Vec<(String, String)>);
        impl<'de> Deserialize<'de> for Pairs {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Pairs;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a map of strings")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut m: A,
                    ) -> std::result::Result<Pairs, A::Error> {
                        let mut v: Vec<(String, String)> = Vec::new();
                        let mut at: std::collections::HashMap<String, usize> =
                            std::collections::HashMap::new();
                        while let Some((k, x)) = m.next_entry::<String, String>()? {
                            // As a map would: a key given again keeps its place, takes the
                            // new value.
                            match at.get(&k) {
                                Some(&i) => v[i].1 = x,
                                None => {
                                    at.insert(k.clone(), v.len());
                                    v.push((k, x));
                                }
                            }
                        }
                        Ok(Pairs(v))
                    }
                }
                d.deserialize_map(V)
            }
        }
        /// Room for the tensors.
        struct V(usize);
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = HeaderEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a SafeTensors header object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<HeaderEntries, A::Error> {
                let mut tensors = Vec::with_capacity(self.0);
                let mut metadata = None;
                let mut seen_metadata = false;
                while let Some(key) = m.next_key::<String>()? {
                    if key == "__metadata__" {
                        if seen_metadata {
                            return Err(serde::de::Error::duplicate_field("__metadata__"));
                        }
                        seen_metadata = true;
                        metadata = m.next_value::<Option<Pairs>>()?.map(|p| p.0);
                    } else {
                        tensors.push((key, m.next_value()?));
                    }
                }
                Ok(HeaderEntries { tensors, metadata })
            }
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let entries = serde::Deserializer::deserialize_map(&mut de, V(capacity))?;
        de.end()?;
        Ok(entries)
    }
}

/// The crate's header parsing and validation for a file of `file_len` bytes whose header
/// is `header` (after the 8-byte length), without a buffer as long as the file, and in one
/// pass over the header.
///
/// The crate's `read_metadata` wants the whole file as one buffer, though it reads only the
/// header and the buffer's length; and it keeps a map of every name that npkio would only
/// copy into its own table. Instead, the header is parsed once, every tensor's entry with
/// the fields and types of the crate's own `TensorInfo` (so the same headers are refused,
/// with the same messages), sorted by offsets as the crate sorts them, and validated with
/// the rules of the crate's `Metadata::validate`, in its order and with its errors (offsets
/// in order without gaps; each shape's element count and bit length without overflow, a
/// whole number of bytes, as long as the offsets say); a gap's tensor is named. The check
/// the crate's `read_metadata` adds, that the tensors end exactly at the end of the file,
/// is made too. When parsing fails, the crate's `read_metadata` runs on the header alone
/// to name the error exactly as the crate does. The names, shapes and `__metadata__` pairs
/// parsed move into npkio's table.
fn read_metadata(
    header: &str,
    file_len: u64,
) -> std::result::Result<Parsed, ::safetensors::SafeTensorError> {
    use ::safetensors::SafeTensorError as E;
    // The shortest entry (`"":{"dtype":"I8","shape":[],"data_offsets":[0,0]}`) takes 48
    // bytes: room for that many entries is never outgrown, and costs nothing where unused.
    let entries = match HeaderEntries::parse(header, header.len() / 48 + 1) {
        Ok(entries) => entries,
        Err(ours) => {
            let mut head = Vec::with_capacity(8 + header.len());
            head.extend_from_slice(&(header.len() as u64).to_le_bytes());
            head.extend_from_slice(header.as_bytes());
            return match ::safetensors::SafeTensors::read_metadata(&head) {
                // The crate takes what npkio does not (cannot be but for a header npkio's
                // one-pass parser refuses): npkio's reason.
                Ok(_) | Err(E::MetadataIncompleteBuffer) => {
                    Err(E::InvalidHeaderDeserialization(ours))
                }
                Err(e) => Err(e),
            };
        }
    };
    let HeaderEntries {
        mut tensors,
        metadata,
    } = entries;
    // The crate's order: by offsets, stable (entries of equal offsets, empty tensors, keep
    // the header's order).
    tensors.sort_by_key(|(_, t)| t.data_offsets);
    // A gap or overlap is named here (the crate names it too, by a search of its map).
    let mut at = 0usize;
    for (name, t) in &tensors {
        let (s, e) = t.data_offsets;
        if s != at || e < s {
            return Err(E::InvalidOffset(name.clone()));
        }
        at = e;
    }
    // The crate's `Metadata::validate`, entry by entry.
    for (_, t) in &tensors {
        let (s, e) = t.data_offsets;
        let bits = t
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
            .and_then(|n| n.checked_mul(t.dtype.bitsize()))
            .ok_or(E::ValidationOverflow)?;
        if bits % 8 != 0 {
            return Err(E::MisalignedSlice);
        }
        if e - s != bits / 8 {
            return Err(E::TensorInvalidInfo);
        }
    }
    let end = (at as u64).checked_add(8 + header.len() as u64);
    if end != Some(file_len) {
        return Err(E::MetadataIncompleteBuffer);
    }
    let mut unsupported = None;
    // In place where the layouts allow: no second table of every entry.
    let ours = tensors
        .into_iter()
        .filter_map(|(name, t)| match DType::from_safetensors(t.dtype) {
            Some(dtype) => Some(TensorInfo {
                name,
                dtype,
                shape: t.shape,
                data_offsets: (t.data_offsets.0 as u64, t.data_offsets.1 as u64),
            }),
            None => {
                if unsupported.is_none() {
                    unsupported = Some((name, t.dtype));
                }
                None
            }
        })
        .collect();
    Ok(Parsed {
        tensors: ours,
        metadata,
        unsupported,
    })
}

/// A readable account of the crate's error.
fn describe(e: &::safetensors::SafeTensorError) -> String {
    use ::safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => "file shorter than the 8-byte header length".into(),
        E::HeaderTooLarge => "header length above the 100,000,000-byte limit".into(),
        E::InvalidHeaderLength => "header length points past the end of the file".into(),
        E::InvalidHeader(_) => "header is not valid UTF-8".into(),
        E::InvalidHeaderDeserialization(err) => {
            format!("header is not valid SafeTensors JSON: {err}")
        }
        E::InvalidOffset(name) => {
            format!("tensor {name:?}: data_offsets leave a gap, overlap, or run backwards")
        }
        E::ValidationOverflow => "a tensor's element count overflows".into(),
        E::MisalignedSlice => "a tensor's size is not a whole number of bytes".into(),
        E::TensorInvalidInfo => "a tensor's shape and dtype do not match its data_offsets".into(),
        E::MetadataIncompleteBuffer => {
            "the tensors do not end exactly at the end of the file (truncated, or trailing bytes)"
                .into()
        }
        other => other.to_string(),
    }
}

/// The tensor a shape error is about: the crate's errors for these cases do not say.
fn culprit(header: &[u8], e: &::safetensors::SafeTensorError) -> Option<String> {
    use ::safetensors::SafeTensorError as E;
    if !matches!(
        e,
        E::ValidationOverflow | E::MisalignedSlice | E::TensorInvalidInfo
    ) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(header).ok()?;
    for (name, t) in v.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t.get("dtype")?.as_str()?;
        let bits = u64::from(DType::from_safetensors_name(dtype)?.bits());
        let shape: Option<Vec<u64>> = t
            .get("shape")?
            .as_array()?
            .iter()
            .map(|d| d.as_u64())
            .collect();
        let offsets = t.get("data_offsets")?.as_array()?;
        let (b, e2) = (offsets.first()?.as_u64()?, offsets.get(1)?.as_u64()?);
        let bytes = crate::dtype::element_count(&shape?).and_then(|n| n.checked_mul(bits));
        let bad = match (e, bytes) {
            (E::ValidationOverflow, None) => true,
            (E::MisalignedSlice, Some(bits)) => bits % 8 != 0,
            (E::TensorInvalidInfo, Some(bits)) => Some(bits / 8) != e2.checked_sub(b),
            _ => false,
        };
        if bad {
            return Some(name.clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::SafeTensorsFile;
    use crate::error::ErrorKind;

    /// Headers corrupted one byte at a time (deterministic): npkio's one-pass parser opens
    /// exactly the files the `safetensors` crate's `read_metadata` accepts, with the same
    /// tensors, but for what npkio refuses on purpose (a name given twice, a dtype it does
    /// not support).
    #[test]
    fn the_parser_accepts_what_the_crate_accepts() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/safetensors");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let (mut opened, mut refused) = (0, 0);
        for name in ["with_metadata.safetensors", "edge_cases.safetensors"] {
            let good = std::fs::read(root.join(name)).unwrap();
            let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
            for at in 0..8 + n {
                for b in [b'0', b'"', b'}', 0xff] {
                    if good[at] == b {
                        continue;
                    }
                    let mut bad = good.clone();
                    bad[at] = b;
                    std::fs::write(&p, &bad).unwrap();
                    let crate_says = ::safetensors::SafeTensors::read_metadata(&bad);
                    match (SafeTensorsFile::open(&p), crate_says) {
                        (Ok(f), Ok((_, meta))) => {
                            let mut ours: Vec<_> = f
                                .tensors()
                                .map(|t| (t.name.clone(), t.data_offsets))
                                .collect();
                            let mut theirs: Vec<_> = meta
                                .tensors()
                                .into_iter()
                                .map(|(k, t)| {
                                    let (b, e) = t.data_offsets;
                                    (k, (b as u64, e as u64))
                                })
                                .collect();
                            ours.sort();
                            theirs.sort();
                            assert_eq!(ours, theirs, "byte {at} = {b}");
                            opened += 1;
                        }
                        (Ok(_), Err(e)) => panic!("byte {at} = {b}: the crate refuses: {e}"),
                        (Err(e), Ok(_)) => {
                            let on_purpose = e.kind() == ErrorKind::Unsupported
                                || e.to_string().contains("names the tensor twice");
                            assert!(on_purpose, "byte {at} = {b}: npkio refuses: {e}");
                        }
                        (Err(_), Err(_)) => refused += 1,
                    }
                }
            }
        }
        assert!(
            opened > 10 && refused > 1000,
            "{opened} opened, {refused} refused"
        );
    }
}
