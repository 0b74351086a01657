//! Test oracles (feature `testing`): an independent placement checker.
//!
//! [`check_assignment`] says whether an assignment of units to machines obeys every `[X-Fleet]` rule of
//! fleet's spec (`MachineID=`, `MachineMetadata=`, `MachineOf=`, `Conflicts=`, `Replaces=`, `Global=`, the
//! rejected combinations, templates, inactive units). It is written from the spec, not from
//! [`crate::placement`]: it takes plain data (machine IDs and metadata, each unit's raw `[X-Fleet]` options,
//! which unit runs where), reads the options itself (quoted words, specifiers, aliases, globs) and shares
//! no code with the scheduler or with [`crate::requirements`]. So a bug in how the scheduler reads or applies
//! a rule is not repeated here. The simulator and the property tests run it on every plan; mutation tests
//! (`sched/tests/placement_checker.rs`) plant bugs in placements and require it to find them.
//!
//! It checks safety (nothing runs where a rule forbids it) and the completeness the spec promises: a global
//! unit runs on every eligible machine without a conflict, and an active unit without `MachineOf=` that is
//! placed nowhere fits on no machine. It does not check which of several fitting machines was chosen
//! (load, stability): that is the scheduler's policy, not a rule.
//!
//! [`Plan::violations`](crate::Plan::violations), the scheduler's own brute-force self-check, is also
//! behind this feature.

use std::collections::{BTreeMap, BTreeSet};

/// A live machine: its ID and metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckMachine {
    /// Machine ID.
    pub id: String,
    /// Metadata (`key=value`).
    pub metadata: BTreeMap<String, String>,
}

/// A unit as stored: its name, whether its desired state is other than `inactive`, and its `[X-Fleet]`
/// options in file order (`(key, value)`, exactly as written).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckUnit {
    /// Unit name.
    pub name: String,
    /// Desired state `loaded` or `launched`.
    pub active: bool,
    /// `[X-Fleet]` options, in order.
    pub xfleet: Vec<(String, String)>,
}

impl CheckUnit {
    /// A unit with the `[X-Fleet]` options of `file`.
    pub fn from_file(name: &str, active: bool, file: &crate::UnitFile) -> CheckUnit {
        CheckUnit {
            name: name.to_owned(),
            active,
            xfleet: file
                .options()
                .iter()
                .filter(|o| o.section == "X-Fleet")
                .map(|o| (o.name.clone(), o.value.clone()))
                .collect(),
        }
    }
}

/// Which machines each unit runs on (units absent or with an empty set run nowhere).
pub type Assignment = BTreeMap<String, BTreeSet<String>>;

/// The assignment a [`crate::Plan`] describes.
pub fn assignment_of(plan: &crate::Plan) -> Assignment {
    plan.decisions
        .iter()
        .map(|(n, d)| {
            let ms = d.machines().iter().map(|m| m.as_str().to_owned()).collect();
            (n.as_str().to_owned(), ms)
        })
        .collect()
}

/// The rule a [`Violation`] breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// Placed on a machine that is not live, or an assignment names a unit that does not exist.
    Unknown,
    /// An inactive unit, a template, or a unit with a rejected combination of options is placed.
    MustNotRun,
    /// A non-global unit on more than one machine.
    OneMachine,
    /// `MachineID=` does not name the machine.
    MachineId,
    /// `MachineMetadata=` does not match the machine.
    Metadata,
    /// A `MachineOf=` unit is not on the same machine.
    MachineOf,
    /// Two units on one machine, one of which conflicts with the other.
    Conflicts,
    /// A unit and a unit it replaces on one machine.
    Replaces,
    /// A global unit missing from an eligible machine that runs nothing it conflicts with.
    GlobalMissing,
    /// An active unit without `MachineOf=` placed nowhere although a machine fits it.
    UnplacedButFits,
}

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// The unit.
    pub unit: String,
    /// The machine, when the rule is about one.
    pub machine: Option<String>,
    /// A sentence for the test's failure message.
    pub detail: String,
}

/// Checks `assignment` against the spec's rules for `machines` (the live ones) and `units`; returns every
/// broken rule, sorted (empty when the assignment is sound).
pub fn check_assignment(
    machines: &[CheckMachine],
    units: &[CheckUnit],
    assignment: &Assignment,
) -> Vec<Violation> {
    Checker::new(machines, units, assignment).run()
}

/// A unit's `[X-Fleet]` options as the spec reads them.
#[derive(Debug, Default)]
struct Reqs {
    machine_id: Option<String>,
    machine_of: Vec<String>,
    metadata: BTreeMap<String, BTreeSet<String>>,
    conflicts: Vec<String>,
    replaces: Vec<String>,
    global: bool,
}

