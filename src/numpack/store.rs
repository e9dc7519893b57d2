//! The NumPack store: open a directory, list and view arrays, save, append, drop, delete.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use memmap2::{Mmap, MmapOptions};

use crate::dtype::{self, DType};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::numpack::bitmap::Bitmap;
use crate::numpack::fsutil::{now_micros, write_atomic};
use crate::numpack::metadata::{self, ArrayRecord, Metadata};
use crate::numpack::naming;
use crate::numpack::segments::{self, Segment};
use crate::numpack::sidecar::{self, Entry, Sidecar};

/// Where an array's bytes live.
#[derive(Clone, Debug)]
pub enum Storage {
    /// One `.npkd` file (path relative to the directory).
    Plain(PathBuf),
    /// A manifest and its segment files, in row order: (relative path, rows, bytes).
    Segmented {
        /// The `.npkseg` manifest.
        manifest: PathBuf,
        /// The segments in row order.
        segments: Vec<(PathBuf, u64, u64)>,
    },
}

/// An array's bytes held by the store: a mapping of its file, or a copy gathered from
/// segments or active rows.
enum Data {
    Empty,
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Data {
    fn as_slice(&self) -> &[u8] {
        match self {
            Data::Empty => &[],
            Data::Mapped(m) => m,
            Data::Owned(v) => v,
        }
    }
}

struct Array {
    record: ArrayRecord,
    /// True dtype (from the sidecar when it still applies, else the record's code).
    dtype: DType,
    /// True shape before deletions.
    shape: Vec<u64>,
    /// True shape after deletions: what load and export show.
    logical_shape: Vec<u64>,
    storage: Storage,
    bitmap: Option<Bitmap>,
    data: OnceLock<Data>,
}

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

/// A read-only view of an array's logical bytes.
#[derive(Clone, Copy, Debug)]
pub struct ArrayView<'a> {
    /// The array's name.
    pub name: &'a str,
    /// The true dtype.
    pub dtype: DType,
    /// The logical shape.
    pub shape: &'a [u64],
    /// The bytes in C order.
    pub data: &'a [u8],
    /// True when `data` borrows the mapped data file; false when the store gathered a copy
    /// (segmented arrays and arrays with deleted rows, gathered once and cached).
    pub borrowed: bool,
}

/// An array to save: name, dtype, shape and the bytes in C order.
#[derive(Clone, Copy, Debug)]
pub struct ArrayInput<'a> {
    /// The array's name (any UTF-8).
    pub name: &'a str,
    /// Its dtype.
    pub dtype: DType,
    /// Its shape (0-d allowed).
    pub shape: &'a [u64],
    /// Exactly `byte_len(dtype, shape)` bytes.
    pub data: &'a [u8],
}

impl ArrayInput<'_> {
    /// Checks that the data length matches dtype and shape.
    pub fn check(&self) -> Result<u64> {
        let want = dtype::byte_len(self.dtype, self.shape).ok_or_else(|| {
            Error::invalid_argument(format!(
                "shape {:?} of {} has no whole byte length",
                self.shape, self.dtype
            ))
            .array(self.name)
        })?;
        if want != self.data.len() as u64 {
            return Err(Error::invalid_argument(format!(
                "{} bytes given, shape {:?} of {} needs {want}",
                self.data.len(),
                self.shape,
                self.dtype
            ))
            .array(self.name));
        }
        Ok(want)
    }
}

/// The shape NumPack 0.7 stores for an array of `dtype` and true `shape`: `[1]` for a 0-d
/// array; for F4/F6 the last dimension counted in bytes when it divides evenly, else the
/// flat byte count; otherwise the shape itself.
pub fn storage_shape(dtype: DType, shape: &[u64]) -> Vec<u64> {
    if shape.is_empty() {
        return vec![1];
    }
    if dtype.is_byte_sized() {
        return shape.to_vec();
    }
    let bits = u64::from(dtype.bits());
    let last = shape[shape.len() - 1];
    match last.checked_mul(bits) {
        Some(b) if b % 8 == 0 => {
            let mut s = shape.to_vec();
            let n = s.len();
            s[n - 1] = b / 8;
            s
        }
        _ => vec![dtype::byte_len(dtype, shape).unwrap_or(0)],
    }
}

