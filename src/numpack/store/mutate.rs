//! Changes to a store: save, delete, and writing the metadata (appending and dropping rows
//! are in `row_changes`). Each change is published in one step and takes the directory's
//! lock: see `generation`.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::dtype::{self, DType};
use crate::error::{Error, IoContext, Result};
use crate::numpack::metadata::{self, ArrayRecord, Metadata};
use crate::numpack::naming;
use crate::numpack::sidecar::{self, Sidecar};
use crate::sys::fsutil::{now_micros, sync_dir, temp_file_in, write_atomic};

use super::generation::{
    canonical_stem, link_over, published, remove_if_exists, write_sidecar, Late, TMP_PREFIX,
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

    pub(super) fn stamp(&mut self) -> u64 {
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
    pub(super) fn after_commit(
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
            s.after_removal(vec![old], &on_disk, late)
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
            s.after_removal(old, &on_disk, late)
        })
    }

    /// After a commit without the arrays `removed`: their mappings kept for the views still
    /// out, the sidecar pruned, then (unless the directory's sync failed, `late`) their
    /// files removed where no array of the new generation uses them.
    fn after_removal(&mut self, removed: Vec<Array>, on_disk: &Sidecar, late: Late) -> Result<()> {
        let mut files = Vec::new();
        for a in removed {
            files.extend(files_of(&a));
            if let Some(d) = a.data.into_inner() {
                self.retired.push(*d);
            }
        }
        self.prune_sidecar(on_disk);
        if let Some(e) = late {
            return Err(e);
        }
        self.remove_unreferenced(files);
        Ok(())
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
