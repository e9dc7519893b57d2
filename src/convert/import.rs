//! SafeTensors to NumPack: [`from_safetensors_file`] from a file or sharded checkpoint,
//! [`from_safetensors`] from memory. Both build the new directory in a staging directory
//! beside the output (arrays kept from an old output hard-linked in), the copy workers
//! creating the data files as they reach them, and publish it in one step.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::{max_open_files, refuse_overlap, Options};
use crate::copy::{self, Cause, CopyError, Extent, NewFiles, Side};
use crate::dtype::DType;
use crate::error::{Error, IoContext, Result};
use crate::numpack::metadata::{self, ArrayRecord};
use crate::numpack::sidecar::{self, Entry, ShardRecord, Sharding, Sidecar};
use crate::numpack::store::{existing_kind, make_record, needs_entry, ArrayInput, Existing};
use crate::numpack::{naming, NumPack};
use crate::positions::Positions;
use crate::progress::{copy_progress, CopyProgress, Counter};
use crate::publish::{self, Staging};
use crate::safetensors::index::Checkpoint;
use crate::safetensors::reader::Reopener;
use crate::safetensors::writer::is_planned_header;
use crate::safetensors::TensorInfo;
use crate::sys::fsutil::now_micros;

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
    let mut inputs: Vec<&Path> = vec![input_path.as_ref(), src.path()];
    inputs.extend(src.shards().iter().map(|s| s.path()));
    refuse_overlap(&inputs, output_path.as_ref())?;
    let selected = src.select(keys)?;
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
    // What the copy needs of each shard: how to open it again, and where its data starts.
    let shards: Vec<(Reopener, u64, PathBuf)> = src
        .shards()
        .iter()
        .map(|f| (f.reopener(), f.data_start(), f.path().to_path_buf()))
        .collect();
    // The selected tensors' entries, moved out of the parsed headers; the headers and the
    // mappings are released here, before the output is built.
    let mut infos: Vec<Option<(usize, TensorInfo)>> = Vec::with_capacity(src.len());
    for (s, f) in src.into_shards().into_iter().enumerate() {
        infos.extend(f.into_tensors().into_iter().map(|t| Some((s, t))));
    }
    let arrays: Vec<NewArray<'_>> = selected
        .iter()
        .map(|&i| {
            let (shard, t) = infos[i].take().expect("keys are selected once");
            NewArray {
                len: t.len(),
                name: Cow::Owned(t.name),
                dtype: t.dtype,
                shape: Cow::Owned(t.shape),
                source: t.data_offsets.0 + shards[shard].1,
                shard: Some(shard),
            }
        })
        .collect();
    drop(selected);
    drop(infos);
    let workers = copy::Workers::new(copy_opts.threads)
        .ctx(output_path.as_ref(), "starting the copy threads for")?;
    import(
        output_path.as_ref(),
        drop_if_exists,
        opts,
        arrays,
        Some(source),
        |batch, dsts, progress| {
            // The shards this batch reads, opened again for it (and checked to be the files
            // validated), closed after it: never more than a batch's worth of descriptors.
            let mut open: Vec<usize> = batch.iter().filter_map(|a| a.shard).collect();
            open.sort_unstable();
            open.dedup();
            let mut files = Vec::with_capacity(open.len());
            for &s in &open {
                files.push(shards[s].0.open()?);
            }
            let file_refs: Vec<&File> = files.iter().collect();
            let extents: Vec<Extent> = batch
                .iter()
                .enumerate()
                .map(|(d, a)| Extent {
                    src: open
                        .binary_search(&a.shard.expect("a tensor of a file"))
                        .expect("a shard of the batch"),
                    src_offset: a.source,
                    dst: d,
                    dst_offset: 0,
                    len: a.len,
                })
                .collect();
            workers
                .copy_extents_into(&file_refs, dsts, &extents, &copy_opts, progress)
                .map_err(|e| {
                    let shard = extents.get(e.extent).map_or(0, |x| open[x.src]);
                    // A failed write is about the output, not the source.
                    let outs = vec![output_path.as_ref().to_path_buf(); batch.len()];
                    copy_error(
                        e,
                        &shards[shard].2,
                        batch.iter().map(|a| &*a.name),
                        Some(&outs),
                    )
                })
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
    let same = is_planned_header(f.header_json(), f.tensor_infos(), f.metadata());
    (!same).then(|| f.header_json().to_string())
}

/// Saves tensors held in memory to a NumPack directory, with the same merge/replace rules
/// and atomicity as [`from_safetensors_file`].
pub fn from_safetensors(
    tensors: &[ArrayInput<'_>],
    output_path: impl AsRef<Path>,
    drop_if_exists: bool,
) -> Result<()> {
    from_safetensors_with(tensors, output_path, drop_if_exists, &Options::default())
}

/// [`from_safetensors`] with every option.
pub fn from_safetensors_with(
    tensors: &[ArrayInput<'_>],
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
    let arrays: Vec<NewArray<'_>> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| NewArray {
            len: t.data.len() as u64,
            name: Cow::Borrowed(t.name),
            dtype: t.dtype,
            shape: Cow::Borrowed(t.shape),
            source: i as u64,
            shard: None,
        })
        .collect();
    let slices: Vec<&[u8]> = tensors.iter().map(|t| t.data).collect();
    let workers =
        copy::Workers::new(copy_opts.threads).ctx(output, "starting the copy threads for")?;
    import(
        output,
        drop_if_exists,
        opts,
        arrays,
        None,
        |batch, dsts, progress| {
            let extents: Vec<Extent> = batch
                .iter()
                .enumerate()
                .map(|(d, a)| Extent {
                    src: a.source as usize,
                    src_offset: 0,
                    dst: d,
                    dst_offset: 0,
                    len: a.len,
                })
                .collect();
            workers
                .copy_from_memory_into(&slices, dsts, &extents, &copy_opts, progress)
                .map_err(|e| copy_error(e, output, batch.iter().map(|a| &*a.name), None))
        },
    )
}

/// A tensor on its way into a NumPack directory (name and shape borrowed from memory, or
/// moved out of a file's parsed header).
struct NewArray<'a> {
    name: Cow<'a, str>,
    dtype: DType,
    shape: Cow<'a, [u64]>,
    /// Byte length.
    len: u64,
    /// Where its bytes are: the byte offset in its shard file, or the input slice's index.
    source: u64,
    /// The shard file it is read from (`None` for memory): batches are sized so that their
    /// output files and the shards they read fit the open-file budget together.
    shard: Option<usize>,
}