/// The metadata record, and the sidecar entry if one is needed, for an array stored at
/// `data_file`.
pub fn make_record(
    name: &str,
    data_file: String,
    dtype: DType,
    shape: &[u64],
    last_modified: u64,
) -> Result<(ArrayRecord, Option<Entry>)> {
    let size_bytes = dtype::byte_len(dtype, shape).ok_or_else(|| {
        Error::invalid_argument(format!("shape {shape:?} of {dtype} overflows")).array(name)
    })?;
    let sshape = storage_shape(dtype, shape);
    let record = ArrayRecord {
        name: name.to_string(),
        shape: sshape,
        data_file,
        last_modified,
        size_bytes,
        dtype_code: dtype.storage_code(),
        compression: 0,
        compression_level: 0,
        original_size: 0,
        compressed_size: 0,
        block_info: None,
    };
    let entry = (dtype.numpack_code().is_none() || record.shape != shape)
        .then(|| Entry::new(&record, dtype, shape));
    Ok((record, entry))
}

/// A NumPack 0.7 directory.
///
/// Opening validates everything: the metadata, every data file's size, segment manifests
/// and deletion bitmaps, and that every path stays inside the directory. Array bytes are
/// mapped on first view and stay mapped until the store is dropped, so views handed out
/// earlier stay valid even after the array is replaced (the old file is renamed over, not
/// truncated).
///
/// Every change (`save`, `append`, `drop_rows`, `delete`) is written at once: data files
/// through temporary files renamed into place, then `metadata.npkm` likewise, so a reader
/// never sees metadata pointing at data that is not complete.
pub struct NumPack {
    dir: PathBuf,
    arrays: Vec<Array>,
    index: HashMap<String, usize>,
    /// Metadata from the sidecar that is not tied to an array.
    st_metadata: Option<Vec<(String, String)>>,
    /// The shard layout of the SafeTensors source, if it was sharded.
    sharding: Option<crate::numpack::sidecar::Sharding>,
    /// The source's header, when it is not laid out as the crate would.
    source_header: Option<String>,
    /// Mappings and copies of arrays that were since changed, kept alive for old views.
    retired: Vec<Data>,
    durable: bool,
    last_stamp: u64,
}

impl std::fmt::Debug for NumPack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NumPack")
            .field("dir", &self.dir)
            .field("arrays", &self.arrays.len())
            .finish()
    }
}

impl NumPack {
    /// Opens an existing NumPack directory.
    pub fn open(path: impl AsRef<Path>) -> Result<NumPack> {
        let dir = path.as_ref();
        let meta_path = dir.join(metadata::FILE_NAME);
        let md = fs::metadata(dir).ctx(dir, "opening NumPack directory")?;
        if !md.is_dir() {
            return Err(Error::new(
                ErrorKind::Malformed,
                "not a NumPack directory (not a directory)",
            )
            .at(dir));
        }
        let bytes = read_limited(&meta_path, u64::from(u32::MAX))?;
        let meta = Metadata::decode(&bytes, &meta_path)?;
        let sidecar = read_sidecar(dir);
        Self::from_parts(dir, meta, sidecar)
    }

    /// Opens the NumPack at `path`, creating an empty one if there is none. With
    /// `drop_if_exists`, an existing one is removed first. A path that exists but is not a
    /// NumPack directory (a file, or a non-empty directory without `metadata.npkm`) is never
    /// removed: that is an error.
    pub fn create(path: impl AsRef<Path>, drop_if_exists: bool) -> Result<NumPack> {
        let dir = path.as_ref();
        match fs::symlink_metadata(dir) {
            Ok(_) => {
                let kind = existing_kind(dir)?;
                if kind == Existing::NumPack && !drop_if_exists {
                    return NumPack::open(dir);
                }
                if kind == Existing::NumPack {
                    fs::remove_dir_all(dir).ctx(dir, "removing")?;
                    fs::create_dir(dir).ctx(dir, "creating directory")?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).ctx(dir, "creating directory")?;
            }
            Err(e) => return Err(Error::io(dir, "inspecting", e)),
        }
        let store = NumPack {
            dir: dir.to_path_buf(),
            arrays: Vec::new(),
            index: HashMap::new(),
            st_metadata: None,
            sharding: None,
            source_header: None,
            retired: Vec::new(),
            durable: false,
            last_stamp: 0,
        };
        store.write_metadata()?;
        Ok(store)
    }

