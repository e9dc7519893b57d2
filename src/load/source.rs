//! What a checkpoint looks like to the loader: files, and for every tensor its dtype, shape
//! and where its logical bytes lie in those files (pieces, in order).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub use crate::container::Container;
use crate::dtype::DType;
use crate::error::{Error, ErrorKind, Result};
use crate::numpack::NumPack;
use crate::safetensors::index::Checkpoint;
use crate::safetensors::reader::Reopener;

/// A run of a tensor's logical bytes inside one file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Piece {
    /// Index into the loader's files.
    pub(crate) file: usize,
    /// Byte offset in the file.
    pub(crate) offset: u64,
    /// Logical byte offset in the tensor where the piece starts.
    pub(crate) logical: u64,
    /// Length in bytes.
    pub(crate) len: u64,
}

/// One tensor a loader can read.
#[derive(Clone, Debug)]
pub struct LoadTensor {
    /// The exact name.
    pub name: String,
    /// The true dtype.
    pub dtype: DType,
    /// The logical shape (for NumPack, rows after deletions).
    pub shape: Vec<u64>,
    /// Logical byte length.
    pub nbytes: u64,
    pub(crate) pieces: Vec<Piece>,
    /// For a SafeTensors tensor, its file and the `data_offsets` begin its header gives,
    /// also when it has no bytes (and so no piece); `None` for a NumPack array.
    pub(crate) in_header: Option<(usize, u64)>,
}

impl LoadTensor {
    /// Where the tensor's bytes start in their file, when they are one run of one file
    /// (always for SafeTensors; for NumPack, arrays without segments or dropped rows).
    ///
    /// A destination whose address sits like this offset within a 4096-byte block
    /// (`addr % 4096 == offset % 4096`) is read with `O_DIRECT` in place, without a bounce
    /// copy: an arena with every tensor at `arena + file_offset` gets that for all of them.
    pub fn file_offset(&self) -> Option<u64> {
        match self.pieces[..] {
            [p] => Some(p.offset),
            _ => None,
        }
    }
}

/// A source file.
#[derive(Debug)]
pub(crate) struct SourceFile {
    pub(crate) path: PathBuf,
    /// Open for the loader's life; `None` when the source has more files (shards, or a
    /// NumPack directory's data files) than the open-file budget allows to keep open: each
    /// load opens them a window at a time (see `run`).
    pub(crate) file: Option<File>,
    /// How to open the file again, checking that it is the file validated.
    pub(crate) reopen: Option<Reopener>,
    /// Whether it is a data file of a NumPack store (which other writers change by
    /// replacing files, never in place).
    pub(crate) of_store: bool,
    /// An object in object storage instead of a local file (`file` and `reopen` are then
    /// `None`).
    pub(crate) remote: Option<crate::remote::RemoteObject>,
    /// Where a SafeTensors file's data section starts (0 for a NumPack data file).
    pub(crate) data_start: u64,
}

impl SourceFile {
    /// The file opened now: the one kept, or a new descriptor of the file validated. A data
    /// file of a store that is no longer the file validated (or is gone) was replaced by
    /// another writer's change: the state the loader opened is gone, a `Busy` error.
    pub(crate) fn open_now(&self) -> Result<Option<File>> {
        match (&self.file, &self.reopen) {
            (Some(_), _) | (None, None) => Ok(None),
            (None, Some(r)) => r.open().map(Some).map_err(|e| match e.kind() {
                ErrorKind::Malformed | ErrorKind::NotFound if self.of_store => Error::new(
                    ErrorKind::Busy,
                    format!(
                        "another writer changed the store since the loader opened it, and \
                         the array's state the loader read is gone ({}); open the loader \
                         again",
                        e.message()
                    ),
                )
                .at(&self.path),
                _ => e,
            }),
        }
    }
}

