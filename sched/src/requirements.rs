//! `[X-Fleet]` requirements: where a unit may run, read from its unit file the way fleet v1's `job` package
//! read them, and the combinations fleet rejected.
//!
//! Reading a value:
//! 1. A value that starts and ends with `"` is split into words at spaces outside quotes, quotes removed
//!    (fleet's `parseMultivalueLine`): `MachineMetadata="region=us east" "disk=ssd"`.
//! 2. Specifiers are expanded with the unit's name: `%n %N %p %i`, and `%%` for a literal `%`
//!    ([`UnitName::expand_specifiers`]).
//! 3. List options (`MachineOf`, `Conflicts`, `Replaces`) are further split at whitespace, and several lines
//!    add up.
//!
//! Differences from fleet v1, each the obvious fix:
//! - Unknown keys, deprecated aliases, malformed `MachineMetadata` pairs and bad globs produce
//!   [`Requirements::warnings`] instead of being silently ignored.
//! - `MachineMetadata=k=v=w` means key `k`, value `v=w` (fleet ignored pairs with two `=`).
//! - Specifiers are expanded before the rejected combinations are checked (fleet's API checked the raw
//!   values, so `MachineOf=%p.service` with `Conflicts=%p*` slipped through).

use std::collections::BTreeMap;

use crate::name::UnitName;
use crate::unitfile::UnitFile;

/// The section fleet reads requirements from.
pub const SECTION: &str = "X-Fleet";

/// Canonical option names.
const MACHINE_ID: &str = "MachineID";
const MACHINE_OF: &str = "MachineOf";
const MACHINE_METADATA: &str = "MachineMetadata";
const CONFLICTS: &str = "Conflicts";
const GLOBAL: &str = "Global";
const REPLACES: &str = "Replaces";
/// Deprecated aliases.
const X_MACHINE_ID: &str = "X-ConditionMachineID";
const X_MACHINE_BOOT_ID: &str = "X-ConditionMachineBootID";
const X_MACHINE_OF: &str = "X-ConditionMachineOf";
const X_CONFLICTS: &str = "X-Conflicts";
const X_MACHINE_METADATA: &str = "X-ConditionMachineMetadata";

/// Every `[X-Fleet]` key fleet understands.
pub const KNOWN_KEYS: &[&str] = &[
    MACHINE_ID,
    MACHINE_OF,
    MACHINE_METADATA,
    CONFLICTS,
    GLOBAL,
    REPLACES,
    X_MACHINE_ID,
    X_MACHINE_BOOT_ID,
    X_MACHINE_OF,
    X_CONFLICTS,
    X_MACHINE_METADATA,
];

/// A combination of requirements no machine can satisfy, or that fleet refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    /// Two options that cannot be used together (fleet's messages).
    #[error("{first} cannot be used with {second}")]
    Incompatible {
        /// The option that excludes the other.
        first: &'static str,
        /// The other option.
        second: &'static str,
    },
    /// A `MachineOf` peer matches a `Conflicts` glob: the unit would have to share and not share a machine.
    #[error(
        "unresolvable requirements: MachineOf peer {peer:?} matches Conflicts pattern {pattern:?}"
    )]
    PeerMatchesConflict {
        /// The `MachineOf` unit.
        peer: String,
        /// The matching `Conflicts` glob.
        pattern: String,
    },
    /// A `MachineOf` peer matches a `Replaces` glob.
    #[error(
        "unresolvable requirements: MachineOf peer {peer:?} matches Replaces pattern {pattern:?}"
    )]
    PeerMatchesReplace {
        /// The `MachineOf` unit.
        peer: String,
        /// The matching `Replaces` glob.
        pattern: String,
    },
}

/// The placement requirements of one unit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    /// `MachineID=` (or the deprecated `X-ConditionMachineID=`): the full or 8-character short ID of the
    /// only machine the unit may run on. The first value wins, as in fleet.
    pub machine_id: Option<String>,
    /// Deprecated `X-ConditionMachineBootID=`; fleet used it as a machine ID when `MachineID=` was absent
    /// ([`Requirements::required_machine`]).
    pub machine_boot_id: Option<String>,
    /// `MachineOf=`: units (after specifier expansion) that must be on the same machine.
    pub machine_of: Vec<String>,
    /// `MachineMetadata=k=v`: values of one key are OR'ed, keys are AND'ed.
    pub metadata: BTreeMap<String, Vec<String>>,
    /// `Conflicts=`: globs of units that must not share the machine (checked both ways).
    pub conflicts: Vec<String>,
    /// `Global=`: run on every eligible machine.
    pub global: bool,
    /// `Replaces=`: globs of units whose machine this unit takes.
    pub replaces: Vec<String>,
    /// Problems worth telling the user that do not make the unit invalid (unknown keys, deprecated
    /// aliases, ignored values).
    pub warnings: Vec<String>,
}