    /// Builds a store from decoded metadata, validating every array.
    fn from_parts(dir: &Path, meta: Metadata, sidecar: Option<Sidecar>) -> Result<NumPack> {
        let sidecar = sidecar.unwrap_or_default();
        let entries: HashMap<&str, &Entry> = sidecar
            .arrays
            .iter()
            .map(|e| (e.name.as_str(), e))
            .collect();
        let mut arrays = Vec::with_capacity(meta.arrays.len());
        let mut index = HashMap::with_capacity(meta.arrays.len());
        let mut last_stamp = 0;
        for record in meta.arrays {
            let name = record.name.clone();
            if index.contains_key(&name) {
                return Err(
                    Error::malformed(dir, "the metadata lists this array twice").array(name)
                );
            }
            last_stamp = last_stamp.max(record.last_modified);
            let array = load_array(dir, record, entries.get(name.as_str()).copied())
                .map_err(|e| e.array(name.clone()).at(dir))?;
            index.insert(name, arrays.len());
            arrays.push(array);
        }
        Ok(NumPack {
            dir: dir.to_path_buf(),
            arrays,
            index,
            st_metadata: sidecar.metadata,
            sharding: sidecar.sharding,
            source_header: sidecar.source_header,
            retired: Vec::new(),
            durable: false,
            last_stamp,
        })
    }