/// Names the file and tensor a copy failed on. A destination that could not be created
/// failed with an error that already says so: it is returned as it is.
fn copy_error<'a>(
    e: CopyError,
    src: &Path,
    mut names: impl Iterator<Item = &'a str>,
    dsts: Option<&[PathBuf]>,
) -> Error {
    let source = match e.source {
        Cause::Io(io) => io,
        Cause::Create(err) => return err,
    };
    let name = names.nth(e.extent).map(str::to_string);
    let (path, doing) = match (e.side, dsts) {
        (Side::Read, _) => (src.to_path_buf(), "reading"),
        (Side::Write, Some(d)) => (d.get(e.extent).cloned().unwrap_or_default(), "writing"),
        (Side::Write, None) => (src.to_path_buf(), "writing the output for"),
    };
    let mut err = Error::io(path, doing, source);
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
    arrays: Vec<NewArray<'_>>,
    source: Option<SourceMeta>,
    mut copy: impl FnMut(&[NewArray<'_>], &NewFiles<'_>, CopyProgress<'_>) -> Result<()>,
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
    let staging = Staging::new(output, metadata::FILE_NAME)?;

    // Arrays kept from the old output, their files linked into the staging directory.
    let replaced: HashSet<&str> = arrays.iter().map(|a| &*a.name).collect();
    let mut records: Vec<ArrayRecord> = Vec::with_capacity(arrays.len());
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
        let root = output.canonicalize().ctx(output, "resolving")?;
        link_tree(&root, &root, &staging, Path::new(""), &skip)?;
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
    // Stems taken (`choose_stem` compares ignoring case): a table, not a list scanned per
    // array, which was quadratic in the number of tensors.
    let mut stems = Stems::with_capacity(records.len() + arrays.len());
    for i in 0..records.len() {
        stems.insert(i, &records);
    }
    let mut order: Vec<usize> = (0..arrays.len()).collect();
    order.sort_by(|&a, &b| arrays[a].name.cmp(&arrays[b].name));
    let stamp = now_micros();
    // Each new array's record (its data file's name is there, not copied again).
    let mut record_of = vec![0usize; arrays.len()];
    for &i in &order {
        let a = &arrays[i];
        let clash = stems.find(&a.name, &records);
        let stem = naming::choose_stem(&a.name, clash.into_iter());
        let data_file = naming::data_file(&stem);
        // The sidecar entry, when one is needed, is made again as it is written.
        let (record, _) =
            make_record(&a.name, data_file, a.dtype, &a.shape, stamp).map_err(|e| e.at(output))?;
        record_of[i] = records.len();
        records.push(record);
        stems.insert(records.len() - 1, &records);
    }
    drop(stems);

    // The staging directory holds neither the metadata nor the sidecar yet (`link_tree`
    // leaves them out). Both depend on the records alone, so they are written on a thread of
    // their own while the workers copy (for 100,000 arrays, 17 MB of metadata and 30 MB of
    // sidecar JSON, some 0.4 s of one thread, had followed and preceded the copy). The
    // sidecar (only when it says something) is streamed to its file, the new arrays'
    // entries made one at a time as they are written: holding them all took some 25 MB.
    let new_entries = || {
        order.iter().filter_map(|&i| {
            let (a, r) = (&arrays[i], &records[record_of[i]]);
            needs_entry(r, a.dtype, &a.shape).then(|| Entry::new(r, a.dtype, &a.shape))
        })
    };
    let write_metadata = || -> Result<()> {
        if !sidecar.is_empty() || new_entries().next().is_some() {
            write_sidecar(&staging, &sidecar, new_entries(), opts.durable)?;
        }
        // Streamed to its file: for 100,000 arrays the encoded metadata is some 17 MB.
        write_streamed(&staging, metadata::FILE_NAME, opts.durable, |w| {
            metadata::encode_records(&records, w)
        })
    };

    // Copy, a batch of files at a time. The copy workers create the data files as they reach
    // them, so that creating hundreds of files (serialized by the kernel on the directory)
    // overlaps with copying; files with nothing to copy are created afterwards.
    let total = arrays.iter().fold(0u64, |sum, a| sum.saturating_add(a.len));
    let counter = Counter::new(opts.progress.as_ref(), 0, total);
    let for_copy = counter.for_copy();
    let progress = copy_progress(&for_copy);
    let mut copy_all = || -> Result<()> {
        for range in batches(&arrays, max_open_files()) {
            let batch = &arrays[range.clone()];
            let paths: Vec<PathBuf> = range
                .map(|i| staging.path().join(&records[record_of[i]].data_file))
                .collect();
            let create = |j: usize| -> Result<File> {
                let a = &batch[j];
                let f = staging
                    .create_file(&paths[j])
                    .map_err(|e| e.array(&*a.name))?;
                copy::size_new_file(&f, a.len)
                    .ctx(output, "allocating space for")
                    .map_err(|e| e.array(&*a.name))?;
                Ok(f)
            };
            // A file that cannot be created fails the copy with `create`'s error, unchanged.
            let new_files = NewFiles::with_npkio_errors(batch.len(), create);
            copy(batch, &new_files, progress)?;
            for (j, slot) in new_files.into_files().into_iter().enumerate() {
                let f = match slot {
                    Some(f) => f,
                    None => create(j)?,
                };
                if opts.durable {
                    f.sync_all()
                        .ctx(output, "syncing")
                        .map_err(|e| e.array(&*batch[j].name))?;
                }
            }
        }
        Ok(())
    };
    // Joined before the staging directory can go away; the copy's error first.
    let (copied, written) = std::thread::scope(|s| {
        match std::thread::Builder::new()
            .name("npkio-metadata".into())
            .spawn_scoped(s, write_metadata)
        {
            Ok(writer) => {
                let copied = copy_all();
                let written = writer
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p));
                (copied, written)
            }
            // No thread to be had: one after the other.
            Err(_) => (copy_all(), write_metadata()),
        }
    });
    copied?;
    written?;
    drop(sidecar);
    drop(order);
    drop(record_of);
    drop(arrays);
    drop(records);
    drop(old);
    staging.publish(opts.durable)
}