/// The opened checkpoint.
pub(crate) struct Opened {
    pub(crate) container: Container,
    pub(crate) files: Vec<SourceFile>,
    pub(crate) tensors: Vec<LoadTensor>,
    pub(crate) by_name: HashMap<String, usize>,
    /// A SafeTensors checkpoint's `__metadata__` (its first file's).
    pub(crate) metadata: Option<Vec<(String, String)>>,
}

/// Reserves room for `n` more items in `v`; out of memory is an `Io` error naming `path`
/// (the tables of a checkpoint's tensors, files and pieces are as long as its metadata
/// says).
pub(crate) fn reserve<T>(v: &mut Vec<T>, n: usize, path: &Path, what: &str) -> Result<()> {
    v.try_reserve(n).map_err(|_| out_of_memory(path, what))
}

/// The `Io` error of an allocation for `what` that failed.
pub(crate) fn out_of_memory(path: &Path, what: &str) -> Error {
    Error::io(
        path,
        &format!("allocating memory for {what} of"),
        std::io::Error::from(std::io::ErrorKind::OutOfMemory),
    )
}

pub(crate) fn open(path: &Path) -> Result<Opened> {
    let o = match Container::detect(path)? {
        Container::NumPack => open_numpack(path)?,
        _ => open_safetensors(path)?,
    };
    with_names(o, path)
}

/// `o` with its table of names.
pub(crate) fn with_names(mut o: Opened, path: &Path) -> Result<Opened> {
    o.by_name
        .try_reserve(o.tensors.len())
        .map_err(|_| out_of_memory(path, "the table of tensor names"))?;
    for (i, t) in o.tensors.iter().enumerate() {
        o.by_name.insert(t.name.clone(), i);
    }
    Ok(o)
}

fn open_safetensors(path: &Path) -> Result<Opened> {
    let ck = Checkpoint::open(path)?;
    // Shards are kept open when they fit in half the open-file budget (the other half for
    // `O_DIRECT` descriptors and the caller); more are opened a window at a time by each
    // load, so that no number of shards runs the process out of descriptors.
    let keep = ck.shards().len() <= (crate::sys::fdlimit::open_file_budget() / 2).max(1);
    let mut files = Vec::new();
    reserve(&mut files, ck.shards().len(), path, "the shards")?;
    for s in ck.shards() {
        files.push(SourceFile {
            path: s.path().to_path_buf(),
            file: if keep { Some(s.reopen()?) } else { None },
            reopen: Some(s.reopener()),
            of_store: false,
            remote: None,
            data_start: s.data_start(),
        });
    }
    let container = if ck.is_sharded() {
        Container::ShardedSafeTensors
    } else {
        Container::SafeTensors
    };
    let metadata = ck.metadata().map(<[_]>::to_vec);
    let mut tensors = Vec::new();
    reserve(&mut tensors, ck.len(), path, "the tensors")?;
    // Shard by shard in file order (the checkpoint's order), names and shapes moved out of
    // the parsed headers.
    for (shard, s) in ck.into_shards().into_iter().enumerate() {
        let data_start = s.data_start();
        push_tensors(&mut tensors, shard, data_start, s.into_tensors());
    }
    Ok(Opened {
        container,
        files,
        tensors,
        by_name: HashMap::new(),
        metadata,
    })
}

/// Appends the tensors of SafeTensors file `shard`, whose data section starts at
/// `data_start` (room reserved by the caller).
pub(crate) fn push_tensors(
    tensors: &mut Vec<LoadTensor>,
    shard: usize,
    data_start: u64,
    infos: Vec<crate::safetensors::TensorInfo>,
) {
    for info in infos {
        let start = data_start + info.data_offsets.0;
        let pieces = if info.is_empty() {
            Vec::new()
        } else {
            vec![Piece {
                file: shard,
                offset: start,
                logical: 0,
                len: info.len(),
            }]
        };
        tensors.push(LoadTensor {
            nbytes: info.len(),
            name: info.name,
            dtype: info.dtype,
            shape: info.shape,
            pieces,
            in_header: Some((shard, info.data_offsets.0)),
        });
    }
}