impl Requirements {
    /// Reads the `[X-Fleet]` section of `file` for the unit `name` and rejects the combinations fleet
    /// rejected (checked in fleet's order; the error names the options in conflict).
    pub fn from_unit(name: &UnitName, file: &UnitFile) -> Result<Requirements, RequirementError> {
        let mut req = Requirements::default();
        // Values per known key, in file order, after quote splitting and specifier expansion.
        let mut values: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for opt in file.options().iter().filter(|o| o.section == SECTION) {
            let Some(&key) = KNOWN_KEYS.iter().find(|k| **k == opt.name) else {
                req.warnings.push(format!(
                    "unknown [X-Fleet] option {:?} is ignored (known: {})",
                    opt.name,
                    KNOWN_KEYS.join(", ")
                ));
                continue;
            };
            let entry = values.entry(key).or_default();
            for word in split_quoted(&opt.value) {
                entry.push(name.expand_specifiers(&word));
            }
        }
        for (alias, canonical) in [
            (X_MACHINE_ID, MACHINE_ID),
            (X_MACHINE_BOOT_ID, MACHINE_ID),
            (X_MACHINE_OF, MACHINE_OF),
            (X_CONFLICTS, CONFLICTS),
            (X_MACHINE_METADATA, MACHINE_METADATA),
        ] {
            if values.contains_key(alias) {
                req.warnings
                    .push(format!("[X-Fleet] {alias} is deprecated, use {canonical}"));
            }
        }
        // An empty machine ID can match no machine: drop it instead of pinning the unit nowhere.
        for key in [MACHINE_ID, X_MACHINE_ID, X_MACHINE_BOOT_ID] {
            if let Some(vals) = values.get_mut(key) {
                let before = vals.len();
                vals.retain(|v| !v.trim().is_empty());
                if vals.len() != before {
                    req.warnings
                        .push(format!("[X-Fleet] empty {key}= is ignored"));
                }
                for v in vals.iter_mut() {
                    *v = v.trim().to_owned();
                }
            }
        }
        let get = |key: &str| values.get(key).map(Vec::as_slice).unwrap_or(&[]);

        // MachineID: first value wins; precedence as fleet's RequiredTarget.
        req.machine_boot_id = get(X_MACHINE_BOOT_ID).first().cloned();
        req.machine_id = get(MACHINE_ID).first().cloned();
        if req.machine_id.is_none() && req.machine_boot_id.is_none() {
            req.machine_id = get(X_MACHINE_ID).first().cloned();
        }
        for key in [MACHINE_ID, X_MACHINE_ID, X_MACHINE_BOOT_ID] {
            let vals = get(key);
            if vals.iter().any(|v| *v != vals[0]) {
                req.warnings.push(format!(
                    "[X-Fleet] {key} has several values; only the first ({:?}) is used",
                    vals[0]
                ));
            }
        }

        req.machine_of = words(get(X_MACHINE_OF).iter().chain(get(MACHINE_OF)));
        for peer in &req.machine_of {
            if let Err(e) = UnitName::parse(peer) {
                req.warnings.push(format!(
                    "[X-Fleet] MachineOf={peer} can never be satisfied: {e}"
                ));
            }
        }
        req.conflicts = words(get(X_CONFLICTS).iter().chain(get(CONFLICTS)));
        req.replaces = words(get(REPLACES).iter());
        for (key, globs) in [(CONFLICTS, &req.conflicts), (REPLACES, &req.replaces)] {
            for g in globs {
                if let Err(e) = glob_check(g) {
                    req.warnings
                        .push(format!("[X-Fleet] {key}={g} never matches: {e}"));
                }
            }
        }

        // Global: the last value wins.
        req.global = get(GLOBAL).last().is_some_and(|v| is_truthy(v));

        for pair in get(X_MACHINE_METADATA).iter().chain(get(MACHINE_METADATA)) {
            match pair.split_once('=') {
                Some((k, v)) if !k.is_empty() && !v.is_empty() => {
                    let vals = req.metadata.entry(k.to_owned()).or_default();
                    if !vals.iter().any(|x| x == v) {
                        vals.push(v.to_owned());
                    }
                }
                _ => req.warnings.push(format!(
                    "[X-Fleet] MachineMetadata={pair:?} is ignored: expected key=value"
                )),
            }
        }

        req.validate()?;
        Ok(req)
    }

