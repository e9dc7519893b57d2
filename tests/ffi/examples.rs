//! The C example `iterate_sum.c`, built against the library this test run built, must
//! print the same F32 sums as an independent computation here: the header parsed with
//! serde_json, the bytes read from the file, the elements summed in order as f64.
//!
//! (`make -C examples-c check`, run by scripts/test.sh, builds every example in both link
//! modes and runs them under valgrind and the sanitizers.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn build_iterate_sum(out: &Path) -> PathBuf {
    crate::common::build_c_example("iterate_sum", out)
}

/// (name, sum) for every F32 tensor in file order, computed without npkio.
fn sums(path: &Path) -> Vec<(String, f64)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut tensors: Vec<(u64, String, &[u8])> = header
        .iter()
        .filter(|(k, v)| *k != "__metadata__" && v["dtype"] == "F32")
        .map(|(k, v)| {
            let o = v["data_offsets"].as_array().unwrap();
            let (b, e) = (o[0].as_u64().unwrap(), o[1].as_u64().unwrap());
            (b, k.clone(), &data[b as usize..e as usize])
        })
        .collect();
    tensors.sort_by_key(|t| t.0);
    tensors
        .into_iter()
        .map(|(_, name, raw)| {
            let sum = raw
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
                .fold(0.0, |acc, x| acc + x); // from +0.0, as the C program starts
            (name, sum)
        })
        .collect()
}

#[test]
fn iterate_sum_prints_the_independently_computed_sums() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_iterate_sum(tmp.path());
    let st = root().join("tests/fixtures/safetensors");
    let files = [
        st.join("all_dtypes.safetensors"),
        st.join("with_metadata.safetensors"),
        st.join("edge_cases.safetensors"),
        st.join("sharded/model-00001-of-00002.safetensors"),
        st.join("sharded/model-00002-of-00002.safetensors"),
    ];
    for file in &files {
        let out = Command::new(&exe).arg(file).output().unwrap();
        assert!(out.status.success(), "{}: {:?}", file.display(), out);
        let text = String::from_utf8(out.stdout).unwrap();
        let want = sums(file);
        let mut lines = text.lines();
        let mut total = 0.0;
        for (name, sum) in &want {
            let line = lines.next().expect("a line per F32 tensor");
            let got = line
                .strip_prefix(&format!("sum {name} "))
                .unwrap_or_else(|| panic!("{}: unexpected line {line:?}", file.display()));
            let got: f64 = got.parse().unwrap();
            // %.17g round-trips a double exactly, and the order of additions is the same.
            assert_eq!(got.to_bits(), sum.to_bits(), "{} {name}", file.display());
            total += sum;
        }
        let last = lines.next().unwrap();
        let rest = last
            .strip_prefix("total ")
            .and_then(|r| r.strip_suffix(&format!(" over {} F32 tensors", want.len())))
            .unwrap_or_else(|| panic!("{}: unexpected line {last:?}", file.display()));
        let got: f64 = rest.parse().unwrap();
        assert_eq!(got.to_bits(), total.to_bits(), "{}", file.display());
        assert!(lines.next().is_none());
    }
}
