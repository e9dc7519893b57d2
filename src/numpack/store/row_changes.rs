//! Changes to the rows of an array: append rows past the data file's end, drop rows through
//! the deletion bitmap (in place, or by copying the kept rows to a new stem). Like every
//! change, each is published in one step under the directory's lock: see `generation`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;

use crate::dtype;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::numpack::bitmap::Bitmap;
use crate::numpack::metadata::{self, ArrayRecord};
use crate::numpack::naming;
use crate::numpack::sidecar;

use super::generation::{canonical_stem, published, remove_if_exists, replace_file};
use super::layout::{files_of, Storage};
use super::NumPack;

impl NumPack {
    /// The index of the array `name` whose rows a change will `act` on: a damaged array is
    /// refused with its own error, an unknown one as not found, and one without rows (0-d,
    /// or stored under a sub-byte stand-in shape) as unsupported.
    /// Its data files are checked by the change itself, under the lock.
    fn rows_of(&self, name: &str, act: &str) -> Result<usize> {
        self.get_listed(name)?;
        let i = self.find(name).ok_or_else(|| self.not_found(name))?;
        let a = &self.arrays[i];
        if a.shape().is_empty() || a.shape().first() != a.record.shape.first() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("a 0-d array or a sub-byte stand-in shape has no rows to {act}"),
            )
            .at(&self.dir)
            .array(name));
        }
        Ok(i)
    }

    /// Appends rows to an array: `data` holds whole rows of the array's dtype and row shape.
    /// All or none: the rows are written past the data file's end (which the current
    /// generation ignores), then one rename of `metadata.npkm` publishes them. Rows of 0
    /// bytes cannot be counted from the bytes: [`NumPack::append_rows`] takes their number.
    pub fn append(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let i = self.rows_of(name, "append to")?;
        let row_bytes = self.row_bytes(i)?;
        if row_bytes == 0 {
            return Err(Error::invalid_argument(
                "the array's rows hold 0 bytes, so their number cannot be told from the \
                 bytes: give it (append_rows)",
            )
            .at(&self.dir)
            .array(name));
        }
        if data.len() as u64 % row_bytes != 0 {
            return Err(Error::invalid_argument(format!(
                "{} bytes is not a whole number of rows of {row_bytes} bytes",
                data.len()
            ))
            .at(&self.dir)
            .array(name));
        }
        self.append_rows(name, data, data.len() as u64 / row_bytes)
    }

    /// Appends `rows` rows to an array: `data` holds exactly that many rows of the array's
    /// dtype and row shape (no bytes at all for rows of 0 bytes, such as those of an
    /// array of shape `(n, 0)`). As [`NumPack::append`] otherwise.
    pub fn append_rows(&mut self, name: &str, data: &[u8], rows: u64) -> Result<()> {
        let dir = self.dir.clone();
        let i = self.rows_of(name, "append to")?;
        let row_bytes = self.row_bytes(i)?;
        if rows.checked_mul(row_bytes) != Some(data.len() as u64) {
            return Err(Error::invalid_argument(format!(
                "{} bytes are not {rows} rows of {row_bytes} bytes",
                data.len()
            ))
            .at(&dir)
            .array(name));
        }
        if rows == 0 {
            return Ok(());
        }
        if !matches!(self.arrays[i].storage, Storage::Plain) {
            return Err(
                Error::new(ErrorKind::Unsupported, "appending to a segmented array")
                    .at(&dir)
                    .array(name),
            );
        }
        self.locked(|s| {
            s.verify(&s.arrays[i])?;
            s.append_locked(i, data, rows)
        })
    }

    /// Bytes of one row of the array at `i` (which has rows: see `rows_of`).
    fn row_bytes(&self, i: usize) -> Result<u64> {
        let a = &self.arrays[i];
        dtype::element_count(&a.shape()[1..])
            .and_then(|n| a.dtype.byte_len(n))
            .ok_or_else(|| {
                Error::invalid_argument("the array's rows have no whole byte length")
                    .at(&self.dir)
                    .array(&a.record.name)
            })
    }

    fn append_locked(&mut self, i: usize, data: &[u8], new_rows: u64) -> Result<()> {
        let dir = self.dir.clone();
        let durable = self.durable;
        let stamp = self.stamp();
        let a = &self.arrays[i];
        let name = a.record.name.clone();
        let path = dir.join(&a.record.data_file);
        let old_size = a.record.size_bytes;
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .ctx(&path, "opening")
            .map_err(|e| e.array(&name))?;
        // A file with other links (a copy made by `cp -al`, a backup sharing it) is never
        // written: the rows go into a copy, under a fresh stem.
        let shared = file.metadata().map_or(true, |m| m.nlink() > 1);
        // Past the end: the current generation reads only its size_bytes, so these bytes
        // (and any left by an interrupted append) are invisible until the commit.
        let undo = |e: Error| {
            if !shared {
                let _ = file.set_len(old_size);
            }
            e.array(&name)
        };
        if !shared {
            file.write_all_at(data, old_size)
                .ctx(&path, "appending to")
                .map_err(undo)?;
            if durable {
                file.sync_all().ctx(&path, "syncing").map_err(undo)?;
            }
        }
        let mut record = a.record.clone();
        record.shape[0] += new_rows;
        record.size_bytes += data.len() as u64;
        record.last_modified = stamp;
        // An array with dropped rows needs a longer bitmap: it goes with a link to the data
        // (or the copy) under a fresh stem, so that the same rename publishes both.
        let mut bitmap = a.bitmap.clone();
        if let Some(b) = &mut bitmap {
            b.extend_active(new_rows);
        }
        let mut new_files = Vec::new();
        let staged = if shared {
            self.copy_with_rows(i, data, bitmap.as_deref(), &mut new_files)
                .map(Some)
        } else if let Some(b) = &bitmap {
            self.restem(i, b, &mut new_files).map(Some)
        } else {
            Ok(None)
        };
        match staged {
            Ok(Some(f)) => record.data_file = f,
            Ok(None) => {}
            Err(e) => {
                for f in &new_files {
                    let _ = remove_if_exists(f);
                }
                return Err(undo(e));
            }
        }
        let mut records: Vec<ArrayRecord> = self.arrays.iter().map(|a| a.record.clone()).collect();
        records[i] = record.clone();
        let (_, mut new_sidecar) = self.snapshot();
        if let Some(pos) = new_sidecar.arrays.iter().position(|e| e.name == name) {
            let (dt, shape) = (self.arrays[i].dtype, self.arrays[i].shape().to_vec());
            let mut true_shape = shape;
            true_shape[0] += new_rows;
            new_sidecar.arrays[pos] = sidecar::Entry::new(&record, dt, &true_shape);
        }
        let (on_disk, late) = match self.commit(records, &new_sidecar) {
            Ok(done) => done,
            Err(e) => {
                for f in &new_files {
                    let _ = remove_if_exists(f);
                }
                return Err(undo(e));
            }
        };
        let a = &mut self.arrays[i];
        let old_files = files_of(a);
        // The true and logical shapes follow the record's rows where they are not kept.
        a.add_rows(new_rows);
        a.record = record;
        a.bitmap = bitmap;
        if let Some(d) = a.data.take() {
            self.retired.push(*d);
        }
        self.prune_sidecar(&on_disk);
        self.after_commit(&[i], old_files, late)
    }

    /// Deletes rows (logical indices, as the array reads now) by marking them in the
    /// deletion bitmap, as NumPack does. The new bitmap goes under a fresh stem with a link
    /// to the data, published by one rename of `metadata.npkm` (which every other handle's
    /// check sees), then moved to the array's own stem, where NumPack 0.7 reads it.
    pub fn drop_rows(&mut self, name: &str, rows: &[u64]) -> Result<()> {
        let dir = self.dir.clone();
        let i = self.rows_of(name, "drop")?;
        let a = &self.arrays[i];
        let mut bitmap = a
            .bitmap
            .as_deref()
            .cloned()
            .unwrap_or_else(|| Bitmap::all_active(a.shape()[0]));
        bitmap
            .delete_logical(rows)
            .map_err(|m| Error::invalid_argument(m).at(&dir).array(name))?;
        self.locked(|s| {
            s.verify(&s.arrays[i])?;
            if matches!(s.arrays[i].storage, Storage::Plain) {
                s.drop_rows_locked(i, bitmap)
            } else {
                s.drop_rows_in_place(i, bitmap)
            }
        })
    }

    fn drop_rows_locked(&mut self, i: usize, bitmap: Bitmap) -> Result<()> {
        let mut new_files = Vec::new();
        let data_file = match self.restem(i, &bitmap, &mut new_files) {
            Ok(f) => f,
            Err(e) => {
                for f in &new_files {
                    let _ = remove_if_exists(f);
                }
                return Err(e.array(&self.arrays[i].record.name));
            }
        };
        let mut records: Vec<ArrayRecord> = self.arrays.iter().map(|a| a.record.clone()).collect();
        records[i].data_file = data_file;
        let record = records[i].clone();
        // The records change only their data file, which sidecar entries do not name.
        let (_, sc) = self.snapshot();
        let (on_disk, late) = match self.commit(records, &sc) {
            Ok(done) => done,
            Err(e) => {
                for f in &new_files {
                    let _ = remove_if_exists(f);
                }
                return Err(e.array(&record.name));
            }
        };
        let a = &mut self.arrays[i];
        let old_files = files_of(a);
        a.record = record;
        a.set_logical_rows(bitmap.active_count());
        a.bitmap = Some(Box::new(bitmap));
        if let Some(d) = a.data.take() {
            self.retired.push(*d);
        }
        self.prune_sidecar(&on_disk);
        self.after_commit(&[i], old_files, late)
    }

    /// [`NumPack::drop_rows`] of a segmented array (never written by npkio): its bitmap
    /// replaced by one rename, then the same metadata again as a new file, so that other
    /// handles see that the store changed.
    fn drop_rows_in_place(&mut self, i: usize, bitmap: Bitmap) -> Result<()> {
        let dir = self.dir.clone();
        let bpath = self.bitmap_of(i);
        let late = replace_file(
            &dir,
            &bpath.to_string_lossy(),
            &bitmap.encode(),
            self.durable,
        )?;
        let a = &mut self.arrays[i];
        a.set_logical_rows(bitmap.active_count());
        a.bitmap = Some(Box::new(bitmap));
        if let Some(d) = a.data.take() {
            self.retired.push(*d);
        }
        let (meta, _) = self.snapshot();
        if late.is_none() {
            let _ = replace_file(&dir, metadata::FILE_NAME, &meta.encode(), self.durable);
        }
        late.map_or(Ok(()), |e| Err(published(&dir, e)))
    }

    /// A fresh stem for new files of the array at `i`: its own stem, or a generation of it.
    fn change_stem(&self, i: usize) -> Result<String> {
        let record = &self.arrays[i].record;
        let canonical = canonical_stem(record).unwrap_or_else(|| {
            naming::stem_of(&record.data_file)
                .map(naming::base_stem)
                .unwrap_or("array")
                .to_string()
        });
        self.fresh_stem(&canonical, &[])
    }

    /// Writes the array at `i` with `rows` after its bytes into a new file under a fresh
    /// stem, and `bitmap` (if any) beside it (both pushed to `made`, for the caller to remove
    /// on a failure): an append that must not write into the live data file. Returns the
    /// new data file's name.
    fn copy_with_rows(
        &self,
        i: usize,
        rows: &[u8],
        bitmap: Option<&Bitmap>,
        made: &mut Vec<PathBuf>,
    ) -> Result<String> {
        let dir = &self.dir;
        let a = &self.arrays[i];
        let source = self.open_data(a, 0)?;
        let stem = self.change_stem(i)?;
        let path = dir.join(naming::data_file(&stem));
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .ctx(&path, "creating")?;
        made.push(path.clone());
        let size = a.record.size_bytes;
        let copied = std::io::copy(&mut std::io::Read::take(&source, size), &mut out)
            .ctx(&path, "copying into")?;
        if copied != size {
            let short = std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the data file ended after {copied} of its {size} bytes"),
            );
            return Err(Error::io(dir.join(&a.record.data_file), "reading", short));
        }
        out.write_all(rows).ctx(&path, "writing")?;
        if self.durable {
            out.sync_all().ctx(&path, "syncing")?;
        }
        if let Some(b) = bitmap {
            let bname = naming::bitmap_file(&stem);
            made.push(dir.join(&bname));
            if let Some(e) = replace_file(dir, &bname, &b.encode(), self.durable)? {
                return Err(e);
            }
        }
        Ok(naming::data_file(&stem))
    }

    /// Puts the array at `i` under a fresh stem for a change of its bitmap: a link to its
    /// data file and `bitmap`, both named by that stem (and pushed to `made`, for the
    /// caller to remove on a failure). Returns the new data file's name.
    fn restem(&self, i: usize, bitmap: &Bitmap, made: &mut Vec<PathBuf>) -> Result<String> {
        let dir = &self.dir;
        let stem = self.change_stem(i)?;
        let link = dir.join(naming::data_file(&stem));
        let path = dir.join(&self.arrays[i].record.data_file);
        fs::hard_link(&path, &link).ctx(&link, "linking")?;
        made.push(link);
        let bname = naming::bitmap_file(&stem);
        made.push(dir.join(&bname));
        if let Some(e) = replace_file(dir, &bname, &bitmap.encode(), self.durable)? {
            return Err(e);
        }
        Ok(naming::data_file(&stem))
    }
}
