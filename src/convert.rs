//! The seed's six functions: SafeTensors to NumPack and back, in memory and streaming.
//!
//! Every conversion that writes builds its output beside the target and publishes it in
//! one rename (see `publish`): a failure or a crash at any moment leaves the old output
//! as it was, or no output, never a half-written one.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::copy::{self, CopyError, CopyMethod, CopyOptions, Extent, NewFiles, Side};
use crate::dtype::DType;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::fsutil::now_micros;
use crate::numpack::metadata::{ArrayRecord, Metadata};
use crate::numpack::sidecar::{ShardRecord, Sharding, Sidecar};
use crate::numpack::store::{existing_kind, make_record, write_dir_metadata, ArrayInput, Existing};
use crate::numpack::{naming, NumPack};
use crate::publish;
use crate::safetensors::index::{
    index_json, same_index, shard_file_name, split_into_shards, Checkpoint, INDEX_NAME,
};
use crate::safetensors::writer::plan_from_header;
use crate::safetensors::writer::PlanInput;
use crate::safetensors::{plan_header, HeaderPlan, Tensor};
use crate::view::TensorView;

pub use crate::copy::DEFAULT_CHUNK_SIZE;

/// Most files a conversion keeps open at once; larger conversions go in batches.
const MAX_OPEN_FILES: usize = 256;

/// A progress callback: called with the number of bytes just copied, from any thread.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Knobs shared by the conversions. `Options::default()` is what the seed's functions use.
#[derive(Clone)]
pub struct Options {
    /// Largest piece copied at once, and so the bound on buffers and mapped windows per
    /// thread. Must not be 0.
    pub chunk_size: usize,
    /// Copy threads; 0 picks the measured default (`copy::default_threads`).
    pub threads: usize,
    /// Copy method; `Auto` picks the measured default: `pread`/`pwrite` through a small
    /// page-aligned buffer per thread (see `copy::CopyMethod::Auto`).
    pub method: CopyMethod,
    /// Sync data, then metadata, then directories before the output appears, so that it
    /// survives power loss. Off by default: a killed process still leaves a consistent
    /// output, since the kernel keeps what was written.
    pub durable: bool,
    /// Called as bytes are copied.
    pub progress: Option<Progress>,
    /// For exports: write a sharded checkpoint of shards of at most this many tensor bytes
    /// into the output directory, as `save_pretrained` lays it out
    /// (`model-0000k-of-0000n.safetensors` plus `model.safetensors.index.json`, or a single
    /// `model.safetensors` when everything fits in one shard). `None` writes one file.
    pub max_shard_size: Option<u64>,
    /// When another conversion is writing the same output: wait for it (the default), or
    /// fail at once with `ErrorKind::Busy`.
    pub wait_for_lock: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            chunk_size: DEFAULT_CHUNK_SIZE,
            threads: 0,
            method: CopyMethod::Auto,
            durable: false,
            progress: None,
            max_shard_size: None,
            wait_for_lock: true,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("chunk_size", &self.chunk_size)
            .field("threads", &self.threads)
            .field("method", &self.method)
            .field("durable", &self.durable)
            .field("progress", &self.progress.is_some())
            .field("max_shard_size", &self.max_shard_size)
            .field("wait_for_lock", &self.wait_for_lock)
            .finish()
    }
}

impl Options {
    /// The defaults with another chunk size.
    pub fn with_chunk_size(chunk_size: usize) -> Options {
        Options {
            chunk_size,
            ..Options::default()
        }
    }

