//! `npkio inspect --json` on a header of many tensors: streamed, and still exactly the
//! document `serde_json`'s pretty printer gives (read back and printed again, byte for
//! byte), with every tensor in file order.

use std::io::Write;
use std::process::{Command, Stdio};

const NPKIO: &str = env!("CARGO_BIN_EXE_npkio");

#[test]
fn inspect_json_of_many_tensors_is_the_pretty_document() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("many.safetensors");
    let n = 200_000u64;
    let mut h = String::from(r#"{"__metadata__":{"format":"pt","note":"a \"quoted\" value"}"#);
    for i in 0..n {
        // Names out of order in the header, and one needing escapes.
        let j = n - 1 - i;
        let name = if j == 7 {
            "odd\tname\u{1}".to_string()
        } else {
            format!("layer.{j:06}")
        };
        h.push_str(&format!(
            r#",{}:{{"dtype":"U8","shape":[1,1],"data_offsets":[{j},{}]}}"#,
            serde_json::to_string(&name).unwrap(),
            j + 1
        ));
    }
    h.push('}');
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(h.as_bytes()).unwrap();
    f.write_all(&vec![0u8; n as usize]).unwrap();
    drop(f);

    let out = Command::new(NPKIO)
        .args(["inspect", "--json"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut again = serde_json::to_string_pretty(&doc).unwrap();
    again.push('\n');
    assert!(again == text, "not the pretty-printed document");
    assert_eq!(doc["tensor_count"], n);
    let tensors = doc["tensors"].as_array().unwrap();
    assert_eq!(tensors.len() as u64, n);
    // File order: by data offset.
    assert_eq!(tensors[0]["name"], "layer.000000");
    assert_eq!(tensors[7]["name"], "odd\tname\u{1}");
    assert_eq!(tensors[n as usize - 1]["data_offsets"][1], n);
    assert_eq!(doc["metadata"]["note"], "a \"quoted\" value");
}

#[test]
fn inspect_json_of_no_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("empty.safetensors");
    let h = "{}      ";
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(h.as_bytes());
    std::fs::write(&path, bytes).unwrap();
    let out = Command::new(NPKIO)
        .args(["inspect", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(serde_json::to_string_pretty(&doc).unwrap() + "\n", text);
    assert_eq!(doc["tensors"], serde_json::json!([]));
}