/// The name's parts that specifiers expand to: (`%n`, `%N`, `%p`, `%i`).
fn name_parts(name: &str) -> (String, String, String, String) {
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    let (prefix, instance) = stem.split_once('@').unwrap_or((stem, ""));
    (name.into(), stem.into(), prefix.into(), instance.into())
}

fn expand(word: &str, unit: &str) -> String {
    let (n, big_n, p, i) = name_parts(unit);
    let mut out = String::new();
    let mut it = word.chars().peekable();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push_str(&n),
            Some('N') => out.push_str(&big_n),
            Some('p') => out.push_str(&p),
            Some('i') => out.push_str(&i),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// A value that starts and ends with `"` is a list of words, split at spaces outside quotes.
fn quoted_words(value: &str) -> Vec<String> {
    if value.len() < 2 || !value.starts_with('"') || !value.ends_with('"') {
        return vec![value.to_owned()];
    }
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

fn read_reqs(unit: &CheckUnit) -> Reqs {
    let mut r = Reqs::default();
    for (key, value) in &unit.xfleet {
        let key = match key.as_str() {
            "X-ConditionMachineID" => "MachineID",
            "X-ConditionMachineOf" => "MachineOf",
            "X-Conflicts" => "Conflicts",
            "X-ConditionMachineMetadata" => "MachineMetadata",
            k => k,
        };
        let words: Vec<String> = quoted_words(value)
            .iter()
            .map(|w| expand(w, &unit.name))
            .collect();
        let split = || {
            words
                .iter()
                .flat_map(|w| w.split_whitespace().map(str::to_owned))
                .collect::<Vec<_>>()
        };
        match key {
            // fleet used the first value of MachineID=.
            "MachineID" => {
                if let Some(w) = words.first().filter(|w| !w.is_empty()) {
                    r.machine_id.get_or_insert_with(|| w.clone());
                }
            }
            "MachineOf" => r.machine_of.extend(split()),
            "Conflicts" => r.conflicts.extend(split()),
            "Replaces" => r.replaces.extend(split()),
            "MachineMetadata" => {
                for w in &words {
                    if let Some((k, v)) = w.split_once('=') {
                        if !k.is_empty() && !v.is_empty() {
                            r.metadata
                                .entry(k.to_owned())
                                .or_default()
                                .insert(v.to_owned());
                        }
                    }
                }
            }
            "Global" => {
                r.global = matches!(
                    value.to_ascii_lowercase().as_str(),
                    "true" | "yes" | "1" | "on" | "t"
                )
            }
            _ => {}
        }
    }
    r
}

/// The combinations the spec rejects (such a unit never runs).
fn rejected(r: &Reqs) -> bool {
    let id = r.machine_id.is_some();
    let of = !r.machine_of.is_empty();
    let conf = !r.conflicts.is_empty();
    let repl = !r.replaces.is_empty();
    (id && (of || conf || r.global || repl))
        || (r.global && (of || repl))
        || (conf && repl)
        || r.machine_of.iter().any(|peer| {
            r.conflicts.iter().any(|g| glob(g, peer)) || r.replaces.iter().any(|g| glob(g, peer))
        })
}

enum Tok {
    Lit(char),
    One,
    Star,
    Class(bool, Vec<(char, char)>),
}

/// Compiles a shell glob (`*`, `?`, `[a-z]`, `[^a]`, `\x`); `None` if malformed.
fn compile(pattern: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        out.push(match c {
            '*' => Tok::Star,
            '?' => Tok::One,
            '\\' => Tok::Lit(it.next()?),
            '[' => {
                let mut negated = false;
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let mut c = it.next()?;
                    if first && c == '^' {
                        negated = true;
                        c = it.next()?;
                    }
                    if c == ']' && !first {
                        break;
                    }
                    // As Go's path.Match: an unescaped ']' first or '-' is a malformed class.
                    if c == ']' || c == '-' {
                        return None;
                    }
                    first = false;
                    if c == '\\' {
                        c = it.next()?;
                    }
                    let mut hi = c;
                    let rest = it.clone().collect::<String>();
                    if rest.starts_with('-') && !rest.starts_with("-]") {
                        it.next();
                        hi = it.next()?;
                        if hi == '\\' {
                            hi = it.next()?;
                        }
                    }
                    ranges.push((c, hi));
                }
                Tok::Class(negated, ranges)
            }
            c => Tok::Lit(c),
        });
    }
    Some(out)
}

