//! `npkio load` as a user runs it: whole and sharded loads report the bytes delivered,
//! bad arguments give the documented exit codes.

use std::path::Path;
use std::process::Command;

fn npkio(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_npkio"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/tiny-llama.safetensors")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn whole_and_sharded_loads_report_the_bytes_delivered() {
    let total = npkio::Checkpoint::open(model()).unwrap();
    let all: u64 = total.infos().map(|t| t.len()).sum();
    let (code, out, err) = npkio(&["load", &model()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("loaded 21 tensors: {all} bytes in ")),
        "{out}"
    );
    // Every tensor of the tiny model has an even dimension 0, so each half is exactly half.
    for rank in ["0", "1"] {
        for method in ["--direct", "--buffered"] {
            let shard = format!("0,{rank},2");
            let (code, out, err) = npkio(&["load", &model(), "--shard", &shard, method]);
            assert_eq!(code, 0, "{err}");
            assert!(out.contains(&format!(": {} bytes in ", all / 2)), "{out}");
        }
    }
    let (code, out, err) = npkio(&[
        "load",
        &model(),
        "--staging",
        "4KiB",
        "--keys",
        "lm_head.weight",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("loaded 1 tensors: 32768 bytes"), "{out}");
}

#[test]
fn bad_arguments_give_the_documented_exit_codes() {
    let (code, _, err) = npkio(&["load", &model(), "--keys", "nope"]);
    assert_eq!(code, 9, "{err}");
    assert!(
        err.contains("\"nope\"") && err.contains("no such tensor"),
        "{err}"
    );
    let (code, _, err) = npkio(&["load", &model(), "--direct", "--buffered"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = npkio(&["load", &model(), "--shard", "0,2,2"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = npkio(&["load", "/nonexistent/model.safetensors"]);
    assert_eq!(code, 4, "{err}");
}