    fn check(&self) -> Result<CopyOptions> {
        if self.chunk_size == 0 {
            return Err(Error::invalid_argument(
                "chunk_size must be at least 1 byte",
            ));
        }
        Ok(CopyOptions {
            chunk_size: self.chunk_size,
            threads: self.threads,
            method: self.method,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Metadata and iteration

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
pub fn get_safetensors_metadata(path: impl AsRef<Path>) -> Result<SafeTensorsMetadata> {
    let c = Checkpoint::open(path)?;
    let names = c.shard_names();
    let tensors = (0..c.len())
        .map(|i| {
            let t = c.info(i);
            let shard = names.get(c.location(i).0).cloned();
            let meta = TensorMeta {
                dtype: t.dtype,
                shape: t.shape.clone(),
                data_offsets: t.data_offsets,
                shard,
            };
            (t.name.clone(), meta)
        })
        .collect();
    Ok(SafeTensorsMetadata {
        tensors,
        metadata: c.metadata().map(<[_]>::to_vec),
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

// ---------------------------------------------------------------------------------------
// SafeTensors -> NumPack

/// Converts a SafeTensors file (or a sharded checkpoint: its index, or a directory holding
/// one) to a NumPack directory, streaming in bounded memory.
///
/// `keys` selects tensors (all when `None`); an unknown key is an error and nothing is
/// written. When `output` exists and `drop_if_exists` is false, the tensors are merged into
/// it: arrays of the same name are replaced, others kept. With `drop_if_exists`, the output
/// is replaced whole. Either way the output changes in one atomic step.
pub fn from_safetensors_file<S: AsRef<str>>(
    input_path: impl AsRef<Path>,
    output_path: impl AsRef<Path>,
    keys: Option<&[S]>,
    drop_if_exists: bool,
    chunk_size: usize,
) -> Result<()> {
    from_safetensors_file_with(
        input_path,
        output_path,
        keys,
        drop_if_exists,
        &Options::with_chunk_size(chunk_size),
    )
}

/// [`from_safetensors_file`] with every option.
pub fn from_safetensors_file_with<S: AsRef<str>>(
    input_path: impl AsRef<Path>,
    output_path: impl AsRef<Path>,
    keys: Option<&[S]>,
    drop_if_exists: bool,
    opts: &Options,
) -> Result<()> {
    let copy_opts = opts.check()?;
    let src = Checkpoint::open(input_path.as_ref())?;
    let selected = src.select(keys)?;
    let arrays: Vec<NewArray> = selected
        .iter()
        .map(|&i| {
            let t = src.info(i);
            NewArray {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                source: i,
            }
        })
        .collect();
    let sharding = src.index_text().map(|index| Sharding {
        index: index.to_string(),
        shards: src
            .shards()
            .iter()
            .zip(src.shard_names())
            .map(|(f, name)| ShardRecord {
                file: name.clone(),
                metadata: f.metadata().map(<[_]>::to_vec),
                tensors: f.tensors().map(|t| t.name.clone()).collect(),
                header: unusual_header(f),
            })
            .collect(),
    });
    let whole_file = !src.is_sharded() && selected.len() == src.len();
    let source = SourceMeta {
        metadata: src.metadata().map(<[_]>::to_vec),
        sharding,
        header: whole_file
            .then(|| unusual_header(&src.shards()[0]))
            .flatten(),
    };
    let files: Vec<&File> = src.shards().iter().map(|s| s.file()).collect();
    import(
        output_path.as_ref(),
        drop_if_exists,
        opts,
        &arrays,
        Some(source),
        |batch, dsts| {
            let extents: Vec<Extent> = batch
                .iter()
                .enumerate()
                .map(|(d, a)| {
                    let (shard, _) = src.location(a.source);
                    let offset =
                        src.shards()[shard].data_start() + src.info(a.source).data_offsets.0;
                    Extent {
                        src: shard,
                        src_offset: offset,
                        dst: d,
                        dst_offset: 0,
                        len: a.len(),
                    }
                })
                .collect();
            copy::copy_extents_into(&files, dsts, &extents, &copy_opts, progress_ref(opts)).map_err(
                |e| {
                    let shard = extents.get(e.extent).map_or(0, |x| x.src);
                    // A failed write is about the output, not the source.
                    let outs = vec![output_path.as_ref().to_path_buf(); batch.len()];
                    copy_error(
                        e,
                        src.shards()[shard].path(),
                        batch.iter().map(|a| a.name.as_str()),
                        Some(&outs),
                    )
                },
            )
        },
    )
}

/// What a SafeTensors source says beyond its tensors.
struct SourceMeta {
    metadata: Option<Vec<(String, String)>>,
    sharding: Option<Sharding>,
    /// The file's header, when the crate would lay it out differently.
    header: Option<String>,
}

/// A file's header JSON when the `safetensors` crate would not write the same one for its
/// tensors and metadata (another writer's tensor order, spacing or padding); `None` when
/// it would, which is the case for every file the crate writes.
fn unusual_header(f: &crate::safetensors::SafeTensorsFile) -> Option<String> {
    let inputs: Vec<PlanInput<'_>> = f
        .tensors()
        .map(|t| PlanInput {
            name: &t.name,
            dtype: t.dtype,
            shape: &t.shape,
        })
        .collect();
    let ours = plan_header(&inputs, f.metadata()).ok();
    let same = ours.is_some_and(|p| p.header.get(8..) == Some(f.header_json().as_bytes()));
    (!same).then(|| f.header_json().to_string())
}

/// An in-memory tensor for [`from_safetensors`].
pub type TensorInput<'a> = ArrayInput<'a>;

/// Saves tensors held in memory to a NumPack directory, with the same merge/replace rules
/// and atomicity as [`from_safetensors_file`].
pub fn from_safetensors(
    tensors: &[TensorInput<'_>],
    output_path: impl AsRef<Path>,
    drop_if_exists: bool,
) -> Result<()> {
    from_safetensors_with(tensors, output_path, drop_if_exists, &Options::default())
}

/// [`from_safetensors`] with every option.
pub fn from_safetensors_with(
    tensors: &[TensorInput<'_>],
    output_path: impl AsRef<Path>,
    drop_if_exists: bool,
    opts: &Options,
) -> Result<()> {
    let copy_opts = opts.check()?;
    let output = output_path.as_ref();
    let mut seen = HashSet::new();
    for t in tensors {
        t.check().map_err(|e| e.at(output))?;
        if !seen.insert(t.name) {
            return Err(Error::invalid_argument("tensor given twice")
                .array(t.name)
                .at(output));
        }
    }
    let arrays: Vec<NewArray> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| NewArray {
            name: t.name.to_string(),
            dtype: t.dtype,
            shape: t.shape.to_vec(),
            source: i,
        })
        .collect();
    let slices: Vec<&[u8]> = tensors.iter().map(|t| t.data).collect();
    import(
        output,
        drop_if_exists,
        opts,
        &arrays,
        None,
        |batch, dsts| {
            let extents: Vec<Extent> = batch
                .iter()
                .enumerate()
                .map(|(d, a)| Extent {
                    src: a.source,
                    src_offset: 0,
                    dst: d,
                    dst_offset: 0,
                    len: a.len(),
                })
                .collect();
            copy::copy_from_memory_into(&slices, dsts, &extents, &copy_opts, progress_ref(opts))
                .map_err(|e| copy_error(e, output, batch.iter().map(|a| a.name.as_str()), None))
        },
    )
}

/// A tensor on its way into a NumPack directory.
struct NewArray {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    /// Index of its source (tensor position, or input slice).
    source: usize,
}

impl NewArray {
    fn len(&self) -> u64 {
        crate::dtype::byte_len(self.dtype, &self.shape).unwrap_or(0)
    }
}

fn progress_ref(opts: &Options) -> Option<&(dyn Fn(u64) + Sync)> {
    opts.progress.as_deref().map(|p| p as &(dyn Fn(u64) + Sync))
}

/// Names the file and tensor a copy failed on.
fn copy_error<'a>(
    e: CopyError,
    src: &Path,
    mut names: impl Iterator<Item = &'a str>,
    dsts: Option<&[PathBuf]>,
) -> Error {
    let name = names.nth(e.extent).map(str::to_string);
    let (path, doing) = match (e.side, dsts) {
        (Side::Read, _) => (src.to_path_buf(), "reading"),
        (Side::Write, Some(d)) => (d.get(e.extent).cloned().unwrap_or_default(), "writing"),
        (Side::Write, None) => (src.to_path_buf(), "writing the output for"),
    };
    let mut err = Error::io(path, doing, e.source);
    if let Some(n) = name {
        err = err.array(n);
    }
    err
}

/// Builds the new output in a staging directory and publishes it. `copy` fills a batch of
/// preallocated data files (one per array, in batch order).
fn import(
    output: &Path,
    drop_if_exists: bool,
    opts: &Options,
    arrays: &[NewArray],
    source: Option<SourceMeta>,
    mut copy: impl FnMut(&[NewArray], &NewFiles<'_>) -> Result<()>,
) -> Result<()> {
    let _lock = publish::lock_output(output, opts.wait_for_lock)?;
    let existing = match fs::symlink_metadata(output) {
        Ok(_) => Some(existing_kind(output)?),
        Err(_) => None,
    };
    let old = match existing {
        Some(Existing::NumPack) if !drop_if_exists => Some(NumPack::open(output)?),
        _ => None,
    };
    let staging = publish::staging_dir(output)?;
    let stage = staging.path().to_path_buf();

    // Arrays kept from the old output, their files linked into the staging directory.
    let replaced: HashSet<&str> = arrays.iter().map(|a| a.name.as_str()).collect();
    let mut records: Vec<ArrayRecord> = Vec::new();
    let mut sidecar = Sidecar::default();
    if let Some(old) = &old {
        let mut skip: HashSet<PathBuf> = HashSet::new();
        for name in old.names() {
            if replaced.contains(name) {
                skip.extend(old.array_files(name)?);
            } else {
                records.push(old.record(name)?.clone());
                sidecar.arrays.extend(old.sidecar_entry(name)?);
            }
        }
        link_tree(output, &stage, Path::new(""), &skip).map_err(|e| e.staged(&stage, output))?;
        sidecar.metadata = old.safetensors_metadata().map(<[_]>::to_vec);
        sidecar.sharding = old.sharding().cloned();
    }
    // What the new source says replaces what the old output recorded; where it says
    // nothing, the old record stays.
    if let Some(source) = source {
        if source.metadata.is_some() {
            sidecar.metadata = source.metadata;
        }
        if source.sharding.is_some() {
            sidecar.sharding = source.sharding;
        }
        // A header describes one source's exact tensor set: the newest import's, or none.
        sidecar.source_header = source.header;
    }

    // New arrays: names, records, sidecar entries.
    let mut stems: Vec<String> = records
        .iter()
        .filter_map(|r| naming::stem_of(&r.data_file).map(str::to_string))
        .collect();
    let mut order: Vec<usize> = (0..arrays.len()).collect();
    order.sort_by(|&a, &b| arrays[a].name.cmp(&arrays[b].name));
    let stamp = now_micros();
    let mut data_files = vec![String::new(); arrays.len()];
    for &i in &order {
        let a = &arrays[i];
        let stem = naming::choose_stem(&a.name, stems.iter().map(String::as_str));
        stems.push(stem.clone());
        let data_file = naming::data_file(&stem);
        let (record, entry) = make_record(&a.name, data_file.clone(), a.dtype, &a.shape, stamp)
            .map_err(|e| e.at(output))?;
        records.push(record);
        sidecar.arrays.extend(entry);
        data_files[i] = data_file;
    }

    // Copy, a batch of files at a time. The copy workers create the data files as they reach
    // them, so that creating hundreds of files (serialized by the kernel on the directory)
    // overlaps with copying; files with nothing to copy are created afterwards.
    for (batch_idx, batch) in arrays.chunks(MAX_OPEN_FILES).enumerate() {
        let paths: Vec<PathBuf> = (0..batch.len())
            .map(|j| stage.join(&data_files[batch_idx * MAX_OPEN_FILES + j]))
            .collect();
        // The first creation error, with its file and array named.
        let create_error: Mutex<Option<Error>> = Mutex::new(None);
        let create = |j: usize| -> Result<File> {
            let a = &batch[j];
            let f = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&paths[j])
                .ctx(&paths[j], "creating")
                .map_err(|e| e.array(a.name.clone()).staged(&stage, output))?;
            copy::preallocate(&f, a.len())
                .ctx(output, "allocating space for")
                .map_err(|e| e.array(a.name.clone()))?;
            Ok(f)
        };
        let new_files = NewFiles::new(batch.len(), |j| {
            create(j).map_err(|e| {
                let io = std::io::Error::new(e.io_kind(), e.to_string());
                let mut slot = create_error.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert(e);
                io
            })
        });
        if let Err(e) = copy(batch, &new_files) {
            drop(new_files);
            let created = create_error.into_inner().unwrap_or_else(|p| p.into_inner());
            return Err(created.unwrap_or(e));
        }
        for (j, slot) in new_files.into_files().into_iter().enumerate() {
            let f = match slot {
                Some(f) => f,
                None => create(j)?,
            };
            if opts.durable {
                f.sync_all()
                    .ctx(output, "syncing")
                    .map_err(|e| e.array(batch[j].name.clone()))?;
            }
        }
    }

    let meta = Metadata {
        total_size: 0,
        arrays: records,
    };
    write_dir_metadata(&stage, &meta, &sidecar, opts.durable)
        .map_err(|e| e.staged(&stage, output))?;
    drop(old);
    publish::publish_dir(staging, output, opts.durable).map_err(|e| e.staged(&stage, output))
}

/// Hard-links (or copies, where links fail) every file of `from/rel` into `to/rel`, except
/// the metadata, the sidecar, stale temporary files and `skip`.
fn link_tree(from: &Path, to: &Path, rel: &Path, skip: &HashSet<PathBuf>) -> Result<()> {
    let dir = from.join(rel);
    for entry in fs::read_dir(&dir).ctx(&dir, "listing")? {
        let entry = entry.ctx(&dir, "listing")?;
        let name = entry.file_name();
        let r = rel.join(&name);
        let n = name.to_string_lossy();
        if rel.as_os_str().is_empty()
            && (n == crate::numpack::metadata::FILE_NAME || n == crate::numpack::sidecar::FILE_NAME)
        {
            continue;
        }
        if n.starts_with(".npkio-tmp-") || skip.contains(&r) {
            continue;
        }
        let ft = entry.file_type().ctx(entry.path(), "inspecting")?;
        let target = to.join(&r);
        if ft.is_dir() {
            fs::create_dir(&target).ctx(&target, "creating")?;
            link_tree(from, to, &r, skip)?;
        } else if ft.is_file() && fs::hard_link(entry.path(), &target).is_err() {
            fs::copy(entry.path(), &target).ctx(&target, "copying to")?;
        }
        // Symbolic links and special files are not carried over: nothing npkio wrote.
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// NumPack -> SafeTensors

/// Exports NumPack arrays to a SafeTensors file, streaming in bounded memory.
///
/// Only active rows are exported (deletion bitmaps honoured, segments joined). The file is
/// byte-identical to what the `safetensors` crate's `serialize_to_file` writes for the same
/// tensors and metadata. `metadata = None` writes the `__metadata__` the directory carries
/// from its SafeTensors source (none if it has none); `Some` replaces it, pairs written in
/// the order given. The file is written beside `output_path` and renamed into place.
pub fn to_safetensors_file<S: AsRef<str>>(
    input_path: impl AsRef<Path>,
    output_path: impl AsRef<Path>,
    array_names: Option<&[S]>,
    metadata: Option<&[(String, String)]>,
    chunk_size: usize,
) -> Result<()> {
    to_safetensors_file_with(
        input_path,
        output_path,
        array_names,
        metadata,
        &Options::with_chunk_size(chunk_size),
    )
}

/// [`to_safetensors_file`] with every option. With `opts.max_shard_size`, `output_path` is
/// a directory that receives a sharded checkpoint (see [`Options::max_shard_size`]).
pub fn to_safetensors_file_with<S: AsRef<str>>(
    input_path: impl AsRef<Path>,
    output_path: impl AsRef<Path>,
    array_names: Option<&[S]>,
    metadata: Option<&[(String, String)]>,
    opts: &Options,
) -> Result<()> {
    let copy_opts = opts.check()?;
    let output = output_path.as_ref();
    let store = NumPack::open(input_path.as_ref())?;
    let names = select_arrays(&store, array_names)?;
    if let Some(limit) = opts.max_shard_size {
        return export_sharded(&store, names, metadata, limit, output, opts);
    }
    let st_meta: Option<Vec<(String, String)>> = match metadata {
        Some(m) => Some(m.to_vec()),
        None => store.safetensors_metadata().map(<[_]>::to_vec),
    };
    let plan = plan_for(&store, &names, st_meta.as_deref(), store.source_header())?;
    if fs::metadata(output).is_ok_and(|m| m.is_dir()) {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "is a directory; the output must be a file path",
        )
        .at(output));
    }
    let _lock = publish::lock_output(output, opts.wait_for_lock)?;
    let tmp = publish::staging_file(output)?;
    write_header(tmp.as_file(), &plan, output)?;
    let dests = [Destination {
        file: tmp.as_file(),
        path: output,
        names: &names,
        plan: &plan,
    }];
    copy_arrays(&store, &dests, &copy_opts, opts)?;
    publish::publish_file(tmp, output, opts.durable)
}

/// The header plan for `names` of `store`.
fn plan_for(
    store: &NumPack,
    names: &[String],
    metadata: Option<&[(String, String)]>,
    stored_header: Option<&str>,
) -> Result<HeaderPlan> {
    let infos: Vec<_> = names.iter().map(|n| store.info(n)).collect::<Result<_>>()?;
    let inputs: Vec<PlanInput<'_>> = infos
        .iter()
        .map(|i| PlanInput {
            name: &i.name,
            dtype: i.dtype,
            shape: &i.shape,
        })
        .collect();
    if let Some(plan) = stored_header.and_then(|h| plan_from_header(h, &inputs, metadata)) {
        return Ok(plan);
    }
    plan_header(&inputs, metadata).map_err(|e| e.at(store.path()))
}

/// Sizes the file and writes its header.
fn write_header(file: &File, plan: &HeaderPlan, path: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    copy::preallocate(file, plan.file_len).ctx(path, "allocating space for")?;
    file.write_all_at(&plan.header, 0)
        .ctx(path, "writing the header of")
}

/// A SafeTensors file being filled: the arrays `names` at the places `plan` gives.
struct Destination<'a> {
    file: &'a File,
    path: &'a Path,
    names: &'a [String],
    plan: &'a HeaderPlan,
}

/// Copies every destination's arrays from the store: all destinations in one parallel
/// copy, sources opened a batch at a time.
fn copy_arrays(
    store: &NumPack,
    dests: &[Destination<'_>],
    copy_opts: &CopyOptions,
    opts: &Options,
) -> Result<()> {
    // (destination, array name, source extent, destination offset)
    let mut pieces: Vec<(usize, &str, crate::numpack::SourceExtent, u64)> = Vec::new();
    for (d, dest) in dests.iter().enumerate() {
        for (i, name) in dest.names.iter().enumerate() {
            let mut at = dest.plan.ranges[i].0;
            for ext in store.array_extents(name)? {
                let len = ext.len;
                pieces.push((d, name, ext, at));
                at += len;
            }
        }
    }
    let dst_files: Vec<&File> = dests.iter().map(|d| d.file).collect();
    let mut start = 0;
    while start < pieces.len() {
        let mut files: Vec<File> = Vec::new();
        let mut file_index: HashMap<&Path, usize> = HashMap::new();
        let mut extents = Vec::new();
        let mut end = start;
        while end < pieces.len() {
            let (d, name, ext, at) = &pieces[end];
            let idx = match file_index.get(ext.file.as_path()) {
                Some(&k) => k,
                None => {
                    if files.len() == MAX_OPEN_FILES {
                        break;
                    }
                    let p = store.path().join(&ext.file);
                    let f = File::open(&p)
                        .ctx(&p, "opening")
                        .map_err(|e| e.array(*name))?;
                    file_index.insert(ext.file.as_path(), files.len());
                    files.push(f);
                    files.len() - 1
                }
            };
            extents.push(Extent {
                src: idx,
                src_offset: ext.offset,
                dst: *d,
                dst_offset: *at,
                len: ext.len,
            });
            end += 1;
        }
        let srcs: Vec<&File> = files.iter().collect();
        copy::copy_extents(&srcs, &dst_files, &extents, copy_opts, progress_ref(opts)).map_err(
            |e| {
                let piece = pieces.get(start + e.extent);
                let err = match (e.side, piece) {
                    (Side::Read, Some(p)) => {
                        Error::io(store.path().join(&p.2.file), "reading", e.source)
                    }
                    (Side::Write, Some(p)) => Error::io(dests[p.0].path, "writing", e.source),
                    (_, None) => Error::io(store.path(), "copying", e.source),
                };
                match piece {
                    Some(p) => err.array(p.1),
                    None => err,
                }
            },
        )?;
        start = end;
    }
    Ok(())
}

/// Writes `names` as a sharded checkpoint in the directory `output`, laid out as
/// `save_pretrained` does for `limit` bytes per shard.
fn export_sharded(
    store: &NumPack,
    names: Vec<String>,
    metadata: Option<&[(String, String)]>,
    limit: u64,
    output: &Path,
    opts: &Options,
) -> Result<()> {
    let copy_opts = opts.check()?;
    if limit == 0 {
        return Err(Error::invalid_argument(
            "max_shard_size must be at least 1 byte",
        ));
    }
    // The source's tensor order where it is known (shard by shard), then the rest sorted.
    let mut ordered: Vec<String> = Vec::with_capacity(names.len());
    let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut placed: HashSet<String> = HashSet::new();
    if let Some(sh) = store.sharding() {
        for t in sh.shards.iter().flat_map(|s| &s.tensors) {
            if wanted.contains(t.as_str()) && placed.insert(t.clone()) {
                ordered.push(t.clone());
            }
        }
    }
    let mut rest: Vec<String> = names
        .iter()
        .filter(|n| !placed.contains(*n))
        .cloned()
        .collect();
    rest.sort();
    ordered.extend(rest);
    let sizes: Vec<u64> = ordered
        .iter()
        .map(|n| store.info(n).map(|i| i.nbytes))
        .collect::<Result<_>>()?;
    let groups = split_into_shards(&sizes, limit);
    let n = groups.len().max(1);
    let file_names: Vec<String> = if n == 1 {
        vec!["model.safetensors".to_string()]
    } else {
        (1..=n).map(|k| shard_file_name(k, n)).collect()
    };
    let groups: Vec<Vec<String>> = if groups.is_empty() {
        vec![Vec::new()]
    } else {
        groups
            .into_iter()
            .map(|g| g.into_iter().map(|i| ordered[i].clone()).collect())
            .collect()
    };
    // Each shard's __metadata__: the one given, else the source's shard by shard when the
    // shard count is the same, else the directory's.
    let stored = store.sharding().map(|s| &s.shards);
    let shard_meta = |k: usize| -> Option<Vec<(String, String)>> {
        if let Some(m) = metadata {
            return Some(m.to_vec());
        }
        match stored {
            Some(s) if s.len() == n => s[k].metadata.clone(),
            _ => store.safetensors_metadata().map(<[_]>::to_vec),
        }
    };
    let plans: Vec<HeaderPlan> = groups
        .iter()
        .enumerate()
        .map(|(k, g)| {
            // The source shard's own header, when the shard count is the same (a header
            // that does not describe exactly this group is not used).
            let header = stored
                .filter(|s| s.len() == n)
                .and_then(|s| s[k].header.as_deref());
            plan_for(store, g, shard_meta(k).as_deref(), header)
        })
        .collect::<Result<_>>()?;
    let index = (n > 1).then(|| {
        let mut weight_map = std::collections::BTreeMap::new();
        for (g, f) in groups.iter().zip(&file_names) {
            for t in g {
                weight_map.insert(t.clone(), f.clone());
            }
        }
        let fresh = index_json(sizes.iter().sum(), &weight_map);
        match store.sharding() {
            Some(s) if same_index(&s.index, &fresh) => s.index.clone(),
            _ => fresh,
        }
    });

    if fs::symlink_metadata(output).is_ok_and(|m| !m.is_dir()) {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "exists and is not a directory; a sharded checkpoint is written into a directory",
        )
        .at(output));
    }
    let _lock = publish::lock_output(output, opts.wait_for_lock)?;
    let fresh_dir = fs::symlink_metadata(output).is_err();
    if !fresh_dir {
        // Temporary shards of a conversion killed while writing into this directory.
        publish::remove_leftovers_inside(output);
    }
    // A new directory is built whole and renamed into place; an existing one (which may
    // hold config files) gets each shard renamed in, and the index last.
    let staging = if fresh_dir {
        Some(publish::staging_dir(output)?)
    } else {
        None
    };
    let build_dir = staging
        .as_ref()
        .map_or(output.to_path_buf(), |s| s.path().to_path_buf());
    // Errors about the staging directory name the output instead.
    let aim = |e: Error| {
        if fresh_dir {
            e.staged(&build_dir, output)
        } else {
            e
        }
    };
    let mut tmps = Vec::with_capacity(n);
    for (f, plan) in file_names.iter().zip(&plans) {
        let tmp =
            crate::fsutil::temp_file_in(&build_dir, &format!(".{f}.npkio-tmp-")).map_err(aim)?;
        write_header(tmp.as_file(), plan, &output.join(f))?;
        tmps.push(tmp);
    }
    let paths: Vec<PathBuf> = file_names.iter().map(|f| output.join(f)).collect();
    let dests: Vec<Destination<'_>> = tmps
        .iter()
        .zip(&paths)
        .zip(groups.iter().zip(&plans))
        .map(|((t, p), (g, plan))| Destination {
            file: t.as_file(),
            path: p,
            names: g,
            plan,
        })
        .collect();
    copy_arrays(store, &dests, &copy_opts, opts)?;
    drop(dests);
    let index_path = build_dir.join(INDEX_NAME);
    // The new index is written before anything visible changes, so that a full disk fails
    // here with the old checkpoint intact.
    let index_tmp = match &index {
        Some(text) => {
            let mut t = crate::fsutil::temp_file_in(&build_dir, ".npkio-tmp-").map_err(aim)?;
            std::io::Write::write_all(&mut t, text.as_bytes())
                .ctx(output.join(INDEX_NAME), "writing")?;
            Some(t)
        }
        None => None,
    };
    if !fresh_dir {
        // No index may point at shards that are being replaced.
        match fs::remove_file(&index_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&index_path, "removing the old index", e)),
        }
    }
    for (tmp, f) in tmps.into_iter().zip(&file_names) {
        publish::publish_file(tmp, &build_dir.join(f), opts.durable).map_err(aim)?;
    }
    if let Some(t) = index_tmp {
        publish::publish_file(t, &index_path, opts.durable).map_err(aim)?;
    }
    if !fresh_dir {
        remove_stale_weights(output, &file_names, index.is_some());
    }
    if let Some(staging) = staging {
        publish::publish_dir(staging, output, opts.durable).map_err(aim)?;
    }
    Ok(())
}

/// After writing a checkpoint into an existing directory, removes weight files of an
/// earlier checkpoint that the new one does not use (as `save_pretrained` does): other
/// `model-*-of-*.safetensors` shards, `model.safetensors`, and the index when none was
/// written.
fn remove_stale_weights(dir: &Path, keep: &[String], wrote_index: bool) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_shard =
            name.starts_with("model-") && name.contains("-of-") && name.ends_with(".safetensors");
        let stale = (is_shard || name == "model.safetensors") && !keep.contains(&name)
            || (name == INDEX_NAME && !wrote_index);
        if stale {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn select_arrays<S: AsRef<str>>(store: &NumPack, names: Option<&[S]>) -> Result<Vec<String>> {
    match names {
        None => Ok(store.names().into_iter().map(str::to_string).collect()),
        Some(names) => {
            let mut seen = HashSet::new();
            let mut out = Vec::with_capacity(names.len());
            for n in names {
                let n = n.as_ref();
                if !store.contains(n) {
                    return Err(store.not_found(n));
                }
                if seen.insert(n) {
                    out.push(n.to_string());
                }
            }
            Ok(out)
        }
    }
}

/// Arrays of a NumPack directory as tensors; see [`to_safetensors`].
#[derive(Debug)]
pub struct Tensors {
    store: NumPack,
    names: Vec<String>,
}

impl Tensors {
    /// The selected names, in the order asked for (sorted when all were selected).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// A tensor by name: zero-copy when the array is one file with no deleted rows,
    /// otherwise gathered once and kept by this object. Valid as long as `self`.
    pub fn get(&self, name: &str) -> Result<TensorView<'_>> {
        if !self.names.iter().any(|n| n == name) {
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
    let names = select_arrays(&store, array_names)?;
    Ok(Tensors { store, names })
}
