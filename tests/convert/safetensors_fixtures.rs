//! Files written by the safetensors serializer convert to NumPack and back byte-identical,
//! and the NumPack side is what the format says a NumPack 0.7 reader sees.

use crate::common;

use std::path::Path;

use common::{expected, fixtures, sha256, shape_of, ALL};
use npkio::internals::numpack::metadata::{Metadata, FILE_NAME};
use npkio::internals::numpack::sidecar::Sidecar;
use npkio::{DType, NumPack};

const FILES: [&str; 3] = ["all_dtypes", "with_metadata", "edge_cases"];

fn src(name: &str) -> std::path::PathBuf {
    fixtures()
        .join("safetensors")
        .join(format!("{name}.safetensors"))
}

#[test]
fn every_fixture_round_trips_byte_identical() {
    let out = tempfile::tempdir().unwrap();
    for f in FILES {
        let npk = out.path().join(format!("{f}.npk"));
        let back = out.path().join(format!("{f}.safetensors"));
        npkio::from_safetensors_file(src(f), &npk, ALL, false, npkio::DEFAULT_CHUNK_SIZE).unwrap();
        npkio::to_safetensors_file(&npk, &back, ALL, None, npkio::DEFAULT_CHUNK_SIZE).unwrap();
        assert!(
            std::fs::read(src(f)).unwrap() == std::fs::read(&back).unwrap(),
            "{f} differs after a round trip"
        );
    }
}

#[test]
fn tensors_match_expected_json_on_both_sides() {
    let exp = expected("safetensors");
    let out = tempfile::tempdir().unwrap();
    for f in FILES {
        let want = &exp[format!("{f}.safetensors")];
        let meta = npkio::get_safetensors_metadata(src(f)).unwrap();
        let want_meta = want["metadata"].as_object().unwrap();
        let got_meta = meta.metadata.clone().unwrap_or_default();
        assert_eq!(got_meta.len(), want_meta.len(), "{f}");
        for (k, v) in &got_meta {
            assert_eq!(want_meta[k].as_str().unwrap(), v);
        }
        let npk = out.path().join(format!("{f}.npk"));
        npkio::from_safetensors_file(src(f), &npk, ALL, false, 64).unwrap();
        let store = NumPack::open(&npk).unwrap();
        assert_eq!(
            store.safetensors_metadata().map(|m| m.to_vec()),
            meta.metadata,
            "{f}"
        );
        let tensors = want["tensors"].as_object().unwrap();
        assert_eq!(store.len(), tensors.len());
        for (name, t) in tensors {
            let dtype = DType::from_safetensors_name(t["dtype"].as_str().unwrap()).unwrap();
            let shape = shape_of(&t["shape"]);
            let sha = t["sha256"].as_str().unwrap();
            // SafeTensors side, zero-copy.
            let file = npkio::SafeTensorsFile::open(src(f)).unwrap();
            let view = file.get(name).unwrap();
            assert_eq!(
                (view.dtype, view.shape),
                (dtype, shape.as_slice()),
                "{f}/{name}"
            );
            assert_eq!(sha256(view.data), sha, "{f}/{name}");
            // NumPack side: the true dtype and shape come back.
            let v = store.view(name).unwrap();
            assert_eq!((v.dtype, v.shape), (dtype, shape.as_slice()), "{f}/{name}");
            assert_eq!(sha256(v.data), sha, "{f}/{name}");
        }
    }
}

