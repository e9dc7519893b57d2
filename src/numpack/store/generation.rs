//! How a change to a store is published: one commit point, exclusion, and clean-up.
//!
//! Every change writes what it changes under file names the live `metadata.npkm` does not
//! reference, then publishes it by renaming a new `metadata.npkm` into place (the commit
//! point), then removes the files of the old generation. A crash or an error at any step
//! leaves the store reading as before the change or as after it:
//!
//! - Data files of a replaced array are written under a fresh stem: `data_<stem>~<n>.npkd`
//!   when the array's own `data_<stem>.npkd` is live. `~` never occurs in a plain name and
//!   hashed stems start with `~`, so a generation name never collides with another
//!   array's file.
//! - The deletion bitmap follows the data file's stem (`deleted_<stem>.npkb`), so a new
//!   bitmap that goes with new data is published by the same rename.
//! - NumPack 0.7 finds a bitmap by the array's name (`deleted_<name>.npkb`, the stem of a
//!   plain name), so after the commit an array left under a generation stem is moved back
//!   to its own stem ([`NumPack::canonicalize`]): its files get their plain names by hard
//!   links (the bitmap by a link renamed over the old one), a second metadata commit points
//!   at them, and the generation names are removed. Every state in between reads as the
//!   new generation.
//! - An array with dropped rows that is replaced is first moved aside (links under a
//!   generation stem, one commit that reads the same), because NumPack 0.7's bitmap under
//!   its own name cannot be withdrawn by the metadata rename: it is removed just before
//!   the replacement's commit (`NumPack::move_aside` in `mutate`).
//! - An append writes past the data file's end, which the current generation ignores; into a
//!   copy under a generation name when the file has other hard links (`cp -al`).
//! - `npkio.json` is written before the metadata with the entries of both generations (an
//!   entry applies only to the record it was made for), and pruned after the commit.
//!
//! Writers exclude each other with the lock conversions into the directory take
//! ([`crate::publish::lock_output`]); under it a change first checks that the path still
//! names the directory the store was opened on and that `metadata.npkm` and `npkio.json`
//! are those it last saw (another writer changed nothing since), then removes what
//! interrupted changes left behind.

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{Error, ErrorKind, IoContext, Result};

use crate::numpack::metadata::{self, ArrayRecord, Metadata};
use crate::numpack::naming;
use crate::numpack::sidecar::{self, Entry, Next, Sidecar};
use crate::sys::fsutil::{replace_contents, sync_dir};

use super::layout::{bitmap_path, files_of, Storage};
use super::NumPack;

/// Prefix of every temporary file a change creates inside the directory.
pub(super) use crate::sys::fsutil::TMP_PREFIX;

/// What identifies a file's current version: a rename, a rewrite or a replacement changes
/// at least one of these. On its own an inode number may be reused by a later file and a
/// time may not tick between two writes: a stamp identifies a version only while the
/// descriptor it was taken from is held ([`Held`]), which keeps the inode from being reused.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(md: &fs::Metadata) -> Stamp {
        Stamp {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
        }
    }
}

/// The stamp of the file at `path` (a link followed: opening checked where it leads).
fn stamp_of(path: &Path) -> Option<Stamp> {
    fs::metadata(path).ok().map(|md| Stamp::of(&md))
}

/// The stamp of `name` in the directory `root`, as [`stamp_of`].
fn stamp_at(root: &OwnedFd, name: &str) -> Option<Stamp> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a directory descriptor we own, a NUL-terminated name and a buffer of the
    // right type; the buffer is read only when the call succeeded.
    let rc = unsafe { libc::fstatat(root.as_raw_fd(), c.as_ptr(), st.as_mut_ptr(), 0) };
    if rc != 0 {
        return None;
    }
    // SAFETY: fstatat succeeded and filled the buffer.
    let st = unsafe { st.assume_init() };
    // The fields' types differ between targets.
    #[allow(clippy::unnecessary_cast)]
    Some(Stamp {
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
        size: st.st_size as u64,
        mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
    })
}

