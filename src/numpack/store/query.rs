//! Queries: names, descriptions, views and extents of a store's arrays.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use memmap2::MmapOptions;

use crate::dtype::DType;
use crate::error::{Error, IoContext, Result};
use crate::names;
use crate::numpack::metadata::{ArrayRecord, Metadata};
use crate::numpack::sidecar::{Entry, Sidecar};
use crate::sys::safe_open::open_below;
use crate::view::TensorView;

use super::layout::{
    bitmap_path, data_files_of, is_zero_copy, logical_len, physical_rows, Storage,
};
use super::{generation, Array, Data, NumPack};

/// How many times a read through a store that another writer changed reads the store
/// as it is now, while it keeps changing (see [`NumPack::read_state`]).
const READ_TRIES: u32 = 8;

/// How many times [`NumPack::open_with`] runs a job on a fresh open of the store.
const JOB_TRIES: u32 = 5;

/// Describes one array of a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayInfo {
    /// The exact name.
    pub name: String,
    /// The true dtype (BF16 for an array npkio stored as uint16, etc.).
    pub dtype: DType,
    /// The logical shape: rows after deletions.
    pub shape: Vec<u64>,
    /// Logical byte length.
    pub nbytes: u64,
    /// The dtype NumPack 0.7 sees.
    pub storage_dtype: DType,
    /// The shape NumPack 0.7 sees (physical rows, stand-in shapes).
    pub storage_shape: Vec<u64>,
    /// Rows deleted by `drop` and still physically present.
    pub deleted_rows: u64,
    /// Whether the array is split into segment files.
    pub segmented: bool,
    /// Whether [`NumPack::view`] borrows the mapped file (no copy).
    pub zero_copy: bool,
}

/// A run of bytes inside one of an array's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceExtent {
    /// File relative to the directory.
    pub file: PathBuf,
    /// Byte offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Data file `fi` of `a` (its one data file, or segment `fi` in row order) and the bytes
/// its record says it holds.
fn data_file(a: &Array, fi: usize) -> (&Path, u64) {
    match &a.storage {
        Storage::Plain | Storage::Refused => (Path::new(&a.record.data_file), a.record.size_bytes),
        Storage::Segmented(s) => {
            let (p, _, bytes) = &s.segments[fi];
            (p, *bytes)
        }
    }
}

/// Whether `file`'s status changed (a truncation, a write) at or after `since`.
fn changed_since(file: &File, since: std::time::SystemTime) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = file.metadata() else {
        return false;
    };
    let Ok(since) = since.duration_since(std::time::UNIX_EPOCH) else {
        return false;
    };
    let ctime = (md.ctime(), md.ctime_nsec());
    let since = (since.as_secs() as i64, i64::from(since.subsec_nanos()));
    ctime >= since
}

/// How many data files `a` has.
fn data_file_count(a: &Array) -> usize {
    match &a.storage {
        Storage::Plain => 1,
        Storage::Segmented(s) => s.segments.len(),
        Storage::Refused => 0,
    }
}

