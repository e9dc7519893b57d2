//! Property tests: random arrays and tensor sets survive every path bit-exact, and npkio's
//! SafeTensors output is byte-identical to the `safetensors` crate's own serializer.

use crate::common;

use std::collections::HashMap;

use common::ALL;
use npkio::internals::dtype::{byte_len, ALL as DTYPES};
use npkio::ArrayInput;
use npkio::{DType, NumPack};
use proptest::prelude::*;

/// Names that stress the file naming: separators, dots, case twins, unicode, long ones.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_.]{0,12}",
        "[A-Za-z]{1,3}",
        "(layer|model)/[0-9]{1,2}/(w|b)",
        Just("..".to_string()),
        Just("../escape".to_string()),
        Just(".hidden".to_string()),
        Just("with space : colon".to_string()),
        Just("unicode.权重.ß".to_string()),
        Just("a\\b".to_string()),
        Just("x".repeat(300)),
        "\\PC{1,8}",
    ]
}

fn shape() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(0u64..5, 0..=4)
}

#[derive(Debug, Clone)]
struct Arr {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    data: Vec<u8>,
}

fn array(dtypes: &'static [DType]) -> impl Strategy<Value = Arr> {
    (name(), prop::sample::select(dtypes), shape())
        .prop_filter("whole bytes", |(_, d, s)| byte_len(*d, s).is_some())
        .prop_flat_map(|(name, dtype, shape)| {
            let n = byte_len(dtype, &shape).unwrap() as usize;
            prop::collection::vec(any::<u8>(), n).prop_map(move |data| Arr {
                name: name.clone(),
                dtype,
                shape: shape.clone(),
                data,
            })
        })
}

fn unique(arrays: Vec<Arr>) -> Vec<Arr> {
    let mut seen = std::collections::HashSet::new();
    arrays
        .into_iter()
        .filter(|a| seen.insert(a.name.clone()))
        .collect()
}

const NUMPACK_DTYPES: [DType; 14] = [
    DType::Bool,
    DType::U8,
    DType::U16,
    DType::U32,
    DType::U64,
    DType::I8,
    DType::I16,
    DType::I32,
    DType::I64,
    DType::F16,
    DType::F32,
    DType::F64,
    DType::C64,
    DType::C128,
];

fn inputs(arrays: &[Arr]) -> Vec<ArrayInput<'_>> {
    arrays
        .iter()
        .map(|a| ArrayInput {
            name: &a.name,
            dtype: a.dtype,
            shape: &a.shape,
            data: &a.data,
        })
        .collect()
}