/// A version of one of the store's own files, by the descriptor it was read through: held
/// open so that no later file can get its inode number while the store lives.
#[derive(Debug)]
pub(super) struct Held {
    stamp: Stamp,
    _file: File,
}

impl Held {
    /// The version `file` is (its status now, taken before its bytes are read).
    pub(super) fn of(file: &File) -> std::io::Result<Held> {
        let md = file.metadata()?;
        Ok(Held {
            stamp: Stamp::of(&md),
            _file: file.try_clone()?,
        })
    }

    /// The file now at `path` (not blocking on a FIFO).
    fn at(path: &Path) -> Option<Held> {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .ok()?;
        Held::of(&file).ok()
    }
}

fn stamp(h: &Option<Held>) -> Option<&Stamp> {
    h.as_ref().map(|h| &h.stamp)
}

/// The directory a store was opened on, and the versions of its metadata files this store
/// last read or wrote.
#[derive(Debug)]
pub(super) struct Writer {
    /// st_dev and st_ino of the directory when the store was opened.
    dir: Option<(u64, u64)>,
    /// `metadata.npkm` and `npkio.json` as last read or written.
    files: Mutex<(Option<Held>, Option<Held>)>,
}

impl Writer {
    /// Records the directory and its metadata files as they are now.
    pub(super) fn observe(dir: &Path) -> Writer {
        let w = Writer::of_files(dir, None, None);
        w.refresh(dir);
        w
    }

    /// Records the directory as it is now and the versions of the metadata files the store
    /// was read from.
    pub(super) fn of_files(dir: &Path, meta: Option<Held>, sidecar: Option<Held>) -> Writer {
        let id = fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()));
        Writer {
            dir: id,
            files: Mutex::new((meta, sidecar)),
        }
    }

    /// Records the metadata files as they are now (call holding the lock, after this store
    /// wrote them).
    pub(super) fn refresh(&self, dir: &Path) {
        let now = (
            Held::at(&dir.join(metadata::FILE_NAME)),
            Held::at(&dir.join(sidecar::FILE_NAME)),
        );
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }

    /// Whether `metadata.npkm` in the directory `root` is still the version this store
    /// read or wrote last: then every file its records name still holds what it held.
    pub(super) fn is_current(&self, root: &OwnedFd) -> bool {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        match stamp(&files.0) {
            Some(seen) => stamp_at(root, metadata::FILE_NAME).as_ref() == Some(seen),
            None => false,
        }
    }

    /// Fails unless `dir` is still the directory the store was opened on, with the metadata
    /// files it last saw.
    fn check(&self, dir: &Path) -> Result<()> {
        let now = fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()));
        if now.is_none() || now != self.dir {
            return Err(Error::new(
                ErrorKind::NotFound,
                "the directory was replaced (or removed) since this store was opened; \
                 reopen it",
            )
            .at(dir));
        }
        let now = (
            stamp_of(&dir.join(metadata::FILE_NAME)),
            stamp_of(&dir.join(sidecar::FILE_NAME)),
        );
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if (now.0.as_ref(), now.1.as_ref()) != (stamp(&files.0), stamp(&files.1)) {
            return Err(Error::new(
                ErrorKind::Busy,
                "another writer changed the store since it was opened; reopen it",
            )
            .at(dir));
        }
        Ok(())
    }
}

/// The message of a read through a store another writer changed since it was opened,
/// whose file (as named by the metadata it read) may hold the newer state.
const CHANGED_UNDER: &str = "another writer changed the store since it was opened, and the \
     array's files may now hold its new state; reopen the store";

/// The message of a read of an array whose state as the store describes it (its dtype and
/// shape) no longer exists: another writer changed it or removed it.
const STATE_GONE: &str = "another writer changed the store since it was opened, and the \
     array is no longer the dtype and shape this store describes (or is gone); reopen the \
     store";

