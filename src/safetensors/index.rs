//! Sharded checkpoints: `model.safetensors.index.json` and its shards, read as one
//! checkpoint, and the `save_pretrained` layout for writing them.
//!
//! An index names, for every tensor, the shard file that holds it:
//!
//! ```json
//! { "metadata": {"total_size": 123456},
//!   "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors", ...} }
//! ```
//!
//! Opening checks it against the shards: every shard present and valid, every tensor in
//! exactly the shard the index names, no tensor outside the index, and `total_size` equal
//! to the sum of the tensors' byte lengths.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::names;
use crate::safetensors::reader::{SafeTensorsFile, Tensor, TensorInfo};
use crate::sys::paths::checked_relative;
use crate::view::TensorView;

/// The usual index file name.
pub const INDEX_NAME: &str = "model.safetensors.index.json";
/// Largest index npkio reads.
const MAX_INDEX_LEN: u64 = 256 << 20;

/// A single file or a sharded set, read as one checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    shards: Vec<SafeTensorsFile>,
    /// Shard file names as the index writes them (empty for a single file).
    shard_names: Vec<String>,
    /// (shard, position in shard) of every tensor, shard by shard in file order.
    tensors: Vec<(usize, usize)>,
    /// For a sharded checkpoint, tensor indices sorted by name (a single file looks names up
    /// in its own shard).
    by_name: Vec<usize>,
    /// The index file's bytes, for a sharded checkpoint.
    index_text: Option<String>,
}

/// The single-file model name `save_pretrained` writes when everything fits in one file.
pub const SINGLE_FILE_NAME: &str = "model.safetensors";

/// The `model.safetensors` inside `path` when `path` is a model directory holding one and
/// no `*.safetensors.index.json` (an index, when there is one, names the checkpoint).
/// `None` for anything else.
pub fn model_file_in(path: &Path) -> Result<Option<PathBuf>> {
    if !path.is_dir() {
        return Ok(None);
    }
    let file = path.join(SINGLE_FILE_NAME);
    if !file.is_file() {
        return Ok(None);
    }
    let has_index = std::fs::read_dir(path)
        .ctx(path, "listing")?
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(".safetensors.index.json")
        });
    Ok((!has_index).then_some(file))
}

/// Where an index is: `path` itself when it is a file ending in `.json`, or the index
/// inside `path` when it is a directory. `None` for anything else (a single file).
pub fn find_index(path: &Path) -> Result<Option<PathBuf>> {
    if path.is_dir() {
        let standard = path.join(INDEX_NAME);
        if standard.is_file() {
            return Ok(Some(standard));
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)
            .ctx(path, "listing")?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".safetensors.index.json"))
            .collect();
        return match found.len() {
            1 => Ok(found.pop()),
            0 => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "is a directory without a {INDEX_NAME}; give a .safetensors file or an index"
                ),
            )
            .at(path)),
            _ => Err(Error::new(
                ErrorKind::InvalidArgument,
                "holds several *.safetensors.index.json; name one",
            )
            .at(path)),
        };
    }
    Ok(path
        .to_string_lossy()
        .ends_with(".json")
        .then(|| path.to_path_buf()))
}

/// Whether the directory `path` holds a temporary file of npkio's (`.npkio-tmp-*`): the
/// new index of a checkpoint being written into it, between the removal of the old index
/// and the renaming of the new one.
fn writing_index(path: &Path) -> bool {
    path.is_dir()
        && std::fs::read_dir(path).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().as_encoded_bytes().starts_with(b".npkio-tmp-"))
        })
}

/// How many times opening a sharded checkpoint starts again when the checkpoint changed
/// under it, and the first pause between two tries (doubled each time, at most
/// [`MAX_PAUSE_MS`]): about a second in all, enough for a writer to rename its shards in.
const OPEN_TRIES: u32 = 12;
const FIRST_PAUSE_MS: u64 = 1;
const MAX_PAUSE_MS: u64 = 200;

/// One try at opening a sharded checkpoint.
enum Attempt {
    /// The index read is still the one at its path after every shard was opened: this is
    /// the result (a checkpoint, or an error about that checkpoint).
    Done(Result<Checkpoint>),
    /// The index was replaced or removed meanwhile (a conversion is writing the
    /// checkpoint): whatever was read may mix two checkpoints.
    Changed,
}

