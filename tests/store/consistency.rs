//! What readers and writers see while other handles (threads or processes) change one
//! NumPack store: a reader reads one committed state of every array it reads (old or
//! new), or gets `Busy` once the state it opened is gone, never bytes of one state under
//! the dtype or shape of another and never a "missing" file (views, exports); a writer
//! never overwrites a change it did not see. Races are placed at one exact step with the test hooks
//! (`npkio::internals::hooks`); a bounded stress run checks the same with free timing.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::common;

use npkio::internals::hooks;
use npkio::{ArrayInput, DType, ErrorKind, NumPack};

/// 100 values of generation `k`: float32 `k + 0.5` for even `k`, int32 `k` for odd `k`.
/// The two kinds have the same byte length, and the bytes of one read as the other are
/// never a valid value of either.
fn generation(k: u32) -> (DType, Vec<u8>) {
    if k % 2 == 0 {
        let v = k as f32 + 0.5;
        (DType::F32, v.to_le_bytes().repeat(100))
    } else {
        (DType::I32, (k as i32).to_le_bytes().repeat(100))
    }
}

/// The generation whose values `dtype` and `data` hold, `None` if they are no generation.
fn which_generation(dtype: DType, shape: &[u64], data: &[u8]) -> Option<u32> {
    if shape != [100] || data.len() != 400 {
        return None;
    }
    let first: [u8; 4] = data[..4].try_into().ok()?;
    if data.chunks(4).any(|c| c != first) {
        return None;
    }
    let k = match dtype {
        DType::F32 => {
            let v = f32::from_le_bytes(first) - 0.5;
            (v >= 0.0 && v.fract() == 0.0 && v < 1e7).then_some(v as u32)?
        }
        DType::I32 => u32::try_from(i32::from_le_bytes(first)).ok()?,
        _ => return None,
    };
    (generation(k) == (dtype, data.to_vec())).then_some(k)
}

fn save_generation(np: &mut NumPack, name: &str, k: u32) -> npkio::Result<()> {
    let (dtype, data) = generation(k);
    np.save(&[ArrayInput {
        name,
        dtype,
        shape: &[100],
        data: &data,
    }])
}

/// Reads `name` from `np`: the generation it holds, or the error; panics on a mix.
fn read_generation(np: &NumPack, name: &str) -> npkio::Result<u32> {
    let v = np.view(name)?;
    Ok(
        which_generation(v.dtype, v.shape, v.data).unwrap_or_else(|| {
            panic!(
                "{name} read as {:?} {:?}: a mix of states",
                v.dtype, v.shape
            )
        }),
    )
}

fn store_with(dir: &Path, names: &[&str]) {
    let mut np = NumPack::create(dir, false).unwrap();
    for n in names {
        save_generation(&mut np, n, 0).unwrap();
    }
}

#[test]
fn a_handle_reads_an_array_another_writer_did_not_touch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s.npk");
    store_with(&dir, &["x", "y", "z"]);
    let mut reader = NumPack::open(&dir).unwrap();
    let mut writer = NumPack::open(&dir).unwrap();
    save_generation(&mut writer, "y", 1).unwrap();
    // x is as the reader opened it: read, described and handed out as a file.
    assert_eq!(read_generation(&reader, "x").unwrap(), 0);
    assert_eq!(reader.info("z").unwrap().dtype, DType::F32);
    let (file, len) = reader
        .plain_data_file("z")
        .unwrap()
        .expect("one plain file");
    assert_eq!(len, 400);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut bytes).unwrap();
    assert_eq!(which_generation(DType::F32, &[100], &bytes), Some(0));
    // y's state as the reader describes it (float32) is gone.
    let e = read_generation(&reader, "y").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    // Still a change the reader did not see: its own change is refused.
    let e = save_generation(&mut reader, "z", 2).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let now = NumPack::open(&dir).unwrap();
    assert_eq!(read_generation(&now, "y").unwrap(), 1);
    assert_eq!(read_generation(&now, "z").unwrap(), 0);
}