    /// The machine the unit is pinned to: `MachineID=`, else the deprecated boot ID, else
    /// `X-ConditionMachineID=` (fleet's `RequiredTarget`).
    pub fn required_machine(&self) -> Option<&str> {
        self.machine_id
            .as_deref()
            .or(self.machine_boot_id.as_deref())
    }

    /// Checks the combinations fleet rejected, in fleet's order.
    pub fn validate(&self) -> Result<(), RequirementError> {
        for peer in &self.machine_of {
            if let Some(p) = self.conflicts.iter().find(|p| glob_match(p, peer)) {
                return Err(RequirementError::PeerMatchesConflict {
                    peer: peer.clone(),
                    pattern: p.clone(),
                });
            }
            if let Some(p) = self.replaces.iter().find(|p| glob_match(p, peer)) {
                return Err(RequirementError::PeerMatchesReplace {
                    peer: peer.clone(),
                    pattern: p.clone(),
                });
            }
        }
        let pinned = self.required_machine().is_some();
        let has_peers = !self.machine_of.is_empty();
        let has_conflicts = !self.conflicts.is_empty();
        let has_replaces = !self.replaces.is_empty();
        let incompatible = |first, second| Err(RequirementError::Incompatible { first, second });
        match () {
            _ if pinned && has_peers => incompatible(MACHINE_ID, MACHINE_OF),
            _ if pinned && has_conflicts => incompatible(MACHINE_ID, CONFLICTS),
            _ if pinned && self.global => incompatible(MACHINE_ID, GLOBAL),
            _ if pinned && has_replaces => incompatible(MACHINE_ID, REPLACES),
            _ if self.global && has_peers => incompatible(GLOBAL, MACHINE_OF),
            _ if has_conflicts && has_replaces => incompatible(CONFLICTS, REPLACES),
            _ if self.global && has_replaces => incompatible(GLOBAL, REPLACES),
            _ => Ok(()),
        }
    }

    /// `true` if `unit` matches one of this unit's `Conflicts` globs.
    pub fn conflicts_with(&self, unit: &str) -> bool {
        self.conflicts.iter().any(|p| glob_match(p, unit))
    }

    /// `true` if `unit` matches one of this unit's `Replaces` globs.
    pub fn replaces_unit(&self, unit: &str) -> bool {
        self.replaces.iter().any(|p| glob_match(p, unit))
    }

    /// `true` if machine metadata `machine` satisfies `MachineMetadata`: for every required key, the
    /// machine's value for it is one of the required values (exact string match).
    pub fn metadata_matches(&self, machine: &BTreeMap<String, String>) -> bool {
        self.metadata
            .iter()
            .all(|(k, vals)| machine.get(k).is_some_and(|v| vals.contains(v)))
    }
}

/// fleet's truthy values for `Global=`: true, yes, 1, on, t (case-insensitive).
fn is_truthy(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "true" | "yes" | "1" | "on" | "t"
    )
}

/// Splits list values at whitespace, dropping duplicates (fleet used sets), keeping first-seen order.
fn words<'a>(values: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in values.flat_map(|v| v.split_whitespace()) {
        if !out.iter().any(|x| x == w) {
            out.push(w.to_owned());
        }
    }
    out
}

