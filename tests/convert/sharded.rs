//! Sharded checkpoints: read through the index as one checkpoint, checked against it, and
//! written back in the `save_pretrained` layout.

use crate::common;

use std::path::{Path, PathBuf};

use common::{expected, fixtures, sha256, ALL};
use npkio::{ErrorKind, NumPack, Options};

fn sharded() -> PathBuf {
    fixtures().join("safetensors/sharded")
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn export(npk: &Path, out: &Path, limit: u64) {
    let mut opts = Options::default();
    opts.max_shard_size = Some(limit);
    npkio::to_safetensors_file_with(npk, out, ALL, None, &opts).unwrap();
}

#[test]
fn fixture_round_trips_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let npk = tmp.path().join("m.npk");
    // The directory, and the index file itself, are both accepted.
    npkio::from_safetensors_file(sharded(), &npk, ALL, false, 1 << 20).unwrap();
    npkio::from_safetensors_file(
        sharded().join("model.safetensors.index.json"),
        &npk,
        ALL,
        true,
        1 << 20,
    )
    .unwrap();
    let store = NumPack::open(&npk).unwrap();
    assert_eq!(store.len(), 4);
    assert_eq!(
        store.info("layers.0.weight").unwrap().dtype,
        npkio::DType::BF16
    );
    let out = tmp.path().join("out");
    export(&npk, &out, 200);
    assert_eq!(files(&out), files(&sharded()));
    // Into an existing directory, next to other files: same shards, config kept.
    let existing = tmp.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::write(existing.join("config.json"), b"{}").unwrap();
    std::fs::write(existing.join("model-00001-of-00003.safetensors"), b"stale").unwrap();
    export(&npk, &existing, 200);
    let mut want = files(&sharded());
    want.push(("config.json".into(), b"{}".to_vec()));
    want.sort();
    assert_eq!(files(&existing), want);
}

#[test]
fn metadata_and_iteration_span_shards() {
    let meta = npkio::get_safetensors_metadata(sharded()).unwrap();
    let names: Vec<&str> = meta.tensors.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "embed.weight",
            "layers.0.weight",
            "lm_head.weight",
            "layers.1.weight"
        ]
    );
    assert_eq!(
        meta.tensors[2].1.shard.as_deref(),
        Some("model-00002-of-00002.safetensors")
    );
    assert_eq!(meta.metadata, Some(vec![("format".into(), "pt".into())]));
    let exp = expected("safetensors");
    let mut seen = 0;
    for (name, t) in
        npkio::iter_safetensors(sharded(), Some(&["lm_head.weight", "embed.weight"])).unwrap()
    {
        let shard = meta
            .tensors
            .iter()
            .find(|m| m.0 == name)
            .unwrap()
            .1
            .shard
            .clone()
            .unwrap();
        let want = &exp[format!("sharded/{shard}")]["tensors"][&name];
        assert_eq!(sha256(t.data()), want["sha256"].as_str().unwrap(), "{name}");
        seen += 1;
    }
    assert_eq!(seen, 2);
    let e = npkio::iter_safetensors(sharded(), Some(&["nope"])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyNotFound);
}

#[test]
fn one_tensor_per_shard_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let npk = tmp.path().join("m.npk");
    npkio::from_safetensors_file(sharded(), &npk, ALL, false, 1 << 20).unwrap();
    let out = tmp.path().join("tiny");
    export(&npk, &out, 1);
    let written = files(&out);
    assert_eq!(written.len(), 5, "four shards and the index");
    for (name, bytes) in &written {
        if name.ends_with(".safetensors") {
            let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
            assert_eq!(st.len(), 1, "{name}");
        }
    }
    // And back again, to the same shards.
    let npk2 = tmp.path().join("m2.npk");
    npkio::from_safetensors_file(&out, &npk2, ALL, false, 1 << 20).unwrap();
    let again = tmp.path().join("again");
    export(&npk2, &again, 1);
    assert_eq!(files(&again), written);
    // Everything fits in one shard: a single model.safetensors, no index.
    let single = tmp.path().join("single");
    export(&npk, &single, 1 << 30);
    let names: Vec<String> = files(&single).into_iter().map(|f| f.0).collect();
    assert_eq!(names, ["model.safetensors"]);
}