/// Whether `name` matches `pattern` (a malformed pattern matches nothing). Dynamic programming over
/// (pattern position, name position): no backtracking blow-up.
fn glob(pattern: &str, name: &str) -> bool {
    let Some(toks) = compile(pattern) else {
        return false;
    };
    let name: Vec<char> = name.chars().collect();
    // can[j]: the tokens so far match name[..j].
    let mut can = vec![false; name.len() + 1];
    can[0] = true;
    for t in &toks {
        let mut next = vec![false; name.len() + 1];
        for j in 0..=name.len() {
            match t {
                Tok::Star => next[j] = can[j] || (j > 0 && next[j - 1] && name[j - 1] != '/'),
                _ if j == 0 => {}
                Tok::Lit(c) => next[j] = can[j - 1] && name[j - 1] == *c,
                Tok::One => next[j] = can[j - 1] && name[j - 1] != '/',
                Tok::Class(neg, ranges) => {
                    let c = name[j - 1];
                    let inside = ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi);
                    next[j] = can[j - 1] && c != '/' && inside != *neg;
                }
            }
        }
        can = next;
    }
    can[name.len()]
}

struct Checker<'a> {
    machines: BTreeMap<&'a str, &'a CheckMachine>,
    units: BTreeMap<&'a str, (&'a CheckUnit, Reqs)>,
    assignment: &'a Assignment,
    /// The units on each machine.
    on: BTreeMap<&'a str, BTreeSet<&'a str>>,
    out: Vec<Violation>,
}

impl<'a> Checker<'a> {
    fn new(
        machines: &'a [CheckMachine],
        units: &'a [CheckUnit],
        assignment: &'a Assignment,
    ) -> Self {
        let mut on: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (u, ms) in assignment {
            for m in ms {
                on.entry(m.as_str()).or_default().insert(u.as_str());
            }
        }
        Checker {
            machines: machines.iter().map(|m| (m.id.as_str(), m)).collect(),
            units: units
                .iter()
                .map(|u| (u.name.as_str(), (u, read_reqs(u))))
                .collect(),
            assignment,
            on,
            out: Vec::new(),
        }
    }

    fn flag(&mut self, rule: Rule, unit: &str, machine: Option<&str>, detail: String) {
        self.out.push(Violation {
            rule,
            unit: unit.to_owned(),
            machine: machine.map(str::to_owned),
            detail,
        });
    }

