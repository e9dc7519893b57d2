//! The seed's six functions: SafeTensors to NumPack and back, in memory and streaming.
//!
//! Every conversion that writes builds its output beside the target and publishes it in
//! one rename (see `publish`): a failure or a crash at any moment leaves the old output
//! as it was, or no output, never a half-written one.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::copy::{self, CopyError, CopyMethod, CopyOptions, Extent, Side};
use crate::dtype::DType;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::numpack::fsutil::now_micros;
use crate::numpack::metadata::{ArrayRecord, Metadata};
use crate::numpack::sidecar::Sidecar;
use crate::numpack::store::{
    existing_kind, make_record, write_dir_metadata, ArrayInput, ArrayView, Existing,
};
use crate::numpack::{naming, NumPack};
use crate::publish;
use crate::safetensors::writer::PlanInput;
use crate::safetensors::{plan_header, SafeTensorsFile, Tensor};

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
    /// Copy method; `Auto` picks the measured default.
    pub method: CopyMethod,
    /// Sync data, then metadata, then directories before the output appears, so that it
    /// survives power loss. Off by default: a killed process still leaves a consistent
    /// output, since the kernel keeps what was written.
    pub durable: bool,
    /// Called as bytes are copied.
    pub progress: Option<Progress>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            chunk_size: DEFAULT_CHUNK_SIZE,
            threads: 0,
            method: CopyMethod::Auto,
            durable: false,
            progress: None,
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
    /// `[begin, end)` relative to the data section.
    pub data_offsets: (u64, u64),
}

/// What `get_safetensors_metadata` returns: the tensors (in file order) and `__metadata__`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafeTensorsMetadata {
    /// (name, tensor) in file order.
    pub tensors: Vec<(String, TensorMeta)>,
    /// The `__metadata__` pairs in file order; `None` when the file has none.
    pub metadata: Option<Vec<(String, String)>>,
}

/// Reads a SafeTensors file's header: every tensor's dtype, shape and offsets, and its
/// `__metadata__`. No tensor byte is read, whatever the file's size.
pub fn get_safetensors_metadata(path: impl AsRef<Path>) -> Result<SafeTensorsMetadata> {
    let f = SafeTensorsFile::open(path)?;
    Ok(SafeTensorsMetadata {
        tensors: f
            .tensors()
            .map(|t| {
                (
                    t.name.clone(),
                    TensorMeta {
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        data_offsets: t.data_offsets,
                    },
                )
            })
            .collect(),
        metadata: f.metadata().map(<[_]>::to_vec),
    })
}

/// Iterator over a SafeTensors file's tensors; see [`iter_safetensors`].
#[derive(Debug)]
pub struct SafeTensorsIter {
    file: SafeTensorsFile,
    order: std::vec::IntoIter<usize>,
}

impl SafeTensorsIter {
    /// The file being iterated.
    pub fn file(&self) -> &SafeTensorsFile {
        &self.file
    }
}

impl Iterator for SafeTensorsIter {
    type Item = (String, Tensor);

    fn next(&mut self) -> Option<Self::Item> {
        let i = self.order.next()?;
        let t = self.file.tensor(i)?;
        Some((t.name().to_string(), t))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.order.size_hint()
    }
}

impl ExactSizeIterator for SafeTensorsIter {}

/// Iterates over `(name, tensor)` pairs, in file order or in the order of `keys`. Tensors
/// are zero-copy views of the mapped file that keep the mapping alive. A key that is not in
/// the file is an error before anything is yielded.
pub fn iter_safetensors<S: AsRef<str>>(
    path: impl AsRef<Path>,
    keys: Option<&[S]>,
) -> Result<SafeTensorsIter> {
    let file = SafeTensorsFile::open(path)?;
    let order = file.select(keys)?;
    Ok(SafeTensorsIter {
        file,
        order: order.into_iter(),
    })
}

// ---------------------------------------------------------------------------------------
// SafeTensors -> NumPack

