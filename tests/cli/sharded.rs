//! Sharded checkpoints on the command line.

use super::*;

#[test]
fn inspect_sharded_checkpoint_by_index_or_directory() {
    let expect = expected("safetensors/expected.json");
    let dir = fixture("safetensors/sharded");
    for path in [dir.join("model.safetensors.index.json"), dir.clone()] {
        let doc = inspect_json(&path);
        assert_eq!(doc["format"], "safetensors");
        assert_eq!(doc["sharded"], true);
        let shards: Vec<&str> = doc["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["file"].as_str().unwrap())
            .collect();
        assert_eq!(
            shards,
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
        let tensors = doc["tensors"].as_array().unwrap();
        assert_eq!(tensors.len(), 4);
        for t in tensors {
            let shard = t["shard"].as_str().unwrap();
            let want = &expect[format!("sharded/{shard}")]["tensors"][t["name"].as_str().unwrap()];
            assert_eq!(t["dtype"], want["dtype"]);
            assert_eq!(t["shape"], want["shape"]);
        }
        assert_eq!(doc["total_bytes"], 384);
        assert_eq!(doc["metadata"]["format"], "pt");
    }
    let r = ok(["inspect".as_ref(), dir.as_os_str()]);
    assert!(r
        .stdout
        .starts_with("sharded SafeTensors checkpoint (2 shards) "));
    assert!(r.stdout.contains("SHARD"));
    let single = inspect_json(&fixture("safetensors/with_metadata.safetensors"));
    assert_eq!(single["sharded"], false);
    assert!(single.get("shards").is_none());
}

#[test]
fn convert_sharded_round_trip_is_byte_identical() {
    let t = tmp();
    let src = fixture("safetensors/sharded");
    let npk = t.path().join("s.npk");
    let out = t.path().join("out");
    ok(["convert".as_ref(), src.as_os_str(), npk.as_os_str()]);
    ok([
        "convert".as_ref(),
        npk.as_os_str(),
        out.as_os_str(),
        "--max-shard-size".as_ref(),
        "200B".as_ref(),
    ]);
    for f in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ] {
        assert_eq!(
            fs::read(src.join(f)).unwrap(),
            fs::read(out.join(f)).unwrap(),
            "{f}"
        );
    }
    let r = ok([
        "verify".as_ref(),
        src.as_os_str(),
        out.as_os_str(),
        "--metadata".as_ref(),
    ]);
    assert!(
        r.stdout.contains("(sharded safetensors, 2 shards)"),
        "{}",
        r.stdout
    );

    // Weights already there: only with --force.
    let again = [
        "convert".as_ref(),
        npk.as_os_str(),
        out.as_os_str(),
        "--max-shard-size".as_ref(),
        "1MiB".as_ref(),
    ];
    assert_one_line_error(&run(again), 5);
    ok(again.into_iter().chain(["--force".as_ref()]));
    assert!(out.join("model.safetensors").is_file());
    assert!(!out.join("model.safetensors.index.json").exists());

    // A shard size means nothing towards NumPack.
    let r = run([
        "convert".as_ref(),
        src.as_os_str(),
        t.path().join("x.npk").as_os_str(),
        "--max-shard-size".as_ref(),
        "1MiB".as_ref(),
    ]);
    assert_eq!(r.code, 2, "{r:?}");
}
