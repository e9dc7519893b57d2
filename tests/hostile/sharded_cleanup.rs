//! A sharded export into a directory removes the weights of the checkpoint it replaces and
//! nothing else: only files the previous index named, or named exactly
//! `model-NNNNN-of-NNNNN.safetensors` (or `model.safetensors`), and only regular files:
//! never a user's look-alike name, a directory, a symbolic link or what a link points at.

use std::path::Path;

use npkio::ArrayInput;
use npkio::{DType, NumPack, Options};

fn store(dir: &Path) {
    let data: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 16]).collect();
    let names: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
    let inputs: Vec<ArrayInput<'_>> = names
        .iter()
        .zip(&data)
        .map(|(name, d)| ArrayInput {
            name,
            dtype: DType::U8,
            shape: &[16],
            data: d,
        })
        .collect();
    let mut s = NumPack::create(dir, true).unwrap();
    s.save(&inputs).unwrap();
}

fn export(npk: &Path, out: &Path, max: u64) {
    let mut opts = Options::default();
    opts.max_shard_size = Some(max);
    npkio::to_safetensors_file_with(npk, out, None::<&[&str]>, None, &opts).unwrap();
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn only_the_earlier_checkpoint_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let npk = tmp.path().join("s.npk");
    store(&npk);
    let out = tmp.path().join("model");
    export(&npk, &out, 32); // 4 shards
    assert!(out.join("model-00004-of-00004.safetensors").is_file());
    // A user's files that look like weights, but are not the checkpoint's.
    let user_files = [
        "model-best-of-3.safetensors",
        "model-00001-of-00002.safetensors.bak",
        "model-1-of-2.safetensors",
        "model-000001-of-000004.safetensors",
        "model-00003-of-00004.safetensors~",
        "mymodel-00001-of-00004.safetensors",
        "config.json",
    ];
    for f in user_files {
        std::fs::write(out.join(f), f).unwrap();
    }
    // A directory and a link with exact shard names; the link points outside.
    std::fs::create_dir(out.join("model-00009-of-00009.safetensors")).unwrap();
    std::fs::write(out.join("model-00009-of-00009.safetensors/keep"), "x").unwrap();
    let outside = tmp.path().join("outside.safetensors");
    std::fs::write(&outside, "not mine to remove").unwrap();
    std::os::unix::fs::symlink(&outside, out.join("model-00008-of-00009.safetensors")).unwrap();

    export(&npk, &out, 64); // 2 shards
    let after = listing(&out);
    for k in 1..=4 {
        let old = format!("model-{k:05}-of-00004.safetensors");
        assert!(!after.contains(&old), "{old} left: {after:?}");
    }
    for k in 1..=2 {
        assert!(after.contains(&format!("model-{k:05}-of-00002.safetensors")));
    }
    for f in user_files {
        assert_eq!(std::fs::read_to_string(out.join(f)).unwrap(), f, "{f}");
    }
    assert!(out.join("model-00009-of-00009.safetensors/keep").is_file());
    assert!(
        std::fs::symlink_metadata(out.join("model-00008-of-00009.safetensors"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_to_string(&outside).unwrap(),
        "not mine to remove"
    );
    // The checkpoint reads back whole.
    assert_eq!(
        npkio::get_safetensors_metadata(&out).unwrap().tensors.len(),
        8
    );

    // Everything in one file: model.safetensors, the index and the shards gone, the
    // user's files still there.
    export(&npk, &out, 1 << 20);
    let after = listing(&out);
    assert!(after.contains(&"model.safetensors".to_string()));
    assert!(!after.iter().any(|f| f.ends_with("-of-00002.safetensors")));
    assert!(!after.contains(&"model.safetensors.index.json".to_string()));
    for f in user_files {
        assert!(after.contains(&f.to_string()), "{f} removed");
    }
}

#[test]
fn shards_the_previous_index_named_are_removed_whatever_their_names() {
    let tmp = tempfile::tempdir().unwrap();
    let npk = tmp.path().join("s.npk");
    store(&npk);
    // A checkpoint written by another tool, with its own shard names, and an index that
    // also names paths outside the directory (never touched).
    let out = tmp.path().join("model");
    let other = tmp.path().join("other");
    export(&npk, &other, 64);
    std::fs::create_dir(&out).unwrap();
    std::fs::copy(
        other.join("model-00001-of-00002.safetensors"),
        out.join("weights-a.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        other.join("model-00002-of-00002.safetensors"),
        out.join("weights-b.safetensors"),
    )
    .unwrap();
    std::fs::write(out.join("weights-c.safetensors"), "not in the index").unwrap();
    let victim = tmp.path().join("victim.safetensors");
    std::fs::write(&victim, "outside").unwrap();
    let index = r#"{"metadata": {"total_size": 128}, "weight_map": {
        "t0": "weights-a.safetensors", "t1": "weights-a.safetensors",
        "t2": "weights-a.safetensors", "t3": "weights-a.safetensors",
        "t4": "weights-b.safetensors", "t5": "weights-b.safetensors",
        "t6": "../victim.safetensors", "t7": "config.json"}}"#;
    std::fs::write(out.join("config.json"), "{}").unwrap();
    std::fs::write(out.join("model.safetensors.index.json"), index).unwrap();

    export(&npk, &out, 64);
    let after = listing(&out);
    assert!(
        !after.contains(&"weights-a.safetensors".to_string()),
        "{after:?}"
    );
    assert!(
        !after.contains(&"weights-b.safetensors".to_string()),
        "{after:?}"
    );
    assert!(after.contains(&"weights-c.safetensors".to_string()));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "outside");
    assert_eq!(
        npkio::get_safetensors_metadata(&out).unwrap().tensors.len(),
        8
    );
}
