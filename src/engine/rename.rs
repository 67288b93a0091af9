//! Tensor-name mappings, so that checkpoints saved under different prefixes can be
//! souped together: a DDP checkpoint's `module.encoder.…` with a Hugging Face
//! `encoder.…`, a Lightning checkpoint's `model.…` with the bare model.
//!
//! One syntax, sed's substitution: `s/PATTERN/REPLACEMENT/`. PATTERN is a regular
//! expression (the `regex` crate's syntax, which is Python's for everything a name
//! needs); anchor it with `^` to map a prefix: `s/^module\.//` drops `module.`,
//! `s/^/model./` adds one. The first match in each name is replaced; REPLACEMENT is
//! literal text in which `$1`, `${name}` refer to groups. A `/` inside either part
//! is written `\/`. A name the pattern does not match is kept as it is.

use regex::Regex;

use crate::error::{Error, Result};

/// One `s/PATTERN/REPLACEMENT/` mapping.
#[derive(Debug, Clone)]
pub struct Rename {
    rule: String,
    pattern: Regex,
    replacement: String,
}

impl PartialEq for Rename {
    fn eq(&self, other: &Self) -> bool {
        self.rule == other.rule
    }
}

impl Rename {
    /// Parses `s/PATTERN/REPLACEMENT/`.
    pub fn parse(rule: &str) -> Result<Rename> {
        let bad = |reason: String| Error::Rename { rule: rule.to_owned(), reason };
        let body = rule.strip_prefix("s/").ok_or_else(|| {
            bad("expected s/PATTERN/REPLACEMENT/ (for example s/^module\\.//)".to_owned())
        })?;
        let parts = split_unescaped(body);
        let [pattern, replacement, rest] = parts.as_slice() else {
            return Err(bad(format!(
                "expected s/PATTERN/REPLACEMENT/ with three slashes, found {}",
                parts.len()
            )));
        };
        if !rest.is_empty() {
            return Err(bad(format!("unexpected {rest:?} after the last slash (no flags)")));
        }
        let pattern = Regex::new(pattern).map_err(|e| bad(format!("the pattern: {e}")))?;
        Ok(Rename { rule: rule.to_owned(), pattern, replacement: replacement.clone() })
    }

    /// The rule as written.
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// `name` with the first match of the pattern replaced.
    pub fn apply(&self, name: &str) -> String {
        self.pattern.replace(name, self.replacement.as_str()).into_owned()
    }
}

/// Applies every rule in order to `name`.
pub fn apply_all(rules: &[Rename], name: &str) -> String {
    rules.iter().fold(name.to_owned(), |n, r| r.apply(&n))
}

/// Splits at `/` not preceded by a backslash; `\/` becomes `/`, other escapes stay
/// for the regex.
fn split_unescaped(text: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        let current = parts.last_mut().expect("never empty");
        match c {
            '\\' => match chars.next() {
                Some('/') => current.push('/'),
                Some(other) => {
                    current.push('\\');
                    current.push(other);
                }
                None => current.push('\\'),
            },
            '/' => parts.push(String::new()),
            other => current.push(other),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_dropped_added_and_replaced() {
        let drop = Rename::parse(r"s/^module\.//").unwrap();
        assert_eq!(drop.apply("module.encoder.weight"), "encoder.weight");
        assert_eq!(drop.apply("encoder.module.weight"), "encoder.module.weight");
        assert_eq!(drop.apply("moduleX.weight"), "moduleX.weight");
        let add = Rename::parse("s/^/model./").unwrap();
        assert_eq!(add.apply("w"), "model.w");
        let swap = Rename::parse(r"s/^(encoder|decoder)\.block\./${1}.layer./").unwrap();
        assert_eq!(swap.apply("decoder.block.0.w"), "decoder.layer.0.w");
        let slash = Rename::parse(r"s/a\/b/c/").unwrap();
        assert_eq!(slash.apply("xa/b"), "xc");
        assert_eq!(apply_all(&[drop, add], "module.w"), "model.w");
    }

    #[test]
    fn malformed_rules_say_what_is_wrong() {
        for (rule, says) in [
            ("module.", "expected s/PATTERN/REPLACEMENT/"),
            ("s/^module//g", "no flags"),
            ("s/^module/", "three slashes"),
            ("s/(/x/", "the pattern"),
        ] {
            let e = Rename::parse(rule).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(rule), "{rule}: {e}");
        }
    }
}