impl Checkpoint {
    /// Opens a SafeTensors file, an index file, or a directory holding an index.
    ///
    /// A sharded checkpoint is opened consistently: the index is read, every shard opened
    /// and checked against it, and then its path must still name the very index file read
    /// (its descriptor held open meanwhile, so that its inode cannot be reused; same device
    /// and inode). npkio replaces a checkpoint by removing its index first and renaming the
    /// new index in last, so a shard replaced while the checkpoint was being opened always
    /// shows as a changed index. Then the open starts again, up to 12 times
    /// (about a second), and fails with an error of kind [`ErrorKind::Busy`] ("the
    /// checkpoint changed while being opened"): the tensors read are the old checkpoint's
    /// or the new one's, never a mix.
    ///
    /// A model directory holding `model.safetensors` and no index opens that file.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let model_file = model_file_in(path)?;
        let path = model_file.as_deref().unwrap_or(path);
        let mut pause = FIRST_PAUSE_MS;
        for attempt in 0..OPEN_TRIES {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(pause));
                pause = (pause * 2).min(MAX_PAUSE_MS);
            }
            let index = match find_index(path) {
                Ok(Some(index)) => index,
                Ok(None) => return Self::open_single(path),
                // Between the removal of the old index and the renaming of the new one, a
                // directory being written by npkio holds the new index under a temporary
                // name.
                Err(e) if writing_index(path) => {
                    if attempt + 1 == OPEN_TRIES {
                        return Err(e);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            match Self::try_open_index(&index, path.is_dir(), attempt) {
                Attempt::Done(result) => return result,
                Attempt::Changed => {}
            }
        }
        Err(Error::new(
            ErrorKind::Busy,
            "the checkpoint changed while being opened (a conversion is writing it); open it \
             again when it is done",
        )
        .at(path))
    }

    fn open_single(path: &Path) -> Result<Checkpoint> {
        let f = SafeTensorsFile::open(path)?;
        let tensors: Vec<(usize, usize)> = (0..f.len()).map(|i| (0, i)).collect();
        Ok(Checkpoint {
            path: path.to_path_buf(),
            shards: vec![f],
            shard_names: Vec::new(),
            tensors,
            by_name: Vec::new(),
            index_text: None,
        })
    }

    /// Opens the checkpoint of `index`, then checks that `index` still names the index file
    /// read. `found` says the index was found in a directory a moment ago (so a missing one
    /// was just removed).
    fn try_open_index(index: &Path, found: bool, attempt: u32) -> Attempt {
        let opened = match crate::sys::safe_open::open_regular(index, "index") {
            Ok(o) => o,
            Err(e) if found && e.io_kind() == std::io::ErrorKind::NotFound => {
                return Attempt::Changed
            }
            Err(e) => return Attempt::Done(Err(e)),
        };
        // Held until the check below, so that the index's inode is not reused meanwhile.
        let read = opened
            .file
            .metadata()
            .ctx(index, "inspecting")
            .and_then(|md| {
                let held = opened.file.try_clone().ctx(index, "opening")?;
                Ok((held, (md.dev(), md.ino())))
            });
        let (_held, id) = match read {
            Ok(r) => r,
            Err(e) => return Attempt::Done(Err(e)),
        };
        let result = Self::open_index(index, opened, attempt);
        match std::fs::metadata(index) {
            Ok(now) if (now.dev(), now.ino()) == id => Attempt::Done(result),
            _ => Attempt::Changed,
        }
    }

    fn open_index(
        index: &Path,
        opened: crate::sys::safe_open::Opened,
        #[allow(unused_variables)] attempt: u32,
    ) -> Result<Checkpoint> {
        // An open shard holds no descriptor (see `SafeTensorsFile`): any number of shards
        // opens under any open-file limit.
        // Opened without blocking, a regular file, its length checked before reading.
        if opened.len > MAX_INDEX_LEN {
            return Err(Error::malformed(
                index,
                format!("index of {} bytes is too large", opened.len),
            ));
        }
        let bytes = crate::sys::safe_open::read_to_vec(opened, MAX_INDEX_LEN, "index")?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::malformed(index, "index is not valid UTF-8"))?;
        let parsed = parse_index(&text).map_err(|m| Error::malformed(index, m))?;
        #[cfg(test)]
        tests::hook(attempt, tests::Stage::IndexRead);
        let dir = index.parent().unwrap_or(Path::new("."));
        // Shards in name order (model-00001-of-00002 before model-00002-of-00002).
        let shard_names: Vec<String> = {
            let mut v: Vec<String> = parsed.weight_map.values().cloned().collect();
            v.sort();
            v.dedup();
            v
        };
        let mut shards = Vec::with_capacity(shard_names.len());
        for name in &shard_names {
            let rel = checked_relative(name)
                .ok()
                .filter(|r| r.components().count() == 1)
                .ok_or_else(|| {
                    Error::malformed(
                        index,
                        format!("shard name {name:?} is not a file name in the index's directory"),
                    )
                })?;
            let shard = SafeTensorsFile::open_inside(dir, &rel.to_string_lossy()).map_err(|e| {
                if e.kind() == ErrorKind::NotFound {
                    Error::malformed(
                        index,
                        format!("shard {name:?} named in the index is missing"),
                    )
                } else {
                    e
                }
            })?;
            shards.push(shard);
        }
        let shard_of: HashMap<&str, usize> = shard_names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut tensors = Vec::new();
        let mut total = 0u64;
        for (s, f) in shards.iter().enumerate() {
            for (pos, t) in f.tensors().enumerate() {
                match parsed.weight_map.get(&t.name) {
                    None => {
                        return Err(Error::malformed(
                            index,
                            format!(
                                "shard {:?} holds a tensor the index does not list",
                                shard_names[s]
                            ),
                        )
                        .array(t.name.clone()))
                    }
                    Some(named) if shard_of[named.as_str()] != s => {
                        return Err(Error::malformed(
                            index,
                            format!(
                                "the index puts the tensor in {named:?} but it is in {:?}",
                                shard_names[s]
                            ),
                        )
                        .array(t.name.clone()))
                    }
                    Some(_) => {}
                }
                tensors.push((s, pos));
                total += t.len();
            }
        }
        #[cfg(test)]
        tests::hook(attempt, tests::Stage::ShardsOpened);
        let name_of = |i: usize| {
            let (s, p) = tensors[i];
            shards[s]
                .tensor_info(p)
                .expect("valid position")
                .name
                .as_str()
        };
        let mut by_name: Vec<usize> = (0..tensors.len()).collect();
        by_name.sort_unstable_by(|&a, &b| name_of(a).cmp(name_of(b)));
        if let Some(w) = by_name.windows(2).find(|w| name_of(w[0]) == name_of(w[1])) {
            return Err(Error::malformed(index, "tensor found in two shards").array(name_of(w[0])));
        }
        for (name, shard) in &parsed.weight_map {
            if by_name
                .binary_search_by(|&i| name_of(i).cmp(name.as_str()))
                .is_err()
            {
                return Err(Error::malformed(
                    index,
                    format!("the index puts the tensor in {shard:?} but it is not there"),
                )
                .array(name.clone()));
            }
        }
        parsed.check_total_size(total, index)?;
        Ok(Checkpoint {
            path: index.to_path_buf(),
            shards,
            shard_names,
            tensors,
            by_name,
            index_text: Some(text),
        })
    }

    /// The path opened (the index, for a sharded checkpoint).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this is a sharded checkpoint.
    pub fn is_sharded(&self) -> bool {
        self.index_text.is_some()
    }

    /// The shard files, in name order (one for a single file).
    pub fn shards(&self) -> &[SafeTensorsFile] {
        &self.shards
    }

    /// The shard files, taken out of the checkpoint.
    pub(crate) fn into_shards(self) -> Vec<SafeTensorsFile> {
        self.shards
    }

    /// The shard names as the index spells them (empty for a single file).
    pub fn shard_names(&self) -> &[String] {
        &self.shard_names
    }

    /// The index file's text, for a sharded checkpoint.
    pub fn index_text(&self) -> Option<&str> {
        self.index_text.as_deref()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// (shard, position) of the `i`-th tensor.
    pub fn location(&self, i: usize) -> (usize, usize) {
        self.tensors[i]
    }

    /// The `i`-th tensor's header entry (shard by shard, file order within each).
    pub fn info(&self, i: usize) -> &TensorInfo {
        let (s, p) = self.tensors[i];
        self.shards[s].tensor_info(p).expect("valid position")
    }

    /// All header entries in order.
    pub fn infos(&self) -> impl Iterator<Item = &TensorInfo> {
        self.shards.iter().flat_map(|s| s.tensors())
    }

    /// A borrowed view of the `i`-th tensor.
    pub fn view(&self, i: usize) -> TensorView<'_> {
        let (s, p) = self.tensors[i];
        self.shards[s].view(p).expect("valid position")
    }

    /// An owned zero-copy tensor.
    pub fn tensor(&self, i: usize) -> Tensor {
        let (s, p) = self.tensors[i];
        self.shards[s].tensor(p).expect("valid position")
    }

    /// The `__metadata__` of every shard, in shard order.
    pub fn shard_metadata(&self) -> Vec<Option<Vec<(String, String)>>> {
        self.shards
            .iter()
            .map(|s| s.metadata().map(<[_]>::to_vec))
            .collect()
    }

    /// The checkpoint's `__metadata__`: the file's, or for shards the first shard's (shards
    /// written by `save_pretrained` all carry the same).
    pub fn metadata(&self) -> Option<&[(String, String)]> {
        self.shards.first().and_then(|s| s.metadata())
    }

    /// The index of the tensor named `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        if self.index_text.is_none() {
            return self.shards.first()?.position(name);
        }
        self.by_name
            .binary_search_by(|&i| self.info(i).name.as_str().cmp(name))
            .ok()
            .map(|k| self.by_name[k])
    }

    /// Tensor indices for `keys` (all, in order, when `None`); an unknown key is an error
    /// naming it and listing some that exist.
    pub fn select<S: AsRef<str>>(&self, keys: Option<&[S]>) -> Result<Vec<usize>> {
        let Some(keys) = keys else {
            return Ok((0..self.tensors.len()).collect());
        };
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let k = k.as_ref();
            let i = self.find(k).ok_or_else(|| {
                let names: Vec<&str> = self.infos().map(|t| t.name.as_str()).collect();
                names::not_found("tensor", k, &names, &self.path)
            })?;
            if seen.insert(i) {
                out.push(i);
            }
        }
        Ok(out)
    }
}

