//! Exports from stores of many arrays, whose data files the copy workers open as they reach
//! them: one bad data file among many (short, missing, a FIFO, a link leading out) fails the
//! export with an error naming the file and the array, writes nothing, and leaves the store
//! readable; under a low open-file limit (a child process, as `ulimit -n` sets it) the same
//! holds, and a good export is byte-identical to one without the limit.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use npkio::{ArrayInput, DType, ErrorKind, NumPack};

const NPKIO: &str = env!("CARGO_BIN_EXE_npkio");

/// A store of `n` small F32 arrays `t.NNNN`; their bytes.
fn make_store(dir: &Path, n: usize) -> Vec<(String, Vec<u8>)> {
    let data: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let len = 4 * (1 + i % 5);
            let bytes = (0..len).map(|j| (i * 7 + j) as u8).collect();
            (format!("t.{i:04}"), bytes)
        })
        .collect();
    let shapes: Vec<[u64; 1]> = data.iter().map(|(_, b)| [b.len() as u64 / 4]).collect();
    let inputs: Vec<ArrayInput<'_>> = data
        .iter()
        .zip(&shapes)
        .map(|((name, bytes), shape)| ArrayInput {
            name,
            dtype: DType::F32,
            shape,
            data: bytes,
        })
        .collect();
    npkio::from_safetensors(&inputs, dir, false).unwrap();
    data
}

/// The data file of array `name`.
fn data_file(dir: &Path, name: &str) -> PathBuf {
    let store = NumPack::open(dir).unwrap();
    dir.join(
        &npkio::internals::numpack::record(&store, name)
            .unwrap()
            .data_file,
    )
}

/// Runs `f` in a thread; panics if it has not returned after a long wait (a hang).
fn without_hanging<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("{what}: still blocked"))
}

type Damage = fn(&Path);

/// (case, damage to the data file, words in the message)
const CASES: &[(&str, Damage, &str)] = &[
    (
        "short",
        |f| {
            let file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
            file.set_len(2).unwrap();
        },
        "shorter",
    ),
    ("missing", |f| std::fs::remove_file(f).unwrap(), "missing"),
    ("a FIFO", crate::common::mkfifo, "FIFO"),
    (
        "a link leading out",
        |f| {
            let outside = f.parent().unwrap().parent().unwrap().join("outside.bin");
            std::fs::write(&outside, [0u8; 64]).unwrap();
            std::fs::remove_file(f).unwrap();
            std::os::unix::fs::symlink(&outside, f).unwrap();
        },
        "outside",
    ),
];

const COUNT: usize = 600;
const BAD: &str = "t.0417";

#[test]
fn one_bad_data_file_among_many_fails_the_export_alone() {
    for (what, damage, words) in CASES {
        let tmp = tempfile::tempdir().unwrap();
        let npk = tmp.path().join("m.npk");
        let data = make_store(&npk, COUNT);
        let bad = data_file(&npk, BAD);
        damage(&bad);
        let (dir, out) = (npk.clone(), tmp.path().join("all.safetensors"));
        let e = without_hanging(what, move || {
            npkio::to_safetensors_file(&dir, &out, None::<&[&str]>, None, 1 << 20).unwrap_err()
        });
        assert_eq!(e.kind(), ErrorKind::Malformed, "{what}: {e}");
        assert_eq!(e.array_name(), Some(BAD), "{what}: {e}");
        let shown = e.to_string();
        assert!(shown.contains(words), "{what}: {shown}");
        let file_name = bad.file_name().unwrap().to_str().unwrap();
        assert!(shown.contains(file_name), "{what}: {shown}");
        assert!(!tmp.path().join("all.safetensors").exists(), "{what}");
        // Nothing left beside the output either.
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "m.npk" && n != "outside.bin")
            .collect();
        assert!(left.is_empty(), "{what}: {left:?}");

        // The store opens, lists the array, and reads every other one.
        let dir = npk.clone();
        let store = without_hanging(what, move || NumPack::open(&dir).unwrap());
        assert_eq!(store.len(), COUNT);
        assert!(store.contains(BAD));
        let e = store.view(BAD).expect_err(what);
        assert_eq!(e.array_name(), Some(BAD), "{what}: {e}");
        assert!(store.info(BAD).is_err(), "{what}");
        for (name, bytes) in data.iter().filter(|(n, _)| n != BAD) {
            assert_eq!(store.view(name).unwrap().data, &bytes[..], "{what}: {name}");
        }
        // An export of the others works and holds their bytes.
        let others: Vec<&str> = data
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| *n != BAD)
            .collect();
        let out = tmp.path().join("others.safetensors");
        npkio::to_safetensors_file(&npk, &out, Some(&others), None, 1 << 20).unwrap();
        let st = npkio::SafeTensorsFile::open(&out).unwrap();
        assert_eq!(st.len(), COUNT - 1);
        for (name, bytes) in data.iter().filter(|(n, _)| n != BAD) {
            assert_eq!(st.get(name).unwrap().data, &bytes[..], "{what}: {name}");
        }
    }
}

/// Runs `npkio convert` with `RLIMIT_NOFILE` set to `limit` (soft and hard).
fn convert_limited(limit: u64, from: &Path, to: &Path) -> std::process::Output {
    let mut cmd = Command::new(NPKIO);
    cmd.arg("convert")
        .arg(from)
        .arg(to)
        .arg("--quiet")
        .stdin(Stdio::null())
        .env_remove("RUST_BACKTRACE");
    crate::common::limit_child(&mut cmd, libc::RLIMIT_NOFILE, limit);
    cmd.output().expect("the npkio binary runs")
}

#[test]
fn exports_under_a_low_open_file_limit_open_sources_as_they_go() {
    let tmp = tempfile::tempdir().unwrap();
    let npk = tmp.path().join("m.npk");
    make_store(&npk, COUNT);
    let reference = tmp.path().join("reference.safetensors");
    npkio::to_safetensors_file(&npk, &reference, None::<&[&str]>, None, 1 << 20).unwrap();
    // Every source open at once would need 600 descriptors.
    for limit in [32u64, 64] {
        let out = tmp.path().join(format!("out-{limit}.safetensors"));
        let run = convert_limited(limit, &npk, &out);
        assert!(
            run.status.success(),
            "under {limit}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&reference).unwrap(),
            "under {limit}"
        );
    }
    // One bad source among them: the export fails naming it and writes nothing.
    for (what, damage, words) in CASES {
        let tmp = tempfile::tempdir().unwrap();
        let npk = tmp.path().join("m.npk");
        make_store(&npk, COUNT);
        damage(&data_file(&npk, BAD));
        let out = tmp.path().join("out.safetensors");
        let run = convert_limited(32, &npk, &out);
        assert!(!run.status.success(), "{what}");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains(BAD), "{what}: {stderr}");
        assert!(stderr.contains(words), "{what}: {stderr}");
        assert!(!out.exists(), "{what}");
    }
}
