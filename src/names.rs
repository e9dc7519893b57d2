//! Lists of names in error messages, and the error for a name that is not there.

use std::path::Path;

use crate::error::{Error, ErrorKind};

/// The `KeyNotFound` error for the `what` (`"tensor"`, `"array"`) called `name`, which
/// `at` does not hold, listing some of the `names` it does: "no such tensor (tensors: ...)".
pub(crate) fn not_found(what: &str, name: &str, names: &[&str], at: &Path) -> Error {
    Error::new(
        ErrorKind::KeyNotFound,
        format!("no such {what} ({what}s: {})", list_names(names)),
    )
    .at(at)
    .array(name)
}

/// The first names of a list, quoted and joined for an error message ("none" when empty;
/// past 20, the rest is counted).
pub(crate) fn list_names(names: &[&str]) -> String {
    const SHOWN: usize = 20;
    let mut s: Vec<String> = names.iter().take(SHOWN).map(|n| format!("{n:?}")).collect();
    if names.len() > SHOWN {
        s.push(format!("... {} more", names.len() - SHOWN));
    }
    if s.is_empty() {
        "none".into()
    } else {
        s.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_quoted_and_capped() {
        assert_eq!(list_names(&[]), "none");
        assert_eq!(list_names(&["a", "b\"c"]), r#""a", "b\"c""#);
        let many: Vec<String> = (0..25).map(|i| format!("t{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let s = list_names(&many);
        assert!(s.starts_with("\"t0\", \"t1\""), "{s}");
        assert!(s.contains("\"t19\""), "{s}");
        assert!(!s.contains("\"t20\""), "{s}");
        assert!(s.ends_with("... 5 more"), "{s}");
    }
}
