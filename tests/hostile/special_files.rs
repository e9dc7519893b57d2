//! Special and outside files where npkio expects a regular file of a directory: FIFOs,
//! devices, directories and links leading out are refused (or, for the sidecar, ignored) at
//! once: never a hang, never a read outside the directory, never an allocation sized by
//! what such a file claims.
//!
//! Each open runs in a thread watched by a channel: a regression that blocks on a FIFO
//! fails the test after a generous wait instead of hanging the suite.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::copy_dir;
use npkio::{ErrorKind, NumPack};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let c = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid path string.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {path:?}"
    );
}

fn relink(path: &Path, target: impl AsRef<Path>) {
    let _ = std::fs::remove_file(path);
    std::os::unix::fs::symlink(target, path).unwrap();
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

/// Opens the store and reads every array; the first error.
fn open_and_read(dir: PathBuf) -> npkio::Result<Vec<String>> {
    let store = NumPack::open(&dir)?;
    let names: Vec<String> = store.names().into_iter().map(str::to_string).collect();
    for n in &names {
        store.view(n)?;
    }
    Ok(names)
}

#[test]
fn special_files_in_a_numpack_directory() {
    type Setup = fn(&Path);
    // (case, damage, whole directory refused?, words in the message)
    let cases: &[(&str, Setup, bool, &str)] = &[
        (
            "FIFO metadata",
            |d| mkfifo(&d.join("metadata.npkm")),
            true,
            "FIFO",
        ),
        (
            "metadata linking to /dev/zero",
            |d| relink(&d.join("metadata.npkm"), "/dev/zero"),
            true,
            "outside",
        ),
        (
            "metadata linking outside",
            |d| {
                let out = d.parent().unwrap().join("meta-outside");
                std::fs::copy(d.join("metadata.npkm"), &out).unwrap();
                relink(&d.join("metadata.npkm"), &out);
            },
            true,
            "outside",
        ),
        (
            "metadata a directory",
            |d| {
                std::fs::remove_file(d.join("metadata.npkm")).unwrap();
                std::fs::create_dir(d.join("metadata.npkm")).unwrap();
            },
            true,
            "directory",
        ),
        (
            "FIFO data file",
            |d| mkfifo(&d.join("data_small.npkd")),
            false,
            "FIFO",
        ),
        (
            "data file a character device",
            |d| relink(&d.join("data_small.npkd"), "/dev/null"),
            false,
            "outside",
        ),
        (
            "FIFO segment manifest",
            |d| mkfifo(&d.join("data_big.npkseg")),
            false,
            "FIFO",
        ),
        (
            "FIFO segment file",
            |d| mkfifo(&d.join("data_big_segments/seg_000002.npkd")),
            false,
            "FIFO",
        ),
        (
            "segment directory linking outside",
            |d| {
                let out = d.parent().unwrap().join("segs-outside");
                std::fs::rename(d.join("data_big_segments"), &out).unwrap();
                relink(&d.join("data_big_segments"), &out);
            },
            false,
            "outside",
        ),
        (
            "FIFO bitmap",
            |d| mkfifo(&d.join("deleted_big.npkb")),
            false,
            "FIFO",
        ),
        (
            "bitmap linking outside",
            |d| {
                let out = d.parent().unwrap().join("bitmap-outside");
                std::fs::copy(d.join("deleted_big.npkb"), &out).unwrap();
                relink(&d.join("deleted_big.npkb"), &out);
            },
            false,
            "outside",
        ),
    ];
    for (case, setup, whole, words) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s.npk");
        copy_dir(&fixtures().join("numpack-0.7/segmented.npk"), &dir);
        setup(&dir);
        let d = dir.clone();
        let opened = without_hanging(case, move || NumPack::open(&d).map(|_| ()));
        assert_eq!(opened.is_err(), *whole, "{case}: {opened:?}");
        let e = without_hanging(case, move || open_and_read(dir)).expect_err(case);
        assert_eq!(e.kind(), ErrorKind::Malformed, "{case}: {e}");
        assert!(e.to_string().contains(words), "{case}: {e}");
    }
}

#[test]
fn links_inside_the_directory_are_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s.npk");
    copy_dir(&fixtures().join("numpack-0.7/segmented.npk"), &dir);
    let before = open_and_read(dir.clone()).unwrap();
    // The metadata, a bitmap and the segment directory, each a link to something inside.
    std::fs::rename(dir.join("metadata.npkm"), dir.join("meta.real")).unwrap();
    relink(&dir.join("metadata.npkm"), "meta.real");
    std::fs::rename(dir.join("deleted_big.npkb"), dir.join("bits.real")).unwrap();
    relink(&dir.join("deleted_big.npkb"), dir.join("bits.real"));
    std::fs::rename(dir.join("data_big_segments"), dir.join("segs.real")).unwrap();
    relink(&dir.join("data_big_segments"), "segs.real");
    assert_eq!(open_and_read(dir).unwrap(), before);
}