/// Copies the fixture into a temp dir, lets `edit` change it, and returns the error.
fn broken(edit: impl FnOnce(&Path)) -> npkio::Error {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(sharded()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    edit(&dir);
    let err = npkio::get_safetensors_metadata(&dir).unwrap_err();
    let out = tmp.path().join("out.npk");
    assert!(npkio::from_safetensors_file(&dir, &out, ALL, false, 4096).is_err());
    assert!(!out.exists());
    err
}

fn edit_index(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("model.safetensors.index.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn index_inconsistencies_are_errors_naming_tensor_and_shard() {
    let e = broken(|d| {
        edit_index(d, |v| {
            v["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors".into()
        })
    });
    assert_eq!(
        (e.kind(), e.array_name()),
        (ErrorKind::Malformed, Some("lm_head.weight"))
    );
    assert!(
        e.to_string().contains("model-00002-of-00002.safetensors"),
        "{e}"
    );

    let e = broken(|d| std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap());
    assert!(
        e.to_string().contains("model-00002-of-00002.safetensors")
            && e.to_string().contains("missing"),
        "{e}"
    );

    let e = broken(|d| edit_index(d, |v| v["metadata"]["total_size"] = 999.into()));
    assert!(e.to_string().contains("total_size is 999"), "{e}");

    let e = broken(|d| {
        edit_index(d, |v| {
            v["weight_map"]
                .as_object_mut()
                .unwrap()
                .remove("layers.1.weight");
        })
    });
    assert_eq!(e.array_name(), Some("layers.1.weight"));
    assert!(e.to_string().contains("does not list"), "{e}");

    let e = broken(|d| {
        edit_index(d, |v| {
            v["weight_map"]["ghost"] = "model-00001-of-00002.safetensors".into()
        })
    });
    assert_eq!(e.array_name(), Some("ghost"));

    // The same tensor in two shards: the second shard is replaced by a copy of the first.
    let e = broken(|d| {
        std::fs::copy(
            d.join("model-00001-of-00002.safetensors"),
            d.join("model-00002-of-00002.safetensors"),
        )
        .unwrap();
    });
    assert_eq!(e.kind(), ErrorKind::Malformed);

    let e = broken(|d| {
        edit_index(d, |v| {
            v["weight_map"]["embed.weight"] = "../escape.safetensors".into()
        })
    });
    assert!(e.to_string().contains("not a file name"), "{e}");
}

/// Readers opening a sharded checkpoint while it is exported again and again into its
/// directory (each export replacing every shard, values telling the two checkpoints apart)
/// get the old checkpoint or the new one whole, or an error saying it changed: never the
/// tensors of one with those of the other.
#[test]
fn readers_of_a_checkpoint_being_exported_again_never_see_a_mix() {
    let tmp = tempfile::tempdir().unwrap();
    let names = ["t0", "t1", "t2", "t3"];
    let stores: Vec<PathBuf> = [1u8, 2]
        .iter()
        .map(|&v| {
            let data = vec![v; 4096];
            let inputs: Vec<npkio::ArrayInput> = names
                .iter()
                .map(|n| npkio::ArrayInput {
                    name: n,
                    dtype: npkio::DType::U8,
                    shape: &[4096],
                    data: &data,
                })
                .collect();
            let p = tmp.path().join(format!("v{v}.npk"));
            npkio::from_safetensors(&inputs, &p, false).unwrap();
            p
        })
        .collect();
    let out = tmp.path().join("out");
    // One tensor a shard.
    export(&stores[0], &out, 4096);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (out, done) = (out.clone(), done.clone());
            std::thread::spawn(move || {
                let (mut whole, mut changed) = (0u32, 0u32);
                while !done.load(std::sync::atomic::Ordering::Relaxed) || whole == 0 {
                    let c = match npkio::Checkpoint::open(&out) {
                        Ok(c) => c,
                        Err(e) => {
                            assert!(
                                matches!(e.kind(), ErrorKind::Busy | ErrorKind::InvalidArgument),
                                "{e}"
                            );
                            changed += 1;
                            continue;
                        }
                    };
                    let values: Vec<u8> = (0..c.len()).map(|i| c.view(i).data[0]).collect();
                    assert_eq!(values.len(), 4);
                    assert!(
                        values.iter().all(|&v| v == values[0]),
                        "a mix of two checkpoints: {values:?}"
                    );
                    whole += 1;
                }
                (whole, changed)
            })
        })
        .collect();
    for k in 0..120 {
        export(&stores[(k + 1) % 2], &out, 4096);
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        let (whole, changed) = r.join().unwrap();
        eprintln!("{whole} whole checkpoints read, {changed} opens failed as changed");
    }
}

#[test]
fn a_model_directory_is_a_checkpoint_for_every_entry_point() {
    use std::ffi::CString;
    use std::process::Command;

    use npkio::ffi::*;

    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("config.json"), b"{}").unwrap();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
    std::fs::copy(&file, model.join("model.safetensors")).unwrap();
    let names = |l: &npkio::load::Loader| -> Vec<String> {
        l.tensors().iter().map(|t| t.name.clone()).collect()
    };
    let want = names(&npkio::load::Loader::open(&file).unwrap());

    // Rust: what the directory is, and the loader and reader open the file inside it.
    assert_eq!(
        npkio::Container::detect(&model).unwrap(),
        npkio::Container::SafeTensors
    );
    assert_eq!(names(&npkio::load::Loader::open(&model).unwrap()), want);
    assert_eq!(
        npkio::get_safetensors_metadata(&model)
            .unwrap()
            .tensors
            .len(),
        want.len()
    );

    // C: the loader and the SafeTensors handle.
    let c = CString::new(model.to_str().unwrap()).unwrap();
    let (mut l, mut st, mut n) = (std::ptr::null_mut(), std::ptr::null_mut(), 0usize);
    // SAFETY: valid C string and out-pointers; the handles are freed below.
    unsafe {
        assert_eq!(npkio_load_open(c.as_ptr(), &mut l), NpkioStatus::Ok);
        assert_eq!(npkio_load_count(l, &mut n), NpkioStatus::Ok);
        assert_eq!(n, want.len());
        assert_eq!(npkio_safetensors_open(c.as_ptr(), &mut st), NpkioStatus::Ok);
        assert_eq!(npkio_safetensors_count(st, &mut n), NpkioStatus::Ok);
        assert_eq!(n, want.len());
        npkio_load_free(l);
        npkio_safetensors_free(st);
    }

    // The command line: inspect, and convert to NumPack and back.
    let cli = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_npkio"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    cli(&["inspect".as_ref(), model.as_os_str()]);
    let npk = tmp.path().join("m.npk");
    let back = tmp.path().join("back.safetensors");
    cli(&["convert".as_ref(), model.as_os_str(), npk.as_os_str()]);
    cli(&["convert".as_ref(), npk.as_os_str(), back.as_os_str()]);
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&file).unwrap());
}
