//! `npkio verify`: two containers of either format compared tensor by tensor.
//!
//! Bytes are compared by streaming both sides through bounded buffers with positioned reads
//! (`pread`), never by mapping them: memory stays at two chunks however large the tensors,
//! an array that NumPack stores in segments or with deleted rows is read in place rather
//! than gathered, and a file truncated by another process mid-run is an I/O error rather
//! than a `SIGBUS`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::BinaryBytes;
use npkio::{Error, Result};

use crate::container::{Container, Entry};
use crate::progress::{rate_summary, Progress};
use crate::{print_stdout, Outcome, VerifyArgs};

/// Bytes read from each side at a time.
const CHUNK: usize = 4 << 20;

/// Runs `npkio verify`.
pub fn run(args: &VerifyArgs) -> Outcome {
    let a = Container::open(&args.a)?;
    let b = Container::open(&args.b)?;
    let a_by_name: BTreeMap<&str, &Entry> =
        a.entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let b_by_name: BTreeMap<&str, &Entry> =
        b.entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let names: BTreeSet<&str> = a_by_name.keys().chain(b_by_name.keys()).copied().collect();

    // Bytes to compare: tensors on both sides whose dtype and shape agree.
    let comparable = |ea: &Entry, eb: &Entry| ea.dtype == eb.dtype && ea.shape == eb.shape;
    let total = names
        .iter()
        .filter_map(|n| Some((a_by_name.get(n)?, b_by_name.get(n)?)))
        .filter(|(ea, eb)| comparable(ea, eb))
        .fold(0u64, |sum, (ea, _)| sum.saturating_add(ea.bytes));

    let progress = Progress::new(total, "verifying", args.quiet);
    let mut diffs: Vec<String> = Vec::new();
    let mut reader = Reader::default();
    for name in &names {
        match (a_by_name.get(name), b_by_name.get(name)) {
            (Some(_), None) => diffs.push(format!("only in A: {name:?}")),
            (None, Some(_)) => diffs.push(format!("only in B: {name:?}")),
            (Some(ea), Some(eb)) => {
                if ea.dtype != eb.dtype {
                    diffs.push(format!(
                        "tensor {name:?}: dtype differs: {} vs {}",
                        ea.dtype, eb.dtype
                    ));
                }
                if ea.shape != eb.shape {
                    diffs.push(format!(
                        "tensor {name:?}: shape differs: {:?} vs {:?}",
                        ea.shape, eb.shape
                    ));
                }
                if comparable(ea, eb) {
                    match reader.first_difference(ea, eb, &progress) {
                        Ok(None) => {}
                        Ok(Some(at)) => diffs.push(format!(
                            "tensor {name:?}: bytes differ (first at byte {at})"
                        )),
                        Err(e) => {
                            progress.clear();
                            return Err(e.into());
                        }
                    }
                }
            }
            (None, None) => {}
        }
    }
    if args.metadata {
        compare_metadata(a.metadata.as_deref(), b.metadata.as_deref(), &mut diffs);
    }
    let count = names.len();
    progress.finish(|elapsed| format!("verified {}", rate_summary(total, elapsed)));

    let mut out = String::new();
    let _ = writeln!(out, "A: {} ({})", a.path.display(), a.describe());
    let _ = writeln!(out, "B: {} ({})", b.path.display(), b.describe());
    for d in &diffs {
        let _ = writeln!(out, "{d}");
    }
    let code = if diffs.is_empty() {
        let s = if count == 1 { "" } else { "s" };
        let with = if args.metadata { " and metadata" } else { "" };
        let _ = writeln!(
            out,
            "equal: {count} tensor{s}{with}, {} compared",
            BinaryBytes(total)
        );
        ExitCode::SUCCESS
    } else {
        let s = if diffs.len() == 1 { "" } else { "s" };
        let _ = writeln!(out, "differ: {} difference{s}", diffs.len());
        ExitCode::from(1)
    };
    print_stdout(&out)?;
    Ok(code)
}