    /// With `durable`, every later change syncs its data before the metadata points at it
    /// and syncs the directory after. Off by default (like NumPack and `cp`).
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
    }

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

    /// Whether an array of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn get(&self, name: &str) -> Result<&Array> {
        self.index
            .get(name)
            .map(|&i| &self.arrays[i])
            .ok_or_else(|| self.not_found(name))
    }

    /// The error for an unknown array name, listing some of the arrays that exist.
    pub fn not_found(&self, name: &str) -> Error {
        Error::new(
            ErrorKind::KeyNotFound,
            format!("no such array (arrays: {})", list_names(&self.names())),
        )
        .at(&self.dir)
        .array(name)
    }

    /// Describes an array.
    pub fn info(&self, name: &str) -> Result<ArrayInfo> {
        let a = self.get(name)?;
        Ok(ArrayInfo {
            name: a.record.name.clone(),
            dtype: a.dtype,
            shape: a.logical_shape.clone(),
            nbytes: logical_len(a),
            storage_dtype: DType::from_numpack_code(a.record.dtype_code).unwrap_or(DType::I32),
            storage_shape: a.record.shape.clone(),
            deleted_rows: a.bitmap.as_ref().map_or(0, |b| b.deleted_count()),
            segmented: matches!(a.storage, Storage::Segmented { .. }),
            zero_copy: is_zero_copy(a),
        })
    }

    /// The SafeTensors `__metadata__` recorded when the directory was made from a SafeTensors
    /// file (pairs in their original order), `None` if there is none.
    pub fn safetensors_metadata(&self) -> Option<&[(String, String)]> {
        self.st_metadata.as_deref()
    }

    /// The shard layout of the SafeTensors source, when it was a sharded checkpoint.
    pub fn sharding(&self) -> Option<&crate::numpack::sidecar::Sharding> {
        self.sharding.as_ref()
    }

    /// The SafeTensors source's header JSON, kept when its layout differs from the one the
    /// `safetensors` crate writes (see `numpack::sidecar`).
    pub fn source_header(&self) -> Option<&str> {
        self.source_header.as_deref()
    }

    /// Replaces the recorded SafeTensors `__metadata__`.
    pub fn set_safetensors_metadata(
        &mut self,
        metadata: Option<Vec<(String, String)>>,
    ) -> Result<()> {
        self.st_metadata = metadata;
        self.write_metadata()
    }

    /// A view of an array's logical bytes. It borrows the mapped data file when the array is
    /// one file with no deleted rows (`borrowed` is true); otherwise the active rows are
    /// gathered into one buffer, once, kept by the store.
    ///
    /// A mapping reflects the file: if another process truncates a data file while it is
    /// mapped, touching the missing pages raises SIGBUS. npkio never truncates a file it has
    /// published; replacing an array writes a new file.
    pub fn view(&self, name: &str) -> Result<ArrayView<'_>> {
        let a = self.get(name)?;
        let data = match a.data.get() {
            Some(d) => d,
            None => {
                let d = self.load_data(a)?;
                // Another thread may have won the race; either value is the same bytes.
                let _ = a.data.set(d);
                a.data.get().expect("just set")
            }
        };
        Ok(ArrayView {
            name: &a.record.name,
            dtype: a.dtype,
            shape: &a.logical_shape,
            data: data.as_slice(),
            borrowed: !matches!(data, Data::Owned(_)),
        })
    }

    fn load_data(&self, a: &Array) -> Result<Data> {
        let name = &a.record.name;
        if logical_len(a) == 0 {
            return Ok(Data::Empty);
        }
        if let (Storage::Plain(rel), None) = (&a.storage, &a.bitmap) {
            let path = self.dir.join(rel);
            let file = File::open(&path)
                .ctx(&path, "opening")
                .map_err(|e| e.array(name))?;
            // The file may have been replaced since the store was opened (a conversion into
            // this directory puts new files under the same names): mapping past its end
            // would fault on first touch, so check it still holds the array.
            let len = file
                .metadata()
                .ctx(&path, "inspecting")
                .map_err(|e| e.array(name))?
                .len();
            if len < a.record.size_bytes {
                return Err(Error::malformed(
                    &path,
                    format!(
                        "data file is {len} bytes, shorter than the {} recorded when the store \
                         was opened (replaced since? open the store again)",
                        a.record.size_bytes
                    ),
                )
                .array(name));
            }
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
        let mut pos = 0usize;
        for ext in self.extents(a) {
            let path = self.dir.join(ext.file);
            let file = File::open(&path)
                .ctx(&path, "opening")
                .map_err(|e| e.array(name))?;
            let end = pos + ext.len as usize;
            file.read_exact_at(&mut out[pos..end], ext.offset)
                .ctx(&path, "reading")
                .map_err(|e| e.array(name))?;
            pos = end;
        }
        Ok(Data::Owned(out))
    }

    /// Where an array's logical bytes are, in order: one extent per run of active rows
    /// within each file. Empty extents are omitted.
    pub fn array_extents(&self, name: &str) -> Result<Vec<SourceExtent>> {
        let a = self.get(name)?;
        Ok(self.extents(a))
    }

    fn extents(&self, a: &Array) -> Vec<SourceExtent> {
        let files: Vec<(PathBuf, u64, u64)> = match &a.storage {
            Storage::Plain(p) => vec![(p.clone(), physical_rows(a), a.record.size_bytes)],
            Storage::Segmented { segments, .. } => segments.clone(),
        };
        let rows = physical_rows(a);
        let row_bytes = a.record.size_bytes.checked_div(rows).unwrap_or(0);
        let runs = match &a.bitmap {
            Some(b) => b.active_runs(),
            None => vec![(0, rows)],
        };
        let mut out = Vec::new();
        let mut file_start = 0u64; // first row of the current file
        let mut fi = 0usize;
        for (start, len) in runs {
            let (mut row, end) = (start, start + len);
            while row < end && fi < files.len() {
                let (ref path, frows, _) = files[fi];
                if row >= file_start + frows {
                    file_start += frows;
                    fi += 1;
                    continue;
                }
                let take = (end - row).min(file_start + frows - row);
                if take * row_bytes > 0 {
                    out.push(SourceExtent {
                        file: path.clone(),
                        offset: (row - file_start) * row_bytes,
                        len: take * row_bytes,
                    });
                }
                row += take;
            }
        }
        out
    }

    /// Files that make up an array, relative to the directory: data file or manifest and
    /// segments, and the deletion bitmap if any.
    pub fn array_files(&self, name: &str) -> Result<Vec<PathBuf>> {
        let a = self.get(name)?;
        let mut files = Vec::new();
        match &a.storage {
            Storage::Plain(p) => files.push(p.clone()),
            Storage::Segmented { manifest, segments } => {
                files.push(manifest.clone());
                files.extend(segments.iter().map(|s| s.0.clone()));
            }
        }
        if a.bitmap.is_some() {
            files.push(bitmap_path(&a.record));
        }
        Ok(files)
    }

    /// The metadata record of an array, as on disk.
    pub fn record(&self, name: &str) -> Result<&ArrayRecord> {
        Ok(&self.get(name)?.record)
    }

    /// The sidecar entry that applies to an array, if any.
    pub fn sidecar_entry(&self, name: &str) -> Result<Option<Entry>> {
        let a = self.get(name)?;
        let r = &a.record;
        let native = DType::from_numpack_code(r.dtype_code) == Some(a.dtype) && a.shape == r.shape;
        Ok((!native).then(|| Entry::new(r, a.dtype, &a.shape)))
    }

    fn stamp(&mut self) -> u64 {
        let t = now_micros().max(self.last_stamp + 1);
        self.last_stamp = t;
        t
    }

    fn stems_except(&self, skip: &str) -> Vec<String> {
        self.arrays
            .iter()
            .filter(|a| a.record.name != skip)
            .filter_map(|a| naming::stem_of(&a.record.data_file).map(str::to_string))
            .collect()
    }

    /// Saves arrays, replacing any of the same name. All data files are written first
    /// (temporary files, renamed into place), then the metadata.
    pub fn save(&mut self, arrays: &[ArrayInput<'_>]) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for a in arrays {
            a.check().map_err(|e| e.at(&self.dir))?;
            if !seen.insert(a.name) {
                return Err(Error::invalid_argument("given twice in one save")
                    .array(a.name)
                    .at(&self.dir));
            }
        }
        // Stage every file before touching anything visible.
        let mut staged = Vec::with_capacity(arrays.len());
        let mut new_stems: Vec<String> = Vec::new();
        for a in arrays {
            let stem = match self.index.get(a.name) {
                Some(&i) => naming::stem_of(&self.arrays[i].record.data_file)
                    .filter(|s| naming::is_plain(s) || s.starts_with('~'))
                    .map(str::to_string),
                None => None,
            };
            let stem = stem.unwrap_or_else(|| {
                let mut taken = self.stems_except(a.name);
                taken.extend(new_stems.iter().cloned());
                naming::choose_stem(a.name, taken.iter().map(String::as_str))
            });
            new_stems.push(stem.clone());
            let mut tmp = crate::numpack::fsutil::temp_file_in(&self.dir, ".npkio-tmp-")?;
            tmp.write_all(a.data)
                .ctx(tmp.path(), "writing")
                .map_err(|e| e.array(a.name))?;
            if self.durable {
                tmp.as_file().sync_all().ctx(tmp.path(), "syncing")?;
            }
            staged.push((stem, tmp));
        }
        let mut old_files = Vec::new();
        for (a, (stem, tmp)) in arrays.iter().zip(staged) {
            let data_file = naming::data_file(&stem);
            let target = self.dir.join(&data_file);
            tmp.persist(&target)
                .map_err(|e| e.error)
                .ctx(&target, "renaming onto")?;
            let stamp = self.stamp();
            let (record, _) = make_record(a.name, data_file.clone(), a.dtype, a.shape, stamp)?;
            let array = Array {
                dtype: a.dtype,
                shape: a.shape.to_vec(),
                logical_shape: a.shape.to_vec(),
                storage: Storage::Plain(PathBuf::from(&data_file)),
                bitmap: None,
                data: OnceLock::new(),
                record,
            };
            match self.index.get(a.name) {
                Some(&i) => {
                    let old = std::mem::replace(&mut self.arrays[i], array);
                    for f in files_of(&old) {
                        if f != Path::new(&data_file) {
                            old_files.push(f);
                        }
                    }
                    if let Some(d) = old.data.into_inner() {
                        self.retired.push(d);
                    }
                }
                None => {
                    self.index.insert(a.name.to_string(), self.arrays.len());
                    self.arrays.push(array);
                }
            }
        }
        self.write_metadata()?;
        self.remove_files(old_files);
        Ok(())
    }

    /// Appends rows to an array: `data` holds whole rows of the array's dtype and row shape.
    pub fn append(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let dir = self.dir.clone();
        let i = *self.index.get(name).ok_or_else(|| self.not_found(name))?;
        let stamp = self.stamp();
        let durable = self.durable;
        let a = &mut self.arrays[i];
        if a.shape.is_empty() || a.shape.first() != a.record.shape.first() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "a 0-d array or a sub-byte stand-in shape has no rows to append to",
            )
            .at(&dir)
            .array(name));
        }
        let row_elems = dtype::element_count(&a.shape[1..]).unwrap_or(0);
        let row_bytes = a.dtype.byte_len(row_elems).unwrap_or(0);
        if row_bytes == 0 || data.len() as u64 % row_bytes != 0 {
            return Err(Error::invalid_argument(format!(
                "{} bytes is not a whole number of rows of {row_bytes} bytes",
                data.len()
            ))
            .at(&dir)
            .array(name));
        }
        let new_rows = data.len() as u64 / row_bytes;
        if new_rows == 0 {
            return Ok(());
        }
        let rel = match &a.storage {
            Storage::Plain(p) => p.clone(),
            Storage::Segmented { .. } => {
                return Err(
                    Error::new(ErrorKind::Unsupported, "appending to a segmented array")
                        .at(&dir)
                        .array(name),
                )
            }
        };
        let path = dir.join(&rel);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .ctx(&path, "opening")
            .map_err(|e| e.array(name))?;
        // Bytes past size_bytes are leftovers of an interrupted append: overwrite them.
        file.write_all_at(data, a.record.size_bytes)
            .ctx(&path, "appending to")
            .map_err(|e| e.array(name))?;
        file.set_len(a.record.size_bytes + data.len() as u64)
            .ctx(&path, "resizing")?;
        if durable {
            file.sync_all().ctx(&path, "syncing")?;
        }
        if let Some(b) = &mut a.bitmap {
            b.extend_active(new_rows);
            write_atomic(
                &dir,
                &bitmap_path(&a.record).to_string_lossy(),
                &b.encode(),
                durable,
            )?;
        }
        a.shape[0] += new_rows;
        a.record.shape[0] += new_rows;
        a.record.size_bytes += data.len() as u64;
        a.record.last_modified = stamp;
        a.logical_shape[0] += new_rows;
        if let Some(d) = a.data.take() {
            self.retired.push(d);
        }
        self.write_metadata()
    }

    /// Deletes rows (logical indices, as the array reads now) by marking them in the
    /// deletion bitmap, as NumPack does.
    pub fn drop_rows(&mut self, name: &str, rows: &[u64]) -> Result<()> {
        let dir = self.dir.clone();
        let i = *self.index.get(name).ok_or_else(|| self.not_found(name))?;
        let stamp = self.stamp();
        let durable = self.durable;
        let a = &mut self.arrays[i];
        if a.shape.is_empty() || a.shape.first() != a.record.shape.first() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "a 0-d array or a sub-byte stand-in shape has no rows to drop",
            )
            .at(&dir)
            .array(name));
        }
        let mut bitmap = a
            .bitmap
            .clone()
            .unwrap_or_else(|| Bitmap::all_active(a.shape[0]));
        bitmap
            .delete_logical(rows)
            .map_err(|m| Error::invalid_argument(m).at(&dir).array(name))?;
        write_atomic(
            &dir,
            &bitmap_path(&a.record).to_string_lossy(),
            &bitmap.encode(),
            durable,
        )?;
        a.logical_shape[0] = bitmap.active_count();
        a.bitmap = Some(bitmap);
        a.record.last_modified = stamp;
        if let Some(d) = a.data.take() {
            self.retired.push(d);
        }
        self.write_metadata()
    }

    /// Removes an array: the metadata first, then its files.
    pub fn delete(&mut self, name: &str) -> Result<()> {
        let i = *self.index.get(name).ok_or_else(|| self.not_found(name))?;
        let old = self.arrays.remove(i);
        self.index = self
            .arrays
            .iter()
            .enumerate()
            .map(|(i, a)| (a.record.name.clone(), i))
            .collect();
        self.write_metadata()?;
        self.remove_files(files_of(&old));
        if let Some(d) = old.data.into_inner() {
            self.retired.push(d);
        }
        Ok(())
    }

    fn remove_files(&self, files: Vec<PathBuf>) {
        for f in files {
            let p = self.dir.join(&f);
            // Leftovers are harmless (NumPack ignores unknown files); removal is best effort.
            let _ = fs::remove_file(&p);
            if let Some(parent) = f.parent().filter(|p| !p.as_os_str().is_empty()) {
                let _ = fs::remove_dir(self.dir.join(parent));
            }
        }
    }

    /// Writes the sidecar and then `metadata.npkm`, each atomically.
    fn write_metadata(&self) -> Result<()> {
        let (meta, sidecar) = self.snapshot();
        write_dir_metadata(&self.dir, &meta, &sidecar, self.durable)
    }

    /// The metadata and sidecar that describe the store now.
    pub fn snapshot(&self) -> (Metadata, Sidecar) {
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

    /// Closes the store. Every change is already on disk; this only releases mappings.
    pub fn close(self) -> Result<()> {
        Ok(())
    }
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

/// Writes `npkio.json` (or removes it when empty) and then `metadata.npkm`, each through a
/// temporary file renamed into place.
pub fn write_dir_metadata(
    dir: &Path,
    meta: &Metadata,
    sidecar: &Sidecar,
    durable: bool,
) -> Result<()> {
    if sidecar.is_empty() {
        match fs::remove_file(dir.join(sidecar::FILE_NAME)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(dir.join(sidecar::FILE_NAME), "removing", e)),
        }
    } else {
        write_atomic(dir, sidecar::FILE_NAME, &sidecar.encode(), durable)?;
    }
    write_atomic(dir, metadata::FILE_NAME, &meta.encode(), durable)
}

