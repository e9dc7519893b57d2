//! `npkio inspect`, `load` and `convert` with URLs, configured by the environment as a
//! user's shell would be.

use std::path::Path;
use std::process::{Command, Output};

use super::server::{configure_for, S3Server, SECRET_KEY};

fn npkio(s: &S3Server, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_npkio"));
    s.configure(&mut cmd);
    cmd.args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn model() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors")
}

#[test]
fn inspect_load_and_convert_read_a_url() {
    let s = S3Server::start();
    s.put_file("m/model.safetensors", &model());
    let url = s.url("m/model.safetensors");

    let remote = npkio(&s, &["inspect", "--json", &url]);
    assert!(remote.status.success(), "{}", text(&remote));
    let local = npkio(&s, &["inspect", "--json", model().to_str().unwrap()]);
    let strip = |o: &Output| {
        let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_object_mut().unwrap().remove("path");
        v
    };
    assert_eq!(strip(&remote), strip(&local));

    let o = npkio(
        &s,
        &[
            "load",
            &s.url("m"),
            "--shard",
            "0,1,2",
            "--concurrency",
            "3",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("3 threads"), "{}", text(&o));

    let dir = tempfile::tempdir().unwrap();
    let npk = dir.path().join("m.npk");
    let back = dir.path().join("back.safetensors");
    let o = npkio(&s, &["convert", &url, npk.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = npkio(
        &s,
        &["convert", npk.to_str().unwrap(), back.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(&back).unwrap() == std::fs::read(model()).unwrap());
    // The temporary file is gone.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn a_failing_server_is_an_error_naming_the_url_without_the_secret() {
    let s = S3Server::start();
    s.put_file("m/model.safetensors", &model());
    // A server that is not there: the client retries, then reports.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_npkio"));
    configure_for(&mut cmd, "http://127.0.0.1:9");
    let url = s.url("m/model.safetensors");
    let o = cmd.args(["load", &url]).output().unwrap();
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains(&url), "{t}");
    assert!(!t.contains(SECRET_KEY), "{t}");
}

/// The model converted to the local NumPack directory `dir/m.npk`, by the command line.
fn model_store(s: &S3Server, dir: &Path) -> std::path::PathBuf {
    let npk = dir.join("m.npk");
    let o = npkio(
        s,
        &["convert", model().to_str().unwrap(), npk.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o));
    npk
}

#[test]
fn convert_exports_to_object_storage_by_multipart_upload() {
    let s = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let npk = model_store(&s, dir.path());

    // NumPack to one SafeTensors object, read back whole.
    let url = s.url("out/model.safetensors");
    let o = npkio(&s, &["convert", npk.to_str().unwrap(), &url]);
    assert!(o.status.success(), "{}", text(&o));
    let got = s.client().get("out/model.safetensors", None).unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(
        got.body == std::fs::read(model()).unwrap(),
        "the object differs"
    );

    // Sharded: the index and its shards under the prefix, loadable as a checkpoint.
    let o = npkio(
        &s,
        &[
            "convert",
            npk.to_str().unwrap(),
            &s.url("sh"),
            "--max-shard-size",
            "100000",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = npkio(&s, &["inspect", "--json", &s.url("sh")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("model-00001-of-"), "{}", text(&o));

    // SafeTensors to a NumPack prefix, loadable back.
    let o = npkio(
        &s,
        &["convert", model().to_str().unwrap(), &s.url("st.npk")],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = npkio(&s, &["load", &s.url("st.npk")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("loaded 21 tensors"), "{}", text(&o));
}

#[test]
fn convert_to_a_url_in_use_is_refused_without_force_and_nothing_is_touched() {
    let s = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let npk = model_store(&s, dir.path());

    // An object of someone else's at the output's name, and one under a prefix.
    s.put("theirs/model.safetensors", b"not ours");
    s.put("shelf/notes.txt", b"keep me");
    for (url, key, kept) in [
        (
            s.url("theirs/model.safetensors"),
            "theirs/model.safetensors",
            &b"not ours"[..],
        ),
        (s.url("shelf"), "shelf/notes.txt", &b"keep me"[..]),
    ] {
        let o = npkio(&s, &["convert", npk.to_str().unwrap(), &url]);
        assert!(!o.status.success(), "{url} was overwritten: {}", text(&o));
        assert!(
            text(&o).contains("--force") && text(&o).contains(&url),
            "{}",
            text(&o)
        );
        let got = s.client().get(key, None).unwrap();
        assert_eq!((got.status, &got.body[..]), (200, kept), "{key} changed");
    }
    // Nothing was added under the prefix either.
    let listed = s.client().get("shelf/metadata.npkm", None).unwrap();
    assert_eq!(listed.status, 404, "{}", listed.text());

    // With --force the object is replaced by the conversion.
    let url = s.url("theirs/model.safetensors");
    let o = npkio(&s, &["convert", npk.to_str().unwrap(), &url, "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    let got = s.client().get("theirs/model.safetensors", None).unwrap();
    assert!(got.body == std::fs::read(model()).unwrap(), "not replaced");

    // A name where nothing is stored needs no --force.
    let o = npkio(&s, &["convert", npk.to_str().unwrap(), &s.url("fresh")]);
    assert!(o.status.success(), "{}", text(&o));
}
