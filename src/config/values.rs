//! How option values are read and written: the parsers each option's declaration names, and
//! [`ConfigValue`], which writes a value back in configuration syntax (for SIGHUP logs and the
//! defaults column of `docs/configuration.md`; `parse(show(v)) == v` for every option).
//!
//! Every parser takes the value already trimmed and returns what is wrong with it as a sentence;
//! the caller adds the key, the value and where it came from.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A value written back in configuration syntax.
pub trait ConfigValue {
    /// The value as it would be written in fleet.conf (`""` for none).
    fn show(&self) -> String;
}

impl ConfigValue for String {
    fn show(&self) -> String {
        self.clone()
    }
}

impl ConfigValue for PathBuf {
    fn show(&self) -> String {
        self.display().to_string()
    }
}

impl ConfigValue for Duration {
    fn show(&self) -> String {
        show_duration(*self)
    }
}

impl<T: ConfigValue> ConfigValue for Option<T> {
    fn show(&self) -> String {
        self.as_ref().map(T::show).unwrap_or_default()
    }
}

impl<T: ConfigValue> ConfigValue for Vec<T> {
    fn show(&self) -> String {
        self.iter().map(T::show).collect::<Vec<_>>().join(",")
    }
}

impl ConfigValue for BTreeMap<String, String> {
    fn show(&self) -> String {
        self.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

macro_rules! show_with_display {
    ($($t:ty),+) => {
        $(impl ConfigValue for $t {
            fn show(&self) -> String {
                self.to_string()
            }
        })+
    };
}
show_with_display!(bool, u8, u16, usize, IpAddr, SocketAddr);

/// Permission bits in octal, as `api_socket_mode` is written (`0660`).
pub fn show_octal(mode: &u32) -> String {
    format!("{mode:04o}")
}

/// A duration in the largest unit that shows it exactly (`30s`, `500ms`, `1500us`, `7ns`).
pub fn show_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    for (unit, per) in [("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)] {
        if nanos.is_multiple_of(per) {
            return format!("{}{unit}", nanos / per);
        }
    }
    format!("{nanos}ns")
}

/// `Some(v)` unless `v` is empty after trimming.
pub(super) fn non_empty(v: &str) -> Option<&str> {
    let v = v.trim();
    (!v.is_empty()).then_some(v)
}

/// Empty is `None`, anything else goes through `parse`.
pub(super) fn optional<T>(
    v: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    non_empty(v).map(parse).transpose()
}

/// A path that may be empty (= none).
pub(super) fn optional_path(v: &str) -> Result<Option<PathBuf>, String> {
    Ok(non_empty(v).map(PathBuf::from))
}

/// A string that may be empty (= none).
pub(super) fn optional_string(v: &str) -> Result<Option<String>, String> {
    Ok(non_empty(v).map(str::to_string))
}

/// A path that must be given.
pub(super) fn required_path(v: &str) -> Result<PathBuf, String> {
    non_empty(v)
        .map(PathBuf::from)
        .ok_or_else(|| "must not be empty".to_string())
}

/// A duration of at least `min` (zero: greater than zero).
pub(super) fn duration_at_least(v: &str, min: Duration) -> Result<Duration, String> {
    let d = parse_duration(v)?;
    if min.is_zero() && d.is_zero() {
        return Err("must be greater than zero".into());
    }
    if d < min {
        return Err(format!("must be at least {}", show_duration(min)));
    }
    Ok(d)
}

/// An integer parsed with `FromStr`, checked by `ok`; `expected` says what is accepted.
pub(super) fn integer<T: std::str::FromStr>(
    v: &str,
    ok: impl Fn(&T) -> bool,
    expected: &str,
) -> Result<T, String> {
    v.parse()
        .ok()
        .filter(|n| ok(n))
        .ok_or_else(|| expected.to_string())
}

/// A byte size ([`parse_size`]) greater than zero.
pub(super) fn positive_size(v: &str) -> Result<usize, String> {
    match parse_size(v)? {
        0 => Err("must be greater than zero".into()),
        n => Ok(n),
    }
}

/// An `IP:port` address; `example` completes the message.
pub(super) fn socket_addr(v: &str, example: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| format!("expected an IP:port address like {example}"))
}

/// Comma-separated etcd client URLs: at least one, each `http://` or `https://`.
pub(super) fn etcd_urls(v: &str) -> Result<Vec<String>, String> {
    let servers: Vec<String> = v
        .split(',')
        .filter_map(non_empty)
        .map(String::from)
        .collect();
    if servers.is_empty() {
        return Err("at least one etcd URL is needed".into());
    }
    if let Some(s) = servers
        .iter()
        .find(|s| !(s.starts_with("http://") || s.starts_with("https://")))
    {
        return Err(format!("{s:?} is not an http:// or https:// URL"));
    }
    Ok(servers)
}

/// Comma-separated `IP:port` addresses (empty: none).
pub(super) fn socket_addrs(v: &str) -> Result<Vec<SocketAddr>, String> {
    v.split(',')
        .filter_map(non_empty)
        .map(|a| {
            a.parse()
                .map_err(|_| format!("{a:?} is not an IP:port address like 10.0.0.1:7479"))
        })
        .collect()
}

/// Octal permission bits (`0660`, `0o660`, at most `0777`).
pub(super) fn octal_mode(v: &str) -> Result<u32, String> {
    u32::from_str_radix(v.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| "expected octal permission bits like 0660".to_string())
}

/// A group name or numeric GID (empty: none).
pub(super) fn group(v: &str) -> Result<Option<String>, String> {
    match non_empty(v) {
        Some(g) if g.contains([':', '\n', ' ']) => {
            Err("expected a group name or a numeric GID".into())
        }
        g => Ok(g.map(str::to_string)),
    }
}

/// Normalises an etcd key prefix: starts and ends with `/`.
pub fn normalize_prefix(v: &str) -> Result<String, String> {
    let v = v.trim();
    if v.is_empty() {
        return Err("must not be empty".into());
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace".into());
    }
    let mut p = String::new();
    if !v.starts_with('/') {
        p.push('/');
    }
    p.push_str(v);
    if !p.ends_with('/') {
        p.push('/');
    }
    Ok(p)
}

/// Parses a boolean the way Go's `strconv.ParseBool` does, plus yes/no/on/off.
pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "yes" | "y" | "on" => Ok(true),
        "0" | "f" | "false" | "no" | "n" | "off" => Ok(false),
        _ => Err("expected a boolean (true/false, 1/0, yes/no, on/off)".into()),
    }
}