/// What an existing path is, for `create`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Existing {
    /// A directory with `metadata.npkm`.
    NumPack,
    /// An empty directory.
    EmptyDir,
}

/// Classifies an existing path; anything else than a NumPack or empty directory is an
/// error that protects the user's files from `drop_if_exists`.
pub(crate) fn existing_kind(dir: &Path) -> Result<Existing> {
    let md = fs::symlink_metadata(dir).ctx(dir, "inspecting")?;
    if !md.is_dir() {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "exists and is not a directory; refusing to replace it",
        )
        .at(dir));
    }
    if dir.join(metadata::FILE_NAME).is_file() {
        return Ok(Existing::NumPack);
    }
    let mut entries = fs::read_dir(dir).ctx(dir, "listing")?;
    if entries.next().is_none() {
        Ok(Existing::EmptyDir)
    } else {
        Err(Error::new(
            ErrorKind::AlreadyExists,
            "exists and is not a NumPack directory (no metadata.npkm); refusing to replace it",
        )
        .at(dir))
    }
}

pub(crate) fn list_names(names: &[&str]) -> String {
    const SHOWN: usize = 20;
    let mut s: Vec<String> = names.iter().take(SHOWN).map(|n| format!("{n:?}")).collect();
    if names.len() > SHOWN {
        s.push(format!("... {} more", names.len() - SHOWN));
    }
    if s.is_empty() {
        "none".into()
    } else {
        s.join(", ")
    }
}