/// Converts a SafeTensors file to a NumPack directory, streaming in bounded memory.
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
    let src = SafeTensorsFile::open(input_path.as_ref())?;
    let selected = src.select(keys)?;
    let arrays: Vec<NewArray> = selected
        .iter()
        .map(|&i| {
            let t = src.view(i).expect("selected index");
            NewArray {
                name: t.name.to_string(),
                dtype: t.dtype,
                shape: t.shape.to_vec(),
                source: i,
            }
        })
        .collect();
    let data_start = src.data_start();
    let offsets: Vec<u64> = src
        .tensors()
        .map(|t| data_start + t.data_offsets.0)
        .collect();
    let input = src.path().to_path_buf();
    let metadata = src.metadata().map(<[_]>::to_vec);
    import(
        output_path.as_ref(),
        drop_if_exists,
        opts,
        &arrays,
        metadata,
        |batch, dsts| {
            let extents: Vec<Extent> = batch
                .iter()
                .enumerate()
                .map(|(d, a)| Extent {
                    src: 0,
                    src_offset: offsets[a.source],
                    dst: d,
                    dst_offset: 0,
                    len: a.len(),
                })
                .collect();
            copy::copy_extents(
                &[src.file()],
                dsts,
                &extents,
                &copy_opts,
                progress_ref(opts),
            )
            .map_err(|e| copy_error(e, &input, batch.iter().map(|a| a.name.as_str()), None))
        },
    )
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
            copy::copy_from_memory(&slices, dsts, &extents, &copy_opts, progress_ref(opts))
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
    st_metadata: Option<Vec<(String, String)>>,
    mut copy: impl FnMut(&[NewArray], &[&File]) -> Result<()>,
) -> Result<()> {
    let _lock = publish::lock_output(output)?;
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
        link_tree(output, &stage, Path::new(""), &skip)?;
        sidecar.metadata = old.safetensors_metadata().map(<[_]>::to_vec);
    }
    if st_metadata.is_some() {
        sidecar.metadata = st_metadata;
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

    // Copy, a batch of files at a time.
    for (batch_idx, batch) in arrays.chunks(MAX_OPEN_FILES).enumerate() {
        let mut files = Vec::with_capacity(batch.len());
        for (j, a) in batch.iter().enumerate() {
            let path = stage.join(&data_files[batch_idx * MAX_OPEN_FILES + j]);
            let f = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .ctx(&path, "creating")
                .map_err(|e| e.array(a.name.clone()))?;
            copy::preallocate(&f, a.len())
                .ctx(output, "allocating space for")
                .map_err(|e| e.array(a.name.clone()))?;
            files.push(f);
        }
        let refs: Vec<&File> = files.iter().collect();
        copy(batch, &refs)?;
        if opts.durable {
            for (f, a) in files.iter().zip(batch) {
                f.sync_all()
                    .ctx(output, "syncing")
                    .map_err(|e| e.array(a.name.clone()))?;
            }
        }
    }

    let meta = Metadata {
        total_size: 0,
        arrays: records,
    };
    write_dir_metadata(&stage, &meta, &sidecar, opts.durable)?;
    drop(old);
    publish::publish_dir(staging, output, opts.durable)
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
        } else if ft.is_file() {
            if fs::hard_link(entry.path(), &target).is_err() {
                fs::copy(entry.path(), &target).ctx(&target, "copying to")?;
            }
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

/// [`to_safetensors_file`] with every option.
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
    let infos: Vec<_> = names.iter().map(|n| store.info(n)).collect::<Result<_>>()?;
    let inputs: Vec<PlanInput<'_>> = infos
        .iter()
        .map(|i| PlanInput {
            name: &i.name,
            dtype: i.dtype,
            shape: &i.shape,
        })
        .collect();
    let st_meta: Option<Vec<(String, String)>> = match metadata {
        Some(m) => Some(m.to_vec()),
        None => store.safetensors_metadata().map(<[_]>::to_vec),
    };
    let plan = plan_header(&inputs, st_meta.as_deref()).map_err(|e| e.at(store.path()))?;

    if fs::metadata(output).is_ok_and(|m| m.is_dir()) {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "is a directory; the output must be a file path",
        )
        .at(output));
    }
    let _lock = publish::lock_output(output)?;
    let tmp = publish::staging_file(output)?;
    let out = tmp.as_file();
    copy::preallocate(out, plan.file_len).ctx(output, "allocating space for")?;
    {
        use std::os::unix::fs::FileExt;
        out.write_all_at(&plan.header, 0)
            .ctx(output, "writing the header of")?;
    }

    // Source extents, a batch of files at a time.
    let mut sources: Vec<(usize, crate::numpack::SourceExtent, u64)> = Vec::new(); // (array, extent, dst)
    for (i, name) in names.iter().enumerate() {
        let mut dst = plan.ranges[i].0;
        for ext in store.array_extents(name)? {
            let len = ext.len;
            sources.push((i, ext, dst));
            dst += len;
        }
    }
    let mut start = 0;
    while start < sources.len() {
        let mut files: Vec<File> = Vec::new();
        let mut file_index: HashMap<PathBuf, usize> = HashMap::new();
        let mut extents = Vec::new();
        let mut owners = Vec::new();
        let mut end = start;
        while end < sources.len() {
            let (arr, ext, dst) = &sources[end];
            let idx = match file_index.get(&ext.file) {
                Some(&k) => k,
                None => {
                    if files.len() == MAX_OPEN_FILES {
                        break;
                    }
                    let p = store.path().join(&ext.file);
                    let f = File::open(&p)
                        .ctx(&p, "opening")
                        .map_err(|e| e.array(names[*arr].clone()))?;
                    file_index.insert(ext.file.clone(), files.len());
                    files.push(f);
                    files.len() - 1
                }
            };
            extents.push(Extent {
                src: idx,
                src_offset: ext.offset,
                dst: 0,
                dst_offset: *dst,
                len: ext.len,
            });
            owners.push(names[*arr].as_str());
            end += 1;
        }
        let srcs: Vec<&File> = files.iter().collect();
        copy::copy_extents(&srcs, &[out], &extents, &copy_opts, progress_ref(opts)).map_err(
            |e| {
                let name = owners.get(e.extent).map(|s| s.to_string());
                let err = match e.side {
                    Side::Read => Error::io(store.path(), "reading", e.source),
                    Side::Write => Error::io(output, "writing", e.source),
                };
                match name {
                    Some(n) => err.array(n),
                    None => err,
                }
            },
        )?;
        start = end;
    }
    publish::publish_file(tmp, output, opts.durable)
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
    pub fn get(&self, name: &str) -> Result<ArrayView<'_>> {
        if !self.names.iter().any(|n| n == name) {
            return Err(self.store.not_found(name));
        }
        self.store.view(name)
    }

    /// (name, view) for every selected tensor.
    pub fn iter(&self) -> impl Iterator<Item = Result<ArrayView<'_>>> {
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
