//! `inspect`, `convert` and `verify` on the fixtures: tables, `--json` read back, round
//! trips, and planted differences found.

use super::*;

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
