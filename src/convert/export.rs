//! NumPack to SafeTensors: [`to_safetensors_file`] writes one file, staged beside the output
//! and renamed into place, or (with [`Options::max_shard_size`]) a sharded checkpoint, whose
//! layout is planned here and published by `publish::sharded`. Tensor bytes go from the
//! store's data files to their places in the output in one parallel copy.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::{max_open_files, refuse_overlap, select_arrays, Options};
use crate::copy::{self, Cause, CopyOptions, Extent, Side};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::numpack::NumPack;
use crate::progress::{copy_progress, CopyProgress, Counter};
use crate::publish::{self, sharded::ShardedOutput};
use crate::safetensors::index::{index_json, same_index, shard_file_name, split_into_shards};
use crate::safetensors::writer::{plan_from_header, PlanInput};
use crate::safetensors::{plan_header, HeaderPlan};

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
    refuse_overlap(&[input_path.as_ref()], output)?;
    // Read from one committed state of the store: a writer committing under the export
    // (after the open, before a data file is opened) makes it start again.
    NumPack::open_with(input_path.as_ref(), |store| {
        export_store(&store, output, array_names, metadata, &copy_opts, opts)
    })
}

/// [`to_safetensors_file_with`] from the store opened.
fn export_store<S: AsRef<str>>(
    store: &NumPack,
    output: &Path,
    array_names: Option<&[S]>,
    metadata: Option<&[(String, String)]>,
    copy_opts: &CopyOptions,
    opts: &Options,
) -> Result<()> {
    let names = select_arrays(store, array_names)?;
    if let Some(limit) = opts.max_shard_size {
        return export_sharded(store, names, metadata, limit, output, opts);
    }
    if output.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "ends with '/', naming a directory; the output must be a .safetensors file path \
             (or give a maximum shard size to write a sharded checkpoint into a directory)",
        )
        .at(output));
    }
    let st_meta: Option<Vec<(String, String)>> = match metadata {
        Some(m) => Some(m.to_vec()),
        None => store.safetensors_metadata().map(<[_]>::to_vec),
    };
    let plan = plan_for(store, &names, st_meta.as_deref(), store.source_header())?;
    // Whether the output exists is decided under the lock, which orders the writers.
    let _lock = publish::lock_output(output, opts.wait_for_lock)?;
    if fs::metadata(output).is_ok_and(|m| m.is_dir()) {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "is a directory; the output must be a file path",
        )
        .at(output));
    }
    if opts.no_clobber && fs::symlink_metadata(output).is_ok() {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "exists; not replaced (no-clobber)",
        )
        .at(output));
    }
    let tmp = publish::staging_file(output)?;
    write_header(tmp.as_file(), &plan, output)?;
    let dests = [Destination {
        file: tmp.as_file(),
        path: output,
        names: &names,
        plan: &plan,
    }];
    // What the copy writes: the data section the plan lays out.
    let total = plan
        .ranges
        .iter()
        .fold(0u64, |sum, &(begin, end)| sum.saturating_add(end - begin));
    let counter = Counter::new(opts.progress.as_ref(), 0, total);
    let for_copy = counter.for_copy();
    copy_arrays(store, &dests, copy_opts, copy_progress(&for_copy))?;
    publish::publish_file(tmp, output, opts.durable)
}

/// The header plan for `names` of `store`.
fn plan_for(
    store: &NumPack,
    names: &[&str],
    metadata: Option<&[(String, String)]>,
    stored_header: Option<&str>,
) -> Result<HeaderPlan> {
    // Borrowed from the store, from the metadata alone: the data files are checked as the
    // copy opens them.
    let inputs: Vec<PlanInput<'_>> = names
        .iter()
        .map(|n| {
            let (dtype, shape) = store.logical_layout(n)?;
            Ok(PlanInput {
                name: n,
                dtype,
                shape,
            })
        })
        .collect::<Result<_>>()?;
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
    names: &'a [&'a str],
    plan: &'a HeaderPlan,
}

