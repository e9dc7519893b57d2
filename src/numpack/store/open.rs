//! Opening and creating a store, and the validation done at open time: every path stays
//! inside the directory, every file is as long as the metadata says, and bounded reads of
//! the small files (metadata, sidecar, manifests, bitmaps).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::dtype::{self, DType};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::numpack::bitmap::Bitmap;
use crate::numpack::metadata::{self, ArrayRecord, Metadata};
use crate::numpack::segments::{self, Segment};
use crate::numpack::sidecar::{self, Entry, Sidecar};
use crate::paths::checked_relative;
use crate::safe_open::{open_inside, open_inside_if_present, read_to_vec, Opened};

use super::layout::{bitmap_path, Storage};
use super::{Array, Fault, NumPack};

/// `rel` checked to stay inside `dir` by its components (`paths::checked_relative`).
fn checked(dir: &Path, rel: &str, what: &str) -> Result<PathBuf> {
    checked_relative(rel).map_err(|m| Error::malformed(dir, format!("{what}: {m}")))
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
        let opened = open_inside(dir, metadata::FILE_NAME, "metadata")?;
        let bytes = read_to_vec(opened, metadata::MAX_LEN, "metadata")?;
        let meta = Metadata::decode(&bytes, &meta_path)?;
        let sidecar = read_sidecar(dir).map(|mut s| {
            s.settle(&bytes);
            s
        });
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
                    // A store that opens is emptied all or none, under the lock.
                    if let Ok(mut store) = NumPack::open(dir) {
                        store.clear()?;
                        return Ok(store);
                    }
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
            faults: HashMap::new(),
            st_metadata: None,
            sharding: None,
            source_header: None,
            retired: Vec::new(),
            durable: false,
            last_stamp: 0,
            writer: super::generation::Writer::observe(dir),
        };
        store.write_metadata()?;
        Ok(store)
    }

    /// Builds a store from decoded metadata, validating every array.
    fn from_parts(dir: &Path, meta: Metadata, sidecar: Option<Sidecar>) -> Result<NumPack> {
        let sidecar = sidecar.unwrap_or_default();
        // A name may have two entries (one per generation while a change is published):
        // the one matching the record applies.
        let mut entries: HashMap<&str, Vec<&Entry>> = HashMap::new();
        for e in &sidecar.arrays {
            entries.entry(e.name.as_str()).or_default().push(e);
        }
        let mut arrays = Vec::with_capacity(meta.arrays.len());
        let mut index = HashMap::with_capacity(meta.arrays.len());
        let mut faults = HashMap::new();
        let mut last_stamp = 0;
        for record in meta.arrays {
            let name = record.name.clone();
            if index.contains_key(&name) {
                return Err(
                    Error::malformed(dir, "the metadata lists this array twice").array(name)
                );
            }
            last_stamp = last_stamp.max(record.last_modified);
            let candidates = entries.get(name.as_str()).map_or(&[][..], |v| v);
            // An array whose files do not hold what its record says fails alone, when it is
            // read: the other arrays stay readable (docs/format.md, "Damaged arrays").
            let array = match load_array(dir, record.clone(), candidates) {
                Ok(array) => array,
                Err(e) => {
                    // The entry that applies to this record, kept for the next write.
                    let entry = candidates
                        .iter()
                        .find(|e| e.resolve(&record).is_some())
                        .or(candidates.first())
                        .map(|e| (*e).clone());
                    faults.insert(
                        name.clone(),
                        Fault {
                            error: e.array(name.clone()).at(dir),
                            entry,
                        },
                    );
                    placeholder(record)
                }
            };
            index.insert(name, arrays.len());
            arrays.push(array);
        }
        Ok(NumPack {
            dir: dir.to_path_buf(),
            arrays,
            index,
            faults,
            st_metadata: sidecar.metadata,
            sharding: sidecar.sharding,
            source_header: sidecar.source_header,
            retired: Vec::new(),
            durable: false,
            last_stamp,
            writer: super::generation::Writer::observe(dir),
        })
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

fn read_sidecar(dir: &Path) -> Option<Sidecar> {
    // A sidecar never makes a directory unreadable: one that cannot be read is ignored.
    let opened = open_inside_if_present(dir, sidecar::FILE_NAME, "sidecar").ok()??;
    let bytes = read_to_vec(opened, sidecar::MAX_LEN, "sidecar").ok()?;
    Sidecar::decode(&bytes)
}

/// Opens `rel` inside `dir` (see `safe_open`), a missing file being a malformed directory.
fn open_part(dir: &Path, rel: &str, what: &str) -> Result<Opened> {
    open_inside(dir, rel, what).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Error::new(ErrorKind::Malformed, e.message().to_string()).at(dir)
        } else {
            e
        }
    })
}

/// The array as listed when its files are not usable: its record only. Reading it fails
/// with the error kept in `NumPack::faults`; no file of it is named, so that nothing is
/// removed or linked through a path that was refused.
fn placeholder(record: ArrayRecord) -> Array {
    let dtype = DType::from_numpack_code(record.dtype_code).unwrap_or(DType::U8);
    Array {
        dtype,
        shape: record.shape.clone(),
        logical_shape: record.shape.clone(),
        storage: Storage::Plain(PathBuf::new()),
        bitmap: None,
        data: OnceLock::new(),
        record,
    }
}

fn load_array(dir: &Path, record: ArrayRecord, entries: &[&Entry]) -> Result<Array> {
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
        let manifest = checked(dir, &record.data_file, "segment manifest")?;
        let opened = open_part(dir, &record.data_file, "segment manifest")?;
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
            let len = open_part(dir, &file, "segment file")?.len;
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
        let rel = checked(dir, &record.data_file, "data file")?;
        let len = open_part(dir, &record.data_file, "data file")?.len;
        if len < size {
            return Err(Error::malformed(
                dir.join(&rel),
                format!("data file is {len} bytes, shorter than the {size} that shape {:?} of {code_dtype} needs", record.shape),
            ));
        }
        Storage::Plain(rel)
    };
    let brel = bitmap_path(&record);
    let bpath = dir.join(&brel);
    let bitmap = match open_inside_if_present(dir, &brel.to_string_lossy(), "deletion bitmap")? {
        Some(opened) => {
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
    // A sidecar entry whose rows differ from the record's cannot be combined with a
    // deletion bitmap (the bitmap counts the record's rows): read as NumPack sees it.
    let (dtype, shape) = entries
        .iter()
        .find_map(|e| e.resolve(&record))
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