/// Writes the sidecar, with the entries `new` (sorted by name, names `sidecar` has no entry
/// for) added, into the staging directory, streamed to the file by `Sidecar::encode_with`
/// (for 100,000 entries, a sidecar encoded in memory is a buffer of some 30 MB).
fn write_sidecar(
    staging: &Staging,
    sidecar: &Sidecar,
    new: impl Iterator<Item = Entry>,
    durable: bool,
) -> Result<()> {
    write_streamed(staging, sidecar::FILE_NAME, durable, |w| {
        sidecar.encode_with(new, w)
    })
}

/// Writes the file `name` of the staging directory through a temporary file, filled by
/// `write` through a buffer, then renamed into place (synced with `durable`).
fn write_streamed(
    staging: &Staging,
    name: &str,
    durable: bool,
    write: impl FnOnce(&mut std::io::BufWriter<tempfile::NamedTempFile>) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = staging.temp_file(".npkio-tmp-")?;
    let path = tmp.path().to_path_buf();
    let mut w = std::io::BufWriter::with_capacity(1 << 16, tmp);
    staging.ctx(write(&mut w), &path, "writing")?;
    let tmp = w
        .into_inner()
        .map_err(|e| e.into_error())
        .map_err(|e| staging.error(&path, "writing", e))?;
    staging.publish_file(tmp, name, durable)
}