/// Copies every destination's arrays from the store: all destinations in one parallel
/// copy, each data file opened by the copy worker that first needs it (checked as every
/// data file of a store is: `NumPack::open_source`) and closed after its last chunk, at most
/// the open-file budget of them open at once.
fn copy_arrays(
    store: &NumPack,
    dests: &[Destination<'_>],
    copy_opts: &CopyOptions,
    progress: CopyProgress<'_>,
) -> Result<()> {
    // Per source: (array slot, data file of the array). Per extent: its source.
    let mut sources: Vec<(u32, u32)> = Vec::new();
    let mut extents: Vec<Extent> = Vec::new();
    for (d, dest) in dests.iter().enumerate() {
        for (i, name) in dest.names.iter().enumerate() {
            let slot = store.array_slot(name)?;
            let base = sources.len();
            let mut at = dest.plan.ranges[i].0;
            let before = extents.len();
            let files = store.source_runs(slot, |fi, offset, len| {
                extents.push(Extent {
                    src: base + fi,
                    src_offset: offset,
                    dst: d,
                    dst_offset: at,
                    len,
                });
                at += len;
            });
            if extents.len() == before {
                // No bytes to copy, so no file opened by the copy: checked here.
                store.verify_slot(slot)?;
            }
            let slot32 = u32::try_from(slot).expect("fewer than 2^32 arrays");
            sources.extend((0..files).map(|fi| (slot32, fi as u32)));
        }
    }
    let workers =
        copy::Workers::new(copy_opts.threads).ctx(store.path(), "starting the copy threads for")?;
    // Each worker may hold one source past those kept open.
    let limit = max_open_files().saturating_sub(workers.threads()).max(1);
    let files = copy::SourceFiles::with_npkio_errors(sources.len(), limit, |s| {
        let (slot, fi) = sources[s];
        store.open_copy_source(slot as usize, fi as usize)
    });
    let dst_files: Vec<&File> = dests.iter().map(|d| d.file).collect();
    workers
        .copy_extents_from(&files, &dst_files, &extents, copy_opts, progress)
        .map_err(|e| {
            let ext = extents.get(e.extent);
            let source = match e.source {
                Cause::Io(io) => io,
                // Opening a source failed: its error names the file and the array.
                Cause::Create(err) => return err,
            };
            let err = match (e.side, ext) {
                (Side::Read, Some(x)) => {
                    let (slot, fi) = sources[x.src];
                    Error::io(
                        store.source_path(slot as usize, fi as usize),
                        "reading",
                        source,
                    )
                }
                (Side::Write, Some(x)) => Error::io(dests[x.dst].path, "writing", source),
                (_, None) => Error::io(store.path(), "copying", source),
            };
            match ext {
                Some(x) => err.array(store.slot_name(sources[x.src].0 as usize)),
                None => err,
            }
        })
}

/// Writes `names` as a sharded checkpoint in the directory `output`, laid out as
/// `save_pretrained` does for `limit` bytes per shard: plans the shards, their headers and
/// the index here, and leaves writing and publishing them to `publish::sharded`.
fn export_sharded(
    store: &NumPack,
    names: Vec<&str>,
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
    // `save_pretrained` splits the model's state dict in its own order, which the files do
    // not record. The order used instead: the source's shards one after the other, each in
    // natural order of the names (`layers.2` before `layers.10`, as modules number their
    // layers) except that a tensor that does not fit after the previous source shard opens
    // it, so that a checkpoint that `save_pretrained` sharded with the same limit is split
    // exactly as it was; then the tensors of no source shard, in natural order.
    let nbytes = |n: &str| store.describe(n).map(|i| i.nbytes);
    let mut ordered: Vec<&str> = Vec::with_capacity(names.len());
    let wanted: HashSet<&str> = names.iter().copied().collect();
    let mut placed: HashSet<&str> = HashSet::new();
    if let Some(sh) = store.sharding() {
        let mut previous: Option<u64> = None;
        for s in &sh.shards {
            let mut shard: Vec<(u64, &str)> = Vec::new();
            for t in &s.tensors {
                if let Some(&n) = wanted.get(t.as_str()) {
                    if placed.insert(n) {
                        shard.push((nbytes(n)?, n));
                    }
                }
            }
            shard.sort_by(|a, b| natural_cmp(a.1, b.1));
            if let Some(prev) = previous {
                if let Some(i) = shard
                    .iter()
                    .position(|(size, _)| prev.saturating_add(*size) > limit)
                {
                    let opener = shard.remove(i);
                    shard.insert(0, opener);
                }
            }
            previous = Some(shard.iter().map(|(size, _)| size).sum());
            ordered.extend(shard.into_iter().map(|(_, n)| n));
        }
    }
    let mut rest: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !placed.contains(n))
        .collect();
    rest.sort_unstable_by(|a, b| natural_cmp(a, b));
    ordered.extend(rest);
    let sizes: Vec<u64> = ordered.iter().map(|n| nbytes(n)).collect::<Result<_>>()?;
    let total_parameters: u64 = ordered
        .iter()
        .map(|n| {
            store
                .logical_layout(n)
                .map(|(_, shape)| shape.iter().product::<u64>())
        })
        .sum::<Result<u64>>()?;
    let groups = split_into_shards(&sizes, limit);
    let n = groups.len().max(1);
    let file_names: Vec<String> = if n == 1 {
        vec!["model.safetensors".to_string()]
    } else {
        (1..=n).map(|k| shard_file_name(k, n)).collect()
    };
    let groups: Vec<Vec<&str>> = if groups.is_empty() {
        vec![Vec::new()]
    } else {
        groups
            .into_iter()
            .map(|g| g.into_iter().map(|i| ordered[i]).collect())
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
                weight_map.insert(t.to_string(), f.clone());
            }
        }
        let fresh = index_json(sizes.iter().sum(), Some(total_parameters), &weight_map);
        match store.sharding() {
            Some(s) if same_index(&s.index, &fresh) => s.index.clone(),
            _ => fresh,
        }
    });

    let paths: Vec<PathBuf> = file_names.iter().map(|f| output.join(f)).collect();
    // Held across the write, which takes it again (the lock is re-entrant), so that the
    // no-clobber decision and the write are one step for other writers.
    let _lock = publish::lock_output(output, opts.wait_for_lock)?;
    let total = sizes.iter().fold(0u64, |sum, &n| sum.saturating_add(n));
    let counter = Counter::new(opts.progress.as_ref(), 0, total);
    let for_copy = counter.for_copy();
    if opts.no_clobber && holds_weights(output) {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "already holds SafeTensors weights; not replaced (no-clobber)",
        )
        .at(output));
    }
    ShardedOutput {
        dir: output,
        files: &file_names,
        index: index.as_deref(),
        wait_for_lock: opts.wait_for_lock,
        durable: opts.durable,
    }
    .write(
        |k, file| write_header(file, &plans[k], &paths[k]),
        |first, files| {
            let dests: Vec<Destination<'_>> = files
                .iter()
                .zip(&paths[first..])
                .zip(groups[first..].iter().zip(&plans[first..]))
                .map(|((file, path), (names, plan))| Destination {
                    file,
                    path,
                    names,
                    plan,
                })
                .collect();
            copy_arrays(store, &dests, &copy_opts, copy_progress(&for_copy))
        },
    )
}

/// Whether the directory `dir` holds `*.safetensors` files or a `*.safetensors.index.json`.
fn holds_weights(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(|e| e.ok()).any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json")
        })
    })
}

/// Names compared with their runs of digits as numbers: `layers.2.w` before `layers.10.w`.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (x, y) = (chunks(a), chunks(b));
    for (p, q) in x.iter().zip(&y) {
        let ord = match (p, q) {
            ((true, m), (true, n)) => {
                let (m, n) = (m.trim_start_matches('0'), n.trim_start_matches('0'));
                m.len().cmp(&n.len()).then_with(|| m.cmp(n))
            }
            _ => p.1.cmp(q.1),
        };
        if ord.is_ne() {
            return ord;
        }
    }
    x.len().cmp(&y.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::natural_cmp;

    #[test]
    fn layer_numbers_sort_as_numbers() {
        let mut v = vec![
            "layers.10.w",
            "layers.2.w",
            "layers.1.w",
            "lm_head",
            "layers.02.b",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            [
                "layers.1.w",
                "layers.02.b",
                "layers.2.w",
                "layers.10.w",
                "lm_head"
            ]
        );
    }
}