#[test]
fn a_handle_whose_array_changed_dtype_or_is_gone_gets_busy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s.npk");
    store_with(&dir, &["x", "w"]);
    let reader = NumPack::open(&dir).unwrap();
    let mut writer = NumPack::open(&dir).unwrap();
    // Replaced as int32 of the same byte length, its data moved back to the plain file
    // name the reader's metadata names: never the new bytes as float32.
    save_generation(&mut writer, "x", 1).unwrap();
    writer.delete("w").unwrap();
    for name in ["x", "w"] {
        let e = read_generation(&reader, name).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy, "{name}: {e}");
        let e = reader.info(name).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy, "{name}: {e}");
    }
    // Of another shape, with the same dtype: gone too.
    let reader = NumPack::open(&dir).unwrap();
    let data = 3i32.to_le_bytes().repeat(50);
    let half = ArrayInput {
        name: "x",
        dtype: DType::I32,
        shape: &[50],
        data: &data,
    };
    writer.save(&[half]).unwrap();
    let e = read_generation(&reader, "x").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
}

#[test]
fn a_handle_reads_an_array_rewritten_with_its_dtype_and_shape_as_one_whole_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s.npk");
    store_with(&dir, &["x", "y", "z"]);
    let reader = NumPack::open(&dir).unwrap();
    let mut writer = NumPack::open(&dir).unwrap();
    // float32 again: the same dtype and shape, other values. The old state's files are
    // gone; the new one is read whole.
    save_generation(&mut writer, "x", 2).unwrap();
    assert_eq!(read_generation(&reader, "x").unwrap(), 2);
    // Changed again while the reader reads the store as it is now, once right after
    // reading the newer metadata, once after opening the data file it names: each time
    // it reads the store again, and the state it returns is one whole generation.
    // (A view is kept by the handle: one array each time.)
    for (name, k, point) in [
        ("y", 4, "numpack-open:metadata-read"),
        ("z", 6, "numpack-read:data-opened"),
    ] {
        save_generation(&mut NumPack::open(&dir).unwrap(), name, k).unwrap();
        let fired = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (d, count) = (dir.clone(), fired.clone());
        hooks::set(Some(Box::new(move |p| {
            // (The reader knows its own state is gone: every opening is of the newer one.)
            if p == point && count.fetch_add(1, Ordering::SeqCst) == 0 {
                let mut other = NumPack::open(&d).unwrap();
                save_generation(&mut other, name, k + 2).unwrap();
            }
        })));
        let got = read_generation(&reader, name);
        hooks::set(None);
        assert!(fired.load(Ordering::SeqCst) > 1, "{point}: the hook ran");
        assert_eq!(got.unwrap(), k + 2, "{point}");
    }
    // A store that changes at every try: Busy after a few, then read once it stops.
    let reader = NumPack::open(&dir).unwrap();
    save_generation(&mut NumPack::open(&dir).unwrap(), "x", 10).unwrap();
    let (d, next) = (dir.clone(), Arc::new(std::sync::atomic::AtomicU32::new(12)));
    hooks::set(Some(Box::new(move |p| {
        if p == "numpack-open:metadata-read" {
            let mut other = NumPack::open(&d).unwrap();
            save_generation(&mut other, "x", next.fetch_add(2, Ordering::SeqCst)).unwrap();
        }
    })));
    let e = read_generation(&reader, "x").unwrap_err();
    hooks::set(None);
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let k = read_generation(&reader, "x").unwrap();
    assert!(k >= 12 && k % 2 == 0, "{k}");
}

