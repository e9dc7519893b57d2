//! Conversions under a low open-file limit: the command line run as a child whose
//! `RLIMIT_NOFILE` (soft and hard, as `ulimit -n` sets them) is 64, on 1000 tensors, both
//! directions, byte-identical to the same conversions without the limit.

use std::path::Path;
use std::process::{Command, Stdio};

use npkio::ArrayInput;
use npkio::{DType, NumPack};

use crate::common;

const NPKIO: &str = env!("CARGO_BIN_EXE_npkio");

/// Runs the binary with `RLIMIT_NOFILE` set to `limit` (soft and hard).
fn run_limited(limit: u64, args: &[&Path]) -> std::process::Output {
    let mut cmd = Command::new(NPKIO);
    cmd.arg("convert")
        .args(args)
        .arg("--quiet")
        .stdin(Stdio::null())
        .env_remove("RUST_BACKTRACE");
    common::limit_child(&mut cmd, libc::RLIMIT_NOFILE, limit);
    cmd.output().expect("the npkio binary runs")
}

/// A store of `n` small arrays of several dtypes and shapes.
fn make_store(dir: &Path, n: usize) -> Vec<(String, Vec<u8>)> {
    let mut data = Vec::new();
    for i in 0..n {
        let len = 4 * (1 + i % 7);
        let bytes: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
        data.push((format!("layer.{i:04}.weight"), bytes));
    }
    let shapes: Vec<[u64; 1]> = data.iter().map(|(_, b)| [b.len() as u64 / 4]).collect();
    let inputs: Vec<ArrayInput<'_>> = data
        .iter()
        .zip(&shapes)
        .enumerate()
        .map(|(i, ((name, bytes), shape))| ArrayInput {
            name,
            dtype: if i % 2 == 0 { DType::F32 } else { DType::I32 },
            shape,
            data: bytes,
        })
        .collect();
    npkio::from_safetensors(&inputs, dir, false).unwrap();
    data
}

#[test]
fn a_thousand_tensors_convert_both_ways_under_64_open_files() {
    let tmp = tempfile::tempdir().unwrap();
    let npk = tmp.path().join("src.npk");
    let data = make_store(&npk, 1000);
    // Reference conversions, in this process (no limit).
    let reference = tmp.path().join("reference.safetensors");
    npkio::to_safetensors_file(&npk, &reference, None::<&[&str]>, None, 1 << 20).unwrap();

    for limit in [64u64, 100] {
        // NumPack to SafeTensors under the limit.
        let st = tmp.path().join(format!("out-{limit}.safetensors"));
        let out = run_limited(limit, &[&npk, &st]);
        assert!(
            out.status.success(),
            "export under {limit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(&st).unwrap(),
            std::fs::read(&reference).unwrap(),
            "export under {limit} differs"
        );

        // SafeTensors to NumPack under the limit, then every array compared.
        let back = tmp.path().join(format!("back-{limit}.npk"));
        let out = run_limited(limit, &[&reference, &back]);
        assert!(
            out.status.success(),
            "import under {limit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let store = NumPack::open(&back).unwrap();
        assert_eq!(store.len(), data.len());
        for (name, bytes) in &data {
            assert_eq!(store.view(name).unwrap().data, &bytes[..], "{name}");
        }
        // And that directory exported again is the reference, byte for byte.
        let again = tmp.path().join(format!("again-{limit}.safetensors"));
        let out = run_limited(limit, &[&back, &again]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(&again).unwrap(),
            std::fs::read(&reference).unwrap()
        );
    }
}

#[test]
fn a_sharded_export_of_many_shards_works_under_64_open_files() {
    let tmp = tempfile::tempdir().unwrap();
    let npk = tmp.path().join("src.npk");
    make_store(&npk, 300);
    let reference = tmp.path().join("reference");
    let mut opts = npkio::Options::default();
    opts.max_shard_size = Some(64);
    npkio::to_safetensors_file_with(&npk, &reference, None::<&[&str]>, None, &opts).unwrap();
    let shards = std::fs::read_dir(&reference).unwrap().count();
    assert!(shards > 64, "{shards} files");
    let out_dir = tmp.path().join("limited");
    let mut cmd = Command::new(NPKIO);
    cmd.arg("convert")
        .arg(&npk)
        .arg(&out_dir)
        .args(["--max-shard-size", "64", "--quiet"])
        .stdin(Stdio::null());
    common::limit_child(&mut cmd, libc::RLIMIT_NOFILE, 64);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<_> = std::fs::read_dir(&reference)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for n in names {
        assert_eq!(
            std::fs::read(reference.join(&n)).unwrap(),
            std::fs::read(out_dir.join(&n)).unwrap(),
            "{n:?}"
        );
    }
}
