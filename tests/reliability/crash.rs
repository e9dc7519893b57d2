//! Crash safety: a conversion killed with SIGKILL at any moment leaves its output either
//! exactly as it was (or absent, when there was none) or exactly the complete new result,
//! verified tensor by tensor; and the next conversion to the same output removes whatever
//! the killed one left behind.
//!
//! Each conversion runs in a child process (this test binary, re-executed) that the test
//! kills with a delay drawn from a seeded generator (the seed is printed; replay with
//! `NPKIO_SEED`): mostly a delay after the child says it is starting the conversion,
//! within the conversion's measured duration; sometimes any moment after spawning. Both directions, merge and replace, fresh outputs, single-file and
//! sharded exports, with and without `durable`, on 8 to 32 MiB sources and on a 300 MiB
//! one.
//!
//! Knobs for longer runs: `NPKIO_CRASH_KILLS` (kills that must land on a running
//! conversion, small and medium sources; default 100), `NPKIO_CRASH_BIG_KILLS` (same for
//! the 300 MiB source; default 6).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::contents::*;
use crate::common::rerun;
use npkio::{DType, Options};

const CHILD_ENV: &str = "NPKIO_CRASH_CHILD";
const ALL: Option<&[&str]> = None;

/// Runs in the child: one conversion as the spec says, then reports how long it took.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let p: Vec<&str> = spec.split('|').collect();
    let (mode, src, out) = (p[0], p[1], p[2]);
    let mut opts = Options::default();
    opts.durable = p[3] == "durable";
    opts.chunk_size = p[4].parse().unwrap();
    opts.max_shard_size = p[5].parse().ok();
    println!("CHILD-START");
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    let t = Instant::now();
    let r = match mode {
        "import-merge" => npkio::from_safetensors_file_with(src, out, ALL, false, &opts),
        "import-replace" => npkio::from_safetensors_file_with(src, out, ALL, true, &opts),
        "export" => npkio::to_safetensors_file_with(src, out, ALL, None, &opts),
        other => panic!("unknown mode {other}"),
    };
    println!("CHILD-MICROS: {}", t.elapsed().as_micros());
    if let Err(e) = r {
        println!("CHILD-ERROR: {e}");
        std::process::exit(3);
    }
}

/// The golden inputs and old outputs of one size, and where the conversions run.
struct Fixture {
    dir: PathBuf,
    golden: Golden,
}

impl std::ops::Deref for Fixture {
    type Target = Golden;
    fn deref(&self) -> &Golden {
        &self.golden
    }
}

/// Tensors adding up to about `mib` MiB: a few large ones, several small ones, an empty
/// one, and one name ("shared.weight") that the old outputs also hold with other bytes.
fn source_contents(mib: usize, tag: u64) -> Contents {
    let total = mib << 20;
    let dtypes = [DType::F32, DType::BF16, DType::U8, DType::I64, DType::F16];
    let mut c = Contents::new();
    let mut left = total;
    let mut i = 0u64;
    while left > 64 << 10 {
        let size = if i < 4 {
            left / 2
        } else {
            left.min((total / 40).max(96 << 10))
        };
        let dtype = dtypes[i as usize % dtypes.len()];
        c.insert(
            format!("model.layers.{i}.weight"),
            tensor(tag * 1000 + i, dtype, size),
        );
        left -= size.min(left);
        i += 1;
    }
    c.insert(
        "shared.weight".into(),
        tensor(tag * 1000 + 999, DType::F32, 40_000),
    );
    c.insert(
        "tiny".into(),
        Expected {
            dtype: DType::I32,
            shape: vec![],
            data: vec![1, 2, 3, 4],
        },
    );
    c.insert(
        "empty".into(),
        Expected {
            dtype: DType::F32,
            shape: vec![0, 8],
            data: vec![],
        },
    );
    c
}

fn old_contents(tag: u64) -> Contents {
    let mut c = Contents::new();
    c.insert("shared.weight".into(), tensor(tag + 1, DType::F32, 300_000));
    c.insert("old_only.a".into(), tensor(tag + 2, DType::U8, 700_000));
    c.insert("old_only.b".into(), tensor(tag + 3, DType::BF16, 50_000));
    c
}