#[test]
fn an_export_or_a_loader_opened_as_the_store_changes_starts_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s.npk");
    store_with(&dir, &["x", "y"]);
    let out = tmp.path().join("out.safetensors");
    // Right after the store is opened, before any data file is: x becomes int32.
    let change_x_once = |k: u32| {
        let (d, done) = (dir.clone(), Arc::new(AtomicBool::new(false)));
        let flag = done.clone();
        hooks::set(Some(Box::new(move |p| {
            if p == "numpack:opened" && !flag.swap(true, Ordering::SeqCst) {
                let mut other = NumPack::open(&d).unwrap();
                save_generation(&mut other, "x", k).unwrap();
            }
        })));
        done
    };
    let done = change_x_once(1);
    let exported = npkio::to_safetensors_file(&dir, &out, None::<&[&str]>, None, 1 << 20);
    hooks::set(None);
    assert!(done.load(Ordering::SeqCst), "the hook ran");
    exported.unwrap();
    let f = npkio::SafeTensorsFile::open(&out).unwrap();
    let x = f.get("x").unwrap();
    assert_eq!(which_generation(x.dtype, x.shape, x.data), Some(1));
    let done = change_x_once(3);
    let loader = npkio::load::Loader::open(&dir);
    hooks::set(None);
    assert!(done.load(Ordering::SeqCst), "the hook ran");
    let loader = loader.unwrap();
    let x = loader.tensor("x").unwrap();
    assert_eq!(x.dtype, DType::I32);
    let mut buf = vec![0u8; 400];
    let req = [npkio::load::Request::new("x")];
    loader
        .load(&req, &mut [&mut buf[..]], &Default::default())
        .unwrap();
    assert_eq!(which_generation(DType::I32, &[100], &buf), Some(3));
}

#[test]
fn a_handle_opened_between_a_commit_and_the_move_back_never_finds_its_file_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s.npk");
    store_with(&dir, &["x"]);
    let mut writer = NumPack::open(&dir).unwrap();
    let opened: Arc<std::sync::Mutex<Option<NumPack>>> = Arc::default();
    let slot = opened.clone();
    let d = dir.clone();
    // At the first commit (the new data under a generation name), open a reader.
    hooks::set(Some(Box::new(move |point| {
        let mut s = slot.lock().unwrap();
        if point == "numpack:published" && s.is_none() {
            *s = Some(NumPack::open(&d).unwrap());
        }
    })));
    save_generation(&mut writer, "x", 1).unwrap();
    hooks::set(None);
    let reader = opened.lock().unwrap().take().expect("the hook ran");
    match read_generation(&reader, "x") {
        Ok(k) => assert_eq!(k, 1),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Busy, "{e}"),
    }
    // Opened again, the store reads the new state.
    assert_eq!(
        read_generation(&NumPack::open(&dir).unwrap(), "x").unwrap(),
        1
    );
}

#[test]
fn a_handle_opened_while_another_writer_commits_does_not_undo_that_change() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s.npk");
    store_with(&dir, &["x"]);
    let done = Arc::new(AtomicBool::new(false));
    let (d, flag) = (dir.clone(), done.clone());
    // Right after this handle's open read the metadata, another writer commits.
    hooks::set(Some(Box::new(move |point| {
        if point == "numpack-open:metadata-read" && !flag.swap(true, Ordering::SeqCst) {
            let mut other = NumPack::open(&d).unwrap();
            save_generation(&mut other, "x", 1).unwrap();
            save_generation(&mut other, "y", 3).unwrap();
        }
    })));
    let mut late = NumPack::open(&dir).unwrap();
    hooks::set(None);
    assert!(done.load(Ordering::SeqCst));
    // Its own change either sees the other writer's (it opened the newer state) or is
    // refused as Busy; either way that change stays.
    match save_generation(&mut late, "z", 5) {
        Ok(()) => {}
        Err(e) => assert_eq!(e.kind(), ErrorKind::Busy, "{e}"),
    }
    let now = NumPack::open(&dir).unwrap();
    assert_eq!(read_generation(&now, "x").unwrap(), 1);
    assert_eq!(read_generation(&now, "y").unwrap(), 3);
}

