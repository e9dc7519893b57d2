//! Changes to a store: save, append, drop rows, delete, and writing the metadata. Each
//! change is published in one step and takes the directory's lock: see `generation`.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::dtype::{self, DType};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::numpack::bitmap::Bitmap;
use crate::numpack::metadata::{self, ArrayRecord, Metadata};
use crate::numpack::naming;
use crate::numpack::sidecar::{self, Sidecar};
use crate::sys::fsutil::{now_micros, sync_dir, temp_file_in, write_atomic};

use super::generation::{
    canonical_stem, link_over, published, remove_if_exists, replace_file, write_sidecar, TMP_PREFIX,
};
use super::index::NameIndex;
use super::layout::{files_of, make_record, Storage};
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
    if let Some(e) = write_sidecar(dir, sidecar, durable)? {
        return Err(e);
    }
    write_atomic(dir, metadata::FILE_NAME, &meta.encode(), durable)
}

impl NumPack {
    /// With `durable`, every later change syncs its data before the metadata points at it
    /// and syncs the directory after. Off by default (like NumPack and `cp`).
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
    }

    /// Replaces the recorded SafeTensors `__metadata__` (one rename of `npkio.json`).
    pub fn set_safetensors_metadata(
        &mut self,
        metadata: Option<Vec<(String, String)>>,
    ) -> Result<()> {
        self.locked(|s| {
            let old = std::mem::replace(&mut s.st_metadata, metadata);
            let (_, sc) = s.snapshot();
            match write_sidecar(&s.dir, &sc, s.durable) {
                Ok(late) => late.map_or(Ok(()), |e| Err(published(&s.dir, e))),
                Err(e) => {
                    s.st_metadata = old;
                    Err(e)
                }
            }
        })
    }

    fn stamp(&mut self) -> u64 {
        let t = now_micros().max(self.last_stamp + 1);
        self.last_stamp = t;
        t
    }

    /// Saves arrays, replacing any of the same name: all of them or none. New data goes
    /// under file names no record uses; one rename of `metadata.npkm` publishes it.
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
        if arrays.is_empty() {
            return Ok(());
        }
        self.locked(|s| s.save_locked(arrays))
    }

    fn save_locked(&mut self, arrays: &[ArrayInput<'_>]) -> Result<()> {
        let aside = self.move_aside(arrays)?;
        // Stage every data file under a stem no record uses.
        let mut staged: Vec<(String, ArrayRecord, Option<sidecar::Entry>)> = Vec::new();
        let mut written: Vec<PathBuf> = Vec::new();
        // Stems in use, gathered once: a save of many arrays looks each one up.
        let live = self.live_stems();
        // An array moved aside keeps NumPack 0.7's bitmap under its own stem until the
        // commit: not a stem for the new data. Staged stems join as they are chosen.
        let mut taken: HashSet<String> = aside.iter().map(|(_, c)| c.clone()).collect();
        // Base stems other arrays use, ASCII-lowercased (`naming::choose_stem` compares
        // ignoring ASCII case), with how many arrays use each; built on first need.
        let mut bases: Option<HashMap<String, usize>> = None;
        let result = (|| -> Result<()> {
            for a in arrays {
                let canonical = match self.find(a.name) {
                    Some(i) => canonical_stem(&self.arrays[i].record),
                    None => None,
                };
                let canonical = canonical.unwrap_or_else(|| {
                    let bases = bases.get_or_insert_with(|| {
                        let mut m = HashMap::new();
                        for x in &self.arrays {
                            if let Some(st) = naming::stem_of(&x.record.data_file) {
                                *m.entry(naming::base_stem(st).to_ascii_lowercase())
                                    .or_default() += 1;
                            }
                        }
                        m
                    });
                    let key = a.name.to_ascii_lowercase();
                    // The array of the same name, being replaced, does not count.
                    let own = self
                        .find(a.name)
                        .and_then(|i| naming::stem_of(&self.arrays[i].record.data_file))
                        .is_some_and(|st| naming::base_stem(st).eq_ignore_ascii_case(a.name));
                    let uses = bases.get(&key).copied().unwrap_or(0);
                    let other = if uses > usize::from(own) {
                        Some(a.name)
                    } else {
                        None
                    };
                    let stem = naming::choose_stem(a.name, other.into_iter());
                    *bases
                        .entry(naming::base_stem(&stem).to_ascii_lowercase())
                        .or_default() += 1;
                    stem
                });
                let stem = self.fresh_stem_in(&live, &canonical, &taken)?;
                taken.insert(stem.clone());
                let data_file = naming::data_file(&stem);
                let target = self.dir.join(&data_file);
                let mut tmp = temp_file_in(&self.dir, TMP_PREFIX)?;
                tmp.write_all(a.data)
                    .ctx(tmp.path(), "writing")
                    .map_err(|e| e.array(a.name))?;
                if self.durable {
                    tmp.as_file().sync_all().ctx(tmp.path(), "syncing")?;
                }
                tmp.persist_noclobber(&target)
                    .map_err(|e| e.error)
                    .ctx(&target, "renaming onto")?;
                written.push(target);
                let stamp = self.stamp();
                let (record, entry) = make_record(a.name, data_file, a.dtype, a.shape, stamp)?;
                staged.push((stem, record, entry));
            }
            if self.durable {
                sync_dir(&self.dir)?;
            }
            Ok(())
        })();
        // Arrays moved aside go back to their own names when the save fails (best effort:
        // else the next change moves them).
        let put_back = |s: &mut NumPack| {
            let indices: Vec<usize> = aside.iter().map(|(i, _)| *i).collect();
            let _ = s.canonicalize(&indices);
        };
        if let Err(e) = result {
            for p in written {
                let _ = fs::remove_file(p);
            }
            put_back(self);
            return Err(e);
        }
        // The new generation's records and sidecar.
        let mut records: Vec<ArrayRecord> = self.arrays.iter().map(|a| a.record.clone()).collect();
        let mut appended = Vec::new();
        for (_, record, _) in &staged {
            match self.find(&record.name) {
                Some(i) => records[i] = record.clone(),
                None => appended.push(record.clone()),
            }
        }
        records.extend(appended);
        let (_, mut new_sidecar) = self.snapshot();
        let replaced: std::collections::HashSet<&str> =
            staged.iter().map(|(_, r, _)| r.name.as_str()).collect();
        new_sidecar
            .arrays
            .retain(|e| !replaced.contains(e.name.as_str()));
        new_sidecar
            .arrays
            .extend(staged.iter().filter_map(|(_, _, e)| e.clone()));
        // NumPack 0.7 would apply the bitmap of an array moved aside to its new data: it
        // goes now, just before the commit (NumPack 0.7 reads the old rows, dropped ones
        // included, until then; npkio reads the aside bitmap).
        let restore = |s: &NumPack| {
            for (i, c) in &aside {
                let from = s.dir.join(s.bitmap_of(*i));
                let _ = link_over(&s.dir, &from, &s.dir.join(naming::bitmap_file(c)));
            }
        };
        let mut withdrawn = Ok(());
        for (_, c) in &aside {
            withdrawn =
                withdrawn.and_then(|()| remove_if_exists(&self.dir.join(naming::bitmap_file(c))));
        }
        let committed = withdrawn.and_then(|()| self.commit(records, &new_sidecar));
        let (on_disk, late) = match committed {
            Ok(done) => done,
            Err(e) => {
                restore(self);
                for p in written {
                    let _ = fs::remove_file(p);
                }
                put_back(self);
                return Err(e);
            }
        };
        // Committed: the store describes the new generation from here on.
        let mut old_files = Vec::new();
        let mut touched = Vec::new();
        for (a, (_, record, _)) in arrays.iter().zip(staged) {
            let mut array = Array::new(record, a.dtype, Storage::Plain);
            array.set_shape(a.shape.to_vec());
            // Just written: as long as its record says.
            array.verified = AtomicBool::new(true);
            match self.find(a.name) {
                Some(i) => {
                    // Saving a damaged array again repairs it.
                    self.faults.remove(a.name);
                    let old = std::mem::replace(&mut self.arrays[i], array);
                    old_files.extend(files_of(&old));
                    if let Some(d) = old.data.into_inner() {
                        self.retired.push(*d);
                    }
                    touched.push(i);
                }
                None => {
                    self.arrays.push(array);
                    self.index.insert(self.arrays.len() - 1, &self.arrays);
                }
            }
        }
        self.prune_sidecar(&on_disk);
        self.after_commit(&touched, old_files, late)
    }

    /// Before replacing arrays that have dropped rows under their own stem: NumPack 0.7
    /// finds a bitmap by the array's name, so no metadata rename can withdraw it. Moves
    /// each such array to a generation stem (links to its data and bitmap, one metadata
    /// commit: both readers still read it as before), leaving its own bitmap for NumPack
    /// 0.7 until the replacement's commit. Returns (index, own stem) of each.
    fn move_aside(&mut self, arrays: &[ArrayInput<'_>]) -> Result<Vec<(usize, String)>> {
        let mut plan = Vec::new();
        let mut taken = Vec::new();
        for a in arrays {
            let Some(i) = self.find(a.name) else {
                continue;
            };
            let x = &self.arrays[i];
            let own = canonical_stem(&x.record);
            let stem = naming::stem_of(&x.record.data_file);
            // A damaged array (its data file not as its record needs) is replaced as is.
            if x.bitmap.is_none()
                || !matches!(x.storage, Storage::Plain)
                || self.verify(x).is_err()
                || own.is_none()
                || stem != own.as_deref()
                || own.as_deref() != Some(a.name)
            {
                continue;
            }
            let own = own.expect("checked");
            let gen = self.fresh_stem(&own, &taken)?;
            taken.push(gen.clone());
            plan.push((i, own, gen));
        }
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        let mut links = Vec::new();
        let linked = (|| -> Result<()> {
            for (_, own, gen) in &plan {
                for (from, to) in [
                    (naming::data_file(own), naming::data_file(gen)),
                    (naming::bitmap_file(own), naming::bitmap_file(gen)),
                ] {
                    let to = self.dir.join(to);
                    fs::hard_link(self.dir.join(from), &to).ctx(&to, "linking")?;
                    links.push(to);
                }
            }
            if self.durable {
                sync_dir(&self.dir)?;
            }
            Ok(())
        })();
        let mut records: Vec<ArrayRecord> = self.arrays.iter().map(|a| a.record.clone()).collect();
        for (i, _, gen) in &plan {
            records[*i].data_file = naming::data_file(gen);
        }
        let (_, sc) = self.snapshot();
        // A failed directory sync after this commit is not reported: this generation reads
        // exactly as the one before, so either may be what survives a power loss.
        match linked.and_then(|()| self.commit(records, &sc)) {
            Ok(_) => {}
            Err(e) => {
                for l in links {
                    let _ = fs::remove_file(l);
                }
                return Err(e);
            }
        }
        for (i, _, gen) in &plan {
            let a = &mut self.arrays[*i];
            a.record.data_file = naming::data_file(gen);
            if let Some(d) = a.data.take() {
                self.retired.push(*d);
            }
        }
        Ok(plan.into_iter().map(|(i, own, _)| (i, own)).collect())
    }

    /// After a commit: moves the arrays at `touched` back to their own stems and removes
    /// the old generation's files. Failures leave a valid store (and leftovers that the
    /// next change removes).
    /// `late` is the commit's failed directory sync, reported once the rest is done.
    fn after_commit(
        &mut self,
        touched: &[usize],
        old_files: Vec<PathBuf>,
        late: super::generation::Late,
    ) -> Result<()> {
        let canonical: Vec<PathBuf> = touched
            .iter()
            .filter_map(|&i| canonical_stem(&self.arrays[i].record))
            .flat_map(|c| {
                [
                    PathBuf::from(naming::data_file(&c)),
                    PathBuf::from(naming::bitmap_file(&c)),
                ]
            })
            .collect();
        // Files that moving back replaces in one step wait for it; the others go now.
        let (later, now): (Vec<PathBuf>, Vec<PathBuf>) =
            old_files.into_iter().partition(|f| canonical.contains(f));
        self.remove_unreferenced(now);
        // If moving back fails, the array stays under its generation stem and NumPack 0.7
        // may still read the bitmap under its own: keep those files for the next change.
        if self.canonicalize(touched).is_ok() {
            self.remove_unreferenced(later);
        }
        late.map_or(Ok(()), Err)
    }

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

    /// Removes an array: one rename of `metadata.npkm` without it, then its files.
    pub fn delete(&mut self, name: &str) -> Result<()> {
        let i = self.find(name).ok_or_else(|| self.not_found(name))?;
        self.locked(|s| {
            let mut records: Vec<ArrayRecord> = s.arrays.iter().map(|a| a.record.clone()).collect();
            records.remove(i);
            let (_, mut sc) = s.snapshot();
            sc.arrays.retain(|e| e.name != s.arrays[i].record.name);
            let (on_disk, late) = s.commit(records, &sc)?;
            let old = s.arrays.remove(i);
            s.faults.remove(&old.record.name);
            s.index = NameIndex::of(&s.arrays);
            let old_files = files_of(&old);
            if let Some(d) = old.data.into_inner() {
                s.retired.push(*d);
            }
            s.prune_sidecar(&on_disk);
            if let Some(e) = late {
                return Err(e);
            }
            s.remove_unreferenced(old_files);
            Ok(())
        })
    }

    /// Removes every array and the recorded SafeTensors metadata: one rename of an empty
    /// `metadata.npkm`, then the old files (what `create` with `drop_if_exists` does to an
    /// existing store). Files npkio does not know stay.
    pub(super) fn clear(&mut self) -> Result<()> {
        self.locked(|s| {
            let (on_disk, late) = s.commit(Vec::new(), &Sidecar::default())?;
            let old = std::mem::take(&mut s.arrays);
            s.index.clear();
            s.st_metadata = None;
            s.sharding = None;
            s.source_header = None;
            let mut files = Vec::new();
            for a in old {
                files.extend(files_of(&a));
                if let Some(d) = a.data.into_inner() {
                    s.retired.push(*d);
                }
            }
            s.prune_sidecar(&on_disk);
            if let Some(e) = late {
                return Err(e);
            }
            s.remove_unreferenced(files);
            Ok(())
        })
    }

    /// Writes the sidecar and then `metadata.npkm` as the store describes them now (a new
    /// store's first metadata).
    pub(super) fn write_metadata(&self) -> Result<()> {
        let (meta, sidecar) = self.snapshot();
        write_dir_metadata(&self.dir, &meta, &sidecar, self.durable)?;
        self.writer.refresh(&self.dir);
        Ok(())
    }

    /// Closes the store. Every change is already on disk; this only releases mappings.
    pub fn close(self) -> Result<()> {
        Ok(())
    }
}