/// The stems of records' data files, found ignoring ASCII case: the positions of the
/// records in a [`Positions`] table, hashed by the lowercased stem, the stems compared where
/// the records keep them. No stem is copied.
struct Stems {
    positions: Positions,
    hasher: std::collections::hash_map::RandomState,
}

impl Stems {
    fn with_capacity(n: usize) -> Stems {
        Stems {
            positions: Positions::with_capacity(n),
            hasher: Default::default(),
        }
    }

    /// The hash of `stem` lowercased (ASCII).
    fn hash(&self, stem: &str) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.hasher.build_hasher();
        let mut buf = [0u8; 64];
        for chunk in stem.as_bytes().chunks(buf.len()) {
            let lower = &mut buf[..chunk.len()];
            lower.copy_from_slice(chunk);
            lower.make_ascii_lowercase();
            h.write(lower);
        }
        h.finish()
    }

    /// A stem of `records` equal to `name` ignoring ASCII case.
    fn find<'r>(&self, name: &str, records: &'r [ArrayRecord]) -> Option<&'r str> {
        let stem = |i: usize| naming::stem_of(&records[i].data_file);
        let i = self.positions.get(self.hash(name), |i| {
            stem(i).is_some_and(|s| s.eq_ignore_ascii_case(name))
        })?;
        stem(i)
    }

    /// Adds the stem of `records[i]`, if its data file has one.
    fn insert(&mut self, i: usize, records: &[ArrayRecord]) {
        if let Some(stem) = naming::stem_of(&records[i].data_file) {
            self.positions.insert(self.hash(stem), i);
        }
    }
}