const WRITER_CHILD: &str = "NPKIO_STORE_WRITER_CHILD";

/// The writer of the stress run, in a process of its own: replaces `x` and `y` 150 times
/// (float32 and int32 in turn) and `z` with them (float32 always); `w` stays as it is.
#[test]
fn writer_child_entry() {
    let Ok(dir) = std::env::var(WRITER_CHILD) else {
        return;
    };
    let mut np = NumPack::open(&dir).unwrap();
    for k in 1..=150 {
        save_generation(&mut np, "x", k).unwrap();
        let (y, z) = (generation(k), generation(2 * k));
        np.save(&[
            ArrayInput {
                name: "y",
                dtype: y.0,
                shape: &[100],
                data: &y.1,
            },
            ArrayInput {
                name: "z",
                dtype: z.0,
                shape: &[100],
                data: &z.1,
            },
        ])
        .unwrap();
    }
    println!("WRITER done");
}

/// Whether `e` is the `Busy` of a read that found the store changing at every try, rather
/// than the array's state gone.
fn kept_changing(e: &npkio::Error) -> bool {
    e.kind() == ErrorKind::Busy && e.message().contains("kept changing")
}

#[test]
fn readers_see_whole_generations_while_another_process_keeps_replacing_arrays() {
    if std::env::var(WRITER_CHILD).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s.npk");
    store_with(&dir, &["x", "y", "z", "w"]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let out = common::rerun(module_path!(), "writer_child_entry", WRITER_CHILD, &dir)
                .output()
                .unwrap();
            stop.store(true, Ordering::SeqCst);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("WRITER done"), "the writer failed: {out:?}");
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (dir, stop) = (dir.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut good, mut busy, mut changing, mut exports) = (0u32, 0u32, 0u32, 0u32);
                let out_dir = tempfile::tempdir().unwrap();
                // Each handle is read a round after it opened, when the writer has most
                // likely changed the store since.
                let mut earlier: Option<NumPack> = None;
                while !stop.load(Ordering::SeqCst) {
                    let np = match NumPack::open(&dir) {
                        Ok(np) => np,
                        Err(e) if e.kind() == ErrorKind::Busy => {
                            busy += 1;
                            continue;
                        }
                        Err(e) => panic!("open: {e}"),
                    };
                    let Some(np) = earlier.replace(np) else {
                        continue;
                    };
                    for name in ["x", "y", "z", "w"] {
                        match read_generation(&np, name) {
                            Ok(k) => {
                                // z keeps its dtype and shape, w is never changed.
                                match name {
                                    "z" => assert_eq!(k % 2, 0, "{name}"),
                                    "w" => assert_eq!(k, 0, "{name}"),
                                    _ => {}
                                }
                                good += 1;
                            }
                            Err(e) if kept_changing(&e) => changing += 1,
                            // The state read is gone: only of an array whose dtype changes.
                            Err(e) if e.kind() == ErrorKind::Busy => {
                                assert!(name == "x" || name == "y", "{name}: {e}");
                                busy += 1;
                            }
                            Err(e) => panic!("reading {name}: {e}"),
                        }
                    }
                    // An export: every tensor one whole generation, or Busy.
                    exports += 1;
                    if exports % 8 == 0 {
                        let out = out_dir.path().join(format!("e{exports}.safetensors"));
                        match npkio::to_safetensors_file(&dir, &out, None::<&[&str]>, None, 1 << 20)
                        {
                            Ok(()) => {
                                let f = npkio::SafeTensorsFile::open(&out).unwrap();
                                for name in ["x", "y", "z", "w"] {
                                    let v = f.get(name).unwrap();
                                    assert!(
                                        which_generation(v.dtype, v.shape, v.data).is_some(),
                                        "exported {name} as {:?}: a mix of states",
                                        v.dtype
                                    );
                                }
                                good += 1;
                            }
                            // Started again from a fresh open a few times, the store
                            // changing under every one.
                            Err(e) if e.kind() == ErrorKind::Busy => changing += 1,
                            Err(e) => panic!("exporting: {e}"),
                        }
                    }
                }
                (good, busy, changing)
            })
        })
        .collect();
    writer.join().unwrap();
    for r in readers {
        let (good, busy, changing) = r.join().unwrap();
        eprintln!(
            "reads: {good} whole, {busy} busy (the dtype changed), {changing} busy (kept \
             changing)"
        );
    }
    let np = NumPack::open(&dir).unwrap();
    assert_eq!(read_generation(&np, "x").unwrap(), 150);
    assert_eq!(read_generation(&np, "y").unwrap(), 150);
}