impl Fixture {
    fn new(dir: &Path, mib: usize, tag: u64) -> Fixture {
        let dir = dir.join(format!("{mib}mib"));
        std::fs::create_dir_all(dir.join("golden")).unwrap();
        let old = [
            old_contents(tag * 7),
            old_contents(tag * 11),
            old_contents(tag * 13),
        ];
        let golden = Golden::write(&dir.join("golden"), source_contents(mib, tag), old, 400_000);
        Fixture { dir, golden }
    }

    fn output(&self, mode: Mode) -> PathBuf {
        self.dir.join("work").join(mode.output_name())
    }

    /// Puts the old output in place (a real copy of the golden one), or removes it.
    fn reset(&self, mode: Mode) -> PathBuf {
        let out = self.output(mode);
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        remove(&out);
        if let Some((golden, _)) = self.old(mode) {
            copy_tree(golden, &out);
        }
        out
    }

    fn spec(&self, mode: Mode, durable: bool, chunk: usize) -> String {
        let out = self.output(mode);
        let (kind, src, shard) = match mode {
            Mode::ImportMerge | Mode::ImportFresh => ("import-merge", &self.st_src, None),
            Mode::ImportReplace => ("import-replace", &self.st_src, None),
            Mode::ExportReplace | Mode::ExportFresh => ("export", &self.npk_src, None),
            Mode::ShardedFresh | Mode::ShardedExisting => {
                ("export", &self.npk_src, Some(self.total / 3 + 1))
            }
        };
        format!(
            "{kind}|{}|{}|{}|{chunk}|{}",
            src.display(),
            out.display(),
            if durable { "durable" } else { "fast" },
            shard.map_or("-".to_string(), |s| s.to_string())
        )
    }

    /// Runs the conversion in this process, as the cleanup after a kill.
    fn convert(&self, mode: Mode) {
        let out = self.output(mode);
        let r = match mode {
            Mode::ImportMerge | Mode::ImportFresh => {
                npkio::from_safetensors_file(&self.st_src, &out, ALL, false, 8 << 20)
            }
            Mode::ImportReplace => {
                npkio::from_safetensors_file(&self.st_src, &out, ALL, true, 8 << 20)
            }
            Mode::ExportReplace | Mode::ExportFresh => {
                npkio::to_safetensors_file(&self.npk_src, &out, ALL, None, 8 << 20)
            }
            Mode::ShardedFresh | Mode::ShardedExisting => {
                let mut opts = Options::default();
                opts.max_shard_size = Some(self.total / 3 + 1);
                npkio::to_safetensors_file_with(&self.npk_src, &out, ALL, None, &opts)
            }
        };
        r.unwrap_or_else(|e| panic!("{mode:?}: the conversion after a kill failed: {e}"));
    }
}

/// What a killed conversion left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Found {
    Absent,
    Old,
    New,
    /// Only for a sharded checkpoint written into an existing directory: the old index is
    /// gone and the new one not yet written, so the directory does not open as a
    /// checkpoint (readers get an error, never a mix).
    NoIndex,
}

fn read(mode: Mode, out: &Path) -> Result<Contents, String> {
    match mode {
        Mode::ImportMerge | Mode::ImportReplace | Mode::ImportFresh => read_numpack(out),
        _ => read_safetensors(out),
    }
}

/// Checks the output after a kill: old-complete, absent (only where there was no old one),
/// or new-complete, tensor by tensor. Panics with the difference otherwise.
fn classify(fx: &Fixture, mode: Mode, context: &str) -> Found {
    let out = fx.output(mode);
    let new = fx.new_contents(mode);
    if mode == Mode::ShardedExisting {
        let config = std::fs::read(out.join("config.json"));
        assert_eq!(
            config.as_deref().ok(),
            Some(&b"{\"kept\": true}"[..]),
            "{context}: config.json of the checkpoint directory"
        );
    }
    if !out.exists() {
        assert!(
            fx.old(mode).is_none(),
            "{context}: the old output disappeared"
        );
        return Found::Absent;
    }
    match read(mode, &out) {
        Ok(got) if got == new => Found::New,
        Ok(got) => match fx.old(mode) {
            Some((_, old)) if &got == old => Found::Old,
            Some((_, old)) => panic!(
                "{context}: neither old nor new.\n vs old: {}\n vs new: {}",
                diff(&got, old),
                diff(&got, &new)
            ),
            None => panic!("{context}: not the new output: {}", diff(&got, &new)),
        },
        Err(e) if mode == Mode::ShardedExisting && e.contains("index") => Found::NoIndex,
        Err(e) => panic!("{context}: the output does not open: {e}"),
    }
}

