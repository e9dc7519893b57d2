//! Opening and creating a store, and the validation done at open time: every path stays
//! inside the directory, every file is as long as the metadata says, and bounded reads of
//! the small files (metadata, sidecar, manifests, bitmaps).

use std::collections::HashMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::dtype::{self, DType};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::numpack::bitmap::Bitmap;
use crate::numpack::metadata::{self, ArrayRecord, Records};
use crate::numpack::naming;
use crate::numpack::segments::{self, Segment};
use crate::numpack::sidecar::{self, Entry, Sidecar};
use crate::sys::paths::checked_relative;
use crate::sys::safe_open::{dir_handle, list_dir, open_member, read_to_vec, Opened};

use super::generation::{remove_create_leftovers, Held, Writer};
use super::index::NameIndex;
use super::layout::{bitmap_path, Segments, Storage};
use super::{Array, Fault, NumPack};

/// The largest sidecar read whole before it is parsed (the fastest way); a larger one is
/// parsed as it is read.
const WHOLE_SIDECAR: u64 = 16 << 20;

/// How many times opening reads a store that another writer keeps changing meanwhile.
const OPEN_TRIES: u32 = 20;

/// `rel` checked to stay inside `dir` by its components (`paths::checked_relative`).
fn checked(dir: &Path, rel: &str, what: &str) -> Result<PathBuf> {
    checked_relative(rel).map_err(|m| Error::malformed(dir, format!("{what}: {m}")))
}

impl NumPack {
    /// Opens an existing NumPack directory.
    ///
    /// The store is one committed state: if another writer commits while it is being
    /// opened (the metadata read is no longer the current one once the rest is read), it is
    /// opened again, a few times at most, then fails with [`ErrorKind::Busy`].
    pub fn open(path: impl AsRef<Path>) -> Result<NumPack> {
        let dir = path.as_ref();
        let meta_path = dir.join(metadata::FILE_NAME);
        if fs::symlink_metadata(dir).is_err() {
            // An interrupted conversion may have left the old store aside (the fallback
            // without an exchange): the lock restores it, if the directory holding it can
            // be locked. Else the store is what it is.
            let _ = crate::publish::lock_output(dir, true);
        }
        let mut tries = 0;
        loop {
            tries += 1;
            let before = fs::symlink_metadata(&meta_path)
                .ok()
                .map(|m| (m.ino(), m.ctime_nsec(), m.ctime()));
            match NumPack::open_once(dir) {
                Ok(store) if store.writer.is_current(&store.root) => {
                    crate::hook::at("numpack:opened");
                    return Ok(store);
                }
                Err(e) => {
                    let now = fs::symlink_metadata(&meta_path)
                        .ok()
                        .map(|m| (m.ino(), m.ctime_nsec(), m.ctime()));
                    // An error of a store changed while it was read may be of the change
                    // (a file of the old state removed): look again.
                    if now == before || tries >= OPEN_TRIES {
                        return Err(e);
                    }
                }
                Ok(_) if tries >= OPEN_TRIES => {
                    return Err(Error::new(
                        ErrorKind::Busy,
                        "the store kept being changed by another writer while it was opened",
                    )
                    .at(dir))
                }
                Ok(_) => {}
            }
        }
    }

    /// One try of [`NumPack::open`]: the store as read, which may mix two states if
    /// another writer committed meanwhile (the caller checks).
    fn open_once(dir: &Path) -> Result<NumPack> {
        let md = fs::metadata(dir).ctx(dir, "opening NumPack directory")?;
        if !md.is_dir() {
            return Err(Error::new(
                ErrorKind::Malformed,
                "not a NumPack directory (not a directory)",
            )
            .at(dir));
        }
        NumPack::open_in(dir, dir_handle(dir)?)
    }