/// Decodes a directory's metadata by hand, as a NumPack 0.7 reader would, and checks what
/// it would see: the storage dtype, the stand-in shape, the same bytes in a plain file.
#[test]
fn numpack_side_is_what_numpack_reads() {
    let exp = expected("safetensors");
    let out = tempfile::tempdir().unwrap();
    for f in FILES {
        let npk = out.path().join(format!("{f}.npk"));
        npkio::from_safetensors_file(src(f), &npk, ALL, false, npkio::DEFAULT_CHUNK_SIZE).unwrap();
        let raw = std::fs::read(npk.join(FILE_NAME)).unwrap();
        assert_eq!(&raw[0..4], b"NPKB");
        assert_eq!(u32::from_le_bytes(raw[4..8].try_into().unwrap()), 1);
        let meta = Metadata::decode(&raw, Path::new("m")).unwrap();
        let total: u64 = meta.arrays.iter().map(|r| r.size_bytes).sum();
        assert_eq!(u64::from_le_bytes(raw[8..16].try_into().unwrap()), total);
        let tensors = exp[format!("{f}.safetensors")]["tensors"]
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(meta.arrays.len(), tensors.len());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        for r in &meta.arrays {
            let t = &tensors[&r.name];
            let dtype = DType::from_safetensors_name(t["dtype"].as_str().unwrap()).unwrap();
            let shape = shape_of(&t["shape"]);
            assert_eq!(r.dtype_code, dtype.storage_code(), "{}", r.name);
            assert!(r.dtype_code <= 13);
            let storage = DType::from_numpack_code(r.dtype_code).unwrap();
            assert_eq!(
                npkio::internals::dtype::byte_len(storage, &r.shape),
                Some(r.size_bytes),
                "{}",
                r.name
            );
            if shape.is_empty() {
                assert_eq!(r.shape, vec![1], "0-d stored as [1]");
            } else if dtype.is_byte_sized() {
                assert_eq!(r.shape, shape);
            }
            assert_eq!((r.compression, r.block_info.is_none()), (0, true));
            assert!(r.last_modified <= now && now - r.last_modified < 600_000_000);
            // A plain data file, not a path with separators, holding exactly the bytes.
            assert!(
                !r.data_file.contains('/')
                    && r.data_file.starts_with("data_")
                    && r.data_file.ends_with(".npkd")
            );
            let data = std::fs::read(npk.join(&r.data_file)).unwrap();
            assert_eq!(data.len() as u64, r.size_bytes);
            assert_eq!(sha256(&data), t["sha256"].as_str().unwrap(), "{}", r.name);
        }
        // Data file names are distinct even ignoring case.
        let mut lower: Vec<String> = meta
            .arrays
            .iter()
            .map(|r| r.data_file.to_lowercase())
            .collect();
        lower.sort();
        lower.dedup();
        assert_eq!(lower.len(), meta.arrays.len());
    }
}

#[test]
fn sidecar_entries_are_ignored_once_another_tool_rewrites_the_array() {
    let out = tempfile::tempdir().unwrap();
    let npk = out.path().join("m.npk");
    npkio::from_safetensors_file(
        src("all_dtypes"),
        &npk,
        Some(&["bf16", "f32"]),
        false,
        1 << 20,
    )
    .unwrap();
    let store = NumPack::open(&npk).unwrap();
    assert_eq!(store.info("bf16").unwrap().dtype, DType::BF16);
    drop(store);
    // Simulate NumPack 0.7 saving `bf16` again as uint16 with the same shape: new time stamp.
    let path = npk.join(FILE_NAME);
    let mut meta = Metadata::decode(&std::fs::read(&path).unwrap(), &path).unwrap();
    let r = meta.arrays.iter_mut().find(|r| r.name == "bf16").unwrap();
    r.last_modified += 1;
    std::fs::write(&path, meta.encode()).unwrap();
    let store = NumPack::open(&npk).unwrap();
    let info = store.info("bf16").unwrap();
    assert_eq!(
        (info.dtype, info.shape.as_slice()),
        (DType::U16, &[8u64, 4][..])
    );
    // A different shape is ignored too.
    let side: Sidecar = Sidecar::decode(&std::fs::read(npk.join("npkio.json")).unwrap()).unwrap();
    assert_eq!(side.arrays.len(), 1);
}

#[test]
fn iter_safetensors_in_file_or_key_order_and_missing_keys() {
    let names: Vec<String> = npkio::iter_safetensors(src("with_metadata"), ALL)
        .unwrap()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["encoder.bias", "encoder.weight"]);
    let it = npkio::iter_safetensors(
        src("with_metadata"),
        Some(&["encoder.weight", "encoder.bias"]),
    )
    .unwrap();
    let got: Vec<(String, usize)> = it.map(|(n, t)| (n, t.data().len())).collect();
    assert_eq!(
        got,
        [
            ("encoder.weight".to_string(), 2048),
            ("encoder.bias".to_string(), 64)
        ]
    );
    let err = npkio::iter_safetensors(src("with_metadata"), Some(&["encoder.bias", "decoder.x"]))
        .unwrap_err();
    assert_eq!(err.kind(), npkio::ErrorKind::KeyNotFound);
    assert_eq!(err.array_name(), Some("decoder.x"));
    assert!(err.to_string().contains("\"encoder.weight\""));
}

#[test]
fn owned_tensors_outlive_their_iterator() {
    let kept: Vec<(String, npkio::Tensor)> = npkio::iter_safetensors(src("all_dtypes"), ALL)
        .unwrap()
        .collect();
    let exp = expected("safetensors");
    for (name, t) in &kept {
        let want = &exp["all_dtypes.safetensors"]["tensors"][name];
        assert_eq!(sha256(t.data()), want["sha256"].as_str().unwrap());
    }
}