/// The message of a read through a store another writer changed since it was opened, that
/// could not read the array as the store is now because it kept changing.
const KEPT_CHANGING: &str = "another writer changed the store since it was opened, and kept \
     changing it while the array was read as it is now; reopen the store";

/// The error of a read that found the store changing at every try (see
/// `NumPack::read_state`).
pub(super) fn kept_changing(dir: &Path) -> Error {
    Error::new(ErrorKind::Busy, KEPT_CHANGING).at(dir)
}

/// The error of a read through a store whose state is gone: another writer changed it
/// since it was opened, and the file the read needs may hold the newer state.
pub(super) fn changed_under(dir: &Path) -> Error {
    Error::new(ErrorKind::Busy, CHANGED_UNDER).at(dir)
}

/// The error of a read of an array whose state as the store describes it is gone (see
/// `NumPack::read_state`).
pub(super) fn state_gone(dir: &Path) -> Error {
    Error::new(ErrorKind::Busy, STATE_GONE).at(dir)
}

/// Whether `e` is the error of a read through a store that another writer changed since it
/// was opened ([`changed_under`], [`state_gone`], [`kept_changing`]): a fresh open of the store reads it.
pub(crate) fn is_changed_under(e: &Error) -> bool {
    e.kind() == ErrorKind::Busy && [CHANGED_UNDER, STATE_GONE, KEPT_CHANGING].contains(&e.message())
}

/// Whether `path` is a regular file (not followed if a link) owned by this process's user.
fn ours(path: &Path) -> bool {
    match fs::symlink_metadata(path) {
        // SAFETY: geteuid has no preconditions and cannot fail.
        Ok(md) => md.file_type().is_file() && md.uid() == unsafe { libc::geteuid() },
        Err(_) => false,
    }
}

/// In a directory that holds no store yet, removes what a killed `create` left: when every
/// entry is a temporary file of npkio's (its prefix, a regular file of this user), removes
/// them and says so; otherwise (anything else there) touches nothing. Call holding the lock.
pub(super) fn remove_create_leftovers(dir: &Path) -> Result<bool> {
    let mut ours_all = Vec::new();
    for entry in fs::read_dir(dir).ctx(dir, "listing")? {
        let entry = entry.ctx(dir, "listing")?;
        let path = entry.path();
        let named = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TMP_PREFIX));
        if !(named && ours(&path)) {
            return Ok(false);
        }
        ours_all.push(path);
    }
    for path in &ours_all {
        remove_if_exists(path)?;
    }
    Ok(!ours_all.is_empty())
}

/// Removes `path` if it exists.
pub(super) fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, "removing", e)),
    }
}

/// Whether `path` exists (a dangling link counts).
pub(super) fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// A temporary name in `dir` for a link about to be renamed into place.
fn temp_name(dir: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TMP_PREFIX}link-{}-{n}", std::process::id()))
}

/// Gives `from`'s file the name `to` too, replacing whatever `to` was in one rename.
pub(super) fn link_over(dir: &Path, from: &Path, to: &Path) -> Result<()> {
    // Already the same file: nothing to do (a rename between two links of one file does
    // nothing and would leave the temporary link).
    if same_file(from, to) {
        return Ok(());
    }
    let tmp = temp_name(dir);
    remove_if_exists(&tmp)?;
    fs::hard_link(from, &tmp).ctx(&tmp, "linking")?;
    if let Err(e) = fs::rename(&tmp, to) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(to, "renaming a link onto", e));
    }
    Ok(())
}

/// What a publishing step that failed after its rename reports: the change is visible,
/// but syncing the directory failed, so it may not survive a power loss.
pub(super) type Late = Option<Error>;

fn late_sync(dir: &Path, durable: bool) -> Late {
    if !durable {
        return None;
    }
    sync_dir(dir).err()
}

/// The error of a commit whose rename happened but whose directory sync failed.
pub(super) fn published(dir: &Path, e: Error) -> Error {
    Error::new(
        e.kind(),
        format!(
            "the change is published, but syncing the directory failed, so it may not \
             survive a power loss: {e}"
        ),
    )
    .at(dir)
}