#[test]
fn a_drop_cut_short_after_its_commit_is_seen_by_a_handle_opened_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s.npk");
    store_with(&dir, &["x"]);
    let mut early = NumPack::open(&dir).unwrap();
    let mut dropper = NumPack::open(&dir).unwrap();
    // The dropping process dies right after the change is published (its later steps,
    // such as writing the metadata again, never run).
    hooks::set(Some(Box::new(|point| {
        if point == "numpack:published" {
            panic!("killed after publishing");
        }
    })));
    let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dropper.drop_rows("x", &[99])
    }));
    hooks::set(None);
    assert!(cut.is_err(), "the hook ran");
    let visible = NumPack::open(&dir).unwrap().view("x").unwrap().shape == [99];
    assert!(visible, "the drop is published");
    // The handle opened before it must not write the old bitmap back.
    let e = early
        .append("x", &0.5f32.to_le_bytes())
        .expect_err("a change the handle did not see");
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let now = NumPack::open(&dir).unwrap();
    assert_eq!(now.view("x").unwrap().shape, [99]);
}

/// A SafeTensors file holding `names`, each generation `k` of [`generation`].
fn safetensors_with(path: &Path, names: &[&str], k: u32) {
    let tmp = tempfile::tempdir().unwrap();
    let npk = tmp.path().join("t.npk");
    store_with(&npk, &[]);
    let mut np = NumPack::open(&npk).unwrap();
    for n in names {
        save_generation(&mut np, n, k).unwrap();
    }
    npkio::to_safetensors_file(&npk, path, None::<&[&str]>, None, 1 << 20).unwrap();
}

#[test]
fn creating_a_store_while_a_conversion_publishes_there_keeps_the_conversion() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.safetensors");
    safetensors_with(&src, &["w"], 3);
    let dir = tmp.path().join("s.npk");
    let (tx, rx) = std::sync::mpsc::channel();
    let converter: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::default();
    let slot = converter.clone();
    let (d, s) = (dir.clone(), src.clone());
    // Once the store's directory is made, a conversion into the same path runs; it is
    // given a few seconds to finish before creating goes on (under the lock it waits).
    hooks::set(Some(Box::new(move |point| {
        if point != "numpack-create:directory-made" {
            return;
        }
        let (d, s, tx) = (d.clone(), s.clone(), tx.clone());
        *slot.lock().unwrap() = Some(std::thread::spawn(move || {
            npkio::from_safetensors_file(&s, &d, None::<&[&str]>, true, 1 << 20).unwrap();
            let _ = tx.send(());
        }));
        let _ = rx.recv_timeout(std::time::Duration::from_secs(3));
    })));
    let created = NumPack::create(&dir, false);
    hooks::set(None);
    let created = created.unwrap();
    drop(created);
    converter
        .lock()
        .unwrap()
        .take()
        .expect("the hook ran")
        .join()
        .unwrap();
    // Both calls succeeded: the store holds the conversion's array.
    let np = NumPack::open(&dir).unwrap();
    assert_eq!(np.names(), ["w"]);
    assert_eq!(read_generation(&np, "w").unwrap(), 3);
}

