//! The `npkio` binary as a user runs it: every subcommand on the fixtures, `--json` read
//! back, `verify` finding planted differences, the exit codes, one-line errors on malformed
//! inputs, and the progress bar under a pseudo-terminal and when piped.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// The binary under test.
const NPKIO: &str = env!("CARGO_BIN_EXE_npkio");

/// What a run of the binary gave.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out: Output = Command::new(NPKIO)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the npkio binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Like [`run`], and the run must succeed silently on stderr.
fn ok<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let r = run(args);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stderr, "", "stderr not empty on success: {r:?}");
    r
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn expected(rel: &str) -> Value {
    let text = fs::read_to_string(fixture(rel)).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

fn inspect_json(path: &Path) -> Value {
    let r = ok([
        OsStr::new("inspect"),
        path.as_os_str(),
        OsStr::new("--json"),
    ]);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

/// An error run: the given exit code, nothing on stdout, exactly one line on stderr that
/// starts with `npkio: error:` and carries no panic or debug dump.
fn assert_one_line_error(r: &Run, code: i32) {
    assert_eq!(r.code, code, "{r:?}");
    assert_eq!(r.stdout, "", "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "not one line: {:?}", r.stderr);
    assert!(r.stderr.starts_with("npkio: error: "), "{:?}", r.stderr);
    for bad in ["panicked", "RUST_BACKTRACE", "Error {", "kind:"] {
        assert!(!r.stderr.contains(bad), "{bad:?} in {:?}", r.stderr);
    }
}

/// Offset of a SafeTensors file's data section.
fn data_start(bytes: &[u8]) -> usize {
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[..8]);
    8 + u64::from_le_bytes(n) as usize
}

/// Copies a SafeTensors file, replacing `from` by `to` (same length) in its header.
fn edit_header(src: &Path, dst: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mut bytes = fs::read(src).expect("read");
    let end = data_start(&bytes);
    let header = String::from_utf8(bytes[8..end].to_vec()).expect("utf-8 header");
    assert!(header.contains(from), "{from:?} not in {header}");
    let header = header.replacen(from, to, 1);
    bytes[8..end].copy_from_slice(header.as_bytes());
    fs::write(dst, bytes).expect("write");
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = fs::read(path).expect("read");
    bytes[at] ^= 0x40;
    fs::write(path, bytes).expect("write");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("list") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).expect("copy");
        }
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

// ---------------------------------------------------------------------------------------
// inspect

#[test]
fn inspect_table_shows_tensors_totals_and_metadata() {
    let r = ok([
        "inspect".as_ref(),
        fixture("safetensors/with_metadata.safetensors").as_os_str(),
    ]);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].starts_with("SafeTensors file "), "{}", r.stdout);
    assert!(r.stdout.contains("NAME"));
    let weight = lines
        .iter()
        .find(|l| l.starts_with("encoder.weight "))
        .expect("a row for encoder.weight");
    assert!(weight.contains("F32") && weight.contains("[32, 16]") && weight.contains("2.00 KiB"));
    assert!(r.stdout.contains("2 tensors, 2.06 KiB (2112 bytes)"));
    assert!(r
        .stdout
        .contains("metadata:\n  format: pt\n  framework: pytorch\n"));
}