/// Writes `dir/name` through a temporary file renamed into place (synced first with
/// `durable`). `Err`: nothing changed. `Ok(Some(_))`: renamed, the directory sync failed.
pub(super) fn replace_file(dir: &Path, name: &str, bytes: &[u8], durable: bool) -> Result<Late> {
    replace_contents(dir, name, bytes, durable, false)?;
    Ok(late_sync(dir, durable))
}

/// Writes `npkio.json`, or removes it when there is nothing to record; as
/// [`replace_file`].
pub(super) fn write_sidecar(dir: &Path, sidecar: &Sidecar, durable: bool) -> Result<Late> {
    if sidecar.is_empty() {
        remove_if_exists(&dir.join(sidecar::FILE_NAME))?;
        Ok(late_sync(dir, durable))
    } else {
        replace_file(dir, sidecar::FILE_NAME, &sidecar.encode(), durable)
    }
}

/// The sidecar holding `old`'s entries and `new`'s, and `old`'s other fields (which no
/// record ties to a generation): valid for either generation's arrays.
pub(super) fn union(old: &Sidecar, new: &Sidecar) -> Sidecar {
    let mut u = old.clone();
    let known: HashSet<&Entry> = old.arrays.iter().collect();
    let added: Vec<Entry> = new
        .arrays
        .iter()
        .filter(|e| !known.contains(e))
        .cloned()
        .collect();
    u.arrays.extend(added);
    u
}

/// The canonical stem of a record's files: its stem without a generation suffix, if npkio
/// could have chosen it.
pub(super) fn canonical_stem(record: &ArrayRecord) -> Option<String> {
    let stem = naming::stem_of(&record.data_file)?;
    let base = naming::base_stem(stem);
    naming::is_npkio_stem(base).then(|| base.to_string())
}

impl NumPack {
    /// Runs one change of the store: takes the directory's lock, checks that the store
    /// still describes what is on disk, removes leftovers of interrupted changes, runs `f`,
    /// and records the metadata files as they are after it.
    pub(super) fn locked<T>(&mut self, f: impl FnOnce(&mut NumPack) -> Result<T>) -> Result<T> {
        // A path like "." or "x/.." has no name of its own to lock by: use the real one.
        let path = match self.dir.file_name() {
            Some(_) => self.dir.clone(),
            None => self.dir.canonicalize().ctx(&self.dir, "resolving")?,
        };
        let _lock = crate::publish::lock_output(&path, true).map_err(|e| e.at(&self.dir))?;
        self.writer.check(&self.dir)?;
        self.remove_leftovers();
        let result = f(self);
        self.writer.refresh(&self.dir);
        // The store reads what it wrote: a newer state kept for reads is not needed now.
        *self.newer.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        *self.changed.get_mut() = false;
        result
    }

    /// Files every array of the store uses now, relative to the directory.
    pub(super) fn live_files(&self) -> HashSet<PathBuf> {
        self.arrays.iter().flat_map(files_of).collect()
    }

    /// Stems every array's files use now.
    pub(super) fn live_stems(&self) -> HashSet<String> {
        self.arrays
            .iter()
            .filter_map(|a| naming::stem_of(&a.record.data_file).map(str::to_string))
            .collect()
    }

    /// A stem for new files of an array whose canonical stem is `canonical`: the canonical
    /// stem itself when no array uses it, else the first free generation of it. Files left
    /// under the stem chosen are removed (no record refers to them).
    pub(super) fn fresh_stem(&self, canonical: &str, also_taken: &[String]) -> Result<String> {
        let taken: HashSet<String> = also_taken.iter().cloned().collect();
        self.fresh_stem_in(&self.live_stems(), canonical, &taken)
    }

