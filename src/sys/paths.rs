//! Relative paths read from files (a NumPack `data_file`, a segment name, a shard name in a
//! SafeTensors index): checked to stay inside their directory before anything is opened.

use std::path::{Component, Path, PathBuf};

/// Checks that `rel`, a path read from a file, stays inside its directory: relative, no
/// `..`, no root or prefix, no NUL, not empty. Returns it as a `PathBuf`.
pub(crate) fn checked_relative(rel: &str) -> Result<PathBuf, String> {
    if rel.is_empty() {
        return Err("empty file name".into());
    }
    if rel.contains('\0') || rel.contains('\\') {
        return Err(format!("file name {rel:?} has a NUL or backslash"));
    }
    let p = Path::new(rel);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            _ => return Err(format!("file name {rel:?} leaves the directory")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(format!("file name {rel:?} names the directory itself"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_stay_inside() {
        assert!(checked_relative("data_x.npkd").is_ok());
        assert!(checked_relative("data_x_segments/seg_000000.npkd").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a\\..\\x",
            ".",
            "a\0b",
        ] {
            assert!(checked_relative(bad).is_err(), "{bad:?}");
        }
    }
}