const NPKIO: &str = env!("CARGO_BIN_EXE_npkio");

/// Leaves `out` as a conversion killed between the two renames of the fallback without
/// `RENAME_EXCHANGE` leaves it: absent, the old store aside. False if that state was not
/// reached.
fn kill_between_the_renames(out: &Path, src: &Path) -> bool {
    for sc in ["rename", "renameat"] {
        for n in 1..=20 {
            if out.exists() {
                std::fs::remove_dir_all(out).unwrap();
            }
            let parent = out.parent().unwrap();
            for e in std::fs::read_dir(parent).unwrap() {
                let e = e.unwrap();
                if e.file_name().to_string_lossy().contains("npkio-tmp") {
                    std::fs::remove_dir_all(e.path()).unwrap();
                }
            }
            store_with(out, &["x", "y"]);
            let o = std::process::Command::new("strace")
                .args(["-f", "-qq", "-o", "/dev/null", "-e"])
                .arg("inject=renameat2:error=EINVAL")
                .arg("-e")
                .arg(format!("inject={sc}:signal=KILL:when={n}"))
                .arg(NPKIO)
                .arg("convert")
                .arg("--force")
                .arg(src)
                .arg(out)
                .output()
                .unwrap();
            if o.status.success() {
                break;
            }
            if !out.exists() {
                return true;
            }
        }
    }
    false
}

#[test]
fn a_store_left_aside_by_a_killed_conversion_is_restored_when_opened_or_created() {
    if !common::have_strace("aside_restored") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.safetensors");
    safetensors_with(&src, &["w"], 3);
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let out = work.join("s.npk");
    for how in ["create", "open"] {
        assert!(
            kill_between_the_renames(&out, &src),
            "no kill left the store aside"
        );
        let np = if how == "create" {
            NumPack::create(&out, false).unwrap()
        } else {
            NumPack::open(&out).unwrap()
        };
        assert_eq!(np.names(), ["x", "y"], "{how}");
        assert_eq!(read_generation(&np, "x").unwrap(), 0, "{how}");
    }
}

/// Every file of `dir` and its bytes.
fn files_of(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn appending_to_a_hard_linked_copy_of_a_store_leaves_the_original_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s.npk");
    store_with(&dir, &["x", "d"]);
    NumPack::open(&dir).unwrap().drop_rows("d", &[5]).unwrap();
    // `cp -al`: every file of the copy is a second link to the original's.
    let copy = tmp.path().join("copy.npk");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        std::fs::hard_link(e.path(), copy.join(e.file_name())).unwrap();
    }
    let before = files_of(&dir);
    let mut np = NumPack::open(&copy).unwrap();
    np.append("x", &0.5f32.to_le_bytes()).unwrap();
    np.append("d", &0.5f32.to_le_bytes()).unwrap();
    assert!(files_of(&dir) == before, "the original's files changed");
    let np = NumPack::open(&copy).unwrap();
    assert_eq!(np.view("x").unwrap().shape, [101]);
    assert_eq!(np.view("d").unwrap().shape, [100]);
    let orig = NumPack::open(&dir).unwrap();
    assert_eq!(read_generation(&orig, "x").unwrap(), 0);
}