#[test]
fn inspect_json_of_safetensors_fixtures_matches_the_reference() {
    let expect = expected("safetensors/expected.json");
    for file in [
        "all_dtypes.safetensors",
        "edge_cases.safetensors",
        "with_metadata.safetensors",
    ] {
        let path = fixture(&format!("safetensors/{file}"));
        let doc = inspect_json(&path);
        let want = &expect[file];
        assert_eq!(doc["format"], "safetensors");
        assert_eq!(doc["path"], path.to_string_lossy().as_ref());
        let tensors = doc["tensors"].as_array().expect("tensors");
        let want_tensors = want["tensors"].as_object().expect("tensors");
        assert_eq!(tensors.len(), want_tensors.len(), "{file}");
        let mut total = 0;
        for t in tensors {
            let name = t["name"].as_str().expect("name");
            let w = &want_tensors[name];
            assert_eq!(t["dtype"], w["dtype"], "{file} {name}");
            assert_eq!(t["shape"], w["shape"], "{file} {name}");
            let offsets = t["data_offsets"].as_array().expect("data_offsets");
            let len = offsets[1].as_u64().unwrap() - offsets[0].as_u64().unwrap();
            assert_eq!(t["bytes"].as_u64(), Some(len));
            total += len;
        }
        assert_eq!(doc["total_bytes"].as_u64(), Some(total));
        assert_eq!(
            doc["file_bytes"].as_u64(),
            Some(fs::metadata(&path).unwrap().len())
        );
        // The reference lists no metadata as {}.
        let metadata = match &doc["metadata"] {
            Value::Null => Value::Object(Default::default()),
            m => m.clone(),
        };
        assert_eq!(metadata, want["metadata"], "{file}");
    }
}

#[test]
fn inspect_json_keeps_metadata_order() {
    let doc = inspect_json(&fixture("safetensors/with_metadata.safetensors"));
    let keys: Vec<&String> = doc["metadata"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["format", "framework", "quantization"]);
}

#[test]
fn inspect_json_of_numpack_fixtures_matches_the_reference() {
    let expect = expected("numpack-0.7/expected.json");
    for dir in ["appended.npk", "basic.npk", "dropped.npk", "segmented.npk"] {
        let doc = inspect_json(&fixture(&format!("numpack-0.7/{dir}")));
        assert_eq!(doc["format"], "numpack");
        assert_eq!(doc["metadata"], Value::Null);
        let want = expect[dir].as_object().expect("arrays");
        let tensors = doc["tensors"].as_array().expect("tensors");
        assert_eq!(tensors.len(), want.len());
        for t in tensors {
            let name = t["name"].as_str().unwrap();
            let numpy = want[name]["dtype"].as_str().unwrap();
            let dtype = npkio::DType::from_numpy_name(numpy).expect("known dtype");
            assert_eq!(t["dtype"], dtype.to_string(), "{dir} {name}");
            assert_eq!(t["shape"], want[name]["shape"], "{dir} {name}");
        }
    }
    let dropped = inspect_json(&fixture("numpack-0.7/dropped.npk"));
    let v = &dropped["tensors"].as_array().unwrap()[1];
    assert_eq!(v["name"], "v");
    assert_eq!(v["deleted_rows"], 24);
    assert_eq!(v["storage_shape"], serde_json::json!([70]));
    assert_eq!(v["bytes"], 46 * 8);
    let segmented = inspect_json(&fixture("numpack-0.7/segmented.npk"));
    assert_eq!(segmented["tensors"][0]["segmented"], true);
}