fn physical_rows(a: &Array) -> u64 {
    a.record.shape.first().copied().unwrap_or(1)
}

fn logical_len(a: &Array) -> u64 {
    match &a.bitmap {
        None => a.record.size_bytes,
        Some(b) => {
            let row_bytes = a
                .record
                .size_bytes
                .checked_div(physical_rows(a))
                .unwrap_or(0);
            row_bytes * b.active_count()
        }
    }
}

fn is_zero_copy(a: &Array) -> bool {
    logical_len(a) == 0 || (matches!(a.storage, Storage::Plain(_)) && a.bitmap.is_none())
}

fn bitmap_path(record: &ArrayRecord) -> PathBuf {
    let stem = naming::stem_of(&record.data_file).unwrap_or(&record.name);
    PathBuf::from(naming::bitmap_file(stem))
}

fn files_of(a: &Array) -> Vec<PathBuf> {
    let mut files = Vec::new();
    match &a.storage {
        Storage::Plain(p) => files.push(p.clone()),
        Storage::Segmented { manifest, segments } => {
            files.push(manifest.clone());
            files.extend(segments.iter().map(|s| s.0.clone()));
        }
    }
    files.push(bitmap_path(&a.record));
    files
}

/// Reads a whole file of at most `limit` bytes.
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = File::open(path).ctx(path, "opening")?;
    let len = file.metadata().ctx(path, "inspecting")?.len();
    if len > limit {
        return Err(Error::malformed(
            path,
            format!("{len} bytes, more than the {limit} allowed"),
        ));
    }
    let mut buf = Vec::with_capacity(len as usize);
    file.take(limit)
        .read_to_end(&mut buf)
        .ctx(path, "reading")?;
    Ok(buf)
}