    /// [`NumPack::open_once`] of the directory `root` (opened from `dir`, the path kept for
    /// messages): the store a handle's directory holds now, even if the path was since
    /// given to another directory.
    pub(super) fn open_in(dir: &Path, root: OwnedFd) -> Result<NumPack> {
        let meta_path = dir.join(metadata::FILE_NAME);
        let opened = open_member(&root, dir, metadata::FILE_NAME, "metadata", false)?;
        // The version read, by its descriptor: later reads check it is still current.
        let meta_held = Held::of(&opened.file).ctx(&meta_path, "inspecting")?;
        let bytes = read_to_vec(opened, metadata::MAX_LEN, "metadata")?;
        crate::hook::at("numpack-open:metadata-read");
        // The sidecar is opened after the metadata is read (a change writes it before the
        // metadata), but read only once the metadata's bytes are released: both at once
        // are most of what opening a store of many arrays holds. Its `next` fields need the
        // digest of the metadata read, taken now.
        // A sidecar that is there but cannot be opened safely (a link leading out, a device,
        // a FIFO) is an error, not an absent one: without it arrays read as another dtype.
        let sidecar_file = match open_member(&root, dir, sidecar::FILE_NAME, "sidecar", false) {
            Ok(o) => Some(o),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                refuse_dangling(dir, sidecar::FILE_NAME, "sidecar")?;
                None
            }
            Err(e) => return Err(e),
        };
        let sidecar_held = match &sidecar_file {
            Some(o) => Some(Held::of(&o.file).ctx(&o.path, "inspecting")?),
            None => None,
        };
        let digest = sidecar_file
            .as_ref()
            .map(|_| sidecar::metadata_digest(&bytes));
        // Records are decoded into the arrays one by one, not gathered first.
        let mut store = Self::from_parts(dir, root, &bytes, &meta_path)?;
        store.writer = Writer::of_files(dir, Some(meta_held), sidecar_held);
        drop(bytes);
        // A sidecar whose bytes cannot be read or parsed is ignored.
        match sidecar_file {
            Some(opened) if opened.len <= WHOLE_SIDECAR => {
                if let Ok(bytes) = read_to_vec(opened, sidecar::MAX_LEN, "sidecar") {
                    let read = serde_json::de::SliceRead::new(&bytes);
                    store.apply_sidecar(read, digest.as_deref());
                }
            }
            // A large one is parsed as it is read, not copied whole into memory first (for
            // 100,000 arrays it is some 30 MB): slower to parse, bounded in memory.
            Some(opened) if opened.len <= sidecar::MAX_LEN => {
                let reader = std::io::Read::take(&opened.file, sidecar::MAX_LEN);
                let read =
                    serde_json::de::IoRead::new(std::io::BufReader::with_capacity(1 << 16, reader));
                store.apply_sidecar(read, digest.as_deref());
            }
            _ => {}
        }
        Ok(store)
    }

    /// Opens the NumPack at `path`, creating an empty one if there is none. With
    /// `drop_if_exists`, an existing one is removed first. A path that exists but is not a
    /// NumPack directory (a file, or a non-empty directory without `metadata.npkm`) is never
    /// removed: that is an error.
    ///
    /// Everything is decided and done under the lock every change and conversion into the
    /// path takes (see `publish`), which first restores an old store an interrupted
    /// conversion left aside: a conversion publishing into the path meanwhile comes before
    /// or after, never in between.
    pub fn create(path: impl AsRef<Path>, drop_if_exists: bool) -> Result<NumPack> {
        let dir = path.as_ref();
        // A store that is there is only read: no lock needed (nor the right to take it).
        if !drop_if_exists && matches!(existing_kind(dir), Ok(Existing::NumPack)) {
            return NumPack::open(dir);
        }
        // The directory holding the store is locked: it must exist (making it changes no
        // store).
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            if fs::symlink_metadata(parent).is_err() {
                fs::create_dir_all(parent).ctx(parent, "creating directory")?;
            }
        }
        let lock_path = match dir.file_name() {
            Some(_) => dir.to_path_buf(),
            None => dir.canonicalize().ctx(dir, "resolving")?,
        };
        let _lock = crate::publish::lock_output(&lock_path, true).map_err(|e| e.at(dir))?;
        match fs::symlink_metadata(dir) {
            Ok(_) => {
                let kind = match existing_kind(dir) {
                    // A create killed before its metadata's rename left its temporary file
                    // in the new directory: that directory is still the empty one it made.
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        if !remove_create_leftovers(dir)? {
                            return Err(e);
                        }
                        existing_kind(dir)?
                    }
                    kind => kind?,
                };
                if kind == Existing::NumPack && !drop_if_exists {
                    return NumPack::open(dir);
                }
                if kind == Existing::NumPack {
                    // A store that opens is emptied all or none.
                    if let Ok(mut store) = NumPack::open(dir) {
                        store.clear()?;
                        return Ok(store);
                    }
                    fs::remove_dir_all(dir).ctx(dir, "removing")?;
                    fs::create_dir(dir).ctx(dir, "creating directory")?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(dir).ctx(dir, "creating directory")?;
            }
            Err(e) => return Err(Error::io(dir, "inspecting", e)),
        }
        crate::hook::at("numpack-create:directory-made");
        let store = NumPack {
            dir: dir.to_path_buf(),
            root: dir_handle(dir)?,
            arrays: Vec::new(),
            index: NameIndex::with_capacity(0),
            faults: HashMap::new(),
            st_metadata: None,
            sharding: None,
            source_header: None,
            retired: Vec::new(),
            durable: false,
            last_stamp: 0,
            opened_at: std::time::SystemTime::now(),
            writer: Writer::observe(dir),
            newer: Default::default(),
            changed: AtomicBool::new(false),
        };
        store.write_metadata()?;
        Ok(store)
    }

    /// Builds a store from decoded metadata, validating every array (but for its data
    /// files, checked when first opened: see `NumPack::open_data`). Arrays have the dtype
    /// and shape of their records until [`NumPack::apply_sidecar`].
    fn from_parts(dir: &Path, root: OwnedFd, meta: &[u8], meta_path: &Path) -> Result<NumPack> {
        // One pass over the directory says which bitmaps exist and which data files are
        // regular files; without it (a directory that can be searched but not read), each
        // bitmap is looked for by name.
        let listing = Listing::of(&root);
        // Files are stamped with a clock that may lag this one by a tick: a file changed
        // before this counts as before; one changed within a tick after may too.
        let opened_at = std::time::SystemTime::now();
        let parts = Parts {
            dir,
            root: &root,
            listing: listing.as_ref(),
            scratch: Default::default(),
        };
        let records = Records::new(meta, meta_path)?;
        let mut arrays = Vec::with_capacity(records.len());
        let mut index = NameIndex::with_capacity(records.len());
        let mut faults = HashMap::new();
        let mut last_stamp = 0;
        for record in records {
            let record = record?;
            if index.get(&record.name, &arrays).is_some() {
                return Err(
                    Error::malformed(dir, "the metadata lists this array twice").array(record.name)
                );
            }
            last_stamp = last_stamp.max(record.last_modified);
            // An array whose files do not hold what its record says fails alone, when it is
            // read: the other arrays stay readable (docs/format.md, "Damaged arrays").
            let array = match load_array(&parts, &record) {
                Ok(derived) => derived.with(record),
                Err(e) => {
                    let name = record.name.clone();
                    faults.insert(
                        name.clone(),
                        Fault {
                            error: e.array(name.clone()).at(dir),
                            entry: None,
                        },
                    );
                    placeholder(record)
                }
            };
            arrays.push(array);
            index.insert(arrays.len() - 1, &arrays);
        }
        drop(listing);
        Ok(NumPack {
            dir: dir.to_path_buf(),
            root,
            arrays,
            index,
            faults,
            st_metadata: None,
            sharding: None,
            source_header: None,
            retired: Vec::new(),
            durable: false,
            last_stamp,
            opened_at,
            writer: Writer::of_files(dir, None, None),
            newer: Default::default(),
            changed: AtomicBool::new(false),
        })
    }

    /// Applies the sidecar `read` (opened with the metadata whose digest is `digest`) to the
    /// arrays just opened: each array's true dtype and shape from the first entry, in file
    /// order, that still describes its record (a name may have two entries, one per
    /// generation, while a change is published), and the store-wide fields. Entries are
    /// applied as they are parsed, none kept, but for arrays that cannot be read (kept for
    /// the next metadata write). A sidecar that does not parse is ignored whole.
    fn apply_sidecar<'de>(&mut self, read: impl serde_json::de::Read<'de>, digest: Option<&str>) {
        // Per array: the dtype and, when it differs from the record's, the shape.
        let mut found: Vec<Option<(DType, Option<Vec<u64>>)>> = Vec::new();
        found.resize_with(self.arrays.len(), || None);
        // Entries of arrays that cannot be read: the first that applies, else the first.
        let mut fault_entries: HashMap<usize, (bool, Entry)> = HashMap::new();
        let (arrays, index) = (&self.arrays, &self.index);
        let fields = Sidecar::decode_streaming_from(read, |e| {
            let Some(i) = index.get(&e.name, arrays) else {
                return;
            };
            let record = &arrays[i].record;
            let resolved = e.resolve(record);
            if matches!(arrays[i].storage, Storage::Refused) {
                let applies = resolved.is_some();
                match fault_entries.get(&i) {
                    Some((true, _)) => {}
                    Some((false, _)) if !applies => {}
                    _ => {
                        fault_entries.insert(i, (applies, e.to_entry()));
                    }
                }
                return;
            }
            if let (Some(dtype), None) = (resolved, &found[i]) {
                let shape = (*e.shape != *record.shape).then(|| e.shape.to_vec());
                found[i] = Some((dtype, shape));
            }
        });
        let Some(mut fields) = fields else {
            return;
        };
        fields.settle(digest);
        self.st_metadata = fields.metadata;
        self.sharding = fields.sharding;
        self.source_header = fields.source_header;
        for (a, f) in self.arrays.iter_mut().zip(found) {
            let Some((dtype, shape)) = f else { continue };
            // An entry whose rows differ from the record's cannot be combined with a
            // deletion bitmap (the bitmap counts the record's rows): read as NumPack sees it.
            let rows = shape.as_ref().map_or(a.record.shape.first(), |s| s.first());
            if a.bitmap.is_some() && rows != a.record.shape.first() {
                continue;
            }
            a.dtype = dtype;
            if let Some(shape) = shape {
                a.set_shape(shape);
            }
        }
        for (i, (_, entry)) in fault_entries {
            if let Some(f) = self.faults.get_mut(&self.arrays[i].record.name) {
                f.entry = Some(entry);
            }
        }
    }
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

