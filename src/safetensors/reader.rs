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
/// Opening reads the header only (the crate's validation runs over the mapping, which
/// touches the header pages alone); tensor bytes are read only when a view's data is used.
///
/// The mapping reflects the file: if another process truncates it while views are in use,
/// touching the missing pages raises SIGBUS. npkio's conversions never read tensor bytes
/// through the mapping (they use `pread`-style copies that report a short file as an error);
/// only the zero-copy view API does, and its users must not let the file be truncated.
#[derive(Debug)]
pub struct SafeTensorsFile {
    path: PathBuf,
    file: File,
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

#[derive(Deserialize)]
struct MetadataOnly {
    #[serde(rename = "__metadata__", default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl SafeTensorsFile {
    /// Opens and validates `path`.
    ///
    /// The file is opened without blocking (a FIFO is refused, not waited on) and must be a
    /// regular file.
    pub fn open(path: impl AsRef<Path>) -> Result<SafeTensorsFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = path.as_ref();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .ctx(path, "opening")?;
        let md = file.metadata().ctx(path, "inspecting")?;
        Self::from_file(path, file, md)
    }

    /// Opens `name`, a shard file name read from an index, inside `dir` (see `safe_open`:
    /// never through a link leading out, never blocking, a regular file).
    pub(crate) fn open_inside(dir: &Path, name: &str) -> Result<SafeTensorsFile> {
        let opened = crate::safe_open::open_inside(dir, name, "shard")?;
        let md = opened.file.metadata().ctx(&opened.path, "inspecting")?;
        Self::from_file(&opened.path, opened.file, md)
    }

    fn from_file(path: &Path, file: File, md: std::fs::Metadata) -> Result<SafeTensorsFile> {
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
        head.try_reserve_exact(8 + declared as usize).map_err(|_| {
            Error::io(
                path,
                "allocating memory for the header of",
                std::io::Error::from(std::io::ErrorKind::OutOfMemory),
            )
        })?;
        head.resize(8 + declared as usize, 0);
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
        head[..8].copy_from_slice(&len_bytes);
        read_at(&mut head[8..], 8)?;
        let (n, meta) = read_metadata(&head, file_len).map_err(|e| {
            let mut err =
                Error::malformed(path, format!("invalid SafeTensors file: {}", describe(&e)));
            if let Some(name) = culprit(&head[8..], &e) {
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
        head.drain(..8);
        let header = String::from_utf8(head).map_err(|_| {
            Error::malformed(path, "invalid SafeTensors file: header is not valid UTF-8")
        })?;
        let header_len = n as u64;
        let order = meta.offset_keys();
        let mut tensors = Vec::with_capacity(order.len());
        for name in order {
            let info = meta.info(&name).expect("offset_keys names a tensor");
            let dtype = DType::from_safetensors(info.dtype).ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!("dtype {} is not supported", info.dtype),
                )
                .at(path)
                .array(name.clone())
            })?;
            let shape = info.shape.iter().map(|&d| d as u64).collect();
            let data_offsets = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
            let t = TensorInfo {
                name,
                dtype,
                shape,
                data_offsets,
            };
            tensors.push(t);
        }
        // The crate keeps `__metadata__` in a HashMap; read it again to keep its order.
        let metadata = if meta.metadata().is_some() {
            let m: MetadataOnly = serde_json::from_str(&header)
                .map_err(|e| Error::malformed(path, format!("invalid SafeTensors header: {e}")))?;
            m.metadata.map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
        } else {
            None
        };
        Ok(SafeTensorsFile {
            path: path.to_path_buf(),
            file,
            map: Arc::new(map),
            header,
            header_len,
            by_name: sorted_by_name(&tensors),
            tensors: Arc::new(tensors),
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (for copies that read with `pread`).
    pub fn file(&self) -> &File {
        &self.file
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
    let mut v: Vec<usize> = (0..tensors.len()).collect();
    v.sort_unstable_by(|&a, &b| tensors[a].name.cmp(&tensors[b].name));
    v
}

/// The crate's header parsing and validation for a file of `file_len` bytes whose first
/// bytes (the length and the header) are `head`, without a buffer as long as the file.
///
/// The crate's `read_metadata` wants the whole file as one buffer, though it reads only the
/// header and the buffer's length. Instead, the header is parsed into the crate's `Metadata`
/// (whose deserialization runs the crate's own validation: offsets in order without gaps,
/// shapes and dtypes agreeing with the offsets), and the one check left, that the tensors
/// end exactly at the end of the file, is made here. When parsing fails, the crate's
/// `read_metadata` runs on `head` alone to name the error exactly as the crate does.
fn read_metadata(
    head: &[u8],
    file_len: u64,
) -> std::result::Result<(usize, ::safetensors::tensor::Metadata), ::safetensors::SafeTensorError> {
    use ::safetensors::SafeTensorError as E;
    let n = head.len() - 8;
    let parsed = std::str::from_utf8(&head[8..])
        .ok()
        .and_then(|text| serde_json::from_str::<::safetensors::tensor::Metadata>(text).ok());
    let Some(meta) = parsed else {
        return match ::safetensors::SafeTensors::read_metadata(head) {
            // Everything but the length check passed: cannot be, since parsing failed.
            Ok(_) | Err(E::MetadataIncompleteBuffer) => Err(E::InvalidHeaderDeserialization(
                serde_json::from_slice::<::safetensors::tensor::Metadata>(&head[8..])
                    .expect_err("parsing failed above"),
            )),
            Err(e) => Err(e),
        };
    };
    let end = (meta.data_len() as u64).checked_add(head.len() as u64);
    if end != Some(file_len) {
        return Err(E::MetadataIncompleteBuffer);
    }
    Ok((n, meta))
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