fn read_sidecar(dir: &Path) -> Option<Sidecar> {
    let bytes = read_limited(&dir.join(sidecar::FILE_NAME), sidecar::MAX_LEN).ok()?;
    Sidecar::decode(&bytes)
}

/// Resolves `rel` inside `dir`, following no path outside it (symbolic links included).
fn resolve_inside(dir: &Path, rel: &str, what: &str) -> Result<PathBuf> {
    let checked =
        naming::checked_relative(rel).map_err(|m| Error::malformed(dir, format!("{what}: {m}")))?;
    let missing = || Error::new(ErrorKind::Malformed, format!("{what} {rel:?} is missing")).at(dir);
    // `checked` has only plain components, so it can leave the directory only through a
    // symbolic link. One lstat per component finds them; only then resolve the whole path.
    let mut prefix = dir.to_path_buf();
    let mut through_link = false;
    for c in checked.components() {
        prefix.push(c);
        match fs::symlink_metadata(&prefix) {
            Ok(md) => through_link |= md.file_type().is_symlink(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
            Err(e) => return Err(Error::io(&prefix, "inspecting", e)),
        }
    }
    if through_link {
        let canon_dir = dir.canonicalize().ctx(dir, "resolving")?;
        let canon = prefix.canonicalize().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                missing()
            } else {
                Error::io(&prefix, "resolving", e)
            }
        })?;
        if !canon.starts_with(&canon_dir) {
            return Err(Error::malformed(
                dir,
                format!("{what} {rel:?} leads outside the directory"),
            ));
        }
    }
    Ok(checked)
}

fn file_len(dir: &Path, rel: &Path) -> Result<u64> {
    let p = dir.join(rel);
    let md = fs::metadata(&p).ctx(&p, "inspecting")?;
    if !md.is_file() {
        return Err(Error::malformed(&p, "is not a regular file"));
    }
    Ok(md.len())
}