#[test]
fn rows_by_negative_index_or_slice_are_resolved_in_the_call_that_acts() {
    use npkio::Rows;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s.npk");
    let mut np = NumPack::create(&dir, false).unwrap();
    let data: Vec<u8> = (0..10i32).flat_map(|v| v.to_le_bytes()).collect();
    let x = ArrayInput {
        name: "x",
        dtype: DType::I32,
        shape: &[10],
        data: &data,
    };
    np.save(&[x]).unwrap();
    let ints = |b: &[u8]| -> Vec<i32> {
        b.chunks(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (dtype, shape, got) = np.get_rows("x", Rows::Indices(&[-1, 0, -10])).unwrap();
    assert_eq!(
        (dtype, shape, ints(&got)),
        (DType::I32, vec![3], vec![9, 0, 0])
    );
    let every_third = Rows::Slice {
        start: None,
        stop: None,
        step: -3,
    };
    assert_eq!(
        ints(&np.get_rows("x", every_third).unwrap().2),
        [9, 6, 3, 0]
    );
    let e = np.get_rows("x", Rows::Indices(&[10])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    np.drop_rows_at("x", Rows::Indices(&[-1])).unwrap();
    np.drop_rows_at("x", every_third).unwrap();
    assert_eq!(ints(np.view("x").unwrap().data), [0, 1, 3, 4, 6, 7]);
    let v = 99i32.to_le_bytes();
    let one = ArrayInput {
        name: "x",
        dtype: DType::I32,
        shape: &[],
        data: &v,
    };
    np.replace_rows(&[one], Rows::Indices(&[-1, 0])).unwrap();
    let now = NumPack::open(&dir).unwrap();
    assert_eq!(ints(now.view("x").unwrap().data), [99, 1, 3, 4, 6, 99]);
    // Resolved against a store another writer changed since: Busy, nothing dropped.
    let mut other = NumPack::open(&dir).unwrap();
    other.drop_rows_at("x", Rows::Indices(&[0])).unwrap();
    let e = np.drop_rows_at("x", Rows::Indices(&[-1])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let now = NumPack::open(&dir).unwrap();
    assert_eq!(ints(now.view("x").unwrap().data), [1, 3, 4, 6, 99]);
}

const FAILED_SAVE_CHILD: &str = "NPKIO_FAILED_SAVE_CHILD";

/// In a child whose files may not grow past 16 KiB: saves 64 KiB over the array `d`.
#[test]
fn failed_save_child_entry() {
    let Ok(dir) = std::env::var(FAILED_SAVE_CHILD) else {
        return;
    };
    let mut np = NumPack::open(&dir).unwrap();
    let big = vec![7u8; 64 << 10];
    let r = np.save(&[ArrayInput {
        name: "d",
        dtype: DType::U8,
        shape: &[64 << 10],
        data: &big,
    }]);
    println!("RESULT {}", if r.is_ok() { "ok" } else { "err" });
}

#[test]
fn a_failed_save_of_an_array_with_dropped_rows_leaves_it_under_its_own_name() {
    if std::env::var(FAILED_SAVE_CHILD).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s.npk");
    store_with(&dir, &["d"]);
    NumPack::open(&dir).unwrap().drop_rows("d", &[3]).unwrap();
    let before = files_of(&dir);
    let mut cmd = common::rerun(
        module_path!(),
        "failed_save_child_entry",
        FAILED_SAVE_CHILD,
        &dir,
    );
    common::limit_child(&mut cmd, libc::RLIMIT_FSIZE, 16 << 10);
    // SAFETY: only signal(), async-signal-safe, between fork and exec: a write past the
    // limit fails with EFBIG instead of killing the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("RESULT err"),
        "the save did not fail: {stdout}"
    );
    // As before the save: no file under a generation name, the same metadata.
    assert!(files_of(&dir) == before, "{:?}", files_of(&dir).keys());
}

#[test]
fn rows_of_zero_bytes_are_appended_by_count() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s.npk");
    let mut np = NumPack::create(&dir, false).unwrap();
    np.save(&[ArrayInput {
        name: "z",
        dtype: DType::F32,
        shape: &[3, 0],
        data: &[],
    }])
    .unwrap();
    np.append_rows("z", &[], 2).unwrap();
    assert_eq!(
        NumPack::open(&dir).unwrap().view("z").unwrap().shape,
        [5, 0]
    );
    // Without a count, 0 bytes name no number of rows.
    let e = np.append("z", &[]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = np.append_rows("z", &[0; 4], 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
}
