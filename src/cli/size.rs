//! Parsing human byte sizes such as `5GB`, `500MB` or `4GiB`.

/// Parses a byte size: a number with an optional unit. Decimal units (KB, MB, GB,
/// TB) are powers of 1000 as in `transformers`; binary ones (KiB, MiB, GiB, TiB)
/// powers of 1024. A bare number is bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let value: f64 =
        number.parse().map_err(|_| format!("{text:?} is not a size like 5GB or 500MB"))?;
    let bytes = value * scale as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{text:?} must be at least one byte"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn parses_decimal_and_binary_units() {
        assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_size("2gb"), Ok(2_000_000_000));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size(" 10 KiB "), Ok(10 << 10));
    }

    #[test]
    fn rejects_nonsense() {
        assert!(parse_size("").is_err());
        assert!(parse_size("GB").is_err());
        assert!(parse_size("5XB").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("-1GB").is_err());
        assert!(parse_size("1e400").is_err());
    }
}
