//! Directories written by NumPack 0.7.0 itself read exactly as `expected.json` says, and
//! export to SafeTensors files the `safetensors` crate reads back with the same tensors.

use crate::common;

use common::{expected, fixtures, sha256, shape_of, ALL};
use npkio::{DType, ErrorKind, NumPack};

#[test]
fn every_reference_directory_matches_expected_json() {
    let exp = expected("numpack-0.7");
    let dirs = exp.as_object().unwrap();
    assert_eq!(dirs.len(), 4);
    for (dir, arrays) in dirs {
        let store = NumPack::open(fixtures().join("numpack-0.7").join(dir)).unwrap();
        let arrays = arrays.as_object().unwrap();
        let mut names: Vec<&str> = arrays.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(store.names(), names, "{dir}");
        for (name, want) in arrays {
            let view = store.view(name).unwrap();
            assert_eq!(
                view.dtype.numpy_name(),
                want["dtype"].as_str().unwrap(),
                "{dir}/{name}"
            );
            assert_eq!(
                view.shape,
                shape_of(&want["shape"]).as_slice(),
                "{dir}/{name}"
            );
            assert_eq!(
                sha256(view.data),
                want["sha256"].as_str().unwrap(),
                "{dir}/{name}"
            );
            let info = store.info(name).unwrap();
            assert_eq!(info.nbytes, view.data.len() as u64);
            assert_eq!(view.borrowed, info.zero_copy, "{dir}/{name}");
        }
    }
}

#[test]
fn views_borrow_the_mapping_only_for_plain_arrays() {
    let basic = NumPack::open(fixtures().join("numpack-0.7/basic.npk")).unwrap();
    assert!(basic.view("f32_2d").unwrap().borrowed);
    let dropped = NumPack::open(fixtures().join("numpack-0.7/dropped.npk")).unwrap();
    assert!(!dropped.view("v").unwrap().borrowed);
    assert!(dropped.view("untouched").unwrap().borrowed);
    let seg = NumPack::open(fixtures().join("numpack-0.7/segmented.npk")).unwrap();
    let info = seg.info("big").unwrap();
    assert!(info.segmented && info.deleted_rows == 3 && !info.zero_copy);
}

#[test]
fn reference_directories_export_to_safetensors() {
    let exp = expected("numpack-0.7");
    let out = tempfile::tempdir().unwrap();
    for (dir, arrays) in exp.as_object().unwrap() {
        let src = fixtures().join("numpack-0.7").join(dir);
        let target = out.path().join(format!("{dir}.safetensors"));
        let names: Vec<&str> = arrays
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|n| *n != "c128_2d")
            .collect();
        npkio::to_safetensors_file(&src, &target, Some(&names), None, 4096).unwrap();
        let bytes = std::fs::read(&target).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), names.len());
        for name in &names {
            let want = &arrays[*name];
            let t = st.tensor(name).unwrap();
            let dtype = DType::from_safetensors(t.dtype()).unwrap();
            assert_eq!(
                dtype.numpy_name(),
                want["dtype"].as_str().unwrap(),
                "{dir}/{name}"
            );
            let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
            assert_eq!(shape, shape_of(&want["shape"]), "{dir}/{name}");
            assert_eq!(
                sha256(t.data()),
                want["sha256"].as_str().unwrap(),
                "{dir}/{name}"
            );
        }
    }
}

#[test]
fn complex128_cannot_go_to_safetensors_and_the_error_names_it() {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("basic.safetensors");
    let err = npkio::to_safetensors_file(
        fixtures().join("numpack-0.7/basic.npk"),
        &target,
        ALL,
        None,
        1 << 20,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert_eq!(err.array_name(), Some("c128_2d"));
    assert!(err.to_string().contains("complex128"), "{err}");
    assert!(!target.exists());
}

#[test]
fn unknown_array_name_is_an_error_naming_it() {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("x.safetensors");
    let err = npkio::to_safetensors_file(
        fixtures().join("numpack-0.7/basic.npk"),
        &target,
        Some(&["f32_2d", "nope"]),
        None,
        1 << 20,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyNotFound);
    assert_eq!(err.array_name(), Some("nope"));
    assert!(
        err.to_string().contains("\"f32_2d\""),
        "lists what exists: {err}"
    );
    let err = npkio::to_safetensors(fixtures().join("numpack-0.7/basic.npk"), Some(&["nope"]))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyNotFound);
}

#[test]
fn to_safetensors_gives_views_of_active_rows() {
    let exp = expected("numpack-0.7");
    let t = npkio::to_safetensors(fixtures().join("numpack-0.7/segmented.npk"), ALL).unwrap();
    assert_eq!(t.names(), ["big", "small"]);
    let big = t.get("big").unwrap();
    assert_eq!(
        sha256(big.data),
        exp["segmented.npk"]["big"]["sha256"].as_str().unwrap()
    );
    assert!(!big.borrowed);
    assert!(t.get("small").unwrap().borrowed);
}
