//! What a path on the command line is, and a uniform listing of its tensors.

use std::fs;
use std::path::{Path, PathBuf};

use npkio::numpack::ArrayInfo;
use npkio::safetensors::SafeTensorsFile;
use npkio::{DType, Error, ErrorKind, NumPack, Result};

/// The kinds of input the command line recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A single `.safetensors` file.
    SafeTensors,
    /// A NumPack 0.7 directory (holds `metadata.npkm`).
    NumPack,
}

impl Format {
    /// The name used in JSON output and messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::SafeTensors => "safetensors",
            Format::NumPack => "numpack",
        }
    }
}

/// The file name of NumPack's metadata, which marks a NumPack directory.
const NUMPACK_METADATA: &str = "metadata.npkm";

/// Decides what `path` is without reading more than a directory listing.
///
/// A directory is a NumPack directory; a file is a SafeTensors file. A sharded checkpoint
/// (`*.safetensors.index.json`, or a directory holding one and no `metadata.npkm`) is
/// refused as unsupported: the library does not read sharded checkpoints yet.
pub fn detect(path: &Path) -> Result<Format> {
    let md = fs::metadata(path).map_err(|e| Error::io(path, "opening", e))?;
    if md.is_dir() {
        if path.join(NUMPACK_METADATA).exists() {
            return Ok(Format::NumPack);
        }
        if let Some(index) = find_index(path) {
            return Err(sharded_unsupported(&index));
        }
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "is a directory but not a NumPack directory (no metadata.npkm)",
        )
        .at(path));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase());
    if name.is_some_and(|n| n.ends_with(".json")) {
        return Err(sharded_unsupported(path));
    }
    Ok(Format::SafeTensors)
}

/// A `*.safetensors.index.json` directly inside `dir`, if any.
fn find_index(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".safetensors.index.json"))
        })
}

fn sharded_unsupported(path: &Path) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        "sharded checkpoints (a .safetensors.index.json and its shards) are not supported yet; \
         give one shard at a time",
    )
    .at(path)
}

/// One tensor as the command line shows and compares it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The exact name.
    pub name: String,
    /// The true dtype.
    pub dtype: DType,
    /// The logical shape.
    pub shape: Vec<u64>,
    /// Logical byte length.
    pub bytes: u64,
    /// Where the bytes are, in order: (file, offset, length). Empty runs are omitted.
    pub extents: Vec<(PathBuf, u64, u64)>,
    /// NumPack storage details; `None` for a SafeTensors tensor.
    pub numpack: Option<ArrayInfo>,
    /// `[begin, end)` in the data section; `None` for a NumPack array.
    pub data_offsets: Option<(u64, u64)>,
}

/// A container opened for reading: its tensors and metadata. Opening reads headers and
/// metadata only, never tensor bytes.
#[derive(Debug)]
pub struct Container {
    /// What it is.
    pub format: Format,
    /// The path given.
    pub path: PathBuf,
    /// Tensors: file order for SafeTensors, sorted names for NumPack.
    pub entries: Vec<Entry>,
    /// The SafeTensors `__metadata__` (a NumPack directory's is the one of its source file).
    pub metadata: Option<Vec<(String, String)>>,
    /// File size of a SafeTensors file; `None` for NumPack.
    pub file_bytes: Option<u64>,
}

impl Container {
    /// Detects and opens `path`.
    pub fn open(path: &Path) -> Result<Container> {
        match detect(path)? {
            Format::SafeTensors => Self::open_safetensors(path),
            Format::NumPack => Self::open_numpack(path),
        }
    }

    fn open_safetensors(path: &Path) -> Result<Container> {
        let f = SafeTensorsFile::open(path)?;
        let start = f.data_start();
        let entries = f
            .tensors()
            .map(|t| {
                let len = t.len();
                Entry {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    bytes: len,
                    extents: if len == 0 {
                        Vec::new()
                    } else {
                        vec![(path.to_path_buf(), start + t.data_offsets.0, len)]
                    },
                    numpack: None,
                    data_offsets: Some(t.data_offsets),
                }
            })
            .collect();
        Ok(Container {
            format: Format::SafeTensors,
            path: path.to_path_buf(),
            entries,
            metadata: f.metadata().map(<[_]>::to_vec),
            file_bytes: Some(f.file_len()),
        })
    }

    fn open_numpack(path: &Path) -> Result<Container> {
        let store = NumPack::open(path)?;
        let mut entries = Vec::with_capacity(store.len());
        for name in store.names() {
            let info = store.info(name)?;
            let extents = store
                .array_extents(name)?
                .into_iter()
                .map(|e| (store.path().join(&e.file), e.offset, e.len))
                .collect();
            entries.push(Entry {
                name: info.name.clone(),
                dtype: info.dtype,
                shape: info.shape.clone(),
                bytes: info.nbytes,
                extents,
                numpack: Some(info),
                data_offsets: None,
            });
        }
        Ok(Container {
            format: Format::NumPack,
            path: path.to_path_buf(),
            entries,
            metadata: store.safetensors_metadata().map(<[_]>::to_vec),
            file_bytes: None,
        })
    }

    /// Sum of the tensors' logical bytes.
    pub fn total_bytes(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.bytes))
    }
}