    /// [`NumPack::fresh_stem`] with the live stems (`live_stems`) already gathered: a save
    /// of many arrays gathers them once, not once per array.
    pub(super) fn fresh_stem_in(
        &self,
        live: &HashSet<String>,
        canonical: &str,
        also_taken: &HashSet<String>,
    ) -> Result<String> {
        let free = |s: &str| !live.contains(s) && !also_taken.contains(s);
        let mut n = 0u64;
        loop {
            let stem = if n == 0 {
                canonical.to_string()
            } else {
                naming::generation_stem(canonical, n)
            };
            n += 1;
            if !free(&stem) {
                continue;
            }
            let d = self.dir.join(naming::data_file(&stem));
            let b = self.dir.join(naming::bitmap_file(&stem));
            for p in [&d, &b] {
                if exists(p) && ours(p) {
                    remove_if_exists(p)?;
                }
            }
            if !exists(&d) && !exists(&b) {
                return Ok(stem);
            }
            if n > 1000 {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("no free file name for the array's new data (tried {stem:?})"),
                )
                .at(&self.dir));
            }
        }
    }

    /// Writes `npkio.json` valid for both the current generation and `records` (when it
    /// must change), then `metadata.npkm` listing `records`: the commit point. `Err`: not
    /// committed. `Ok`: committed; the sidecar now on disk (for
    /// [`NumPack::prune_sidecar`]) and the error of a failed directory sync after it.
    pub(super) fn commit(
        &self,
        records: Vec<ArrayRecord>,
        new_sidecar: &Sidecar,
    ) -> Result<(Sidecar, Late)> {
        let (_, old_sidecar) = self.snapshot();
        let meta = Metadata {
            total_size: 0,
            arrays: records,
        };
        let encoded = meta.encode();
        let mut both = union(&old_sidecar, new_sidecar);
        if !new_sidecar.same_store_fields(&old_sidecar) {
            // Store-wide fields belong to no record: tie the new ones to the new
            // `metadata.npkm`, so that either file reads with its own.
            both.next = Some(Next {
                for_metadata: sidecar::metadata_digest(&encoded),
                metadata: new_sidecar.metadata.clone(),
                sharding: new_sidecar.sharding.clone(),
                source_header: new_sidecar.source_header.clone(),
            });
        }
        if both != old_sidecar {
            // A failed sync here still leaves a sidecar valid for the old generation.
            if let Some(e) = write_sidecar(&self.dir, &both, self.durable)? {
                return Err(e);
            }
        }
        let late = replace_file(&self.dir, metadata::FILE_NAME, &encoded, self.durable)?;
        // The store reads as the new metadata from here on (its arrays follow at once).
        self.writer.refresh(&self.dir);
        crate::hook::at("numpack:published");
        Ok((both, late.map(|e| published(&self.dir, e))))
    }

    /// After a commit and the store's update to it: writes `npkio.json` with only the live
    /// generation's entries, if `on_disk` holds more. Best effort: extra entries match no
    /// record and are ignored.
    pub(super) fn prune_sidecar(&self, on_disk: &Sidecar) {
        let (_, sc) = self.snapshot();
        if sc != *on_disk {
            let _ = write_sidecar(&self.dir, &sc, self.durable);
        }
        // Nothing else to report: extra entries are harmless.
    }

    /// Removes `files` (relative paths) that no array uses now, and directories they leave
    /// empty. Best effort: what stays is a leftover, removed by the next change.
    pub(super) fn remove_unreferenced(&self, files: Vec<PathBuf>) {
        let live = self.live_files();
        for f in files {
            if live.contains(&f) {
                continue;
            }
            let _ = fs::remove_file(self.dir.join(&f));
            if let Some(parent) = f.parent().filter(|p| !p.as_os_str().is_empty()) {
                let _ = fs::remove_dir(self.dir.join(parent));
            }
        }
    }

    /// Moves the arrays at `indices` that live under a generation stem back to their own
    /// stem, where NumPack 0.7 finds their bitmap. Each step leaves a valid store reading
    /// the same; on an error the arrays stay where they are.
    pub(super) fn canonicalize(&mut self, indices: &[usize]) -> Result<()> {
        let mut plan = Vec::new();
        let live = self.live_stems();
        for &i in indices {
            let a = &self.arrays[i];
            if !matches!(a.storage, Storage::Plain) {
                continue;
            }
            let (Some(stem), Some(canon)) = (
                naming::stem_of(&a.record.data_file),
                canonical_stem(&a.record),
            ) else {
                continue;
            };
            if stem != canon && !live.contains(&canon) {
                plan.push((i, stem.to_string(), canon));
            }
        }
        if plan.is_empty() {
            return Ok(());
        }
        let dir = self.dir.clone();
        // Bitmaps first: NumPack 0.7 reads `deleted_<name>.npkb` whatever the data file.
        for (_, stem, canon) in &plan {
            let from = dir.join(naming::bitmap_file(stem));
            let to = dir.join(naming::bitmap_file(canon));
            if exists(&from) {
                link_over(&dir, &from, &to)?;
            } else {
                remove_if_exists(&to)?;
            }
        }
        for (_, stem, canon) in &plan {
            let from = dir.join(naming::data_file(stem));
            let to = dir.join(naming::data_file(canon));
            // One rename: the plain name is never missing, even for a moment.
            if !same_file(&from, &to) {
                link_over(&dir, &from, &to)?;
            }
        }
        if self.durable {
            sync_dir(&dir)?;
        }
        let mut records: Vec<ArrayRecord> = self.arrays.iter().map(|a| a.record.clone()).collect();
        for (i, _, canon) in &plan {
            records[*i].data_file = naming::data_file(canon);
        }
        let (_, sc) = self.snapshot();
        // The records change only their data file, which sidecar entries do not name.
        let (_, late) = self.commit(records, &sc)?;
        for (i, stem, canon) in plan {
            let a = &mut self.arrays[i];
            a.record.data_file = naming::data_file(&canon);
            if let Some(d) = a.data.take() {
                self.retired.push(*d);
            }
            // Unsynced, the old metadata may come back after a power loss: keep its files
            // (the next change removes them).
            if late.is_none() {
                let _ = fs::remove_file(dir.join(naming::data_file(&stem)));
                let _ = fs::remove_file(dir.join(naming::bitmap_file(&stem)));
            }
        }
        late.map_or(Ok(()), Err)
    }

    /// Removes what interrupted changes left: arrays still under a generation stem are
    /// moved back to their own, then regular files of this user with npkio's names
    /// (`.npkio-tmp-*`, `data_<stem>.npkd`, `deleted_<stem>.npkb`) that no record uses.
    /// Nothing else is touched. Best effort.
    fn remove_leftovers(&mut self) {
        let all: Vec<usize> = (0..self.arrays.len()).collect();
        let _ = self.canonicalize(&all);
        let mut live = self.live_files();
        // NumPack 0.7's bitmap of each array, wherever npkio keeps it.
        live.extend(
            self.arrays
                .iter()
                .map(|a| PathBuf::from(naming::bitmap_file(&a.record.name))),
        );
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(n) = name.to_str() else { continue };
            let stem = n
                .strip_prefix("data_")
                .and_then(|r| r.strip_suffix(".npkd"))
                .or_else(|| {
                    n.strip_prefix("deleted_")
                        .and_then(|r| r.strip_suffix(".npkb"))
                });
            let npkio_name = n.starts_with(TMP_PREFIX)
                || stem.is_some_and(|s| naming::is_npkio_stem(naming::base_stem(s)));
            if !npkio_name || live.contains(Path::new(n)) {
                continue;
            }
            let p = e.path();
            if ours(&p) {
                let _ = fs::remove_file(&p);
            }
        }
    }

    /// The bitmap file of the array at `i`, relative to the directory.
    pub(super) fn bitmap_of(&self, i: usize) -> PathBuf {
        bitmap_path(&self.arrays[i].record)
    }
}