impl NumPack {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Array names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.arrays.iter().map(|a| a.record.name.as_str()).collect();
        v.sort_unstable();
        v
    }

    /// Number of arrays.
    pub fn len(&self) -> usize {
        self.arrays.len()
    }

    /// Whether the store has no arrays.
    pub fn is_empty(&self) -> bool {
        self.arrays.is_empty()
    }

    /// The position of the array `name` in `arrays`.
    pub(super) fn find(&self, name: &str) -> Option<usize> {
        self.index.get(name, &self.arrays)
    }

    /// Whether an array of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    /// The array `name`, its data files checked (see [`NumPack::verify`]).
    pub(super) fn get(&self, name: &str) -> Result<&Array> {
        let a = self.get_listed(name)?;
        self.verify(a)?;
        Ok(a)
    }

    /// The array `name` as opening found it: refused if its metadata, manifest or bitmap is
    /// bad, its data files not looked at.
    pub(super) fn get_listed(&self, name: &str) -> Result<&Array> {
        self.slot(name).map(|i| &self.arrays[i])
    }

    /// The index of the array `name` (see [`NumPack::get_listed`]).
    fn slot(&self, name: &str) -> Result<usize> {
        if let Some(f) = self.faults.get(name) {
            return Err(f.error.duplicate());
        }
        self.find(name).ok_or_else(|| self.not_found(name))
    }

    /// Checks, once, that the data files of `a` are as its record needs (each opened by
    /// [`NumPack::open_data`], then closed). A failure is not remembered: the next call
    /// looks again.
    pub(super) fn verify(&self, a: &Array) -> Result<()> {
        if a.verified.load(Ordering::Relaxed) {
            return Ok(());
        }
        for fi in 0..data_file_count(a) {
            self.open_data(a, fi)?;
        }
        a.verified.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Opens data file `fi` of `a` for reading. Every read of an array's bytes (a view,
    /// an export, the loader, a change) opens its data files here, and only here: relative
    /// to the directory the store opened, one path component at a time, following no link
    /// out of it, without blocking, a regular file by `fstat` (see `safe_open`), and at least
    /// as long as the record needs. A failure names the file and the array.
    pub(super) fn open_data(&self, a: &Array, fi: usize) -> Result<File> {
        self.open_data_as(a, fi, false)
    }

    /// [`NumPack::open_data`]; with `during_copy`, a file that is short but changed since
    /// the store opened (its status-change time is later) was truncated under a copy that
    /// started with it whole: an I/O error of reading it, as a copy's short read is.
    fn open_data_as(&self, a: &Array, fi: usize, during_copy: bool) -> Result<File> {
        let (rel, need) = data_file(a, fi);
        let segmented = matches!(a.storage, Storage::Segmented(_));
        let what = if segmented {
            "segment file"
        } else {
            "data file"
        };
        let name = &a.record.name;
        let shown = rel.to_string_lossy();
        let listed = a.listed_regular && !segmented;
        let opened = open_below(&self.root, &self.dir, rel, &shown, what, listed);
        crate::hook::at("numpack-read:data-opened");
        // Opened by name after the metadata was read: it holds the state this store read
        // only if that metadata is still the current one (while it is, no writer changes a
        // file it names). If not, the state read is gone: a typed error, not the new bytes
        // under the old dtype and shape, nor a file of the old state reported missing.
        if !self.writer.is_current(&self.root) {
            return Err(generation::changed_under(&self.dir).array(name));
        }
        let (file, len) =
            opened.map_err(|e| super::open::missing_is_malformed(e, &self.dir).array(name))?;
        if len < need {
            let message = if segmented {
                format!("segment {shown:?} is {len} bytes, shorter than its {need}")
            } else {
                let dtype = DType::from_numpack_code(a.record.dtype_code).unwrap_or(a.dtype);
                format!(
                    "data file is {len} bytes, shorter than the {need} that shape {:?} of \
                     {dtype} needs",
                    a.record.shape
                )
            };
            let path = self.dir.join(rel);
            if during_copy && changed_since(&file, self.opened_at) {
                let short = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, message);
                return Err(Error::io(path, "reading", short).array(name));
            }
            return Err(Error::malformed(path, message).array(name));
        }
        Ok(file)
    }

    /// Opens data file `fi` of the array at `slot` for a copy that reads it now (an export):
    /// as [`NumPack::open_data`], but a file truncated since the store opened is an I/O
    /// error of reading it, as a short read during the copy would be.
    pub(crate) fn open_copy_source(&self, slot: usize, fi: usize) -> Result<File> {
        self.open_data_as(&self.arrays[slot], fi, true)
    }

    /// The index of the array `name`, for [`NumPack::open_source`] and
    /// [`NumPack::source_runs`]; its data files are not looked at.
    pub(crate) fn array_slot(&self, name: &str) -> Result<usize> {
        self.slot(name)
    }

    /// The name of the array at `slot`.
    pub(crate) fn slot_name(&self, slot: usize) -> &str {
        &self.arrays[slot].record.name
    }

    /// Checks the data files of the array at `slot` (see [`NumPack::verify`]).
    pub(crate) fn verify_slot(&self, slot: usize) -> Result<()> {
        self.verify(&self.arrays[slot])
    }

    /// Opens data file `fi` of the array at `slot`, as [`NumPack::open_data`] does.
    pub(crate) fn open_source(&self, slot: usize, fi: usize) -> Result<File> {
        self.open_data(&self.arrays[slot], fi)
    }

    /// Data file `fi` of the array at `slot`, as a path, for messages.
    pub(crate) fn source_path(&self, slot: usize, fi: usize) -> PathBuf {
        self.dir.join(data_file(&self.arrays[slot], fi).0)
    }

    /// Where the logical bytes of the array at `slot` are, in order: `run(file, offset, len)`
    /// for each run of active rows within each data file (`file` as in
    /// [`NumPack::open_source`]). Empty runs are omitted. Returns how many data files it has.
    pub(crate) fn source_runs(&self, slot: usize, run: impl FnMut(usize, u64, u64)) -> usize {
        let a = &self.arrays[slot];
        self.runs(a, run);
        data_file_count(a)
    }

    /// How many data files the arrays have in all (segments counted one by one).
    pub(crate) fn data_file_total(&self) -> usize {
        self.arrays.iter().map(data_file_count).sum()
    }

    /// The error for an unknown array name, listing some of the arrays that exist.
    pub(crate) fn not_found(&self, name: &str) -> Error {
        names::not_found("array", name, &self.names(), &self.dir)
    }

    /// Describes an array. Its data files are checked (once) as a read would check them, so
    /// that a damaged array fails here too.
    ///
    /// After another writer changed the store, the array is checked as a view would read
    /// it (`Busy` if its dtype or shape changed, or it is gone), unless it was viewed
    /// before: the store holds its bytes then.
    pub fn info(&self, name: &str) -> Result<ArrayInfo> {
        let a = self.get_listed(name)?;
        if a.data.get().is_none() {
            self.read_state(a, |s, b| s.verify(b))?;
        }
        self.describe(name)
    }

    /// The true dtype and logical shape of an array, borrowed, without looking at its data
    /// files (what an export's header needs).
    pub(crate) fn logical_layout(&self, name: &str) -> Result<(DType, &[u64])> {
        let a = self.get_listed(name)?;
        Ok((a.dtype, a.logical_shape()))
    }

    /// [`NumPack::info`] without looking at the data files: what the metadata, sidecar and
    /// bitmap say.
    pub(crate) fn describe(&self, name: &str) -> Result<ArrayInfo> {
        let a = self.get_listed(name)?;
        Ok(ArrayInfo {
            name: a.record.name.clone(),
            dtype: a.dtype,
            shape: a.logical_shape().to_vec(),
            nbytes: logical_len(a),
            storage_dtype: DType::from_numpack_code(a.record.dtype_code).unwrap_or(DType::I32),
            storage_shape: a.record.shape.clone(),
            deleted_rows: a.bitmap.as_ref().map_or(0, |b| b.deleted_count()),
            segmented: matches!(a.storage, Storage::Segmented(_)),
            zero_copy: is_zero_copy(a),
        })
    }

    /// The SafeTensors `__metadata__` recorded when the directory was made from a SafeTensors
    /// file (pairs in their original order), `None` if there is none.
    pub fn safetensors_metadata(&self) -> Option<&[(String, String)]> {
        self.st_metadata.as_deref()
    }

    /// The shard layout of the SafeTensors source, when it was a sharded checkpoint.
    pub(crate) fn sharding(&self) -> Option<&crate::numpack::sidecar::Sharding> {
        self.sharding.as_ref()
    }

    /// The SafeTensors source's header JSON, kept when its layout differs from the one the
    /// `safetensors` crate writes (see `numpack::sidecar`).
    pub(crate) fn source_header(&self) -> Option<&str> {
        self.source_header.as_deref()
    }

    /// The data file of `name` opened again and checked as [`NumPack::view`] opens it,
    /// with the bytes it holds (the array's `size_bytes`), when the array's bytes are that
    /// whole file as stored: one file, no dropped rows, at least one byte. `None` otherwise
    /// (segments, dropped rows, no bytes), when a view gathers them instead. For a private,
    /// copy-on-write mapping of the array: it shows the file the store checked.
    ///
    /// After another writer changed the store, it is the file of the array's state now, as
    /// [`NumPack::view`] reads it.
    pub fn plain_data_file(&self, name: &str) -> Result<Option<(File, u64)>> {
        let a = self.get_listed(name)?;
        self.read_state(a, |s, b| {
            if logical_len(b) == 0 || !matches!((&b.storage, &b.bitmap), (Storage::Plain, None)) {
                return Ok(None);
            }
            Ok(Some((s.open_data(b, 0)?, b.record.size_bytes)))
        })
    }

    /// A view of an array's logical bytes. It borrows the mapped data file when the array is
    /// one file with no deleted rows (`borrowed` is true); otherwise the active rows are
    /// gathered into one buffer, once, kept by the store.
    ///
    /// A mapping reflects the file: if another process truncates a data file while it is
    /// mapped, touching the missing pages raises SIGBUS. npkio never truncates a file it has
    /// published; replacing an array writes a new file.
    ///
    /// The first view of an array after another writer changed the store reads the array's
    /// state now if it has the dtype and shape this store describes, else fails with
    /// [`ErrorKind::Busy`] (docs/guarantees.md, "What readers and writers see"); either
    /// way it is one committed state of the array, kept for every later view.
    pub fn view(&self, name: &str) -> Result<TensorView<'_>> {
        // Loading opens (and so checks) the data files.
        let a = self.get_listed(name)?;
        let data = match a.data.get() {
            Some(d) => d,
            None => {
                let d = Box::new(self.read_state(a, |s, b| s.load_data(b))?);
                if d.as_slice().len() as u64 != logical_len(a) {
                    // Not reached: the same dtype and shape have as many bytes.
                    return Err(generation::state_gone(&self.dir).array(&a.record.name));
                }
                // Another thread may have won the race; either value is the same bytes.
                let _ = a.data.set(d);
                a.data.get().expect("just set")
            }
        };
        Ok(TensorView {
            name: &a.record.name,
            dtype: a.dtype,
            shape: a.logical_shape(),
            data: data.as_slice(),
            borrowed: !matches!(**data, Data::Owned(_)),
        })
    }

    /// Reads the array `a` of this store with `read`. If another writer changed the store
    /// since it was opened (`read` fails as [`generation::changed_under`] says), `read` is
    /// given the array as the store is now instead, if it has `a`'s dtype and logical shape:
    /// its bytes are then its state now, one committed state of it with the dtype and shape
    /// this store describes. If it does not, or is gone, the state this store opened is
    /// gone: [`ErrorKind::Busy`]. The store as it is now is read once a change, and kept
    /// while it is current (`NumPack::newer_state`); `read` checks that it still is once
    /// it opened the files it needs, and on a change it is read again, a few times at most
    /// (then `Busy` too, saying the store kept changing).
    pub(super) fn read_state<T>(
        &self,
        a: &Array,
        read: impl Fn(&NumPack, &Array) -> Result<T>,
    ) -> Result<T> {
        // Once the store changed, this state stays gone (until the handle's own next change):
        // no first try through it.
        if !self.changed.load(Ordering::Relaxed) {
            match read(self, a) {
                Err(e) if generation::is_changed_under(&e) => {
                    self.changed.store(true, Ordering::Relaxed);
                }
                done => return done,
            }
        }
        let name = &a.record.name;
        for _ in 0..READ_TRIES {
            let now = self.newer_state().map_err(|e| e.array(name))?;
            let b = match now.get_listed(name) {
                Ok(b) if b.dtype == a.dtype && b.logical_shape() == a.logical_shape() => b,
                _ => return Err(generation::state_gone(&self.dir).array(name)),
            };
            match read(&now, b) {
                Err(e) if generation::is_changed_under(&e) => {}
                done => return done,
            }
        }
        Err(generation::kept_changing(&self.dir).array(name))
    }

    /// The store as it is now in this store's directory (the directory opened, wherever
    /// its path leads now): the one read last while it is current, else read again. Fails
    /// with `Busy` when it cannot be read (the state opened is gone) or keeps changing.
    fn newer_state(&self) -> Result<Arc<NumPack>> {
        let mut kept = self.newer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(now) = kept.as_ref().filter(|n| n.writer.is_current(&n.root)) {
            return Ok(Arc::clone(now));
        }
        *kept = None;
        let mut changing = false;
        for _ in 0..READ_TRIES {
            let root = self
                .root
                .try_clone()
                .ctx(&self.dir, "duplicating the handle of")?;
            // An error of a state being replaced meanwhile (a file of it removed) may be
            // gone on the next try, as in `NumPack::open`.
            if let Ok(now) = NumPack::open_in(&self.dir, root) {
                if now.writer.is_current(&now.root) {
                    let now = Arc::new(now);
                    *kept = Some(Arc::clone(&now));
                    return Ok(now);
                }
                changing = true;
            }
        }
        Err(if changing {
            generation::kept_changing(&self.dir)
        } else {
            generation::state_gone(&self.dir)
        })
    }

    /// Opens the store at `path` and runs `job` on it; if `job` fails because another
    /// writer changed the store under it (the state it opened is gone), opens the store
    /// again and runs `job` again, a few times at most, then returns that error: what a
    /// job that reads a store once (an export, a load, an inspection) does to read one
    /// committed state of it.
    #[doc(hidden)]
    pub fn open_with<T>(
        path: impl AsRef<Path>,
        mut job: impl FnMut(NumPack) -> Result<T>,
    ) -> Result<T> {
        let path = path.as_ref();
        let mut tries = 0;
        loop {
            tries += 1;
            match job(NumPack::open(path)?) {
                Err(e) if tries < JOB_TRIES && generation::is_changed_under(&e) => {}
                done => return done,
            }
        }
    }

    fn load_data(&self, a: &Array) -> Result<Data> {
        let name = &a.record.name;
        if logical_len(a) == 0 {
            self.verify(a)?;
            return Ok(Data::Empty);
        }
        if let (Storage::Plain, None) = (&a.storage, &a.bitmap) {
            let path = self.dir.join(&a.record.data_file);
            // Checked as it is opened: the file may also have been replaced since the store
            // was opened (a conversion into this directory puts new files under the same
            // names), and mapping past its end would fault on first touch.
            let file = self.open_data(a, 0)?;
            // SAFETY: the mapping is read-only and private to this store. Another process
            // could still truncate or rewrite the file; npkio itself never does that to a
            // published data file (changes go through new files renamed into place), and the
            // view documents the risk for files changed by others.
            let map = unsafe {
                MmapOptions::new()
                    .len(a.record.size_bytes as usize)
                    .map(&file)
            }
            .ctx(&path, "mapping")
            .map_err(|e| e.array(name))?;
            return Ok(Data::Mapped(map));
        }
        let mut out = vec![0u8; logical_len(a) as usize];
        let mut runs = Vec::new();
        self.runs(a, |fi, offset, len| runs.push((fi, offset, len)));
        let mut open: Option<(usize, File)> = None;
        let mut pos = 0usize;
        for (fi, offset, len) in runs {
            let file = match open.take() {
                Some((f, file)) if f == fi => file,
                _ => self.open_data(a, fi)?,
            };
            let end = pos + len as usize;
            file.read_exact_at(&mut out[pos..end], offset)
                .ctx(self.dir.join(data_file(a, fi).0), "reading")
                .map_err(|e| e.array(name))?;
            open = Some((fi, file));
            pos = end;
        }
        a.verified.store(true, Ordering::Relaxed);
        Ok(Data::Owned(out))
    }

    /// Where an array's logical bytes are, in order: one extent per run of active rows
    /// within each file. Empty extents are omitted.
    #[doc(hidden)]
    pub fn array_extents(&self, name: &str) -> Result<Vec<SourceExtent>> {
        let a = self.get(name)?;
        Ok(self.extents(a))
    }

    fn extents(&self, a: &Array) -> Vec<SourceExtent> {
        let mut out = Vec::new();
        self.runs(a, |fi, offset, len| {
            out.push(SourceExtent {
                file: data_file(a, fi).0.to_path_buf(),
                offset,
                len,
            })
        });
        out
    }

    /// Calls `run(file, offset, len)` for each run of `a`'s active rows within each of its
    /// data files, in order (`file` as in [`NumPack::open_data`]); empty runs are omitted.
    fn runs(&self, a: &Array, mut run: impl FnMut(usize, u64, u64)) {
        let rows = physical_rows(a);
        let row_bytes = a.record.size_bytes.checked_div(rows).unwrap_or(0);
        let file_rows = |fi: usize| match &a.storage {
            Storage::Segmented(s) => s.segments[fi].1,
            Storage::Plain | Storage::Refused => rows,
        };
        let files = data_file_count(a);
        let mut file_start = 0u64; // first row of the current file
        let mut fi = 0usize;
        let mut each = |start: u64, len: u64| {
            let (mut row, end) = (start, start + len);
            while row < end && fi < files {
                let frows = file_rows(fi);
                if row >= file_start + frows {
                    file_start += frows;
                    fi += 1;
                    continue;
                }
                let take = (end - row).min(file_start + frows - row);
                if take * row_bytes > 0 {
                    run(fi, (row - file_start) * row_bytes, take * row_bytes);
                }
                row += take;
            }
        };
        match &a.bitmap {
            Some(b) => b.active_runs().into_iter().for_each(|(s, l)| each(s, l)),
            None => each(0, rows),
        }
    }

    /// Files that make up an array, relative to the directory: data file or manifest and
    /// segments, and the deletion bitmap if any.
    pub(crate) fn array_files(&self, name: &str) -> Result<Vec<PathBuf>> {
        if self.faults.contains_key(name) {
            // What its record names, as far as it stays inside: enough to leave it out
            // when the array is replaced.
            let r = self.record(name)?;
            let data = crate::sys::paths::checked_relative(&r.data_file).ok();
            return Ok(data.into_iter().chain([bitmap_path(r)]).collect());
        }
        let a = self.get(name)?;
        let mut files = Vec::new();
        files.extend(data_files_of(a));
        if a.bitmap.is_some() {
            files.push(bitmap_path(&a.record));
        }
        Ok(files)
    }

    /// The metadata record of an array, as on disk.
    pub(crate) fn record(&self, name: &str) -> Result<&ArrayRecord> {
        self.find(name)
            .map(|i| &self.arrays[i].record)
            .ok_or_else(|| self.not_found(name))
    }

    /// The sidecar entry that applies to an array, if any.
    pub(crate) fn sidecar_entry(&self, name: &str) -> Result<Option<Entry>> {
        if let Some(f) = self.faults.get(name) {
            return Ok(f.entry.clone());
        }
        let a = self.get_listed(name)?;
        let r = &a.record;
        let native = DType::from_numpack_code(r.dtype_code) == Some(a.dtype) && !a.has_own_shape();
        Ok((!native).then(|| Entry::new(r, a.dtype, a.shape())))
    }

    /// The metadata and sidecar that describe the store now.
    pub(crate) fn snapshot(&self) -> (Metadata, Sidecar) {
        let meta = Metadata {
            total_size: 0,
            arrays: self.arrays.iter().map(|a| a.record.clone()).collect(),
        };
        let mut sidecar = Sidecar {
            metadata: self.st_metadata.clone(),
            sharding: self.sharding.clone(),
            source_header: self.source_header.clone(),
            ..Sidecar::default()
        };
        for a in &self.arrays {
            if let Ok(Some(e)) = self.sidecar_entry(&a.record.name) {
                sidecar.arrays.push(e);
            }
        }
        (meta, sidecar)
    }
}
