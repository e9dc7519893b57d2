//! Concurrent use: many threads reading one SafeTensors file and one NumPack directory
//! while another process converts from the same sources; and two processes converting into
//! the same output at once, which the output's lock serializes (or, without waiting, turns
//! into a clean `Busy` error): the result is exactly one complete conversion, never a mix,
//! and merges lose no update.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::common::contents::*;
use crate::common::rerun;
use npkio::{DType, NumPack, Options};

const ALL: Option<&[&str]> = None;
const CHILD_ENV: &str = "NPKIO_CONCURRENCY_CHILD";

/// Runs in the child: `rounds` conversions as the spec says.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let p: Vec<&str> = spec.split('|').collect();
    let (mode, src, out) = (p[0], p[1], p[2]);
    let mut opts = Options::default();
    opts.wait_for_lock = p[3] == "wait";
    opts.chunk_size = 1 << 20;
    let rounds: usize = p[4].parse().unwrap();
    for _ in 0..rounds {
        let r = match mode {
            "import-merge" => npkio::from_safetensors_file_with(src, out, ALL, false, &opts),
            "import-replace" => npkio::from_safetensors_file_with(src, out, ALL, true, &opts),
            _ => npkio::to_safetensors_file_with(src, out, ALL, None, &opts),
        };
        if let Err(e) = r {
            println!("CHILD-ERROR: {:?}: {e}", e.kind());
            return;
        }
    }
    println!("CHILD-OK");
}

fn spawn(mode: &str, src: &Path, out: &Path, wait: bool, rounds: usize) -> Child {
    let spec = format!(
        "{mode}|{}|{}|{}|{rounds}",
        src.display(),
        out.display(),
        if wait { "wait" } else { "nowait" }
    );
    rerun(module_path!(), "child_entry", CHILD_ENV, &spec)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The child's result: Ok, or its error line.
fn finish(c: Child) -> Result<(), String> {
    let o = c.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "child failed: {:?} {stdout}", o.status);
    match child_error(&stdout) {
        Some(e) => Err(e),
        None if stdout.contains("CHILD-OK") => Ok(()),
        None => panic!("child said nothing: {stdout}"),
    }
}

fn contents(tag: u64, names: &[&str], size: usize) -> Contents {
    let dtypes = [DType::F32, DType::BF16, DType::U8, DType::I64];
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.to_string(),
                tensor(tag * 100 + i as u64, dtypes[i % 4], size),
            )
        })
        .collect()
}