/// Compares `__metadata__` as key-value maps: order does not matter, and no metadata is the
/// same as empty metadata.
fn compare_metadata(
    a: Option<&[(String, String)]>,
    b: Option<&[(String, String)]>,
    diffs: &mut Vec<String>,
) {
    let a: BTreeMap<&str, &str> = a
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let b: BTreeMap<&str, &str> = b
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let keys: BTreeSet<&str> = a.keys().chain(b.keys()).copied().collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(_), None) => diffs.push(format!("metadata: only in A: {k:?}")),
            (None, Some(_)) => diffs.push(format!("metadata: only in B: {k:?}")),
            (Some(va), Some(vb)) if va != vb => {
                diffs.push(format!("metadata {k:?} differs: {va:?} vs {vb:?}"))
            }
            _ => {}
        }
    }
}

/// Streams tensor bytes through two bounded buffers, keeping files open across tensors.
#[derive(Default)]
struct Reader {
    files: HashMap<PathBuf, File>,
    buf_a: Vec<u8>,
    buf_b: Vec<u8>,
}

impl Reader {
    /// The offset of the first byte where the two tensors differ, `None` when equal. Both
    /// have the same byte length (same dtype and shape).
    ///
    /// Files are closed afterwards, so that a directory of many arrays never holds more
    /// than a tensor's files open at once.
    fn first_difference(
        &mut self,
        a: &Entry,
        b: &Entry,
        progress: &Progress,
    ) -> Result<Option<u64>> {
        let result = self.compare(a, b, progress);
        self.files.clear();
        result
    }

    fn compare(&mut self, a: &Entry, b: &Entry, progress: &Progress) -> Result<Option<u64>> {
        let len = a.bytes.min(b.bytes);
        let mut ca = Cursor::new(&a.extents);
        let mut cb = Cursor::new(&b.extents);
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from(len - done).map_or(CHUNK, |r| r.min(CHUNK));
            self.buf_a.resize(n, 0);
            self.buf_b.resize(n, 0);
            ca.read(&mut self.files, &mut self.buf_a)
                .map_err(|e| e.array(a.name.clone()))?;
            cb.read(&mut self.files, &mut self.buf_b)
                .map_err(|e| e.array(b.name.clone()))?;
            if self.buf_a != self.buf_b {
                let i = self
                    .buf_a
                    .iter()
                    .zip(&self.buf_b)
                    .position(|(x, y)| x != y)
                    .unwrap_or(0);
                progress.inc(len - done);
                return Ok(Some(done + i as u64));
            }
            done += n as u64;
            progress.inc(n as u64);
        }
        Ok(None)
    }
}

/// A read position in a tensor's extents.
struct Cursor<'a> {
    extents: &'a [(PathBuf, u64, u64)],
    index: usize,
    within: u64,
}

impl<'a> Cursor<'a> {
    fn new(extents: &'a [(PathBuf, u64, u64)]) -> Self {
        Cursor {
            extents,
            index: 0,
            within: 0,
        }
    }

    /// Fills `buf` with the next bytes, across extents; running out is an error.
    fn read(&mut self, files: &mut HashMap<PathBuf, File>, buf: &mut [u8]) -> Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            let Some((path, offset, len)) = self.extents.get(self.index) else {
                return Err(Error::malformed(
                    self.extents.last().map_or(Path::new(""), |e| e.0.as_path()),
                    "tensor data ends before its shape says",
                ));
            };
            let left = len - self.within;
            if left == 0 {
                self.index += 1;
                self.within = 0;
                continue;
            }
            let n = usize::try_from(left).map_or(buf.len() - filled, |l| l.min(buf.len() - filled));
            let file = match files.get(path) {
                Some(f) => f,
                None => {
                    let f = File::open(path).map_err(|e| Error::io(path, "opening", e))?;
                    files.entry(path.clone()).or_insert(f)
                }
            };
            file.read_exact_at(&mut buf[filled..filled + n], offset + self.within)
                .map_err(|e| Error::io(path, "reading", e))?;
            filled += n;
            self.within += n as u64;
        }
        Ok(())
    }
}