fn open_numpack(dir: &Path) -> Result<Opened> {
    // The data files are opened here: a writer committing after the store is opened, before
    // they are, makes it start again (the files may hold the newer state).
    NumPack::open_with(dir, |store| open_store(dir, &store))
}

/// [`open_numpack`] of the store opened.
fn open_store(dir: &Path, store: &NumPack) -> Result<Opened> {
    // Data files are kept open when they fit in half the open-file budget (as a checkpoint's
    // shards are); more are checked here, closed, and opened a window at a time by each
    // load, so that no number of arrays runs the process out of descriptors.
    crate::sys::fdlimit::raise_soft_limit();
    let keep = store.data_file_total() <= (crate::sys::fdlimit::open_file_budget() / 2).max(1);
    let names = store.names();
    let mut files: Vec<SourceFile> = Vec::new();
    let mut tensors = Vec::new();
    reserve(&mut tensors, names.len(), dir, "the arrays")?;
    for name in names {
        let slot = store.array_slot(name)?;
        let info = store.describe(name)?;
        // Runs of active rows: as many as the deletion bitmap (checked against its file's
        // size) says.
        let mut runs = Vec::new();
        let mut grown = true;
        let count = store.source_runs(slot, |fi, offset, len| {
            if !grown
                || (runs.len() == runs.capacity() && runs.try_reserve(runs.len().max(16)).is_err())
            {
                grown = false;
                return;
            }
            runs.push((fi, offset, len))
        });
        if !grown {
            return Err(out_of_memory(dir, "the active rows").array(name));
        }
        if runs.is_empty() {
            // No bytes to read, so no file opened below: checked here.
            store.verify_slot(slot)?;
        }
        // This array's data files, opened as the store opens them (inside the directory,
        // no links out, as long as the record needs), each once.
        let mut opened: Vec<Option<usize>> = Vec::new();
        reserve(&mut opened, count, dir, "the data files")?;
        opened.resize(count, None);
        let mut pieces = Vec::new();
        reserve(&mut pieces, runs.len(), dir, "the active rows")?;
        let mut logical = 0u64;
        for (fi, offset, len) in runs {
            let file = match opened[fi] {
                Some(i) => i,
                None => {
                    let path = store.source_path(slot, fi);
                    let file = store.open_source(slot, fi)?;
                    let reopen = match (keep, path.strip_prefix(store.path())) {
                        (false, Ok(rel)) => Some(Reopener::inside(
                            store.path(),
                            &rel.to_string_lossy(),
                            "data file",
                            &file,
                        )?),
                        _ => None,
                    };
                    reserve(&mut files, 1, dir, "the data files")?;
                    files.push(SourceFile {
                        path,
                        file: reopen.is_none().then_some(file),
                        reopen,
                        of_store: true,
                        remote: None,
                        data_start: 0,
                    });
                    opened[fi] = Some(files.len() - 1);
                    files.len() - 1
                }
            };
            pieces.push(Piece {
                file,
                offset,
                logical,
                len,
            });
            logical += len;
        }
        if logical != info.nbytes {
            return Err(Error::new(
                ErrorKind::Malformed,
                format!(
                    "data files hold {logical} bytes of the array, not the {} its shape needs",
                    info.nbytes
                ),
            )
            .at(dir)
            .array(name));
        }
        tensors.push(LoadTensor {
            name: name.to_string(),
            dtype: info.dtype,
            shape: info.shape,
            nbytes: info.nbytes,
            pieces,
            in_header: None,
        });
    }
    Ok(Opened {
        container: Container::NumPack,
        files,
        tensors,
        by_name: HashMap::new(),
        metadata: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_too_large_for_memory_is_an_io_error() {
        let mut v: Vec<u64> = Vec::new();
        let e = reserve(&mut v, usize::MAX, Path::new("model.npk"), "the arrays").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(e.to_string().contains("model.npk"), "{e}");
        assert!(e.to_string().contains("the arrays"), "{e}");
    }
}