#[test]
fn eight_threads_read_one_file_and_one_directory_while_another_process_converts_them() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..12).map(|i| format!("layer.{i}.weight")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let src_c = contents(1, &name_refs, 2 << 20);
    let st = dir.path().join("src.safetensors");
    write_safetensors(&src_c, &st);
    let npk = dir.path().join("src.npk");
    write_numpack(&src_c, &npk);
    // Rows dropped from one array: its views are gathered (once, racing threads) rather
    // than borrowed from the mapping.
    let mut expected_npk = src_c.clone();
    {
        let mut np = NumPack::open(&npk).unwrap();
        np.drop_rows("layer.3.weight", &[0, 5, 6, 100]).unwrap();
        let t = expected_npk.get_mut("layer.3.weight").unwrap();
        let row = t.data.len() / t.shape[0] as usize;
        let mut keep = Vec::new();
        for r in 0..t.shape[0] as usize {
            if ![0, 5, 6, 100].contains(&r) {
                keep.extend_from_slice(&t.data[r * row..(r + 1) * row]);
            }
        }
        t.shape[0] -= 4;
        t.data = keep;
    }
    let shared_st = Arc::new(npkio::SafeTensorsFile::open(&st).unwrap());
    let shared_np = Arc::new(NumPack::open(&npk).unwrap());
    let out_npk = dir.path().join("converted.npk");
    let out_st = dir.path().join("converted.safetensors");
    let importer = spawn("import-replace", &st, &out_npk, true, 10);
    let exporter = spawn("export", &npk, &out_st, true, 10);
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let src_c = Arc::new(src_c);
    let expected_npk = Arc::new(expected_npk);
    let mut threads = Vec::new();
    for t in 0..8 {
        let (stop, reads) = (stop.clone(), reads.clone());
        let (shared_st, shared_np) = (shared_st.clone(), shared_np.clone());
        let (src_c, expected_npk) = (src_c.clone(), expected_npk.clone());
        let (st, npk) = (st.clone(), npk.clone());
        threads.push(std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) || rounds < 2 {
                // Even threads share one open file and one open store; odd threads open
                // their own each round.
                let got_st: Contents = if t % 2 == 0 {
                    shared_st
                        .tensors()
                        .map(|i| {
                            let v = shared_st.get(&i.name).unwrap();
                            (
                                i.name.clone(),
                                Expected {
                                    dtype: v.dtype,
                                    shape: v.shape.to_vec(),
                                    data: v.data.to_vec(),
                                },
                            )
                        })
                        .collect()
                } else {
                    read_safetensors(&st).unwrap()
                };
                assert!(got_st == *src_c, "thread {t}: {}", diff(&got_st, &src_c));
                let got_np = if t % 2 == 0 {
                    let mut c = Contents::new();
                    for n in shared_np.names() {
                        let v = shared_np.view(n).unwrap();
                        c.insert(
                            n.to_string(),
                            Expected {
                                dtype: v.dtype,
                                shape: v.shape.to_vec(),
                                data: v.data.to_vec(),
                            },
                        );
                    }
                    c
                } else {
                    read_numpack(&npk).unwrap()
                };
                assert!(
                    got_np == *expected_npk,
                    "thread {t}: {}",
                    diff(&got_np, &expected_npk)
                );
                rounds += 1;
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let r1 = finish(importer);
    let r2 = finish(exporter);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    r1.unwrap();
    r2.unwrap();
    eprintln!(
        "{} full reads by 8 threads during 20 conversions",
        reads.load(Ordering::Relaxed)
    );
    assert_eq!(read_numpack(&out_npk).unwrap(), *src_c);
    assert_eq!(read_safetensors(&out_st).unwrap(), *expected_npk);
    assert_eq!(temporaries(dir.path(), 1), Vec::<PathBuf>::new());
}

/// Sources A and B with overlapping names, as SafeTensors files and NumPack directories.
struct Pair {
    a: Contents,
    b: Contents,
    old: Contents,
    st: [PathBuf; 2],
    npk: [PathBuf; 2],
    old_npk: PathBuf,
}

fn pair(dir: &Path) -> Pair {
    let a = contents(
        1,
        &["shared.0", "shared.1", "only_a.0", "only_a.1"],
        4 << 20,
    );
    let b = contents(
        2,
        &["shared.0", "shared.1", "only_b.0", "only_b.1"],
        4 << 20,
    );
    let old = contents(3, &["shared.0", "old.0"], 1 << 20);
    let st = [dir.join("a.safetensors"), dir.join("b.safetensors")];
    let npk = [dir.join("a.npk"), dir.join("b.npk")];
    write_safetensors(&a, &st[0]);
    write_safetensors(&b, &st[1]);
    write_numpack(&a, &npk[0]);
    write_numpack(&b, &npk[1]);
    let old_npk = dir.join("old.npk");
    write_numpack(&old, &old_npk);
    Pair {
        a,
        b,
        old,
        st,
        npk,
        old_npk,
    }
}

#[test]
fn two_processes_converting_into_one_output_serialize_and_one_result_wins() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = pair(dir.path());
    let mut rng = Rng::from_env("two writers");
    let mut last = [0u32; 2];
    for round in 0..12 {
        let mode = ["import-replace", "import-merge", "export"][round % 3];
        let out = dir.path().join(match mode {
            "export" => "out.safetensors",
            _ => "out.npk",
        });
        remove(&out);
        if mode == "import-merge" {
            copy_tree(&p.old_npk, &out);
        }
        let srcs = if mode == "export" { &p.npk } else { &p.st };
        // Start order alternates at random so that either may take the lock first.
        let first = rng.below(2) as usize;
        let c1 = spawn(mode, &srcs[first], &out, true, 1);
        let c2 = spawn(mode, &srcs[1 - first], &out, true, 1);
        finish(c1).unwrap_or_else(|e| panic!("{mode}: a waiting conversion failed: {e}"));
        finish(c2).unwrap_or_else(|e| panic!("{mode}: a waiting conversion failed: {e}"));
        let got = if mode == "export" {
            read_safetensors(&out).unwrap()
        } else {
            read_numpack(&out).unwrap()
        };
        let candidates: Vec<Contents> = if mode == "import-merge" {
            // Both merges must be in, in one order or the other.
            vec![
                merged(&merged(&p.old, &p.a), &p.b),
                merged(&merged(&p.old, &p.b), &p.a),
            ]
        } else {
            vec![p.a.clone(), p.b.clone()]
        };
        let k = candidates
            .iter()
            .position(|c| *c == got)
            .unwrap_or_else(|| {
                panic!(
                    "{mode}: a mixed result: vs first {}; vs second {}",
                    diff(&got, &candidates[0]),
                    diff(&got, &candidates[1])
                )
            });
        last[k] += 1;
        assert_eq!(temporaries(dir.path(), 1), Vec::<PathBuf>::new());
    }
    eprintln!("two writers: outcomes {last:?}");
}

#[test]
fn without_waiting_a_second_writer_gets_busy_and_the_first_result_stands() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = pair(dir.path());
    let (mut busy, mut both) = (0, 0);
    for round in 0..10 {
        let export = round % 2 == 1;
        let (mode, srcs, out) = if export {
            ("export", &p.npk, dir.path().join("out.safetensors"))
        } else {
            ("import-replace", &p.st, dir.path().join("out.npk"))
        };
        remove(&out);
        // Several rounds each, so that the two are likely to collide.
        let c1 = spawn(mode, &srcs[0], &out, false, 3);
        let c2 = spawn(mode, &srcs[1], &out, false, 3);
        let results = [finish(c1), finish(c2)];
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(e.starts_with("Busy: "), "{mode}: not a Busy error: {e}");
            assert!(e.contains(&out.display().to_string()), "{e}");
            busy += 1;
        }
        assert!(results.iter().any(|r| r.is_ok()), "{mode}: both failed");
        if results.iter().all(|r| r.is_ok()) {
            both += 1;
        }
        let got = if export {
            read_safetensors(&out).unwrap()
        } else {
            read_numpack(&out).unwrap()
        };
        assert!(
            got == p.a || got == p.b,
            "{mode}: a mixed result: {}",
            diff(&got, &p.a)
        );
        assert_eq!(temporaries(dir.path(), 1), Vec::<PathBuf>::new());
    }
    eprintln!("no-wait writers: {busy} Busy errors, {both} rounds without collision");
}

