//! Sizes with binary suffixes and `-o key=value,...` option lists, as `qemu-img` takes them.

use crate::error::{Error, Result};

/// Parse a size: plain bytes, or a number with a binary suffix `K`, `M`, `G`, `T`, `P`, `E`
/// (case-insensitive, optional trailing `B`/`iB`), as `qemu-img` does. `10G` is 10 GiB; `1.5M` is
/// allowed when the result is a whole number of bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let bad = || Error::invalid_argument(format!("invalid size '{text}'"));
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    if number.is_empty() {
        return Err(bad());
    }
    let shift = match suffix.to_ascii_lowercase().trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        "e" => 60,
        _ => return Err(bad()),
    };
    let too_big = || Error::invalid_argument(format!("size '{text}' is too large"));
    match number.split_once('.') {
        None => {
            let n: u64 = number.parse().map_err(|_| bad())?;
            n.checked_mul(1u64 << shift).ok_or_else(too_big)
        }
        Some((whole, frac)) => {
            let whole: u64 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| bad())?
            };
            if frac.is_empty() || frac.len() > 18 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let denom = 10u128.pow(frac.len() as u32);
            let frac_n: u128 = frac.parse().map_err(|_| bad())?;
            let unit = 1u128 << shift;
            let frac_bytes = frac_n * unit;
            if !frac_bytes.is_multiple_of(denom) {
                return Err(Error::invalid_argument(format!(
                    "size '{text}' is not a whole number of bytes"
                )));
            }
            let total = u128::from(whole) * unit + frac_bytes / denom;
            u64::try_from(total).map_err(|_| too_big())
        }
    }
}

/// A parsed `key=value,key=value` option list. Callers take the keys they know; [`Options::finish`]
/// then refuses whatever is left, so a misspelt option is an error rather than silently ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    entries: Vec<(String, String)>,
}

impl Options {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parse `key=value` pairs separated by commas (`,,` stands for a literal comma in a value,
    /// as in QEMU). A key without `=` means `key=on`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut opts = Options::new();
        let mut current = String::new();
        let mut chars = text.chars().peekable();
        let mut pieces = Vec::new();
        while let Some(c) = chars.next() {
            if c == ',' {
                if chars.peek() == Some(&',') {
                    chars.next();
                    current.push(',');
                } else {
                    pieces.push(std::mem::take(&mut current));
                }
            } else {
                current.push(c);
            }
        }
        pieces.push(current);
        for piece in pieces.into_iter().filter(|p| !p.is_empty()) {
            let (k, v) = piece.split_once('=').unwrap_or((piece.as_str(), "on"));
            if k.is_empty() {
                return Err(Error::invalid_argument(format!("option '{piece}' has no name")));
            }
            opts.set(k, v);
        }
        Ok(opts)
    }

    /// Set (or replace) `key`.
    pub fn set(&mut self, key: &str, value: &str) {
        self.entries.retain(|(k, _)| k != key);
        self.entries.push((key.to_string(), value.to_string()));
    }

    /// Merge `other` into `self`, later values winning.
    pub fn extend(&mut self, other: &Options) {
        for (k, v) in &other.entries {
            self.set(k, v);
        }
    }

    /// Whether no options remain.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys given, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// Look at `key` without taking it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Remove and return `key`'s value.
    pub fn take_str(&mut self, key: &str) -> Option<String> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    /// Remove `key` and parse it as a size ([`parse_size`]).
    pub fn take_size(&mut self, key: &str) -> Result<Option<u64>> {
        self.take_str(key)
            .map(|v| parse_size(&v).map_err(|e| Error::invalid_argument(format!("option {key}: {}", e.message()))))
            .transpose()
    }

    /// Remove `key` and parse it as a boolean (`on`/`off`, `true`/`false`, `yes`/`no`, `1`/`0`).
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>> {
        self.take_str(key)
            .map(|v| match v.to_ascii_lowercase().as_str() {
                "on" | "true" | "yes" | "1" => Ok(true),
                "off" | "false" | "no" | "0" => Ok(false),
                _ => Err(Error::invalid_argument(format!("option {key}: '{v}' is not on or off"))),
            })
            .transpose()
    }

    /// Remove `key` and parse it as an unsigned integer.
    pub fn take_u64(&mut self, key: &str) -> Result<Option<u64>> {
        self.take_str(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| Error::invalid_argument(format!("option {key}: '{v}' is not a number")))
            })
            .transpose()
    }

    /// Refuse any option nobody took.
    pub fn finish(self) -> Result<()> {
        match self.entries.first() {
            None => Ok(()),
            Some((k, _)) => Err(Error::invalid_argument(format!("unknown option '{k}'"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("1.5M").unwrap(), 3 << 19);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert!(parse_size("").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999E").is_err());
        assert!(parse_size("0.1").is_err());
    }

    #[test]
    fn option_lists() {
        let mut o = Options::parse("subformat=fixed,block_size=1M,force_size,name=a,,b").unwrap();
        assert_eq!(o.take_str("subformat").as_deref(), Some("fixed"));
        assert_eq!(o.take_size("block_size").unwrap(), Some(1 << 20));
        assert_eq!(o.take_bool("force_size").unwrap(), Some(true));
        assert_eq!(o.get("name"), Some("a,b"));
        assert!(o.clone().finish().is_err());
        o.take_str("name");
        o.finish().unwrap();
        assert!(Options::parse("=x").is_err());
        assert!(Options::parse("a=maybe").unwrap().take_bool("a").is_err());
    }
}
