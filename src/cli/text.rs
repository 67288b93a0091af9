//! Words and numbers for people: plurals, byte sizes, counts and scores, written
//! one way across every command.

/// `n` and the noun, singular or plural: "1 value", "3 values".
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A byte count in decimal units: "740.2 MB".
pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        _ if n >= 1e9 => format!("{:.2} GB", n / 1e9),
        _ if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        _ if n >= 1e3 => format!("{:.1} kB", n / 1e3),
        _ => format!("{n} B"),
    }
}

/// A large count in decimal units: "110.1 M".
pub fn human_count(n: u64) -> String {
    let f = n as f64;
    match f {
        _ if f >= 1e9 => format!("{:.2} B", f / 1e9),
        _ if f >= 1e6 => format!("{:.1} M", f / 1e6),
        _ if f >= 1e3 => format!("{:.1} k", f / 1e3),
        _ => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_and_units() {
        assert_eq!(plural(0, "value"), "0 values");
        assert_eq!(plural(1, "ingredient"), "1 ingredient");
        assert_eq!(plural(2, "shard"), "2 shards");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(740_200_000), "740.2 MB");
        assert_eq!(human_count(110_100_000), "110.1 M");
    }
}