/// What opening a store's arrays needs: the directory, opened and listed.
struct Parts<'a> {
    dir: &'a Path,
    root: &'a OwnedFd,
    /// The directory's entries and their types, when it could be listed.
    listing: Option<&'a Listing>,
    /// A buffer for the file names looked up.
    scratch: std::cell::RefCell<String>,
}

/// Whether `rel` is one plain path component (what `checked_relative` leaves as it is).
fn one_component(rel: &str) -> bool {
    !rel.is_empty()
        && rel != "."
        && rel != ".."
        && !rel.bytes().any(|b| matches!(b, b'/' | b'\\' | 0))
}

/// What a listing of the directory says of its entries: a table (at most half full) of
/// keyed 64-bit hashes of the names, the lowest bit set for a regular file. Two names may
/// share a hash, so an entry may be taken for present (or regular) when it is not; both
/// answers only save a look before opening, which still decides (a name that is not there
/// fails to open, as `NotFound`; what is opened is checked to be a regular file by `fstat`).
struct Listing {
    hashes: Vec<u64>,
    hasher: std::collections::hash_map::RandomState,
}

impl Listing {
    /// The listing of `root`, `None` when it cannot be listed.
    fn of(root: &OwnedFd) -> Option<Listing> {
        let mut keys = Vec::new();
        let hasher = std::collections::hash_map::RandomState::new();
        list_dir(root, |name, kind| {
            keys.push(Listing::key(&hasher, name) | u64::from(kind == libc::DT_REG));
        })
        .ok()?;
        let size = keys.len().saturating_mul(2).max(8).next_power_of_two();
        let mut l = Listing {
            hashes: vec![0; size],
            hasher,
        };
        let mask = size - 1;
        for k in keys {
            let mut at = (k >> 32) as usize & mask;
            while l.hashes[at] != 0 {
                at = (at + 1) & mask;
            }
            l.hashes[at] = k;
        }
        Some(l)
    }