/// After the cleanup conversion: the new output, nothing left behind, and for a checkpoint
/// directory no stale shards of the old checkpoint.
fn check_clean(fx: &Fixture, mode: Mode, context: &str) {
    let out = fx.output(mode);
    let got = read(mode, &out).unwrap_or_else(|e| panic!("{context}: after cleanup: {e}"));
    let new = fx.new_contents(mode);
    assert!(got == new, "{context}: after cleanup: {}", diff(&got, &new));
    let tmps = temporaries(out.parent().unwrap(), 2);
    assert!(tmps.is_empty(), "{context}: left behind: {tmps:?}");
    if matches!(mode, Mode::ShardedFresh | Mode::ShardedExisting) {
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        names.sort();
        let suffix = format!("-of-{:05}.safetensors", names.len());
        assert!(
            names.len() > 1 && names.iter().all(|n| n.ends_with(&suffix)),
            "{context}: stale or missing shards: {names:?}"
        );
    }
}

struct Child {
    micros: Option<u64>,
    wall: Duration,
    killed: bool,
}

fn run_child(spec: &str, kill: Option<Kill>) -> Child {
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::process::ExitStatusExt;
    let start = Instant::now();
    let mut c = rerun(module_path!(), "child_entry", CHILD_ENV, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(c.stdout.take().unwrap());
    let mut text = String::new();
    match kill {
        Some(Kill::AfterSpawn(d)) => std::thread::sleep(d),
        Some(Kill::AfterStart(d)) => {
            // Wait for the child to be about to convert (libtest may prefix the line).
            loop {
                let mut line = String::new();
                if stdout.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                text.push_str(&line);
                if line.trim_end().ends_with("CHILD-START") {
                    break;
                }
            }
            std::thread::sleep(d);
        }
        None => {}
    }
    if kill.is_some() {
        let _ = c.kill(); // SIGKILL; fails only if the child already exited
    }
    stdout.read_to_string(&mut text).unwrap();
    let mut stderr = String::new();
    c.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = c.wait().unwrap();
    let wall = start.elapsed();
    let killed = status.signal() == Some(libc::SIGKILL);
    if !killed {
        assert!(
            status.success(),
            "child failed ({status:?}): {text}\n{stderr}"
        );
    }
    let micros = text
        .lines()
        .find_map(|l| l.split_once("CHILD-MICROS: ").map(|p| p.1))
        .and_then(|m| m.parse().ok());
    Child {
        micros,
        wall,
        killed,
    }
}

/// When to kill a child: a delay after it starts converting, or after it was spawned.
#[derive(Clone, Copy, Debug)]
enum Kill {
    AfterStart(Duration),
    AfterSpawn(Duration),
}

/// Kills conversions over `fixtures` until `target` kills have landed on running children.
fn kill_loop(fixtures: &[Fixture], modes: &[Mode], target: u64, rng: &mut Rng, label: &str) {
    let mut calib: HashMap<(usize, Mode, bool), (Duration, Duration)> = HashMap::new();
    let mut found: HashMap<(Mode, Found), u64> = HashMap::new();
    let (mut landed, mut attempts, mut leftovers) = (0u64, 0u64, 0u64);
    while landed < target {
        attempts += 1;
        assert!(
            attempts <= target * 4 + 20,
            "{label}: only {landed} of {attempts} kills landed on a running conversion"
        );
        let f = rng.below(fixtures.len() as u64) as usize;
        let fx = &fixtures[f];
        let mode = modes[rng.below(modes.len() as u64) as usize];
        let durable = rng.chance(30);
        let chunk = if rng.chance(50) { 1 << 20 } else { 8 << 20 };
        let spec = fx.spec(mode, durable, chunk);
        // First use of a (source, mode, durability): run it to completion to learn how long the child
        // lives and how long the conversion inside it takes.
        let (wall, conv) = *calib.entry((f, mode, durable)).or_insert_with(|| {
            fx.reset(mode);
            let c = run_child(&spec, None);
            let context = format!("{label}: calibration {mode:?}");
            assert_eq!(classify(fx, mode, &context), Found::New, "{context}");
            check_clean(fx, mode, &context);
            (c.wall, Duration::from_micros(c.micros.unwrap_or(0)))
        });
        // Most kills land while the conversion runs; some anywhere in the child's life.
        let kill = if rng.chance(85) {
            Kill::AfterStart(Duration::from_micros(
                rng.below(conv.as_micros() as u64 + 1),
            ))
        } else {
            Kill::AfterSpawn(Duration::from_micros(
                rng.below(wall.as_micros() as u64 + 1),
            ))
        };
        fx.reset(mode);
        let c = run_child(&spec, Some(kill));
        let context = format!(
            "{label}: attempt {attempts} {mode:?} {} MiB durable={durable} chunk={chunk} \
             {kill:?} (killed: {})",
            fx.total >> 20,
            c.killed
        );
        let state = classify(fx, mode, &context);
        if c.killed {
            landed += 1;
            *found.entry((mode, state)).or_default() += 1;
        } else {
            assert_eq!(
                state,
                Found::New,
                "{context}: finished, yet not the new output"
            );
        }
        if !temporaries(fx.output(mode).parent().unwrap(), 2).is_empty() {
            leftovers += 1;
        }
        fx.convert(mode);
        check_clean(fx, mode, &context);
    }
    let mut summary: Vec<String> = found
        .iter()
        .map(|((m, s), n)| format!("{m:?}/{s:?}: {n}"))
        .collect();
    summary.sort();
    eprintln!(
        "{label}: {landed} kills landed in {attempts} attempts; {leftovers} left temporaries \
         that the next conversion removed; outcomes: {}",
        summary.join(", ")
    );
}

#[test]
fn sigkill_at_random_moments_leaves_old_or_new_output_small_and_medium_sources() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let mut rng = Rng::from_env("crash small/medium");
    let dir = tempfile::tempdir().unwrap();
    let fixtures: Vec<Fixture> = [8, 16, 32]
        .iter()
        .enumerate()
        .map(|(i, &mib)| Fixture::new(dir.path(), mib, i as u64 + 1))
        .collect();
    let target = env_num("NPKIO_CRASH_KILLS", 100);
    kill_loop(&fixtures, &MODES, target, &mut rng, "small/medium");
}