pub(crate) struct ParsedIndex {
    pub(crate) total_size: Option<u64>,
    pub(crate) weight_map: BTreeMap<String, String>,
}

impl ParsedIndex {
    /// Checks `metadata.total_size`, when the index gives one, against the bytes the
    /// shards' tensors hold (`index` names the index in the error).
    pub(crate) fn check_total_size(&self, total: u64, index: &Path) -> Result<()> {
        match self.total_size {
            Some(declared) if declared != total => Err(Error::malformed(
                index,
                format!("metadata.total_size is {declared} but the tensors hold {total} bytes"),
            )),
            _ => Ok(()),
        }
    }
}

pub(crate) fn parse_index(text: &str) -> std::result::Result<ParsedIndex, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("index is not valid JSON: {e}"))?;
    let obj = v.as_object().ok_or("index is not a JSON object")?;
    let wm = obj
        .get("weight_map")
        .and_then(|w| w.as_object())
        .ok_or("index has no \"weight_map\" object")?;
    let mut weight_map = BTreeMap::new();
    for (k, v) in wm {
        let shard = v
            .as_str()
            .ok_or_else(|| format!("weight_map entry {k:?} is not a file name"))?;
        weight_map.insert(k.clone(), shard.to_string());
    }
    let total_size = match obj.get("metadata").and_then(|m| m.get("total_size")) {
        None => None,
        Some(t) => Some(
            t.as_u64()
                .or_else(|| {
                    t.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                        .map(|f| f as u64)
                })
                .ok_or("metadata.total_size is not a byte count")?,
        ),
    };
    Ok(ParsedIndex {
        total_size,
        weight_map,
    })
}

