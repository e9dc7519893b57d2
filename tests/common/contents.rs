//! Test data of the reliability tests: tensors held in memory, containers written from and
//! read back into them, golden old outputs, and checks that an output holds exactly the
//! tensors it should.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use npkio::ArrayInput;
use npkio::{DType, NumPack};

/// A small, fast, seeded random number generator (SplitMix64): the tests print the seed so
/// that a failure can be replayed with `NPKIO_SEED=<seed>`.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The seed from `NPKIO_SEED`, else one from the clock; printed either way.
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("NPKIO_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{test}: seed {seed} (replay with NPKIO_SEED={seed})");
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Reads an environment variable as a number, with a default.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A tensor held in memory: what an output must contain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

/// Name to tensor.
pub type Contents = BTreeMap<String, Expected>;

/// Bytes in which every 4 KiB page is distinct (tensor tag, page number) so that a page
/// written to the wrong place, or not written, cannot pass for the right one.
pub fn pattern(tag: u64, len: usize) -> Vec<u8> {
    let mut v = vec![(tag as u8).wrapping_mul(31).wrapping_add(7); len];
    for (page, chunk) in v.chunks_mut(4096).enumerate() {
        let stamp = (tag << 40) ^ (page as u64).wrapping_mul(0x9E37_79B9) ^ 0x5A5A;
        for (i, b) in stamp.to_le_bytes().iter().enumerate() {
            if let Some(slot) = chunk.get_mut(i) {
                *slot = *b;
            }
        }
        if let Some(last) = chunk.last_mut() {
            *last = page as u8 ^ tag as u8;
        }
    }
    v
}

/// A tensor of `dtype` with about `bytes` bytes (rounded to whole rows of 256 elements).
pub fn tensor(tag: u64, dtype: DType, bytes: usize) -> Expected {
    let item = (dtype.bits() as usize / 8).max(1);
    let row = 256 * item;
    let rows = (bytes / row).max(1);
    Expected {
        dtype,
        shape: vec![rows as u64, 256],
        data: pattern(tag, rows * row),
    }
}

/// Writes `contents` as a SafeTensors file (through a NumPack built in memory, then exported).
pub fn write_safetensors(contents: &Contents, path: &Path) {
    let scratch = path.with_extension("scratch.npk");
    write_numpack(contents, &scratch);
    let r = npkio::to_safetensors_file(&scratch, path, None::<&[&str]>, None, 8 << 20);
    fs::remove_dir_all(&scratch).unwrap();
    r.unwrap();
}

/// Writes `contents` as a new NumPack directory (replacing any).
pub fn write_numpack(contents: &Contents, path: &Path) {
    let inputs: Vec<ArrayInput<'_>> = contents
        .iter()
        .map(|(name, t)| ArrayInput {
            name,
            dtype: t.dtype,
            shape: &t.shape,
            data: &t.data,
        })
        .collect();
    npkio::from_safetensors(&inputs, path, true).unwrap();
}

/// Everything in a NumPack directory, or why it cannot be read.
pub fn read_numpack(path: &Path) -> Result<Contents, String> {
    let np = NumPack::open(path).map_err(|e| e.to_string())?;
    let mut out = Contents::new();
    for name in np.names() {
        let v = np.view(name).map_err(|e| e.to_string())?;
        out.insert(
            name.to_string(),
            Expected {
                dtype: v.dtype,
                shape: v.shape.to_vec(),
                data: v.data.to_vec(),
            },
        );
    }
    Ok(out)
}

/// Everything in a SafeTensors file or a sharded checkpoint, or why it cannot be read.
pub fn read_safetensors(path: &Path) -> Result<Contents, String> {
    let it = npkio::iter_safetensors(path, None::<&[&str]>).map_err(|e| e.to_string())?;
    Ok(it
        .map(|(name, t)| {
            (
                name,
                Expected {
                    dtype: t.dtype(),
                    shape: t.shape().to_vec(),
                    data: t.data().to_vec(),
                },
            )
        })
        .collect())
}

/// Where two contents differ, for an assertion message (never dumps bytes).
pub fn diff(got: &Contents, want: &Contents) -> String {
    let mut out = Vec::new();
    for (n, w) in want {
        match got.get(n) {
            None => out.push(format!("missing {n:?}")),
            Some(g) if g.dtype != w.dtype || g.shape != w.shape => out.push(format!(
                "{n:?}: {} {:?} instead of {} {:?}",
                g.dtype, g.shape, w.dtype, w.shape
            )),
            Some(g) if g.data != w.data => {
                let at = g.data.iter().zip(&w.data).position(|(a, b)| a != b);
                out.push(format!("{n:?}: bytes differ (first at {at:?})"));
            }
            _ => {}
        }
    }
    for n in got.keys().filter(|n| !want.contains_key(*n)) {
        out.push(format!("unexpected {n:?}"));
    }
    out.join("; ")
}

/// `old` with `new` merged in (arrays of the same name replaced).
pub fn merged(old: &Contents, new: &Contents) -> Contents {
    let mut m = old.clone();
    m.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
    m
}

/// Entries of `dir` whose names contain `.npkio-tmp` (the staging files and directories
/// that a finished or cleaned-up conversion must not leave), searched `depth` levels down.
pub fn temporaries(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains("npkio-tmp") {
            found.push(e.path());
        } else if depth > 0 && e.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(temporaries(&e.path(), depth - 1));
        }
    }
    found
}

/// Every file under `path` (a file or a directory) with its bytes, sorted by path: a
/// snapshot to prove an output was not touched.
pub fn snapshot(path: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    fn walk(base: &Path, p: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        let md = fs::symlink_metadata(p).unwrap();
        let rel = p.strip_prefix(base).unwrap().to_path_buf();
        if md.is_dir() {
            out.push((rel, Vec::new()));
            for e in fs::read_dir(p).unwrap() {
                walk(base, &e.unwrap().path(), out);
            }
        } else {
            out.push((rel, fs::read(p).unwrap()));
        }
    }
    if path.exists() {
        walk(path, path, &mut out);
    }
    out.sort();
    out
}