#[test]
fn sigkill_at_random_moments_leaves_old_or_new_output_300_mib_source() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let mut rng = Rng::from_env("crash 300 MiB");
    let dir = tempfile::tempdir().unwrap();
    let fixtures = [Fixture::new(dir.path(), 300, 9)];
    let target = env_num("NPKIO_CRASH_BIG_KILLS", 6);
    // The modes whose commit step differs: merge and replace into a directory, a file
    // over a file, shards into an existing directory.
    let modes = [
        Mode::ImportMerge,
        Mode::ImportReplace,
        Mode::ExportReplace,
        Mode::ShardedExisting,
    ];
    kill_loop(&fixtures, &modes, target, &mut rng, "300 MiB");
}

/// Regression: a conversion killed while writing a sharded checkpoint into an existing
/// directory leaves `.model-*.safetensors.npkio-tmp-*` files inside that directory (not
/// beside it, where the output's lock cleans up); the next conversion into it must remove
/// them too.
#[test]
fn sharded_export_into_existing_directory_removes_temporary_shards_left_inside_it() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = old_contents(5);
    let npk = dir.path().join("src.npk");
    write_numpack(&src, &npk);
    let out = dir.path().join("ckpt");
    std::fs::create_dir(&out).unwrap();
    let left = [
        ".model-00001-of-00002.safetensors.npkio-tmp-AbC123",
        ".model.safetensors.npkio-tmp-XyZ789",
        ".npkio-tmp-Index1",
    ];
    for name in left {
        std::fs::write(out.join(name), vec![0u8; 4096]).unwrap();
    }
    std::fs::write(out.join("config.json"), b"{}").unwrap();
    let mut opts = Options::default();
    opts.max_shard_size = Some(400_000);
    npkio::to_safetensors_file_with(&npk, &out, ALL, None, &opts).unwrap();
    assert_eq!(temporaries(dir.path(), 2), Vec::<PathBuf>::new());
    assert_eq!(read_safetensors(&out).unwrap(), src);
    assert!(out.join("config.json").exists(), "other files are kept");
}