/// How `save_pretrained` splits tensors into shards of at most `max_shard_size` bytes:
/// tensors in order; one larger than the limit goes alone into a shard of its own (placed
/// before the shard being filled); otherwise a tensor that would take the current shard
/// past the limit starts a new one. Returns lists of input indices.
pub fn split_into_shards(sizes: &[u64], max_shard_size: u64) -> Vec<Vec<usize>> {
    let mut shards = Vec::new();
    let mut current = Vec::new();
    let mut current_size = 0u64;
    for (i, &size) in sizes.iter().enumerate() {
        if size > max_shard_size {
            shards.push(vec![i]);
            continue;
        }
        if current_size + size > max_shard_size {
            shards.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current.push(i);
        current_size += size;
    }
    if !current.is_empty() {
        shards.push(current);
    }
    shards
}

/// Shard file name `model-0000k-of-0000n.safetensors` (1-based `k`).
pub fn shard_file_name(k: usize, n: usize) -> String {
    format!("model-{k:05}-of-{n:05}.safetensors")
}

/// The index JSON for a shard layout, formatted as `save_pretrained` does (2-space indent,
/// sorted keys, trailing newline), with `total_parameters` (the tensors' element count,
/// which `save_pretrained` writes as the model's parameter count) when given.
pub fn index_json(
    total_size: u64,
    total_parameters: Option<u64>,
    weight_map: &BTreeMap<String, String>,
) -> String {
    let mut wm = serde_json::Map::new();
    for (k, v) in weight_map {
        wm.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    let mut meta = serde_json::Map::new();
    // In sorted order, as Python's `json.dumps(sort_keys=True)` writes them.
    if let Some(n) = total_parameters {
        meta.insert("total_parameters".into(), n.into());
    }
    meta.insert("total_size".into(), total_size.into());
    let mut root = serde_json::Map::new();
    root.insert("metadata".into(), serde_json::Value::Object(meta));
    root.insert("weight_map".into(), serde_json::Value::Object(wm));
    let mut s =
        serde_json::to_string_pretty(&serde_json::Value::Object(root)).expect("JSON serializes");
    s.push('\n');
    s
}

/// Whether two index texts say the same thing (same total size and weight map).
pub fn same_index(a: &str, b: &str) -> bool {
    match (parse_index(a), parse_index(b)) {
        (Ok(x), Ok(y)) => x.total_size == y.total_size && x.weight_map == y.weight_map,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::fs;

    /// Where [`hook`] is called while a checkpoint opens.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(super) enum Stage {
        /// The index was read; no shard is open yet.
        IndexRead,
        /// Every shard was opened; nothing checked yet.
        ShardsOpened,
    }

    type Hook = Box<dyn FnMut(u32, Stage)>;

    thread_local! {
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    /// Runs this thread's hook, if any, with the try's number and the stage.
    pub(super) fn hook(attempt: u32, stage: Stage) {
        HOOK.with_borrow_mut(|h| {
            if let Some(h) = h {
                h(attempt, stage);
            }
        });
    }

    /// A SafeTensors file of one U8 tensor `name` of four bytes `value`.
    fn shard(name: &str, value: u8) -> Vec<u8> {
        let mut header =
            format!(r#"{{"{name}":{{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}}}"#);
        while header.len() % 8 != 0 {
            header.push(' ');
        }
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(&[value; 4]);
        b
    }

    /// A checkpoint of tensors `a` and `b`, each in a shard of its own, all bytes `value`:
    /// written into `dir` (`prefix` "") or beside, as the temporary files a conversion
    /// renames in (`prefix` "new-").
    fn write_checkpoint(dir: &Path, prefix: &str, value: u8) {
        let names = [shard_file_name(1, 2), shard_file_name(2, 2)];
        let mut map = BTreeMap::new();
        for (t, n) in ["a", "b"].iter().zip(&names) {
            fs::write(dir.join(format!("{prefix}{n}")), shard(t, value)).unwrap();
            map.insert(t.to_string(), n.clone());
        }
        fs::write(
            dir.join(format!("{prefix}{INDEX_NAME}")),
            index_json(8, None, &map),
        )
        .unwrap();
    }

    /// The value of every tensor of a checkpoint.
    fn values(c: &Checkpoint) -> Vec<u8> {
        (0..c.len()).map(|i| c.view(i).data[0]).collect()
    }

    /// What an export into an existing directory does, step `k` of it: remove the old
    /// index (0), rename the first shard in (1), the second (2), the index (3).
    fn export_step(dir: &Path, k: usize) {
        let new = |n: &str| dir.join(format!("new-{n}"));
        match k {
            0 => fs::remove_file(dir.join(INDEX_NAME)).unwrap(),
            1 | 2 => {
                let n = shard_file_name(k, 2);
                fs::rename(new(&n), dir.join(&n)).unwrap();
            }
            _ => fs::rename(new(INDEX_NAME), dir.join(INDEX_NAME)).unwrap(),
        }
    }

    /// A checkpoint re-exported while it opens: the index read, then the old index removed
    /// and one shard replaced before the shards are opened, the rest of the export done
    /// before the check. The open must start again and give the new checkpoint whole,
    /// never the first shard's new tensor with the second's old one.
    #[test]
    fn a_checkpoint_replaced_while_it_opens_is_opened_again_never_mixed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        write_checkpoint(&dir, "", 1);
        write_checkpoint(&dir, "new-", 2);
        let d = dir.clone();
        HOOK.set(Some(Box::new(move |attempt, stage| {
            if attempt > 0 {
                return;
            }
            match stage {
                Stage::IndexRead => (0..2).for_each(|k| export_step(&d, k)),
                Stage::ShardsOpened => (2..4).for_each(|k| export_step(&d, k)),
            }
        })));
        let opened = Checkpoint::open(&dir);
        HOOK.set(None);
        assert_eq!(values(&opened.unwrap()), [2, 2]);
    }

    /// An export that stops between replacing a shard and renaming its index in (as a
    /// killed one does): every try sees a changed or missing index, and the open fails
    /// after a bounded number of tries instead of returning a mix.
    #[test]
    fn a_checkpoint_left_half_replaced_is_an_error_never_a_mix() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        write_checkpoint(&dir, "", 1);
        write_checkpoint(&dir, "new-", 2);
        // The new index as an export keeps it until the end.
        fs::rename(
            dir.join(format!("new-{INDEX_NAME}")),
            dir.join(".npkio-tmp-index"),
        )
        .unwrap();
        let d = dir.clone();
        HOOK.set(Some(Box::new(move |attempt, stage| {
            if attempt == 0 && stage == Stage::IndexRead {
                (0..2).for_each(|k| export_step(&d, k));
            }
        })));
        let opened = Checkpoint::open(&dir);
        HOOK.set(None);
        let e = opened.map(|c| values(&c)).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::Busy | ErrorKind::InvalidArgument),
            "{e}"
        );
        // Given the index itself, the same: the index read is gone.
        write_checkpoint(&dir, "", 1);
        write_checkpoint(&dir, "new-", 2);
        let d = dir.clone();
        HOOK.set(Some(Box::new(move |attempt, stage| {
            if stage == Stage::IndexRead {
                // Each try sees the index replaced by another copy of itself.
                let text = fs::read(d.join(INDEX_NAME)).unwrap();
                fs::remove_file(d.join(INDEX_NAME)).unwrap();
                fs::write(d.join(INDEX_NAME), text).unwrap();
                if attempt == 0 {
                    export_step(&d, 1);
                }
            }
        })));
        let opened = Checkpoint::open(dir.join(INDEX_NAME));
        HOOK.set(None);
        let e = opened.map(|c| values(&c)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
        assert!(e.to_string().contains("changed while being opened"), "{e}");
    }

    #[test]
    fn save_pretrained_layout() {
        assert_eq!(
            split_into_shards(&[160, 32, 160, 32], 200),
            vec![vec![0, 1], vec![2, 3]]
        );
        // A tensor over the limit goes alone, before the shard being filled.
        assert_eq!(
            split_into_shards(&[10, 500, 10, 100], 100),
            vec![vec![1], vec![0, 2], vec![3]]
        );
        assert_eq!(split_into_shards(&[], 100), Vec::<Vec<usize>>::new());
        assert_eq!(shard_file_name(2, 13), "model-00002-of-00013.safetensors");
    }
}