    /// The slot value of `name` but its regular-file bit: never 0 (an empty slot).
    fn key(hasher: &std::collections::hash_map::RandomState, name: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        (hasher.hash_one(name) & !3) | 2
    }

    /// Whether `name` may be in the directory, and whether as a regular file.
    fn find(&self, name: &str) -> (bool, bool) {
        let key = Listing::key(&self.hasher, name.as_bytes());
        let mask = self.hashes.len() - 1;
        let mut at = (key >> 32) as usize & mask;
        let mut found = (false, false);
        while self.hashes[at] != 0 {
            let h = self.hashes[at];
            if h & !1 == key {
                found = (true, found.1 || h & 1 == 1);
            }
            at = (at + 1) & mask;
        }
        found
    }
}

impl Parts<'_> {
    /// Whether the listing showed `name` as a regular file.
    fn listed_regular(&self, name: &str) -> bool {
        self.listing.is_some_and(|l| l.find(name).1)
    }

    /// `rel` opened inside the directory, `None` when it does not exist (by the listing,
    /// when there is one).
    fn open_if_present(&self, rel: &str, what: &str) -> Result<Option<Opened>> {
        if !rel.contains('/') && self.listing.is_some_and(|l| !l.find(rel).0) {
            return Ok(None);
        }
        match open_member(self.root, self.dir, rel, what, self.listed_regular(rel)) {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                refuse_dangling(self.dir, rel, what)?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// `rel` opened inside the directory, a missing file being a malformed directory.
    fn open_part(&self, rel: &str, what: &str) -> Result<Opened> {
        open_member(self.root, self.dir, rel, what, self.listed_regular(rel))
            .map_err(|e| missing_is_malformed(e, self.dir))
    }
}

/// After `rel` (an optional file of the store) was not found: fails if its name is there
/// all the same, a link leading nowhere; a file that is there but cannot be opened is never
/// taken for an absent one.
fn refuse_dangling(dir: &Path, rel: &str, what: &str) -> Result<()> {
    match fs::symlink_metadata(dir.join(rel)) {
        Ok(_) => Err(Error::malformed(
            dir,
            format!("{what} {rel:?} is a symbolic link to nothing"),
        )),
        Err(_) => Ok(()),
    }
}

/// An error opening a file the directory `dir` needs: a missing file makes the directory
/// malformed; any other error stays as it is.
pub(super) fn missing_is_malformed(e: Error, dir: &Path) -> Error {
    if e.kind() == ErrorKind::NotFound {
        Error::new(ErrorKind::Malformed, e.message().to_string()).at(dir)
    } else {
        e
    }
}

/// The array as listed when its files are not usable: its record only. Reading it fails
/// with the error kept in `NumPack::faults`; no file of it is named, so that nothing is
/// removed or linked through a path that was refused.
fn placeholder(record: ArrayRecord) -> Array {
    let dtype = DType::from_numpack_code(record.dtype_code).unwrap_or(DType::U8);
    Array::new(record, dtype, Storage::Refused)
}

/// What opening derives from an array's record (and files but the data files).
struct Derived {
    dtype: DType,
    storage: Storage,
    bitmap: Option<Bitmap>,
    verified: bool,
    listed_regular: bool,
}

impl Derived {
    fn with(self, record: ArrayRecord) -> Array {
        let mut a = Array::new(record, self.dtype, self.storage);
        a.bitmap = self.bitmap.map(Box::new);
        a.verified = AtomicBool::new(self.verified);
        a.listed_regular = self.listed_regular;
        if let Some(rows) = a.bitmap.as_deref().map(Bitmap::active_count) {
            a.set_logical_rows(rows);
        }
        a
    }
}

fn load_array(parts: &Parts<'_>, record: &ArrayRecord) -> Result<Derived> {
    let dir = parts.dir;
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
    // Segmented arrays (rare, and never written by npkio) have their segment files checked
    // here, as does a data file below a subdirectory: what is removed when the array is
    // replaced never goes through a link leading out. A data file of the directory itself
    // is checked when first opened.
    let mut verified = false;
    let mut listed_regular = false;
    let storage = if record.data_file.ends_with(".npkseg") {
        verified = true;
        let manifest = checked(dir, &record.data_file, "segment manifest")?;
        let opened = parts.open_part(&record.data_file, "segment manifest")?;
        let mpath = opened.path.clone();
        let bytes = read_to_vec(opened, segments::MAX_MANIFEST_LEN, "segment manifest")?;
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
            let rel = checked(dir, &file, "segment file")?;
            if srows.checked_mul(row_bytes) != Some(sbytes) {
                return Err(Error::malformed(
                    &mpath,
                    format!("segment {file:?}: {srows} rows cannot be {sbytes} bytes"),
                ));
            }
            let len = parts.open_part(&file, "segment file")?.len;
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
        Storage::Segmented(Box::new(Segments {
            manifest,
            segments: out,
        }))
    } else {
        // The common case, one plain component, needs no path built to be checked.
        let rel = if one_component(&record.data_file) {
            None
        } else {
            Some(checked(dir, &record.data_file, "data file")?)
        };
        if let Some(rel) = rel.filter(|r| r.components().count() > 1) {
            let len = parts.open_part(&record.data_file, "data file")?.len;
            if len < size {
                return Err(Error::malformed(
                    dir.join(&rel),
                    format!("data file is {len} bytes, shorter than the {size} that shape {:?} of {code_dtype} needs", record.shape),
                ));
            }
            verified = true;
        } else {
            listed_regular = parts.listed_regular(&record.data_file);
        }
        Storage::Plain
    };
    // The bitmap's name (`bitmap_path`), built in a buffer kept from array to array.
    let mut bname = parts.scratch.borrow_mut();
    bname.clear();
    let stem = naming::stem_of(&record.data_file).unwrap_or(&record.name);
    naming::push_bitmap_file(&mut bname, stem);
    let bitmap = match parts.open_if_present(&bname, "deletion bitmap")? {
        Some(opened) => {
            let bpath = dir.join(bitmap_path(record));
            if record.shape.is_empty() {
                return Err(Error::malformed(&bpath, "deletion bitmap for a 0-d array"));
            }
            // Bound the read by what the row count allows before reading anything.
            let max = rows.div_ceil(64).saturating_mul(8).saturating_add(16);
            if opened.len > max {
                return Err(Error::malformed(
                    &bpath,
                    format!(
                        "deletion bitmap is {} bytes; an array of {rows} rows needs at most {max}",
                        opened.len
                    ),
                ));
            }
            let bytes = read_to_vec(opened, max, "deletion bitmap")?;
            Some(Bitmap::decode(&bytes, rows, &bpath)?)
        }
        None => None,
    };
    Ok(Derived {
        dtype: code_dtype,
        storage,
        bitmap,
        verified,
        listed_regular,
    })
}