#[test]
fn missing_keys_write_nothing() {
    let out = tempfile::tempdir().unwrap();
    let npk = out.path().join("m.npk");
    let err =
        npkio::from_safetensors_file(src("with_metadata"), &npk, Some(&["nope"]), false, 1 << 20)
            .unwrap_err();
    assert_eq!(err.kind(), npkio::ErrorKind::KeyNotFound);
    assert!(!npk.exists());
    let err = npkio::from_safetensors_file(src("with_metadata"), &npk, ALL, false, 0).unwrap_err();
    assert_eq!(err.kind(), npkio::ErrorKind::InvalidArgument);
    assert!(!npk.exists());
}

#[test]
fn outputs_get_the_permissions_of_ordinary_new_files() {
    use std::os::unix::fs::PermissionsExt;
    let out = tempfile::tempdir().unwrap();
    let reference = out.path().join("plain");
    std::fs::File::create(&reference).unwrap();
    std::fs::create_dir(out.path().join("plain_dir")).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let npk = out.path().join("m.npk");
    npkio::from_safetensors_file(src("with_metadata"), &npk, ALL, false, 1 << 20).unwrap();
    let back = out.path().join("m.safetensors");
    npkio::to_safetensors_file(&npk, &back, ALL, None, 1 << 20).unwrap();
    assert_eq!(mode(&npk), mode(&out.path().join("plain_dir")));
    assert_eq!(mode(&back), mode(&reference));
    assert_eq!(mode(&npk.join("metadata.npkm")), mode(&reference));
    assert_eq!(mode(&npk.join("data_encoder.bias.npkd")), mode(&reference));
}

/// Writes a valid SafeTensors file the way another writer might: tensors in name order
/// (not the crate's dtype order), spaces in the JSON, `__metadata__` last, header padded to
/// 16 bytes rather than 8.
fn foreign_file(path: &Path) -> Vec<u8> {
    let a: Vec<u8> = (0..8u8).collect(); // "a": U8 [8]
    let b: Vec<u8> = (0..16u8).map(|x| x * 3).collect(); // "b": F32 [4]
    let c: Vec<u8> = vec![7, 0, 9, 0]; // "c": BF16 [2]
    let mut json = String::from(
        r#"{"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}, "c": {"dtype": "BF16", "shape": [2], "data_offsets": [24, 28]}, "__metadata__": {"z": "last", "a": "first"}}"#,
    );
    while json.len() % 16 != 0 {
        json.push(' ');
    }
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes.extend_from_slice(&a);
    bytes.extend_from_slice(&b);
    bytes.extend_from_slice(&c);
    std::fs::write(path, &bytes).unwrap();
    bytes
}

#[test]
fn files_laid_out_by_other_writers_also_round_trip_byte_identical() {
    let out = tempfile::tempdir().unwrap();
    let foreign = out.path().join("foreign.safetensors");
    let original = foreign_file(&foreign);
    safetensors::SafeTensors::deserialize(&original).expect("a valid file");
    let npk = out.path().join("f.npk");
    npkio::from_safetensors_file(&foreign, &npk, ALL, false, 1 << 20).unwrap();
    let back = out.path().join("back.safetensors");
    npkio::to_safetensors_file(&npk, &back, ALL, None, 1 << 20).unwrap();
    assert!(
        std::fs::read(&back).unwrap() == original,
        "not byte-identical"
    );

    // Exporting a subset, or other metadata, gets the crate's layout instead.
    npkio::to_safetensors_file(&npk, &back, Some(&["a", "b"]), None, 1 << 20).unwrap();
    let sub = std::fs::read(&back).unwrap();
    let st = safetensors::SafeTensors::deserialize(&sub).unwrap();
    assert_eq!(st.len(), 2);
    let data = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    assert_eq!(
        st.tensor("b").unwrap().data(),
        &original[data + 8..data + 24]
    );
    let meta = vec![("k".to_string(), "v".to_string())];
    npkio::to_safetensors_file(&npk, &back, ALL, Some(&meta), 1 << 20).unwrap();
    let st_bytes = std::fs::read(&back).unwrap();
    let (_, m) = safetensors::SafeTensors::read_metadata(&st_bytes).unwrap();
    assert_eq!(m.metadata().as_ref().unwrap()["k"], "v");

    // A file the crate writes needs no stored header.
    let npk2 = out.path().join("m.npk");
    npkio::from_safetensors_file(src("with_metadata"), &npk2, ALL, false, 1 << 20).unwrap();
    let side = std::fs::read_to_string(npk2.join("npkio.json")).unwrap();
    assert!(!side.contains("source_header"), "{side}");
    let side = std::fs::read_to_string(npk.join("npkio.json")).unwrap();
    assert!(side.contains("source_header"), "{side}");
}