#[test]
fn inspect_table_notes_numpack_storage_details() {
    let r = ok([
        "inspect".as_ref(),
        fixture("numpack-0.7/segmented.npk").as_os_str(),
    ]);
    assert!(r.stdout.starts_with("NumPack directory "));
    let big = r.stdout.lines().find(|l| l.starts_with("big ")).unwrap();
    assert!(big.contains("3 deleted rows, segmented"), "{big}");

    // BF16 has no NumPack code: it is stored as uint16, and the table says so.
    let t = tmp();
    let npk = t.path().join("all.npk");
    ok([
        "convert".as_ref(),
        fixture("safetensors/all_dtypes.safetensors").as_os_str(),
        npk.as_os_str(),
    ]);
    let r = ok(["inspect".as_ref(), npk.as_os_str()]);
    let bf16 = r.stdout.lines().find(|l| l.starts_with("bf16 ")).unwrap();
    assert!(
        bf16.contains("BF16") && bf16.contains("stored as U16"),
        "{bf16}"
    );
    let doc = inspect_json(&npk);
    let t = doc["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "bf16")
        .unwrap();
    assert_eq!(t["dtype"], "BF16");
    assert_eq!(t["storage_dtype"], "U16");
}

#[test]
fn inspect_escapes_control_characters_in_names() {
    let t = tmp();
    let src = fixture("safetensors/with_metadata.safetensors");
    let path = t.path().join("odd.safetensors");
    // "encoder.bias" becomes "e" newline "r.bia": the JSON escape keeps the header length.
    edit_header(&src, &path, "encoder.bias", "e\\u000ar.bia");
    let r = ok(["inspect".as_ref(), path.as_os_str()]);
    assert!(r.stdout.contains("\ne\\nr.bia "), "{}", r.stdout);
    assert!(!r.stdout.contains("e\nr.bia"));
}

#[test]
fn inspect_reads_headers_only_even_of_a_huge_file() {
    let t = tmp();
    let path = t.path().join("huge.safetensors");
    // 8 TiB: reading it at any speed this machine has would take far longer than the bound
    // below, which is generous enough for a loaded machine.
    let n: u64 = 8 << 40;
    let mut header = format!(r#"{{"w":{{"dtype":"U8","shape":[{n}],"data_offsets":[0,{n}]}}}}"#);
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    fs::write(&path, &bytes).unwrap();
    // Sparse: 8 TiB that occupy no disk.
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(bytes.len() as u64 + n).unwrap();
    let start = std::time::Instant::now();
    let doc = inspect_json(&path);
    assert_eq!(doc["total_bytes"].as_u64(), Some(n));
    assert!(start.elapsed().as_secs() < 60, "{:?}", start.elapsed());
}

// ---------------------------------------------------------------------------------------
// convert

/// The quick start of the README and docs/cli.md, as written there.
#[test]
fn quick_start_converts_the_shipped_model() {
    let t = tmp();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
    let npk = t.path().join("tiny.npk");
    ok(["convert".as_ref(), model.as_os_str(), npk.as_os_str()]);
    let r = ok(["inspect".as_ref(), npk.as_os_str()]);
    assert!(r.stdout.starts_with("NumPack directory "));
    assert!(
        r.stdout.contains("21 tensors, 258.25 KiB (264448 bytes)"),
        "{}",
        r.stdout
    );
    let lm_head = r
        .stdout
        .lines()
        .find(|l| l.starts_with("lm_head.weight "))
        .unwrap();
    assert!(
        lm_head.contains("BF16") && lm_head.contains("stored as U16"),
        "{lm_head}"
    );
    let r = ok(["verify".as_ref(), model.as_os_str(), npk.as_os_str()]);
    assert!(
        r.stdout
            .ends_with("equal: 21 tensors, 258.25 KiB compared\n"),
        "{}",
        r.stdout
    );
    let back = t.path().join("tiny-again.safetensors");
    ok(["convert".as_ref(), npk.as_os_str(), back.as_os_str()]);
    assert_eq!(fs::read(&model).unwrap(), fs::read(&back).unwrap());
}

#[test]
fn convert_round_trip_is_byte_identical_and_verifies() {
    let t = tmp();
    for file in [
        "all_dtypes.safetensors",
        "edge_cases.safetensors",
        "with_metadata.safetensors",
    ] {
        let src = fixture(&format!("safetensors/{file}"));
        let npk = t.path().join(format!("{file}.npk"));
        let back = t.path().join(file);
        ok(["convert".as_ref(), src.as_os_str(), npk.as_os_str()]);
        ok(["convert".as_ref(), npk.as_os_str(), back.as_os_str()]);
        assert_eq!(fs::read(&src).unwrap(), fs::read(&back).unwrap(), "{file}");
        let r = ok([
            "verify".as_ref(),
            src.as_os_str(),
            npk.as_os_str(),
            "--metadata".as_ref(),
        ]);
        assert!(r.stdout.lines().last().unwrap().starts_with("equal: "));
    }
}

#[test]
fn convert_numpack_with_dropped_rows_and_segments_verifies_equal() {
    let t = tmp();
    for dir in ["appended.npk", "dropped.npk", "segmented.npk"] {
        let src = fixture(&format!("numpack-0.7/{dir}"));
        let st = t.path().join(format!("{dir}.safetensors"));
        ok(["convert".as_ref(), src.as_os_str(), st.as_os_str()]);
        let r = ok(["verify".as_ref(), src.as_os_str(), st.as_os_str()]);
        assert!(r.stdout.contains("equal: "), "{}", r.stdout);
    }
}

#[test]
fn convert_tuning_options_give_the_same_file() {
    let t = tmp();
    let src = fixture("safetensors/all_dtypes.safetensors");
    let npk = t.path().join("a.npk");
    ok([
        "convert".as_ref(),
        src.as_os_str(),
        npk.as_os_str(),
        "--chunk-size=1KiB".as_ref(),
        "--threads=3".as_ref(),
        "--durable".as_ref(),
        "--method=read-write".as_ref(),
    ]);
    for method in ["auto", "mmap", "copy-file-range", "mmap-source"] {
        let back = t.path().join(format!("{method}.safetensors"));
        ok([
            "convert",
            npk.to_str().unwrap(),
            back.to_str().unwrap(),
            "--chunk-size",
            "100",
            "--method",
            method,
        ]);
        assert_eq!(
            fs::read(&src).unwrap(),
            fs::read(&back).unwrap(),
            "{method}"
        );
    }
}

#[test]
fn convert_keys_select_and_merge_unless_forced() {
    let t = tmp();
    let src = fixture("safetensors/with_metadata.safetensors");
    let npk = t.path().join("m.npk");
    let names = |p: &Path| -> Vec<String> {
        inspect_json(p)["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    ok([
        "convert".as_ref(),
        src.as_os_str(),
        npk.as_os_str(),
        "--keys".as_ref(),
        "encoder.bias".as_ref(),
    ]);
    assert_eq!(names(&npk), ["encoder.bias"]);
    // Without --force, a second conversion merges into the directory.
    ok([
        "convert".as_ref(),
        src.as_os_str(),
        npk.as_os_str(),
        "--keys".as_ref(),
        "encoder.weight".as_ref(),
    ]);
    assert_eq!(names(&npk), ["encoder.bias", "encoder.weight"]);
    // With --force, it replaces it.
    ok([
        "convert".as_ref(),
        src.as_os_str(),
        npk.as_os_str(),
        "--force".as_ref(),
        "--keys".as_ref(),
        "encoder.weight".as_ref(),
    ]);
    assert_eq!(names(&npk), ["encoder.weight"]);
    // NumPack -> SafeTensors with keys, in the order given.
    let st = t.path().join("w.safetensors");
    ok([
        "convert".as_ref(),
        npk.as_os_str(),
        st.as_os_str(),
        "--keys".as_ref(),
        "encoder.weight".as_ref(),
    ]);
    assert_eq!(names(&st), ["encoder.weight"]);
}

#[test]
fn convert_refuses_to_overwrite_a_safetensors_file_without_force() {
    let t = tmp();
    let npk = fixture("numpack-0.7/dropped.npk");
    let st = t.path().join("out.safetensors");
    fs::write(&st, b"precious").unwrap();
    let r = run(["convert".as_ref(), npk.as_os_str(), st.as_os_str()]);
    assert_one_line_error(&r, 5);
    assert!(r.stderr.contains("out.safetensors") && r.stderr.contains("--force"));
    assert_eq!(fs::read(&st).unwrap(), b"precious");
    ok([
        "convert".as_ref(),
        npk.as_os_str(),
        st.as_os_str(),
        "--force".as_ref(),
    ]);
    assert_eq!(inspect_json(&st)["tensors"].as_array().unwrap().len(), 3);
}

#[test]
fn convert_metadata_is_written_in_the_order_given() {
    let t = tmp();
    let npk = t.path().join("m.npk");
    let st = t.path().join("m.safetensors");
    ok([
        "convert".as_ref(),
        fixture("safetensors/with_metadata.safetensors").as_os_str(),
        npk.as_os_str(),
    ]);
    ok([
        "convert".as_ref(),
        npk.as_os_str(),
        st.as_os_str(),
        "--metadata".as_ref(),
        "zeta=last=first".as_ref(),
        "--metadata".as_ref(),
        "alpha=".as_ref(),
    ]);
    let doc = inspect_json(&st);
    let m = doc["metadata"].as_object().unwrap();
    let pairs: Vec<(&str, &str)> = m
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
        .collect();
    assert_eq!(pairs, [("zeta", "last=first"), ("alpha", "")]);
    // In the file itself, too.
    let bytes = fs::read(&st).unwrap();
    let header = String::from_utf8_lossy(&bytes[8..data_start(&bytes)]).into_owned();
    assert!(header.find("zeta").unwrap() < header.find("alpha").unwrap());
}

#[test]
fn convert_metadata_towards_numpack_is_a_usage_error() {
    let t = tmp();
    let npk = t.path().join("m.npk");
    let r = run([
        "convert".as_ref(),
        fixture("safetensors/with_metadata.safetensors").as_os_str(),
        npk.as_os_str(),
        "--metadata".as_ref(),
        "a=b".as_ref(),
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--metadata applies only"), "{}", r.stderr);
    assert!(!npk.exists());
}

#[test]
fn usage_errors_exit_2() {
    let st = fixture("safetensors/with_metadata.safetensors");
    let st = st.to_str().unwrap();
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["inspect"],
        vec!["inspect", st, "--bogus"],
        vec!["convert", st],
        vec!["convert", st, "x.npk", "--chunk-size", "12 parsecs"],
        vec!["convert", st, "x.npk", "--chunk-size", "0"],
        vec!["convert", st, "x.npk", "--threads", "-1"],
        vec!["convert", st, "x.npk", "--method", "teleport"],
        vec!["convert", st, "x.safetensors", "--metadata", "novalue"],
        vec!["verify", st],
    ] {
        let r = run(&args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains("error"), "{args:?}: {r:?}");
        assert!(!r.stderr.contains("panicked"));
    }
    let r = run(["convert", "x.npk", "y.safetensors", "--metadata", "k=1"]);
    assert_eq!(r.code, 4, "the input is checked first: {r:?}");
}

#[test]
fn duplicate_metadata_keys_are_a_usage_error() {
    let t = tmp();
    let r = run([
        "convert".as_ref(),
        fixture("numpack-0.7/dropped.npk").as_os_str(),
        t.path().join("x.safetensors").as_os_str(),
        "--metadata".as_ref(),
        "k=1".as_ref(),
        "--metadata".as_ref(),
        "k=2".as_ref(),
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("\"k\" twice"), "{}", r.stderr);
}

// ---------------------------------------------------------------------------------------
// verify

#[test]
fn verify_finds_a_flipped_byte() {
    let t = tmp();
    let src = fixture("safetensors/with_metadata.safetensors");
    let copy = t.path().join("flipped.safetensors");
    fs::copy(&src, &copy).unwrap();
    let bytes = fs::read(&copy).unwrap();
    let doc = inspect_json(&copy);
    let weight = doc["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "encoder.weight")
        .unwrap();
    let begin = weight["data_offsets"][0].as_u64().unwrap() as usize;
    flip_byte(&copy, data_start(&bytes) + begin + 12);

    let r = run(["verify".as_ref(), src.as_os_str(), copy.as_os_str()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout
            .contains("tensor \"encoder.weight\": bytes differ (first at byte 12)\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.ends_with("differ: 1 difference\n"), "{}", r.stdout);
    assert_eq!(r.stderr, "");
}

#[test]
fn verify_finds_a_flipped_byte_in_a_segment_past_deleted_rows() {
    let t = tmp();
    let src = fixture("numpack-0.7/segmented.npk");
    let st = t.path().join("seg.safetensors");
    ok(["convert".as_ref(), src.as_os_str(), st.as_os_str()]);
    let copy = t.path().join("seg.npk");
    copy_dir(&src, &copy);
    // The second run of active bytes of "big": its logical start is the first run's length.
    let store = npkio::NumPack::open(&copy).unwrap();
    let extents = store.array_extents("big").unwrap();
    assert!(extents.len() >= 2, "{extents:?}");
    let second = &extents[1];
    flip_byte(&copy.join(&second.file), (second.offset + 5) as usize);
    let at = extents[0].len + 5;
    drop(store);

    let r = run(["verify".as_ref(), st.as_os_str(), copy.as_os_str()]);
    assert_eq!(r.code, 1, "{r:?}");
    let want = format!("tensor \"big\": bytes differ (first at byte {at})\n");
    assert!(r.stdout.contains(&want), "{}", r.stdout);
}

#[test]
fn verify_finds_a_renamed_tensor() {
    let t = tmp();
    let src = fixture("safetensors/with_metadata.safetensors");
    let renamed = t.path().join("renamed.safetensors");
    edit_header(&src, &renamed, "\"encoder.bias\"", "\"encoder.bia2\"");
    let r = run(["verify".as_ref(), src.as_os_str(), renamed.as_os_str()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("only in A: \"encoder.bias\"\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("only in B: \"encoder.bia2\"\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.ends_with("differ: 2 differences\n"));
}

#[test]
fn verify_reports_dtype_and_shape_differences() {
    let t = tmp();
    let src = fixture("safetensors/with_metadata.safetensors");
    let dtype = t.path().join("dtype.safetensors");
    edit_header(&src, &dtype, "\"F32\"", "\"I32\"");
    let r = run(["verify".as_ref(), src.as_os_str(), dtype.as_os_str()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains(": dtype differs: F32 vs I32\n"),
        "{}",
        r.stdout
    );

    let shape = t.path().join("shape.safetensors");
    edit_header(&src, &shape, "[32,16]", "[16,32]");
    let r = run(["verify".as_ref(), src.as_os_str(), shape.as_os_str()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout
            .contains("tensor \"encoder.weight\": shape differs: [32, 16] vs [16, 32]\n"),
        "{}",
        r.stdout
    );
}

#[test]
fn verify_compares_metadata_only_when_asked() {
    let t = tmp();
    let src = fixture("safetensors/with_metadata.safetensors");
    let npk = t.path().join("m.npk");
    let st = t.path().join("m.safetensors");
    ok(["convert".as_ref(), src.as_os_str(), npk.as_os_str()]);
    ok([
        "convert".as_ref(),
        npk.as_os_str(),
        st.as_os_str(),
        "--metadata".as_ref(),
        "format=np".as_ref(),
        "--metadata".as_ref(),
        "extra=1".as_ref(),
    ]);
    ok(["verify".as_ref(), src.as_os_str(), st.as_os_str()]);
    let r = run([
        "verify".as_ref(),
        src.as_os_str(),
        st.as_os_str(),
        "--metadata".as_ref(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    for line in [
        "metadata \"format\" differs: \"pt\" vs \"np\"",
        "metadata: only in B: \"extra\"",
        "metadata: only in A: \"framework\"",
    ] {
        assert!(r.stdout.contains(line), "{line:?} not in {}", r.stdout);
    }
}

// ---------------------------------------------------------------------------------------
// errors and exit codes

#[test]
fn help_documents_the_exit_codes() {
    let r = ok(["--help"]);
    assert!(r.stdout.contains("Exit codes:"));
    for line in [
        "  1    verify",
        "  2    usage",
        "  6    malformed",
        "  10   busy",
    ] {
        assert!(r.stdout.contains(line), "{line:?} not in {}", r.stdout);
    }
}

#[test]
fn every_malformed_fixture_gives_a_one_line_error_and_exit_6() {
    let cases = expected("malformed/cases.json");
    let t = tmp();
    for name in cases.as_object().unwrap().keys() {
        let path = fixture(&format!("malformed/{name}"));
        let out = t.path().join(if name.ends_with(".npk") {
            "out.safetensors"
        } else {
            "out.npk"
        });
        let good = fixture("safetensors/with_metadata.safetensors");
        for args in [
            vec!["inspect".as_ref(), path.as_os_str()],
            vec!["inspect".as_ref(), path.as_os_str(), "--json".as_ref()],
            vec!["convert".as_ref(), path.as_os_str(), out.as_os_str()],
            vec!["verify".as_ref(), good.as_os_str(), path.as_os_str()],
        ] {
            let r = run(&args);
            assert_one_line_error(&r, 6);
            assert!(r.stderr.contains(name.as_str()), "{name}: {}", r.stderr);
            assert!(!out.exists(), "{name}: output written");
        }
    }
}

#[test]
fn exit_codes_by_error_kind() {
    let t = tmp();
    let st = fixture("safetensors/with_metadata.safetensors");

    // 3: I/O (sysfs refuses new files, even to root).
    if Path::new("/sys/kernel").is_dir() {
        let r = run(["convert".as_ref(), st.as_os_str(), "/sys/x.npk".as_ref()]);
        assert_one_line_error(&r, 3);
    }

    // 4: not found, naming the path.
    let missing = t.path().join("missing.safetensors");
    let r = run(["inspect".as_ref(), missing.as_os_str()]);
    assert_one_line_error(&r, 4);
    assert!(r.stderr.contains("missing.safetensors"));

    // 5: already exists (a file where a NumPack directory should go).
    let file = t.path().join("file.npk");
    fs::write(&file, b"x").unwrap();
    let r = run(["convert".as_ref(), st.as_os_str(), file.as_os_str()]);
    assert_one_line_error(&r, 5);

    // 7: key not found, naming the key.
    let r = run([
        "convert".as_ref(),
        st.as_os_str(),
        t.path().join("k.npk").as_os_str(),
        "--keys".as_ref(),
        "nope".as_ref(),
    ]);
    assert_one_line_error(&r, 7);
    assert!(r.stderr.contains("\"nope\""));

    // 8: unsupported: complex128 has no SafeTensors dtype.
    let r = run([
        "convert".as_ref(),
        fixture("numpack-0.7/basic.npk").as_os_str(),
        t.path().join("c.safetensors").as_os_str(),
    ]);
    assert_one_line_error(&r, 8);
    assert!(r.stderr.contains("complex128"));

    // 9: invalid argument: a directory that is not a NumPack directory.
    let r = run(["inspect".as_ref(), t.path().as_os_str()]);
    assert_one_line_error(&r, 9);
    assert!(r.stderr.contains("neither a NumPack directory"));
}

#[test]
fn malformed_sharded_index_gives_a_one_line_error() {
    let t = tmp();
    let index = t.path().join("model.safetensors.index.json");
    fs::write(
        &index,
        r#"{"metadata":{"total_size":4},"weight_map":{"w":"model-00001-of-00001.safetensors"}}"#,
    )
    .unwrap();
    for path in [index.as_path(), t.path()] {
        let r = run(["inspect".as_ref(), path.as_os_str()]);
        assert_one_line_error(&r, 6);
        assert!(
            r.stderr.contains("model-00001-of-00001.safetensors"),
            "{}",
            r.stderr
        );
    }
}

// ---------------------------------------------------------------------------------------
// sharded checkpoints

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

// ---------------------------------------------------------------------------------------
// the progress bar

/// Size of the file the progress tests convert: big enough for several redraws.
const BIG: u64 = 200 << 20;

/// A SafeTensors file of one `BIG`-byte F32 tensor of zeros, sparse, so it costs nothing.
fn big_file(dir: &Path) -> PathBuf {
    let path = dir.join("big.safetensors");
    let mut header = format!(
        r#"{{"big":{{"dtype":"F32","shape":[{}],"data_offsets":[0,{BIG}]}}}}"#,
        BIG / 4
    );
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    fs::write(&path, &bytes).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(bytes.len() as u64 + BIG).unwrap();
    path
}

/// Runs `npkio` with `args` under a pseudo-terminal (util-linux `script`) and returns all it
/// drew, or `None` where `script` is missing.
fn under_pty(args: &[&Path]) -> Option<String> {
    let quoted: Vec<String> = std::iter::once(Path::new(NPKIO))
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.display()))
        .collect();
    let out = Command::new("script")
        .args(["-qec", &quoted.join(" "), "/dev/null"])
        .env("TERM", "xterm")
        .env("COLUMNS", "100")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) => {
            assert!(out.status.success(), "{out:?}");
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Err(e) => {
            eprintln!("skipping the pseudo-terminal check: cannot run `script`: {e}");
            None
        }
    }
}

/// Text with ANSI escape sequences (`ESC [ ... letter`) removed.
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn progress_bar_draws_on_a_terminal_and_finishes_cleanly() {
    let t = tmp();
    let big = big_file(t.path());
    let npk = t.path().join("big.npk");
    let Some(screen) = under_pty(&[Path::new("convert"), &big, &npk]) else {
        return;
    };
    assert!(npk.join("metadata.npkm").is_file());
    // The bar was drawn: label, bar, byte counts of the total, rate and ETA.
    assert!(screen.contains("converting ["), "{screen:?}");
    assert!(screen.contains("/200.00 MiB"), "{screen:?}");
    assert!(screen.contains("/s, ETA "), "{screen:?}");
    // ... and cleared at the end (erase line), leaving only the summary line.
    let last_bar = screen.rfind("converting [").unwrap();
    let tail = &screen[last_bar..];
    assert!(tail.contains("\x1b[2K"), "bar not cleared: {tail:?}");
    let after = strip_ansi(&tail[tail.rfind("\x1b[2K").unwrap()..]);
    let after = after.trim_matches(|c| c == '\r' || c == '\n');
    assert!(
        after.starts_with("converted 1 tensor, 200.00 MiB in "),
        "{after:?}"
    );
    assert!(
        !after.contains('\n'),
        "more than the summary after the bar: {after:?}"
    );
}

#[test]
fn progress_bar_is_silenced_by_quiet_and_absent_when_piped() {
    let t = tmp();
    let big = big_file(t.path());
    let npk = t.path().join("big.npk");
    if let Some(screen) = under_pty(&[
        Path::new("convert"),
        &big,
        &npk,
        Path::new("--quiet"),
        Path::new("--force"),
    ]) {
        assert_eq!(strip_ansi(&screen).trim(), "", "{screen:?}");
    }
    // Piped (as under this test harness): nothing on stdout or stderr.
    let r = ok([
        "convert".as_ref(),
        big.as_os_str(),
        npk.as_os_str(),
        "--force".as_ref(),
    ]);
    assert_eq!(r.stdout, "");
}

#[test]
fn convert_no_wait_exits_10_when_the_output_is_busy() {
    use std::os::unix::io::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("busy.npk");
    // The output's lock: its directory's.
    let lock = std::fs::File::open(dir.path()).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_npkio"))
        .args(["convert", "--no-wait"])
        .arg(&src)
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(10));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("another conversion"), "{err}");
    assert!(!out.exists());
}

#[test]
fn convert_to_a_path_ending_in_a_slash_says_a_file_is_expected() {
    let t = tmp();
    let out = format!("{}/newdir/", t.path().display());
    let r = run([
        "convert".as_ref(),
        fixture("numpack-0.7/basic.npk").as_os_str(),
        OsStr::new(&out),
    ]);
    assert_one_line_error(&r, 9);
    assert!(
        r.stderr.contains("must be a .safetensors file path"),
        "{r:?}"
    );
    assert!(!t.path().join("newdir").exists());
}
