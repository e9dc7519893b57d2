//! Parsing command-line values: sizes such as `100MiB` and `KEY=VALUE` pairs.

/// Parses a byte size: a number with an optional fraction and an optional unit.
///
/// Units (case-insensitive): `B`; `kB`, `MB`, `GB`, `TB` are powers of 1000; `KiB`, `MiB`,
/// `GiB`, `TiB` and the bare letters `K`, `M`, `G`, `T` are powers of 1024 (as in GNU
/// coreutils). A fractional size rounds down to whole bytes. Zero is refused: a chunk must
/// hold at least one byte.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim();
    let multiplier: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB)"
            ))
        }
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() {
        return Err(format!(
            "{s:?} is not a size (examples: 4096, 64MB, 100MiB)"
        ));
    }
    if frac.contains('.') || frac.len() > 18 {
        return Err(format!(
            "{s:?} is not a size (examples: 4096, 64MB, 100MiB)"
        ));
    }
    let too_big = || format!("{s:?} is too large");
    let parse = |d: &str| -> Result<u128, String> {
        if d.is_empty() {
            Ok(0)
        } else {
            d.parse::<u128>().map_err(|_| too_big())
        }
    };
    let scale = 10u128.pow(frac.len() as u32);
    let scaled = parse(whole)?
        .checked_mul(scale)
        .and_then(|w| w.checked_add(parse(frac).ok()?))
        .ok_or_else(too_big)?;
    let bytes = scaled
        .checked_mul(multiplier)
        .map(|b| b / scale)
        .ok_or_else(too_big)?;
    if bytes == 0 {
        return Err(format!("{s:?} is less than one byte"));
    }
    usize::try_from(bytes).map_err(|_| too_big())
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
    fn sizes_in_binary_and_decimal_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("64MB"), Ok(64_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1gib"), Ok(1 << 30));
        assert_eq!(parse_size("8 M"), Ok(8 << 20));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("0.5kB"), Ok(500));
        assert_eq!(parse_size("12B"), Ok(12));
    }

    #[test]
    fn bad_sizes_are_refused_with_a_reason() {
        for bad in [
            "",
            "MiB",
            "0",
            "0.1B",
            "1.2.3MB",
            "-5",
            "12 parsecs",
            "99999999999999999999999999999999999999999",
            "9999999999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
        }
    }

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