fn load_array(dir: &Path, record: ArrayRecord, entry: Option<&Entry>) -> Result<Array> {
    let code_dtype = DType::from_numpack_code(record.dtype_code).ok_or_else(|| {
        Error::malformed(
            dir,
            format!(
                "unknown dtype code {} (NumPack 0.7 knows 0 to 13)",
                record.dtype_code
            ),
        )
    })?;
    if record.compression != 0 {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "compressed array (algorithm {}); npkio reads uncompressed arrays only",
                record.compression
            ),
        ));
    }
    let size = dtype::byte_len(code_dtype, &record.shape)
        .ok_or_else(|| Error::malformed(dir, format!("shape {:?} overflows", record.shape)))?;
    if size != record.size_bytes {
        return Err(Error::malformed(
            dir,
            format!(
                "size_bytes is {} but shape {:?} of {} needs {size}",
                record.size_bytes, record.shape, code_dtype
            ),
        ));
    }
    let rows = record.shape.first().copied().unwrap_or(1);
    let storage = if record.data_file.ends_with(".npkseg") {
        let manifest = resolve_inside(dir, &record.data_file, "segment manifest")?;
        let mpath = dir.join(&manifest);
        let bytes = read_limited(&mpath, segments::MAX_MANIFEST_LEN)?;
        let segs = segments::decode(&bytes, &mpath)?;
        let row_bytes = size.checked_div(rows).unwrap_or(0);
        let (mut total_rows, mut total_bytes) = (0u64, 0u64);
        let mut out = Vec::with_capacity(segs.len());
        for Segment {
            file,
            rows: srows,
            bytes: sbytes,
        } in segs
        {
            let rel = resolve_inside(dir, &file, "segment file")?;
            if srows.checked_mul(row_bytes) != Some(sbytes) {
                return Err(Error::malformed(
                    &mpath,
                    format!("segment {file:?}: {srows} rows cannot be {sbytes} bytes"),
                ));
            }
            let len = file_len(dir, &rel)?;
            if len < sbytes {
                return Err(Error::malformed(
                    &mpath,
                    format!("segment {file:?} is {len} bytes, shorter than its {sbytes}"),
                ));
            }
            total_rows = total_rows
                .checked_add(srows)
                .ok_or_else(|| Error::malformed(&mpath, "row count overflows"))?;
            total_bytes = total_bytes
                .checked_add(sbytes)
                .ok_or_else(|| Error::malformed(&mpath, "byte count overflows"))?;
            out.push((rel, srows, sbytes));
        }
        if total_rows != rows || total_bytes != size {
            return Err(Error::malformed(
                &mpath,
                format!("segments hold {total_rows} rows in {total_bytes} bytes; the metadata says {rows} rows in {size}"),
            ));
        }
        Storage::Segmented {
            manifest,
            segments: out,
        }
    } else {
        let rel = resolve_inside(dir, &record.data_file, "data file")?;
        let len = file_len(dir, &rel)?;
        if len < size {
            return Err(Error::malformed(
                dir.join(&rel),
                format!("data file is {len} bytes, shorter than the {size} that shape {:?} of {code_dtype} needs", record.shape),
            ));
        }
        Storage::Plain(rel)
    };
    let bpath = dir.join(bitmap_path(&record));
    let bitmap = match fs::metadata(&bpath) {
        Ok(md) if md.is_file() => {
            if record.shape.is_empty() {
                return Err(Error::malformed(&bpath, "deletion bitmap for a 0-d array"));
            }
            // Bound the read by what the row count allows before reading anything.
            let max = rows.div_ceil(64).saturating_mul(8).saturating_add(16);
            if md.len() > max {
                return Err(Error::malformed(
                    &bpath,
                    format!(
                        "deletion bitmap is {} bytes; an array of {rows} rows needs at most {max}",
                        md.len()
                    ),
                ));
            }
            let bytes = read_limited(&bpath, max)?;
            Some(Bitmap::decode(&bytes, rows, &bpath)?)
        }
        _ => None,
    };
    // A sidecar entry whose rows differ from the record's cannot be combined with a
    // deletion bitmap (the bitmap counts the record's rows): read as NumPack sees it.
    let (dtype, shape) = entry
        .and_then(|e| e.resolve(&record))
        .filter(|(_, s)| bitmap.is_none() || s.first() == record.shape.first())
        .unwrap_or((code_dtype, record.shape.clone()));
    let mut logical_shape = shape.clone();
    if let Some(b) = &bitmap {
        if shape.first() == record.shape.first() {
            logical_shape[0] = b.active_count();
        }
    }
    Ok(Array {
        record,
        dtype,
        shape,
        logical_shape,
        storage,
        bitmap,
        data: OnceLock::new(),
    })
}
