//! Parsing durations such as `90`, `90s`, `15m` or `2h`.

use std::time::Duration;

/// Parses a positive duration: a number of seconds, or a number with `s`, `m` or
/// `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let (number, scale) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1.0),
        Some((i, 'm')) => (&s[..i], 60.0),
        Some((i, 'h')) => (&s[..i], 3600.0),
        _ => (s, 1.0),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m or 2h"))?;
    let seconds = value * scale;
    if !(seconds > 0.0 && seconds < 1e9) {
        return Err(format!("{text:?} must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Like [`parse_duration`], but also accepts zero (`0`, `0s`).
pub fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    let digits = text.trim().trim_end_matches(['s', 'm', 'h']).trim();
    match digits.parse::<f64>() {
        Ok(0.0) => Ok(Duration::ZERO),
        _ => parse_duration(text),
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_duration, parse_duration_or_zero};
    use std::time::Duration;

    #[test]
    fn zero_only_where_allowed() {
        assert_eq!(parse_duration_or_zero("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration_or_zero("2.5s"), Ok(Duration::from_millis(2500)));
        assert!(parse_duration_or_zero("-1").is_err());
    }

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "m", "-1", "0", "1d", "nan", "inf"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