/// fleet's `parseMultivalueLine`, applied only to values that start and end with `"`: splits at spaces
/// outside quotes and removes the quotes. Other values are returned whole. Empty words are dropped.
pub fn split_quoted(value: &str) -> Vec<String> {
    if !(value.len() >= 2 && value.starts_with('"') && value.ends_with('"')) {
        return vec![value.to_owned()];
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Why a glob pattern is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// A `[` without its `]`, an empty class, or a range with a missing end.
    #[error("malformed character class")]
    BadClass,
    /// A trailing `\`.
    #[error("trailing backslash")]
    TrailingEscape,
}

/// Checks a pattern's syntax as Go's `path.Match` does.
pub fn glob_check(pattern: &str) -> Result<(), GlobError> {
    let p: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                if i + 1 >= p.len() {
                    return Err(GlobError::TrailingEscape);
                }
                i += 2;
            }
            '[' => {
                // Any character works for the syntax check of a class.
                let (_, next) = match_class(&p, i, 'a')?;
                i = next;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Shell-style match as Go's `path.Match`, used for `Conflicts` and `Replaces`: `*` any run of characters
/// except `/`, `?` one character except `/`, `[abc]`, `[a-z]`, `[^a-z]` classes, `\` escapes the next
/// character. A malformed pattern matches nothing (fleet ignored `path.Match`'s error).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    if glob_check(pattern).is_err() {
        return false;
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    if n.contains(&'/') {
        match_dp(&p, &n)
    } else {
        match_greedy(&p, &n)
    }
}

/// One non-`*` pattern element at `p[pi]` against `n[ni]`: the indices after both, if it matches.
fn step(p: &[char], pi: usize, n: &[char], ni: usize) -> Option<(usize, usize)> {
    let c = *n.get(ni)?;
    match p[pi] {
        '?' => (c != '/').then_some((pi + 1, ni + 1)),
        '[' => match match_class(p, pi, c) {
            Ok((true, next)) if c != '/' => Some((next, ni + 1)),
            _ => None,
        },
        '\\' => (p.get(pi + 1) == Some(&c)).then_some((pi + 2, ni + 1)),
        lit => (lit == c).then_some((pi + 1, ni + 1)),
    }
}

/// Matching for names without `/` (unit names): the classic wildcard algorithm that backtracks only to
/// the last `*`, `O(len(p) × len(n))` at worst (the recursive version was exponential in the number of
/// `*`: `*a*a*a*a*a*a*a*b` against 200 `a`s never finished).
fn match_greedy(p: &[char], n: &[char]) -> bool {
    let (mut pi, mut ni) = (0, 0);
    // (pattern index after the last '*', name index where its match ends).
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < p.len() {
            if p[pi] == '*' {
                pi += 1;
                star = Some((pi, ni));
                continue;
            }
            if let Some((npi, nni)) = step(p, pi, n, ni) {
                (pi, ni) = (npi, nni);
                continue;
            }
        } else if ni == n.len() {
            return true;
        }
        match star {
            Some((sp, sn)) if sn < n.len() => {
                star = Some((sp, sn + 1));
                (pi, ni) = (sp, sn + 1);
            }
            _ => return false,
        }
    }
}

/// Matching for any name, `*` never crossing `/`: dynamic programming over (pattern, name) positions.
fn match_dp(p: &[char], n: &[char]) -> bool {
    // can[j]: the pattern read so far matches n[..j].
    let mut can = vec![false; n.len() + 1];
    can[0] = true;
    let mut pi = 0;
    while pi < p.len() {
        let mut next = vec![false; n.len() + 1];
        let mut after = pi + 1;
        for j in 0..=n.len() {
            if p[pi] == '*' {
                next[j] = can[j] || (j > 0 && next[j - 1] && n[j - 1] != '/');
            } else if j > 0 && can[j - 1] {
                if let Some((npi, _)) = step(p, pi, n, j - 1) {
                    next[j] = true;
                    after = npi;
                }
            }
        }
        if p[pi] != '*' {
            // The element's length in the pattern does not depend on the character it matched.
            after = match p[pi] {
                '\\' => pi + 2,
                '[' => match_class(p, pi, 'a').map_or(pi + 1, |(_, next)| next),
                _ => pi + 1,
            };
        }
        can = next;
        pi = after;
    }
    can[n.len()]
}

/// Matches `c` against the class starting at `p[start] == '['`; returns (matched, index after `]`).
fn match_class(p: &[char], start: usize, c: char) -> Result<(bool, usize), GlobError> {
    let mut i = start + 1;
    let negated = p.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut count = 0;
    loop {
        let Some(&ch) = p.get(i) else {
            return Err(GlobError::BadClass);
        };
        if ch == ']' && count > 0 {
            i += 1;
            break;
        }
        let (lo, next) = class_char(p, i)?;
        i = next;
        let mut hi = lo;
        if p.get(i) == Some(&'-') {
            let (h, next) = class_char(p, i + 1)?;
            // A reversed range is valid and matches nothing, as in Go.
            hi = h;
            i = next;
        }
        if lo <= c && c <= hi {
            matched = true;
        }
        count += 1;
    }
    Ok((matched != negated, i))
}

/// One (possibly escaped) character inside a class.
fn class_char(p: &[char], i: usize) -> Result<(char, usize), GlobError> {
    match p.get(i) {
        None | Some('-') | Some(']') => Err(GlobError::BadClass),
        Some('\\') => match p.get(i + 1) {
            Some(&c) => Ok((c, i + 2)),
            None => Err(GlobError::BadClass),
        },
        Some(&c) => Ok((c, i + 1)),
    }
}

#[cfg(test)]
mod tests;
