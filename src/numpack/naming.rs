//! File names for arrays.
//!
//! An array whose name is a safe single file name is stored as `data_<name>.npkd`, as
//! NumPack 0.7 does. Any other name (`/`, `\`, `..`, a leading dot, control or non-ASCII
//! characters, more than 200 bytes, or a name equal to another array's ignoring case) is
//! stored as `data_~<32 hex digits>.npkd`, the digits being the start of the SHA-256 of the
//! name. `~` never appears in a safe name, so the two kinds of file name cannot collide. The
//! metadata keeps the exact name; readers find the file through the metadata's `data_file`.
//!
//! While a change to a store is being published, an array's new files may carry a
//! generation suffix, `data_<stem>~<n>.npkd` (see `store::generation`): `~` followed by
//! decimal digits, after a non-empty stem, so it never collides with a plain stem (no `~`)
//! or a hashed one (`~` only first).

use sha2::{Digest, Sha256};

/// Longest name stored under its own file name.
pub const MAX_PLAIN_NAME: usize = 200;

/// Whether `name` can be used as is in `data_<name>.npkd`.
pub fn is_plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PLAIN_NAME
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The hashed stem of a name that cannot be used as is.
pub fn encoded_stem(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let mut stem = String::with_capacity(33);
    stem.push('~');
    for b in &digest[..16] {
        stem.push_str(&format!("{b:02x}"));
    }
    stem
}

/// Whether `stem` is a hashed stem: `~` and 32 lowercase hex digits.
pub fn is_hashed(stem: &str) -> bool {
    stem.len() == 33
        && stem.starts_with('~')
        && stem[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether npkio could have chosen `stem` for an array: a plain name or a hashed stem.
pub fn is_npkio_stem(stem: &str) -> bool {
    is_plain(stem) || is_hashed(stem)
}

/// `stem` without its generation suffix (`~<digits>` after a non-empty stem), if any.
pub fn base_stem(stem: &str) -> &str {
    match stem.rfind('~') {
        Some(i)
            if i > 0 && i + 1 < stem.len() && stem[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            &stem[..i]
        }
        _ => stem,
    }
}

/// The stem of generation `n` of the files of `stem`: `<stem>~<n>`.
pub fn generation_stem(stem: &str, n: u64) -> String {
    format!("{stem}~{n}")
}

/// The stem for `name`, given the stems other arrays already use (compared ignoring case).
pub fn choose_stem<'a>(name: &str, mut taken: impl Iterator<Item = &'a str>) -> String {
    if is_plain(name) && !taken.any(|t| t.eq_ignore_ascii_case(name)) {
        name.to_string()
    } else {
        encoded_stem(name)
    }
}

/// `data_<stem>.npkd`
pub fn data_file(stem: &str) -> String {
    format!("data_{stem}.npkd")
}

/// `deleted_<stem>.npkb`
pub fn bitmap_file(stem: &str) -> String {
    let mut s = String::new();
    push_bitmap_file(&mut s, stem);
    s
}

/// [`bitmap_file`], appended to `out`.
pub fn push_bitmap_file(out: &mut String, stem: &str) {
    out.push_str("deleted_");
    out.push_str(stem);
    out.push_str(".npkb");
}

/// The stem of a data file or manifest name (`data_<stem>.npkd` / `.npkseg`).
pub fn stem_of(data_file: &str) -> Option<&str> {
    let rest = data_file.strip_prefix("data_")?;
    rest.strip_suffix(".npkd")
        .or_else(|| rest.strip_suffix(".npkseg"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_encoded_names() {
        assert!(is_plain("model.layers.0.attn.q_proj.weight"));
        for bad in [
            "", "a/b", "a\\b", "..", "a..b", ".hidden", "sp ace", "c:d", "ß", "a\n",
        ] {
            assert!(!is_plain(bad), "{bad:?}");
        }
        assert!(!is_plain(&"x".repeat(201)));
        let s = encoded_stem("layer/0");
        assert_eq!(s.len(), 33);
        assert!(s.starts_with('~'));
        assert_eq!(
            choose_stem("Case", ["case"].into_iter()),
            encoded_stem("Case")
        );
        assert_eq!(choose_stem("case", ["other"].into_iter()), "case");
    }

    #[test]
    fn generation_stems() {
        let hashed = encoded_stem("layer/0");
        assert!(is_hashed(&hashed) && is_npkio_stem(&hashed));
        assert_eq!(base_stem(&hashed), hashed);
        // A hashed stem whose digits are all decimal is not a generation of "".
        let digits = format!("~{}", "1".repeat(32));
        assert_eq!(base_stem(&digits), digits);
        let g = generation_stem(&hashed, 3);
        assert_eq!(base_stem(&g), hashed);
        assert_eq!(base_stem(&generation_stem("w", 12)), "w");
        assert_eq!(base_stem("w~"), "w~");
        assert_eq!(base_stem("w~1a"), "w~1a");
        assert!(!is_npkio_stem("w~1") && !is_npkio_stem("with space"));
        assert!(!is_plain(&generation_stem("w", 1)));
    }
}
