//! Parsing command-line values: sizes such as `100MiB` and `KEY=VALUE` pairs.

/// Parses a byte size for a command-line option (`npkio::parse_size`), as a `usize`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let n = npkio::parse_size(s).map_err(|e| e.to_string())?;
    usize::try_from(n).map_err(|_| format!("{s:?} is too large"))
}

/// Parses `KEY=VALUE` (split at the first `=`; the value may contain more). The key must not
/// be empty.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        Some(_) => Err(format!("{s:?} has an empty key; expected KEY=VALUE")),
        None => Err(format!("{s:?} has no '='; expected KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_splits_at_the_first_equals_sign() {
        assert_eq!(
            parse_key_value("a=b=c"),
            Ok(("a".to_string(), "b=c".to_string()))
        );
        assert_eq!(parse_key_value("k="), Ok(("k".to_string(), String::new())));
        assert!(parse_key_value("=v").is_err());
        assert!(parse_key_value("kv").is_err());
    }
}