/// Copies a file or a directory tree (real copies, never links: the copy must not share
/// storage with the original that a buggy conversion could write through).
pub fn copy_tree(from: &Path, to: &Path) {
    if fs::metadata(from).unwrap().is_dir() {
        fs::create_dir_all(to).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        fs::copy(from, to).unwrap();
    }
}

/// Removes a file or a directory tree if it exists.
pub fn remove(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).unwrap(),
        Ok(_) => fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

/// The line a child prints after `CHILD-ERROR: `, if any.
pub fn child_error(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.split_once("CHILD-ERROR: ").map(|p| p.1.to_string()))
}

/// What a reliability test converts into: which kind of container, new or over an old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// SafeTensors into an existing NumPack, merging.
    ImportMerge,
    /// SafeTensors into an existing NumPack, replacing it.
    ImportReplace,
    /// SafeTensors into a new NumPack.
    ImportFresh,
    /// NumPack over an existing SafeTensors file.
    ExportReplace,
    /// NumPack to a new SafeTensors file.
    ExportFresh,
    /// NumPack to a new sharded checkpoint directory.
    ShardedFresh,
    /// NumPack to a sharded checkpoint in an existing checkpoint directory.
    ShardedExisting,
}

pub const MODES: [Mode; 7] = [
    Mode::ImportMerge,
    Mode::ImportReplace,
    Mode::ImportFresh,
    Mode::ExportReplace,
    Mode::ExportFresh,
    Mode::ShardedFresh,
    Mode::ShardedExisting,
];

impl Mode {
    /// The output's file name for this mode.
    pub fn output_name(self) -> &'static str {
        match self {
            Mode::ImportMerge | Mode::ImportReplace | Mode::ImportFresh => "out.npk",
            Mode::ExportReplace | Mode::ExportFresh => "out.safetensors",
            Mode::ShardedFresh | Mode::ShardedExisting => "out-ckpt",
        }
    }
}

/// What a conversion test starts from, written in one directory: the source as SafeTensors
/// (`src.safetensors`) and as NumPack (`src.npk`), and the old outputs a conversion may
/// replace or merge into: a NumPack directory (`old.npk`), a SafeTensors file
/// (`old.safetensors`) and a sharded checkpoint (`old-ckpt`, with a `config.json` that
/// every conversion into it must keep).
pub struct Golden {
    pub st_src: PathBuf,
    pub npk_src: PathBuf,
    pub src: Contents,
    /// Bytes of all source tensors.
    pub total: u64,
    pub old_npk: PathBuf,
    pub old_npk_c: Contents,
    pub old_st: PathBuf,
    pub old_st_c: Contents,
    pub old_ckpt: PathBuf,
    pub old_ckpt_c: Contents,
}

impl Golden {
    /// Writes the source and the old outputs (`old`: NumPack, SafeTensors, checkpoint
    /// contents) in `dir`; the old checkpoint has shards of at most `shard_size` bytes.
    pub fn write(dir: &Path, src: Contents, old: [Contents; 3], shard_size: u64) -> Golden {
        let [old_npk_c, old_st_c, old_ckpt_c] = old;
        let g = Golden {
            total: src.values().map(|t| t.data.len() as u64).sum(),
            src,
            old_npk_c,
            old_st_c,
            old_ckpt_c,
            ..Golden::at(dir, 0)
        };
        write_safetensors(&g.src, &g.st_src);
        write_numpack(&g.src, &g.npk_src);
        write_numpack(&g.old_npk_c, &g.old_npk);
        write_safetensors(&g.old_st_c, &g.old_st);
        let scratch = dir.join("old-ckpt.npk");
        write_numpack(&g.old_ckpt_c, &scratch);
        let mut opts = npkio::Options::default();
        opts.max_shard_size = Some(shard_size);
        npkio::to_safetensors_file_with(&scratch, &g.old_ckpt, None::<&[&str]>, None, &opts)
            .unwrap();
        fs::write(g.old_ckpt.join("config.json"), b"{\"kept\": true}").unwrap();
        assert_eq!(read_safetensors(&g.old_ckpt).unwrap(), g.old_ckpt_c);
        g
    }

    /// The paths `write` uses in `dir`, without contents (for a child process).
    pub fn at(dir: &Path, total: u64) -> Golden {
        Golden {
            st_src: dir.join("src.safetensors"),
            npk_src: dir.join("src.npk"),
            src: Contents::new(),
            total,
            old_npk: dir.join("old.npk"),
            old_npk_c: Contents::new(),
            old_st: dir.join("old.safetensors"),
            old_st_c: Contents::new(),
            old_ckpt: dir.join("old-ckpt"),
            old_ckpt_c: Contents::new(),
        }
    }

    /// The old output a conversion in `mode` starts from, and what it holds.
    pub fn old(&self, mode: Mode) -> Option<(&Path, &Contents)> {
        match mode {
            Mode::ImportMerge | Mode::ImportReplace => Some((&self.old_npk, &self.old_npk_c)),
            Mode::ExportReplace => Some((&self.old_st, &self.old_st_c)),
            Mode::ShardedExisting => Some((&self.old_ckpt, &self.old_ckpt_c)),
            _ => None,
        }
    }

    /// What the output holds after a conversion in `mode`.
    pub fn new_contents(&self, mode: Mode) -> Contents {
        match mode {
            Mode::ImportMerge => merged(&self.old_npk_c, &self.src),
            _ => self.src.clone(),
        }
    }
}