/// Splits `arrays` into runs whose output files and the distinct shards they read take at
/// most `budget` descriptors together (at least one array a run).
fn batches(arrays: &[NewArray<'_>], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut shards: HashSet<usize> = HashSet::new();
    for (i, a) in arrays.iter().enumerate() {
        let new_shard = a.shard.is_some_and(|s| !shards.contains(&s));
        let need = (i - start + 1) + shards.len() + usize::from(new_shard);
        if i > start && need > budget {
            out.push(start..i);
            start = i;
            shards.clear();
        }
        shards.extend(a.shard);
    }
    if start < arrays.len() {
        out.push(start..arrays.len());
    }
    out
}

/// Hard-links (or copies, where links fail) every file of the old output's directory `dir`
/// (`root` is the old output, canonical; `rel` is `dir`'s place in it) into the staging
/// directory at `rel`, except the metadata, the sidecar, stale temporary files and `skip`.
///
/// Symbolic links the reader follows (those that resolve inside `root`) are carried over so
/// that the new directory opens whenever the old one did: a link to a file becomes a link
/// to (or copy of) that file itself, so it keeps the old bytes even when the merge replaces
/// the file it pointed at; a link to a directory is made again with the same target, which
/// names the same place in the new directory. Links leading elsewhere, dangling links and
/// special files are not carried over (the reader refuses them).
fn link_tree(
    root: &Path,
    dir: &Path,
    to: &Staging,
    rel: &Path,
    skip: &HashSet<PathBuf>,
) -> Result<()> {
    for entry in fs::read_dir(dir).ctx(dir, "listing")? {
        let entry = entry.ctx(dir, "listing")?;
        let name = entry.file_name();
        let r = rel.join(&name);
        let n = name.to_string_lossy();
        if rel.as_os_str().is_empty() && (n == metadata::FILE_NAME || n == sidecar::FILE_NAME) {
            continue;
        }
        if n.starts_with(".npkio-tmp-") || skip.contains(&r) {
            continue;
        }
        let ft = entry.file_type().ctx(entry.path(), "inspecting")?;
        let target = to.path().join(&r);
        if ft.is_dir() {
            to.ctx(fs::create_dir(&target), &target, "creating")?;
            link_tree(root, &entry.path(), to, &r, skip)?;
        } else if ft.is_file() {
            link_or_copy(&entry.path(), &target, to)?;
        } else if ft.is_symlink() {
            let resolved = match entry.path().canonicalize() {
                Ok(t) if t.starts_with(root) && t != root => t,
                _ => continue,
            };
            let md = fs::metadata(&resolved).ctx(&resolved, "inspecting")?;
            if md.is_file() {
                link_or_copy(&resolved, &target, to)?;
            } else if md.is_dir() {
                let link = fs::read_link(entry.path()).ctx(entry.path(), "reading")?;
                let made = std::os::unix::fs::symlink(&link, &target);
                to.ctx(made, &target, "creating")?;
            }
        }
        // Special files are not carried over: nothing npkio wrote or reads.
    }
    Ok(())
}

/// Hard-links the regular file `src` at `target` in the staging directory, or copies it
/// where links fail (another filesystem, a link count limit).
fn link_or_copy(src: &Path, target: &Path, to: &Staging) -> Result<()> {
    if fs::hard_link(src, target).is_err() {
        to.ctx(fs::copy(src, target), target, "copying to")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{ArrayInput, DType, ErrorKind};

    /// The streamed sidecar is the sidecar's fields as `serde_json` lays them out (pretty,
    /// in declaration order, `None`s omitted, entries sorted by name, a final newline), byte
    /// for byte, however its entries are split between those kept and those added.
    #[test]
    fn the_streamed_sidecar_is_the_fields_pretty_printed() {
        use crate::numpack::sidecar::{Entry, ShardRecord, Sharding, Sidecar};
        use crate::numpack::store::make_record;
        let mut s = Sidecar::default();
        for (i, name) in ["z\"q", "a", "m\u{e9}", "b"].iter().enumerate() {
            let shape = [i as u64 + 1, 3];
            let (_, entry) =
                make_record(name, format!("data_{i}.npkd"), DType::BF16, &shape, 7).unwrap();
            s.arrays.extend(entry);
        }
        assert_eq!(s.arrays.len(), 4);
        s.metadata = Some(vec![
            ("format".into(), "pt".into()),
            ("b".into(), "\n".into()),
        ]);
        s.sharding = Some(Sharding {
            index: "{}".into(),
            shards: vec![ShardRecord {
                file: "model-00001-of-00001.safetensors".into(),
                metadata: None,
                tensors: vec!["a".into()],
                header: Some("{ }".into()),
            }],
        });
        s.source_header = Some("{\"a\": 1}".into());
        let mut sorted = s.arrays.clone();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut expected = serde_json::to_vec_pretty(&serde_json::json!({
            "format": "npkio",
            "version": 1,
            "metadata": s.metadata,
            "arrays": sorted,
            "sharding": s.sharding,
            "source_header": s.source_header,
        }))
        .unwrap();
        expected.push(b'\n');
        assert_eq!(
            String::from_utf8(s.encode()).unwrap(),
            String::from_utf8(expected.clone()).unwrap()
        );
        // Every split of the entries into those kept and those made while writing.
        for mask in 0..16u32 {
            let pick = |keep: bool| -> Vec<Entry> {
                (0..4)
                    .filter(|i| (mask >> i & 1 == 1) == keep)
                    .map(|i| sorted[i].clone())
                    .collect()
            };
            let mut kept = s.clone();
            kept.arrays = pick(true);
            kept.arrays.reverse();
            let mut out = Vec::new();
            kept.encode_with(pick(false).into_iter(), &mut out).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                String::from_utf8(expected.clone()).unwrap()
            );
        }
        // No entries at all.
        let mut empty = s.clone();
        empty.arrays.clear();
        let mut out = Vec::new();
        empty.encode_with(std::iter::empty(), &mut out).unwrap();
        assert_eq!(out, empty.encode());
    }

    /// Stems are found ignoring ASCII case, across growth of the table.
    #[test]
    fn stems_are_found_ignoring_case() {
        use crate::numpack::store::make_record;
        let mut records = Vec::new();
        let mut stems = super::Stems::with_capacity(0);
        for i in 0..100 {
            let stem = format!("Layer{i}.W");
            let data_file = crate::numpack::naming::data_file(&stem);
            let (r, _) = make_record(&stem, data_file, DType::U8, &[1], 0).unwrap();
            records.push(r);
            stems.insert(i, &records);
        }
        let (r, _) = make_record("x", "elsewhere.npkd".into(), DType::U8, &[1], 0).unwrap();
        records.push(r);
        stems.insert(100, &records);
        for i in 0..100 {
            let want = format!("Layer{i}.W");
            assert_eq!(
                stems.find(&format!("layer{i}.w"), &records),
                Some(want.as_str())
            );
            assert_eq!(
                stems.find(&format!("LAYER{i}.W"), &records),
                Some(want.as_str())
            );
        }
        assert_eq!(stems.find("layer100.w", &records), None);
        assert_eq!(stems.find("elsewhere", &records), None);
    }

    /// A data file that cannot be created in the staging directory (here a stray file of the
    /// old output, linked in, holds its name) fails the import with an error about the
    /// output and the array, the staging path only in the message.
    #[test]
    fn a_data_file_that_cannot_be_created_names_the_output_and_array() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.npk");
        let t = |name, data| ArrayInput {
            name,
            dtype: DType::U8,
            shape: &[4],
            data,
        };
        crate::from_safetensors(&[t("a", &[1, 2, 3, 4])], &out, false).unwrap();
        std::fs::write(out.join("data_b.npkd"), b"stray").unwrap();
        let err = crate::from_safetensors(&[t("b", &[5, 6, 7, 8])], &out, false)
            .expect_err("data_b.npkd is taken");
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert_eq!(err.path(), Some(out.as_path()));
        assert_eq!(err.array_name(), Some("b"));
        assert!(err.message().starts_with("creating "), "{err}");
        assert!(
            err.message()
                .ends_with("data_b.npkd (staged for this output)"),
            "{err}"
        );
        // The old output is untouched.
        let old = crate::NumPack::open(&out).unwrap();
        assert_eq!(old.names(), ["a"]);
    }
}
