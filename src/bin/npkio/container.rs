//! What a path on the command line is, and a uniform listing of its tensors.

use std::path::{Path, PathBuf};

use npkio::ArrayInfo;
use npkio::Checkpoint;
use npkio::{DType, NumPack, Result};

/// The kinds of input the command line recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A `.safetensors` file, or a sharded checkpoint: a `*.safetensors.index.json` and its
    /// shards (named by the index, or by a directory holding it).
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

/// Decides what `path` is without reading more than a directory listing (the library's
/// [`npkio::Container::detect`]): a NumPack directory, or a SafeTensors file or sharded
/// checkpoint.
pub fn detect(path: &Path) -> Result<Format> {
    if path.to_str().is_some_and(npkio::remote::is_url) {
        // Object storage: SafeTensors objects, indexes and prefixes holding them.
        return Ok(Format::SafeTensors);
    }
    Ok(if npkio::Container::detect(path)?.is_safetensors() {
        Format::SafeTensors
    } else {
        Format::NumPack
    })
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
    /// `[begin, end)` in the data section (of its shard); `None` for a NumPack array.
    pub data_offsets: Option<(u64, u64)>,
    /// The shard file holding it, for a sharded checkpoint.
    pub shard: Option<String>,
}

/// One shard of a sharded checkpoint.
#[derive(Clone, Debug)]
pub struct Shard {
    /// Its file name, as the index spells it.
    pub name: String,
    /// Number of tensors it holds.
    pub tensors: usize,
    /// Its file size.
    pub file_bytes: u64,
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
    /// File size of a SafeTensors file (all shards' for a sharded checkpoint); `None` for
    /// NumPack.
    pub file_bytes: Option<u64>,
    /// The shards of a sharded checkpoint; empty otherwise.
    pub shards: Vec<Shard>,
}

impl Container {
    /// Detects and opens `path`.
    pub fn open(path: &Path) -> Result<Container> {
        if path.to_str().is_some_and(npkio::remote::is_url) {
            return Self::open_remote(path);
        }
        match detect(path)? {
            Format::SafeTensors => Self::open_safetensors(path),
            Format::NumPack => Self::open_numpack(path),
        }
    }

    fn open_safetensors(path: &Path) -> Result<Container> {
        let c = Checkpoint::open(path)?;
        let shard_names = c.shard_names();
        let entries = c
            .infos()
            .enumerate()
            .map(|(i, t)| {
                let (shard, _) = c.location(i);
                let file = &c.shards()[shard];
                let len = t.len();
                Entry {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    bytes: len,
                    extents: if len == 0 {
                        Vec::new()
                    } else {
                        vec![(
                            file.path().to_path_buf(),
                            file.data_start() + t.data_offsets.0,
                            len,
                        )]
                    },
                    numpack: None,
                    data_offsets: Some(t.data_offsets),
                    shard: shard_names.get(shard).cloned(),
                }
            })
            .collect();
        let shards = if c.is_sharded() {
            c.shards()
                .iter()
                .zip(shard_names)
                .map(|(f, name)| Shard {
                    name: name.clone(),
                    tensors: f.len(),
                    file_bytes: f.file_len(),
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Container {
            format: Format::SafeTensors,
            path: path.to_path_buf(),
            entries,
            metadata: c.metadata().map(<[_]>::to_vec),
            file_bytes: Some(
                c.shards()
                    .iter()
                    .fold(0u64, |sum, f| sum.saturating_add(f.file_len())),
            ),
            shards,
        })
    }

    /// A checkpoint in object storage, as the loader sees it (headers only). Each file's
    /// data section starts at its first tensor's bytes (a header's offsets start at 0 and
    /// leave no gap) and ends at the file's end.
    fn open_remote(path: &Path) -> Result<Container> {
        let loader = npkio::load::Loader::open(path)?;
        let files: Vec<PathBuf> = loader.files().map(Path::to_path_buf).collect();
        // Per file: (data start, data bytes, tensors).
        let mut per_file = vec![(u64::MAX, 0u64, 0usize); files.len()];
        let located: Vec<Option<(usize, u64)>> = loader
            .tensors()
            .iter()
            .map(|t| loader.location(t))
            .collect();
        for (t, loc) in loader.tensors().iter().zip(&located) {
            if let Some((f, off)) = *loc {
                per_file[f].0 = per_file[f].0.min(off);
                per_file[f].1 = per_file[f].1.saturating_add(t.nbytes);
                per_file[f].2 += 1;
            }
        }
        let entries = loader
            .tensors()
            .iter()
            .zip(&located)
            .map(|(t, loc)| {
                let (extents, offsets, shard) = match *loc {
                    Some((f, off)) => {
                        let rel = off - per_file[f].0;
                        (
                            vec![(files[f].clone(), off, t.nbytes)],
                            Some((rel, rel + t.nbytes)),
                            Some(f),
                        )
                    }
                    None => (Vec::new(), Some((0, 0)), None),
                };
                Entry {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    bytes: t.nbytes,
                    extents,
                    numpack: None,
                    data_offsets: offsets,
                    shard: shard
                        .filter(|_| files.len() > 1)
                        .map(|f| file_name(&files[f])),
                }
            })
            .collect();
        let size = |(start, bytes, _): (u64, u64, usize)| {
            if start == u64::MAX {
                0
            } else {
                start.saturating_add(bytes)
            }
        };
        let shards = if loader.container() == npkio::Container::ShardedSafeTensors {
            files
                .iter()
                .zip(&per_file)
                .map(|(f, &p)| Shard {
                    name: file_name(f),
                    tensors: p.2,
                    file_bytes: size(p),
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Container {
            format: Format::SafeTensors,
            path: path.to_path_buf(),
            entries,
            metadata: loader.metadata().map(<[_]>::to_vec),
            file_bytes: Some(
                per_file
                    .iter()
                    .fold(0u64, |a, &p| a.saturating_add(size(p))),
            ),
            shards,
        })
    }

    fn open_numpack(path: &Path) -> Result<Container> {
        // One committed state: a store changed under the reading starts it again.
        NumPack::open_with(path, |store| Container::of_store(path, &store))
    }

    /// [`Container::open_numpack`] of the store opened.
    fn of_store(path: &Path, store: &NumPack) -> Result<Container> {
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
                shard: None,
            });
        }
        Ok(Container {
            format: Format::NumPack,
            path: path.to_path_buf(),
            entries,
            metadata: store.safetensors_metadata().map(<[_]>::to_vec),
            file_bytes: None,
            shards: Vec::new(),
        })
    }

    /// What it is, for messages: `safetensors`, `sharded safetensors, 2 shards`, `numpack`.
    pub fn describe(&self) -> String {
        match self.shards.len() {
            0 => self.format.name().to_string(),
            n => format!("sharded {}, {n} shards", self.format.name()),
        }
    }

    /// Sum of the tensors' logical bytes.
    pub fn total_bytes(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.bytes))
    }
}

/// The last segment of a path or URL.
fn file_name(p: &Path) -> String {
    let s = p.to_string_lossy();
    s.rsplit('/').next().unwrap_or(&s).to_string()
}