#[test]
fn a_sidecar_that_cannot_be_opened_safely_is_an_error_naming_it() {
    type Make<'a> = &'a dyn Fn(&Path);
    let special: [(&str, Make<'_>); 5] = [
        ("FIFO", &|p| mkfifo(p)),
        ("a link out of the directory", &|p| {
            relink(p, "/etc/hostname")
        }),
        ("a link to a device", &|p| relink(p, "/dev/zero")),
        ("a link to nothing outside", &|p| {
            relink(p, "/nonexistent/npkio.json")
        }),
        ("a link to nothing inside", &|p| relink(p, "gone.json")),
    ];
    for (case, make) in special {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s.npk");
        copy_dir(&fixtures().join("numpack-0.7/dropped.npk"), &dir);
        let _ = std::fs::remove_file(dir.join("npkio.json"));
        make(&dir.join("npkio.json"));
        let e = without_hanging(case, move || open_and_read(dir)).expect_err(case);
        assert_eq!(e.kind(), ErrorKind::Malformed, "{case}: {e}");
        assert!(e.to_string().contains("npkio.json"), "{case}: {e}");
    }
}

#[test]
fn metadata_larger_than_the_limit_is_refused_before_reading() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s.npk");
    copy_dir(&fixtures().join("numpack-0.7/dropped.npk"), &dir);
    // A sparse 1 GiB metadata file: refused by its size, nothing read or allocated.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("metadata.npkm"))
        .unwrap();
    f.set_len(1 << 30).unwrap();
    let e = NumPack::open(&dir).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed);
    assert!(e.to_string().contains("more than the"), "{e}");
}

#[test]
fn special_files_as_safetensors_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    // A FIFO given as the file.
    let fifo = tmp.path().join("m.safetensors");
    mkfifo(&fifo);
    let e = without_hanging("FIFO file", move || {
        npkio::get_safetensors_metadata(&fifo).map(|_| ())
    })
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    // A sharded checkpoint whose index is a FIFO, whose shard is a FIFO, or whose shard
    // links outside its directory.
    type Setup = fn(&Path);
    let cases: &[(&str, Setup, &str)] = &[
        (
            "FIFO index",
            |d| mkfifo(&d.join("model.safetensors.index.json")),
            "FIFO",
        ),
        (
            "FIFO shard",
            |d| mkfifo(&d.join("model-00001-of-00002.safetensors")),
            "FIFO",
        ),
        (
            "shard linking outside",
            |d| {
                let out = d.parent().unwrap().join("shard-outside");
                std::fs::copy(d.join("model-00001-of-00002.safetensors"), &out).unwrap();
                relink(&d.join("model-00001-of-00002.safetensors"), &out);
            },
            "outside",
        ),
    ];
    for (case, setup, words) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sharded");
        copy_dir(&fixtures().join("safetensors/sharded"), &dir);
        setup(&dir);
        let d = dir.clone();
        let e = without_hanging(case, move || {
            npkio::get_safetensors_metadata(&d).map(|_| ())
        })
        .expect_err(case);
        assert_eq!(e.kind(), ErrorKind::Malformed, "{case}: {e}");
        assert!(e.to_string().contains(words), "{case}: {e}");
    }
    // A shard linking to another file inside the directory is accepted.
    let dir = tmp.path().join("inside");
    copy_dir(&fixtures().join("safetensors/sharded"), &dir);
    std::fs::rename(
        dir.join("model-00001-of-00002.safetensors"),
        dir.join("first.real"),
    )
    .unwrap();
    relink(&dir.join("model-00001-of-00002.safetensors"), "first.real");
    npkio::get_safetensors_metadata(&dir).unwrap();
}

#[test]
fn a_bitmap_that_is_a_link_to_nothing_fails_its_array_instead_of_reading_dropped_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s.npk");
    copy_dir(&fixtures().join("numpack-0.7/dropped.npk"), &dir);
    relink(&dir.join("deleted_v.npkb"), "/nonexistent/deleted_v.npkb");
    let store = NumPack::open(&dir).unwrap();
    let e = store.view("v").expect_err("its rows cannot be known");
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    assert!(e.to_string().contains("deleted_v.npkb"), "{e}");
    store.view("untouched").unwrap();
}