/// Runs in a child: opens a store, lets the parent-given conversion replace it with smaller
/// arrays under the same file names, then views an array it had not viewed yet.
#[test]
fn stale_handle_child_entry() {
    let Ok(spec) = std::env::var("NPKIO_STALE_HANDLE_CHILD") else {
        return;
    };
    let (out, src) = spec.split_once('|').unwrap();
    let np = NumPack::open(out).unwrap();
    npkio::from_safetensors_file(src, out, ALL, true, 1 << 20).unwrap();
    match np.view("w") {
        Ok(v) => {
            let sum: u64 = v.data.iter().map(|&b| u64::from(b)).sum();
            println!("VIEW-OK {} {sum}", v.data.len());
        }
        Err(e) => println!("CHILD-ERROR: {:?}: {e}", e.kind()),
    }
}

/// A `NumPack` opened before its directory was replaced by a conversion, asked afterwards
/// for an array it had not mapped yet, finds the new, shorter data file under the old
/// name: that must be an error, not a SIGBUS from mapping past the file's end (nor the new
/// bytes under the old shape).
#[test]
fn store_opened_before_a_replacement_errors_instead_of_faulting_on_a_shorter_file() {
    if std::env::var(CHILD_ENV).is_ok() || std::env::var("NPKIO_STALE_HANDLE_CHILD").is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.npk");
    write_numpack(&contents(1, &["w"], 4 << 20), &out);
    let src = dir.path().join("small.safetensors");
    write_safetensors(&contents(2, &["w"], 64 << 10), &src);
    let o = rerun(
        module_path!(),
        "stale_handle_child_entry",
        "NPKIO_STALE_HANDLE_CHILD",
        format!("{}|{}", out.display(), src.display()),
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "child died: {:?}: {stdout}", o.status);
    let err = child_error(&stdout).unwrap_or_else(|| panic!("no error: {stdout}"));
    // The state it opened is gone: a typed error saying so (the replacement's file under
    // the old name is never mapped).
    assert!(err.starts_with("Busy") && err.contains("reopen"), "{err}");
}

/// A child forked while a conversion holds its directory's lock (as DataLoader workers and
/// multiprocessing pools fork) does not keep the lock: once the conversion returns, the
/// next conversion into that directory gets the lock at once, though the child still lives.
#[test]
fn a_child_forked_during_a_conversion_does_not_keep_the_directory_locked() {
    if std::env::var(CHILD_ENV).is_ok() || std::env::var("NPKIO_STALE_HANDLE_CHILD").is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.safetensors");
    write_safetensors(&contents(1, &["a", "b"], 1 << 20), &src);
    let mut pipe = [0; 2];
    // SAFETY: a valid array of two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let [read_end, write_end] = pipe;
    let forked = Arc::new(std::sync::atomic::AtomicI32::new(0));
    let mut opts = Options::default();
    opts.chunk_size = 64 << 10;
    opts.progress = Some(Arc::new({
        let forked = forked.clone();
        move |_, _| {
            if forked
                .compare_exchange(0, -1, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                return;
            }
            // SAFETY: the child only makes async-signal-safe calls: it waits for the
            // parent's byte, then leaves without running anything else.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let mut b = 0u8;
                unsafe {
                    libc::read(read_end, (&mut b as *mut u8).cast(), 1);
                    libc::_exit(0);
                }
            }
            forked.store(pid, Ordering::SeqCst);
        }
    }));
    npkio::from_safetensors_file_with(&src, dir.path().join("out.npk"), ALL, true, &opts).unwrap();
    let pid = forked.load(Ordering::SeqCst);
    assert!(pid > 0, "the conversion forked no child ({pid})");
    let mut status = 0;
    // SAFETY: our own child; WNOHANG does not wait.
    let alive = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0;
    let mut no_wait = Options::default();
    no_wait.wait_for_lock = false;
    let next =
        npkio::from_safetensors_file_with(&src, dir.path().join("next.npk"), ALL, true, &no_wait);
    // SAFETY: writes one byte to our pipe, then reaps our child and closes the pipe.
    unsafe {
        libc::write(write_end, b"x".as_ptr().cast(), 1);
        libc::waitpid(pid, &mut status, 0);
        libc::close(read_end);
        libc::close(write_end);
    }
    assert!(alive, "the forked child ended early");
    next.expect("the next conversion, while the forked child lives");
}