/// Parses a duration: plain (fractional) seconds like `1.5`, or a Go duration like `1m30s`,
/// `500ms` (units ns, us, µs, ms, s, m, h).
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let err = || "expected seconds (like 1.5) or a duration (like 500ms, 30s, 1m30s)".to_string();
    let v = v.trim();
    if v.is_empty() {
        return Err(err());
    }
    if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return Err(err());
        }
        return Duration::try_from_secs_f64(secs).map_err(|_| err());
    }
    let mut total = 0f64;
    let mut rest = v;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += n * mult;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| err())
}

/// Parses a byte size: an integer with an optional K/KiB/M/MiB suffix (powers of 1024).
pub fn parse_size(v: &str) -> Result<usize, String> {
    let err = || "expected a byte count like 1048576, 512K or 1M".to_string();
    let v = v.trim();
    let (num, mult) = if let Some(n) = v
        .strip_suffix("KiB")
        .or_else(|| v.strip_suffix('K'))
        .or_else(|| v.strip_suffix('k'))
    {
        (n, 1024)
    } else if let Some(n) = v.strip_suffix("MiB").or_else(|| v.strip_suffix('M')) {
        (n, 1024 * 1024)
    } else {
        (v, 1)
    };
    let n: usize = num.trim().parse().map_err(|_| err())?;
    n.checked_mul(mult).ok_or_else(err)
}

/// Whether `key` is a valid metadata key (`[A-Za-z0-9_.-]+`).
pub fn valid_metadata_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Parses `k=v,k=v` metadata. Keys must match `[A-Za-z0-9_.-]+`, values must not be empty.
pub fn parse_metadata(v: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in v.split(',') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let Some((k, val)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not key=value"));
        };
        let (k, val) = (k.trim(), val.trim());
        if !valid_metadata_key(k) {
            return Err(format!(
                "metadata key {k:?} must match [A-Za-z0-9_.-]+ (in {pair:?})"
            ));
        }
        if val.is_empty() {
            return Err(format!("metadata key {k:?} has an empty value"));
        }
        out.insert(k.to_string(), val.to_string());
    }
    Ok(out)
}

/// Checks a machine ID with [`fleet_sched::MachineId::parse`] (ASCII letters and digits).
pub fn validate_machine_id(id: &str) -> Result<String, String> {
    fleet_sched::MachineId::parse(id.trim())
        .map(|m| m.as_str().to_string())
        .map_err(|e| e.to_string())
}
