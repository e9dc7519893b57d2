//! Changes to a store: save, append, drop rows, delete, and writing the metadata. Data
//! files go through temporary files renamed into place, then the metadata likewise.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::dtype::{self, DType};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::fsutil::{now_micros, temp_file_in, write_atomic};
use crate::numpack::bitmap::Bitmap;
use crate::numpack::metadata::{self, Metadata};
use crate::numpack::naming;
use crate::numpack::sidecar::{self, Sidecar};

use super::layout::{bitmap_path, files_of, make_record, Storage};
use super::{Array, NumPack};

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

impl NumPack {
    /// With `durable`, every later change syncs its data before the metadata points at it
    /// and syncs the directory after. Off by default (like NumPack and `cp`).
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
    }

    /// Replaces the recorded SafeTensors `__metadata__`.
    pub fn set_safetensors_metadata(
        &mut self,
        metadata: Option<Vec<(String, String)>>,
    ) -> Result<()> {
        self.st_metadata = metadata;
        self.write_metadata()
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
            let mut tmp = temp_file_in(&self.dir, ".npkio-tmp-")?;
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
                    self.faults.remove(a.name);
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
        self.get(name)?;
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
        self.get(name)?;
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
        self.faults.remove(name);
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
    pub(super) fn write_metadata(&self) -> Result<()> {
        let (meta, sidecar) = self.snapshot();
        write_dir_metadata(&self.dir, &meta, &sidecar, self.durable)
    }

    /// Closes the store. Every change is already on disk; this only releases mappings.
    pub fn close(self) -> Result<()> {
        Ok(())
    }
}
