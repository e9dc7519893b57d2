//! Every hostile input in `fixtures/malformed` is refused with a typed error that says what
//! is wrong and where; nothing panics and nothing is read outside the input.

use std::path::{Path, PathBuf};

use npkio::{ErrorKind, NumPack};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/malformed")
}

/// (case, expected kind, words the message must contain)
const NPK_CASES: &[(&str, ErrorKind, &[&str])] = &[
    (
        "bad_magic.npk",
        ErrorKind::Malformed,
        &["magic", "metadata.npkm"],
    ),
    (
        "bitmap_wrong_size.npk",
        ErrorKind::Malformed,
        &["deletion bitmap", "\"w\""],
    ),
    ("count_bomb.npk", ErrorKind::Malformed, &["array count"]),
    (
        "data_too_short.npk",
        ErrorKind::Malformed,
        &["shorter", "\"w\""],
    ),
    (
        "missing_data_file.npk",
        ErrorKind::Malformed,
        &["missing", "\"w\""],
    ),
    ("name_len_bomb.npk", ErrorKind::Malformed, &["name length"]),
    (
        "path_traversal.npk",
        ErrorKind::Malformed,
        &["leaves the directory"],
    ),
    (
        "segment_escape.npk",
        ErrorKind::Malformed,
        &["segment", "leaves the directory"],
    ),
    (
        "truncated_metadata.npk",
        ErrorKind::Malformed,
        &["more than the 9 bytes left"],
    ),
    (
        "unknown_dtype_code.npk",
        ErrorKind::Malformed,
        &["unknown dtype code 99", "\"w\""],
    ),
];

const ST_CASES: &[(&str, &[&str])] = &[
    (
        "bad_metadata_value.safetensors",
        &["not valid SafeTensors JSON"],
    ),
    (
        "header_len_past_eof.safetensors",
        &["past the end of the file"],
    ),
    ("header_over_limit.safetensors", &["100,000,000"]),
    ("hole.safetensors", &["gap"]),
    ("invalid_json.safetensors", &["JSON"]),
    ("offsets_out_of_bounds.safetensors", &["data_offsets"]),
    ("overlap.safetensors", &["overlap"]),
    (
        "shape_mismatch.safetensors",
        &["do not match", "array \"w\""],
    ),
    ("shape_overflow.safetensors", &["overflows", "array \"w\""]),
    (
        "truncated_len.safetensors",
        &["shorter than the 8-byte header length"],
    ),
    ("unknown_dtype.safetensors", &["not valid SafeTensors JSON"]),
];

#[test]
fn every_malformed_case_is_covered() {
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("cases.json")).unwrap()).unwrap();
    let covered: Vec<&str> = NPK_CASES
        .iter()
        .map(|c| c.0)
        .chain(ST_CASES.iter().map(|c| c.0))
        .collect();
    for name in cases.as_object().unwrap().keys() {
        assert!(covered.contains(&name.as_str()), "no test for {name}");
    }
}

#[test]
fn malformed_numpack_directories_are_refused() {
    for (case, kind, words) in NPK_CASES {
        let dir = fixtures().join(case);
        let err = open_and_read(&dir).expect_err(case);
        let msg = err.to_string();
        assert_eq!(err.kind(), *kind, "{case}: {msg}");
        assert!(
            msg.contains(case),
            "{case}: message does not name the directory: {msg}"
        );
        for w in *words {
            assert!(msg.contains(w), "{case}: {msg:?} lacks {w:?}");
        }
        // Converting it is refused the same way, and writes nothing.
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("out.safetensors");
        let e2 =
            npkio::to_safetensors_file(&dir, &target, None::<&[&str]>, None, 1 << 20).unwrap_err();
        assert_eq!(e2.kind(), *kind, "{case}: {e2}");
        assert!(!target.exists());
        assert_eq!(
            std::fs::read_dir(out.path()).unwrap().count(),
            0,
            "{case}: left files behind"
        );
    }
}

/// Opens a store and reads every array: a damaged array fails when it is read (the store
/// itself opens, so that its other arrays stay readable).
fn open_and_read(dir: &std::path::Path) -> npkio::Result<()> {
    let store = NumPack::open(dir)?;
    for name in store.names() {
        store.view(name)?;
    }
    Ok(())
}

#[test]
fn malformed_safetensors_files_are_refused() {
    for (case, words) in ST_CASES {
        let path = fixtures().join(case);
        let err = npkio::get_safetensors_metadata(&path).expect_err(case);
        let msg = err.to_string();
        assert_eq!(err.kind(), ErrorKind::Malformed, "{case}: {msg}");
        assert!(
            msg.contains(case),
            "{case}: message does not name the file: {msg}"
        );
        for w in *words {
            assert!(msg.contains(w), "{case}: {msg:?} lacks {w:?}");
        }
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("out.npk");
        let e2 = npkio::from_safetensors_file(&path, &target, None::<&[&str]>, false, 1 << 20)
            .unwrap_err();
        assert_eq!(e2.kind(), ErrorKind::Malformed, "{case}: {e2}");
        assert!(!target.exists(), "{case}: output created");
        assert!(npkio::iter_safetensors(&path, None::<&[&str]>).is_err());
    }
}

#[test]
fn symbolic_links_out_of_the_directory_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s.npk");
    let mut store = NumPack::create(&dir, false).unwrap();
    let data = [7u8; 16];
    store
        .save(&[npkio::ArrayInput {
            name: "w",
            dtype: npkio::DType::U8,
            shape: &[16],
            data: &data,
        }])
        .unwrap();
    drop(store);
    // A data file that is a link to a file inside the directory is fine.
    std::fs::rename(dir.join("data_w.npkd"), dir.join("real.bin")).unwrap();
    std::os::unix::fs::symlink("real.bin", dir.join("data_w.npkd")).unwrap();
    assert_eq!(NumPack::open(&dir).unwrap().view("w").unwrap().data, &data);
    // A link leading out of it is refused, whatever it points at.
    std::fs::write(tmp.path().join("secret"), [1u8; 16]).unwrap();
    std::fs::remove_file(dir.join("data_w.npkd")).unwrap();
    std::os::unix::fs::symlink("../secret", dir.join("data_w.npkd")).unwrap();
    let e = open_and_read(&dir).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed);
    assert!(e.to_string().contains("leads outside the directory"), "{e}");
    // Also through a linked directory on the way.
    std::fs::remove_file(dir.join("data_w.npkd")).unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("data_w.npkd"), data).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("sub")).unwrap();
    let meta_path = dir.join("metadata.npkm");
    let mut meta = npkio::internals::numpack::metadata::Metadata::decode(
        &std::fs::read(&meta_path).unwrap(),
        &meta_path,
    )
    .unwrap();
    meta.arrays[0].data_file = "sub/data_w.npkd".into();
    std::fs::write(&meta_path, meta.encode()).unwrap();
    let e = open_and_read(&dir).unwrap_err();
    assert!(e.to_string().contains("leads outside the directory"), "{e}");
}
