//! Byte sizes written by people: `4096`, `64MB`, `100MiB`, `1.5GiB`.

use crate::error::{Error, Result};

/// Parses a byte size such as `100MiB` or `5GB`: a number with an optional fraction and an
/// optional unit. The command line, the C ABI (`npkio_parse_size`) and Python take sizes
/// through this one function.
///
/// Units (case-insensitive): `B`; `kB`, `MB`, `GB`, `TB` are powers of 1000; `KiB`, `MiB`,
/// `GiB`, `TiB` and the bare letters `K`, `M`, `G`, `T` are powers of 1024 (as in GNU
/// coreutils). A fractional size rounds down to whole bytes. Zero is refused: a chunk must
/// hold at least one byte.
pub fn parse_size(s: &str) -> Result<u64> {
    parse(s).map_err(Error::invalid_argument)
}

fn parse(s: &str) -> std::result::Result<u64, String> {
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
    u64::try_from(bytes).map_err(|_| too_big())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_binary_and_decimal_units() {
        assert_eq!(parse_size("4096").ok(), Some(4096));
        assert_eq!(parse_size("100MiB").ok(), Some(100 << 20));
        assert_eq!(parse_size("64MB").ok(), Some(64_000_000));
        assert_eq!(parse_size("1GiB").ok(), Some(1 << 30));
        assert_eq!(parse_size("1gib").ok(), Some(1 << 30));
        assert_eq!(parse_size("8 M").ok(), Some(8 << 20));
        assert_eq!(parse_size("1.5KiB").ok(), Some(1536));
        assert_eq!(parse_size("0.5kB").ok(), Some(500));
        assert_eq!(parse_size("12B").ok(), Some(12));
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
}