/// A tensor for the crate's serializer.
struct CrateTensor {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &CrateTensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.data[..]).into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every NumPack dtype, rank 0 to 4, 0-row arrays, hostile names: saved by the store and
    /// read back bit-exact, and the directory decodes as the spec says.
    #[test]
    fn store_round_trip(arrays in prop::collection::vec(array(&NUMPACK_DTYPES), 1..8)) {
        let arrays = unique(arrays);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.npk");
        let mut store = NumPack::create(&path, false).unwrap();
        store.save(&inputs(&arrays)).unwrap();
        drop(store);
        let store = NumPack::open(&path).unwrap();
        prop_assert_eq!(store.len(), arrays.len());
        for a in &arrays {
            let v = store.view(&a.name).unwrap();
            prop_assert_eq!(v.dtype, a.dtype);
            prop_assert_eq!(v.shape, a.shape.as_slice());
            prop_assert_eq!(v.data, a.data.as_slice());
            // What NumPack 0.7 reads: a plain file in the directory with the bytes.
            let r = npkio::internals::numpack::record(&store, &a.name).unwrap();
            prop_assert!(!r.data_file.contains('/') && !r.data_file.contains('\\'));
            prop_assert_eq!(std::fs::read(path.join(&r.data_file)).unwrap(), a.data.clone());
        }
        // Nothing outside the directory.
        let outside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        prop_assert_eq!(outside.len(), 1);
    }

    /// Every SafeTensors dtype through from_safetensors / to_safetensors_file, compared with
    /// the crate's serializer byte for byte (with at most one metadata key, since the crate
    /// orders several keys at random).
    #[test]
    fn byte_identical_to_the_crate(
        arrays in prop::collection::vec(array(&DTYPES[..22]), 0..10),
        meta in prop::option::of(("[a-z]{1,6}", "\\PC{0,10}")),
    ) {
        let arrays = unique(arrays);
        let dir = tempfile::tempdir().unwrap();
        let npk = dir.path().join("m.npk");
        npkio::from_safetensors(&inputs(&arrays), &npk, false).unwrap();
        let ours = dir.path().join("ours.safetensors");
        let metadata: Option<Vec<(String, String)>> = meta.clone().map(|m| vec![m]);
        npkio::to_safetensors_file(&npk, &ours, ALL, metadata.as_deref(), 7).unwrap();

        let crate_tensors: Vec<(String, CrateTensor)> = arrays
            .iter()
            .map(|a| {
                let t = CrateTensor {
                    dtype: a.dtype.to_safetensors().unwrap(),
                    shape: a.shape.iter().map(|&d| d as usize).collect(),
                    data: a.data.clone(),
                };
                (a.name.clone(), t)
            })
            .collect();
        let theirs = dir.path().join("theirs.safetensors");
        let info: Option<HashMap<String, String>> = meta.map(|(k, v)| [(k, v)].into_iter().collect());
        safetensors::serialize_to_file(crate_tensors.iter().map(|(n, t)| (n.clone(), t)), info, &theirs).unwrap();
        prop_assert!(std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap());

        // And back: SafeTensors -> NumPack -> SafeTensors is byte-identical.
        let npk2 = dir.path().join("m2.npk");
        npkio::from_safetensors_file(&theirs, &npk2, ALL, false, 5).unwrap();
        let again = dir.path().join("again.safetensors");
        npkio::to_safetensors_file(&npk2, &again, ALL, None, 4096).unwrap();
        prop_assert!(std::fs::read(&again).unwrap() == std::fs::read(&theirs).unwrap());
    }

    /// Merging keeps arrays that are not replaced; replacing drops them.
    #[test]
    fn merge_and_replace(
        first in prop::collection::vec(array(&DTYPES[..22]), 1..5),
        second in prop::collection::vec(array(&DTYPES[..22]), 1..5),
        drop_if_exists in any::<bool>(),
    ) {
        let (first, second) = (unique(first), unique(second));
        let dir = tempfile::tempdir().unwrap();
        let npk = dir.path().join("m.npk");
        npkio::from_safetensors(&inputs(&first), &npk, false).unwrap();
        npkio::from_safetensors(&inputs(&second), &npk, drop_if_exists).unwrap();
        let mut want: HashMap<&str, &Arr> = HashMap::new();
        if !drop_if_exists {
            want.extend(first.iter().map(|a| (a.name.as_str(), a)));
        }
        want.extend(second.iter().map(|a| (a.name.as_str(), a)));
        let store = NumPack::open(&npk).unwrap();
        prop_assert_eq!(store.len(), want.len());
        for (name, a) in want {
            let v = store.view(name).unwrap();
            prop_assert_eq!((v.dtype, v.shape, v.data), (a.dtype, a.shape.as_slice(), a.data.as_slice()));
        }
        // Only the directory: nothing beside it (the lock is the directory's own).
        let names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        prop_assert!(names == ["m.npk"], "{:?}", names);
    }
}

#[test]
fn store_append_drop_delete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.npk");
    let mut store = NumPack::create(&path, false).unwrap();
    let rows: Vec<u8> = (0..24u8).collect(); // 6 rows of 2 x i16
    store
        .save(&[ArrayInput {
            name: "x",
            dtype: DType::I16,
            shape: &[6, 2],
            data: &rows,
        }])
        .unwrap();
    store.drop_rows("x", &[0, 5]).unwrap();
    assert_eq!(store.view("x").unwrap().shape, &[4, 2]);
    assert_eq!(store.view("x").unwrap().data, &rows[4..20]);
    store.append("x", &[100, 101, 102, 103]).unwrap();
    let v = store.view("x").unwrap();
    assert_eq!(v.shape, &[5, 2]);
    assert_eq!(&v.data[16..], &[100, 101, 102, 103]);
    assert!(store.append("x", &[1, 2, 3]).is_err(), "not a whole row");
    assert!(store.drop_rows("x", &[5]).is_err(), "out of range");
    drop(store);
    let mut store = NumPack::open(&path).unwrap();
    assert_eq!(store.info("x").unwrap().deleted_rows, 2);
    assert_eq!(store.view("x").unwrap().data.len(), 20);
    store.delete("x").unwrap();
    assert!(store.is_empty());
    drop(store);
    let leftovers: Vec<_> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["metadata.npkm"]);
}

#[test]
fn create_refuses_to_remove_what_is_not_a_numpack() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("precious");
    std::fs::create_dir(&p).unwrap();
    std::fs::write(p.join("thesis.tex"), b"...").unwrap();
    let e = NumPack::create(&p, true).unwrap_err();
    assert_eq!(e.kind(), npkio::ErrorKind::AlreadyExists);
    let e = npkio::from_safetensors(&[], &p, true).unwrap_err();
    assert_eq!(e.kind(), npkio::ErrorKind::AlreadyExists);
    assert!(p.join("thesis.tex").exists());
}