    fn placed_on(&self, unit: &str) -> BTreeSet<&'a str> {
        self.assignment
            .get(unit)
            .map(|ms| ms.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    fn may_run(u: &CheckUnit, r: &Reqs) -> bool {
        u.active && !u.name.contains("@.") && !rejected(r)
    }

    /// `MachineID=` and `MachineMetadata=` accept `m`.
    fn static_fit(r: &Reqs, m: &CheckMachine) -> Result<(), Rule> {
        if let Some(id) = &r.machine_id {
            let short = id.len() == 8 && m.id.get(..8) == Some(id.as_str());
            if m.id != *id && !short {
                return Err(Rule::MachineId);
            }
        }
        let meta_ok = r
            .metadata
            .iter()
            .all(|(k, vals)| m.metadata.get(k).is_some_and(|v| vals.contains(v)));
        if !meta_ok {
            return Err(Rule::Metadata);
        }
        Ok(())
    }

    /// `a` replaces `b`, not as part of a cycle of `Replaces=` (cycles are ignored).
    fn replaces(&self, a: &str, b: &str) -> bool {
        self.edge(a, b) && !self.reaches(b, a)
    }

    fn edge(&self, a: &str, b: &str) -> bool {
        let (Some((ua, ra)), Some((ub, rb))) = (self.units.get(a), self.units.get(b)) else {
            return false;
        };
        a != b
            && !ra.global
            && !rb.global
            && !rejected(ra)
            && !rejected(rb)
            && ua.active
            && ub.active
            && ra.replaces.iter().any(|g| glob(g, b))
    }

    fn reaches(&self, from: &str, to: &str) -> bool {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(x) = stack.pop() {
            if x == to {
                return true;
            }
            if seen.insert(x.clone()) {
                for y in self.units.keys() {
                    if self.edge(&x, y) {
                        stack.push((*y).to_owned());
                    }
                }
            }
        }
        false
    }

    /// The first unit among `others` that `unit` may not share a machine with, and the rule.
    fn blocker(&self, unit: &str, others: &BTreeSet<&str>) -> Option<(String, Rule)> {
        let (_, r) = &self.units[unit];
        for &o in others {
            if o == unit {
                continue;
            }
            let Some((_, ro)) = self.units.get(o) else {
                continue;
            };
            if r.conflicts.iter().any(|g| glob(g, o)) || ro.conflicts.iter().any(|g| glob(g, unit))
            {
                return Some((o.to_owned(), Rule::Conflicts));
            }
            if self.replaces(unit, o) || self.replaces(o, unit) {
                return Some((o.to_owned(), Rule::Replaces));
            }
        }
        None
    }

    fn run(mut self) -> Vec<Violation> {
        for (u, ms) in self.assignment {
            if !ms.is_empty() && !self.units.contains_key(u.as_str()) {
                self.flag(
                    Rule::Unknown,
                    u,
                    None,
                    format!("{u} is placed but does not exist"),
                );
            }
        }
        let names: Vec<&str> = self.units.keys().copied().collect();
        for name in names {
            for (rule, m, detail) in self.check_unit(name) {
                self.flag(rule, name, m.as_deref(), detail);
            }
        }
        self.out.sort();
        self.out.dedup();
        self.out
    }

    /// Every rule `name` breaks: (rule, machine, detail).
    fn check_unit(&self, name: &str) -> Vec<(Rule, Option<String>, String)> {
        let empty = BTreeSet::new();
        let (u, r) = &self.units[name];
        let placed = self.placed_on(name);
        let mut found = Vec::new();
        if !Self::may_run(u, r) {
            if !placed.is_empty() {
                let why = if !u.active {
                    "inactive"
                } else if name.contains("@.") {
                    "a template"
                } else {
                    "a rejected combination of [X-Fleet] options"
                };
                found.push((
                    Rule::MustNotRun,
                    None,
                    format!("{name} is {why} but runs on {placed:?}"),
                ));
            }
            return found;
        }
        if !r.global && placed.len() > 1 {
            found.push((Rule::OneMachine, None, format!("{name} runs on {placed:?}")));
        }
        for &m in &placed {
            let at = Some(m.to_owned());
            let Some(info) = self.machines.get(m) else {
                found.push((
                    Rule::Unknown,
                    at,
                    format!("{name} is on {m}, which is not live"),
                ));
                continue;
            };
            if let Err(rule) = Self::static_fit(r, info) {
                found.push((
                    rule,
                    at.clone(),
                    format!("{name} is on {m}, which its {rule:?} requirement refuses"),
                ));
            }
            for t in &r.machine_of {
                if !self.placed_on(t).contains(m) {
                    found.push((
                        Rule::MachineOf,
                        at.clone(),
                        format!("{name} is on {m} but its MachineOf {t} is not"),
                    ));
                }
            }
            if let Some((o, rule)) = self.blocker(name, self.on.get(m).unwrap_or(&empty)) {
                found.push((
                    rule,
                    at,
                    format!("{name} and {o} are both on {m} ({rule:?})"),
                ));
            }
        }
        // Completeness: a global unit on every machine it fits, a unit without MachineOf somewhere if it
        // fits anywhere.
        let fits = |m: &CheckMachine| {
            Self::static_fit(r, m).is_ok()
                && self
                    .blocker(name, self.on.get(m.id.as_str()).unwrap_or(&empty))
                    .is_none()
        };
        if r.global {
            for (id, info) in &self.machines {
                if !placed.contains(id) && fits(info) {
                    found.push((
                        Rule::GlobalMissing,
                        Some((*id).to_owned()),
                        format!("global {name} is not on {id}, which it fits"),
                    ));
                }
            }
        } else if placed.is_empty() && r.machine_of.is_empty() {
            if let Some((id, _)) = self.machines.iter().find(|(_, info)| fits(info)) {
                found.push((
                    Rule::UnplacedButFits,
                    Some((*id).to_owned()),
                    format!("{name} runs nowhere but fits on {id}"),
                ));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_words_read_like_the_spec() {
        assert!(glob("web@*.service", "web@1.service"));
        assert!(!glob("web@*.service", "db.service"));
        assert!(glob("a?c", "abc") && !glob("a?c", "ac"));
        assert!(glob("[a-c]x", "bx") && !glob("[^a-c]x", "bx") && !glob("[]]", "]"));
        assert!(glob("a\\*", "a*") && !glob("a\\*", "ab"));
        assert!(!glob("[a", "a") && !glob("a\\", "a"));
        assert!(glob("*a*a*a*a*a*a*a*b", &format!("{}b", "a".repeat(200))));
        assert!(!glob("*a*a*a*a*a*a*a*b", &"a".repeat(200)));
        assert_eq!(quoted_words("\"a b\" c"), ["\"a b\" c"]);
        assert_eq!(
            quoted_words("\"region=us east\" \"disk=ssd\""),
            ["region=us east", "disk=ssd"]
        );
        assert_eq!(
            expand("%p-%i|%n|%N|%%", "web@8.service"),
            "web-8|web@8.service|web@8|%"
        );
    }
}
