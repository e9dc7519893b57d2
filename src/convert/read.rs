//! The read-only side of the API: a checkpoint's metadata ([`get_safetensors_metadata`]), its
//! tensors as zero-copy views ([`iter_safetensors`]), and a NumPack directory's arrays as
//! tensors ([`to_safetensors`]). Nothing here writes.

use std::path::Path;

use super::select_arrays;
use crate::dtype::DType;
use crate::error::Result;
use crate::numpack::NumPack;
use crate::safetensors::index::Checkpoint;
use crate::safetensors::Tensor;
use crate::view::TensorView;

/// One tensor as `get_safetensors_metadata` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMeta {
    /// Dtype.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<u64>,
    /// `[begin, end)` relative to the data section of its file.
    pub data_offsets: (u64, u64),
    /// The shard file holding it, for a sharded checkpoint.
    pub shard: Option<String>,
}

/// What `get_safetensors_metadata` returns: the tensors (in file order) and `__metadata__`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafeTensorsMetadata {
    /// (name, tensor) in file order (shard by shard for a sharded checkpoint).
    pub tensors: Vec<(String, TensorMeta)>,
    /// The `__metadata__` pairs in file order; `None` when the file has none. For a sharded
    /// checkpoint, the first shard's.
    pub metadata: Option<Vec<(String, String)>>,
}

/// Reads a SafeTensors file's header (or a sharded checkpoint's index and every shard's
/// header): every tensor's dtype, shape and offsets, and the `__metadata__`. No tensor byte
/// is read, whatever the file's size.
///
/// A URL of object storage (`s3://`, `gs://`, `az://`, `http(s)://`, see [`crate::remote`])
/// naming a SafeTensors object, an index or a prefix holding one is read the same way, by
/// the loader's first ranged GETs.
pub fn get_safetensors_metadata(path: impl AsRef<Path>) -> Result<SafeTensorsMetadata> {
    let path = path.as_ref();
    if path.to_str().is_some_and(crate::remote::is_url) {
        return remote_metadata(&crate::load::Loader::open(path)?);
    }
    let c = Checkpoint::open(path)?;
    let metadata = c.metadata().map(<[_]>::to_vec);
    let names = c.shard_names().to_vec();
    let mut tensors = Vec::with_capacity(c.len());
    // Shard by shard, each in file order (the checkpoint's order), names and shapes moved
    // out of the parsed headers rather than copied.
    for (s, shard) in c.into_shards().into_iter().enumerate() {
        for t in shard.into_tensors() {
            let meta = TensorMeta {
                dtype: t.dtype,
                shape: t.shape,
                data_offsets: t.data_offsets,
                shard: names.get(s).cloned(),
            };
            tensors.push((t.name, meta));
        }
    }
    Ok(SafeTensorsMetadata { tensors, metadata })
}

/// [`get_safetensors_metadata`] of a checkpoint in object storage, as the loader opened
/// it: file by file in file order, each tensor's offsets as its file's header gives them
/// (a tensor without bytes included).
fn remote_metadata(l: &crate::load::Loader) -> Result<SafeTensorsMetadata> {
    if l.container() == crate::Container::NumPack {
        return Err(crate::Error::invalid_argument(
            "a NumPack store, not a SafeTensors checkpoint",
        )
        .at(l.path()));
    }
    let sharded = l.container() == crate::Container::ShardedSafeTensors;
    let names: Vec<String> = l
        .files()
        .map(|p| {
            let s = p.to_string_lossy();
            s.rsplit('/').next().unwrap_or_default().to_string()
        })
        .collect();
    let tensors = l
        .tensors()
        .iter()
        .map(|t| {
            // Every tensor of a SafeTensors checkpoint has its place in a header, and its
            // length was checked against that header's offsets when it was parsed.
            let (file, begin) = t.in_header.ok_or_else(|| {
                crate::Error::malformed(l.path(), "a tensor without its place in a header")
                    .array(t.name.clone())
            })?;
            let meta = TensorMeta {
                dtype: t.dtype,
                shape: t.shape.clone(),
                data_offsets: (begin, begin + t.nbytes),
                shard: sharded.then(|| names[file].clone()),
            };
            Ok((t.name.clone(), meta))
        })
        .collect::<Result<_>>()?;
    Ok(SafeTensorsMetadata {
        tensors,
        metadata: l.metadata().map(<[_]>::to_vec),
    })
}

/// Iterator over a checkpoint's tensors; see [`iter_safetensors`].
#[derive(Debug)]
pub struct SafeTensorsIter {
    checkpoint: Checkpoint,
    order: std::vec::IntoIter<usize>,
}

impl SafeTensorsIter {
    /// The checkpoint being iterated.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }
}

impl Iterator for SafeTensorsIter {
    type Item = (String, Tensor);

    fn next(&mut self) -> Option<Self::Item> {
        let t = self.checkpoint.tensor(self.order.next()?);
        Some((t.name().to_string(), t))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.order.size_hint()
    }
}

impl ExactSizeIterator for SafeTensorsIter {}

/// Iterates over `(name, tensor)` pairs of a SafeTensors file (or a sharded checkpoint), in
/// file order or in the order of `keys`. Tensors are zero-copy views of the mapped file that
/// keep the mapping alive. A key that is not in the file is an error before anything is
/// yielded.
pub fn iter_safetensors<S: AsRef<str>>(
    path: impl AsRef<Path>,
    keys: Option<&[S]>,
) -> Result<SafeTensorsIter> {
    let checkpoint = Checkpoint::open(path)?;
    let order = checkpoint.select(keys)?;
    Ok(SafeTensorsIter {
        checkpoint,
        order: order.into_iter(),
    })
}

/// Arrays of a NumPack directory as tensors; see [`to_safetensors`].
#[derive(Debug)]
pub struct Tensors {
    store: NumPack,
    names: Vec<String>,
    /// Positions in `names` sorted by name, for [`Tensors::get`].
    by_name: Vec<usize>,
}

impl Tensors {
    /// The selected names, in the order asked for (sorted when all were selected).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// A tensor by name: zero-copy when the array is one file with no deleted rows,
    /// otherwise gathered once and kept by this object. Valid as long as `self`.
    pub fn get(&self, name: &str) -> Result<TensorView<'_>> {
        let known = self
            .by_name
            .binary_search_by(|&i| self.names[i].as_str().cmp(name))
            .is_ok();
        if !known {
            return Err(self.store.not_found(name));
        }
        self.store.view(name)
    }

    /// (name, view) for every selected tensor.
    pub fn iter(&self) -> impl Iterator<Item = Result<TensorView<'_>>> {
        self.names.iter().map(|n| self.store.view(n))
    }

    /// The store the tensors come from.
    pub fn store(&self) -> &NumPack {
        &self.store
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Loads NumPack arrays as tensors: name to view of the mapped data files (zero-copy where
/// the storage allows; an array with dropped rows or segments is gathered once).
pub fn to_safetensors<S: AsRef<str>>(
    input_path: impl AsRef<Path>,
    array_names: Option<&[S]>,
) -> Result<Tensors> {
    let store = NumPack::open(input_path)?;
    let names: Vec<String> = select_arrays(&store, array_names)?
        .into_iter()
        .map(str::to_string)
        .collect();
    // An array that cannot be read fails here, not half-way through the iteration.
    for n in &names {
        store.info(n)?;
    }
    let mut by_name: Vec<usize> = (0..names.len()).collect();
    by_name.sort_unstable_by(|&a, &b| names[a].cmp(&names[b]));
    Ok(Tensors {
        store,
        names,
        by_name,
    })
}
