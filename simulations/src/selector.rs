//! Machine selectors: which machines a fault concerns, in the operator's terms.
//!
//! A selector is a comma-separated list of terms:
//! - `region=eu-west,rack=b`: machines whose metadata has every key, with one of the values given for
//!   it (fleet's `MachineMetadata=` rule, matched by the scheduler's own
//!   [`Requirements::metadata_matches`]: different keys AND, the same key repeated OR);
//! - `3f9a` or `id:3f9a`: the machine whose ID is, or starts with, this (as `fleetctl` takes IDs); a
//!   prefix that several machines share is an error;
//! - `7`, `0-99`: machines by index in the scenario (`m00007`...);
//! - `all`, `random:50` (50 machines drawn with the seed), and `etcd` (the etcd cluster, as a side of a
//!   partition).
//!
//! The key=value terms form one metadata match; every other term adds its machines to it. A term that
//! picks no machine is an error naming it (never a silent empty fault).

use std::collections::{BTreeMap, BTreeSet};

use fleet_sched::placement::MachineInfo;
use fleet_sched::Requirements;
use rand::rngs::StdRng;
use rand::RngExt;

/// A parsed machine selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// Every machine.
    All,
    /// The etcd cluster (no machine: a side of a partition).
    Etcd,
    /// Machines by index, inclusive range.
    Range(usize, usize),
    /// The machine whose ID is, or starts with, this.
    Id(String),
    /// Machines whose metadata has every key with one of its values.
    Meta(BTreeMap<String, Vec<String>>),
    /// This many machines drawn at random (seeded).
    Random(usize),
    /// A union.
    Union(Vec<Selector>),
}

impl Selector {
    /// Parses the selector syntax (see the module docs).
    pub fn parse(s: &str) -> Result<Selector, String> {
        let parts: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            return Err(format!("empty selector {s:?}"));
        }
        let mut meta: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut terms = Vec::new();
        for p in parts {
            if p == "all" || p == "*" {
                terms.push(Selector::All);
            } else if p == "etcd" {
                terms.push(Selector::Etcd);
            } else if let Some(n) = p.strip_prefix("random:") {
                let n = n
                    .parse()
                    .map_err(|_| format!("bad count in selector term {p:?} (random:5)"))?;
                terms.push(Selector::Random(n));
            } else if let Some((k, v)) = p.split_once('=') {
                let (k, v) = (k.trim(), v.trim());
                if k.is_empty() || v.is_empty() {
                    return Err(format!(
                        "bad metadata term {p:?} in selector {s:?} (key=value)"
                    ));
                }
                let values = meta.entry(k.to_string()).or_default();
                if !values.iter().any(|x| x == v) {
                    values.push(v.to_string());
                }
            } else if let Some(id) = p.strip_prefix("id:") {
                terms.push(Selector::Id(id_term(id, s)?));
            } else if p.bytes().all(|b| b.is_ascii_digit()) {
                let i = p.parse().map_err(|_| format!("bad index {p:?}"))?;
                terms.push(Selector::Range(i, i));
            } else if let Some((a, b)) = p.split_once('-') {
                let bad = || format!("bad range {p:?} in selector {s:?} (e.g. 0-99)");
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b {
                    return Err(bad());
                }
                terms.push(Selector::Range(a, b));
            } else {
                terms.push(Selector::Id(id_term(p, s)?));
            }
        }
        if !meta.is_empty() {
            terms.push(Selector::Meta(meta));
        }
        if terms.len() == 1 {
            Ok(terms.pop().expect("one term"))
        } else {
            Ok(Selector::Union(terms))
        }
    }

    /// Whether it names the etcd cluster.
    pub fn has_etcd(&self) -> bool {
        match self {
            Selector::Etcd => true,
            Selector::Union(v) => v.iter().any(Selector::has_etcd),
            _ => false,
        }
    }

    /// The machine indices it picks (etcd excluded). Strict: a term that picks no machine (an index
    /// past the last machine, metadata or an ID prefix nobody has) or an ID prefix several machines
    /// share is an error naming it; otherwise terms that pick nothing are skipped (metadata may change
    /// at run time).
    pub fn resolve(
        &self,
        machines: &[MachineInfo],
        rng: &mut StdRng,
        strict: bool,
    ) -> Result<Vec<usize>, String> {
        let mut out = BTreeSet::new();
        self.pick(machines, rng, strict, &mut out)?;
        Ok(out.into_iter().collect())
    }

    fn pick(
        &self,
        machines: &[MachineInfo],
        rng: &mut StdRng,
        strict: bool,
        out: &mut BTreeSet<usize>,
    ) -> Result<(), String> {
        let n = machines.len();
        let before = out.len();
        match self {
            Selector::All => out.extend(0..n),
            Selector::Etcd => return Ok(()),
            Selector::Range(a, b) => {
                if strict && *b >= n {
                    let what = if a == b {
                        format!("machine index {a}")
                    } else {
                        format!("machine range {a}-{b}")
                    };
                    return Err(format!(
                        "{what} goes past the last machine (the cluster has {n}: 0-{})",
                        n.saturating_sub(1)
                    ));
                }
                out.extend((*a..=*b).filter(|i| *i < n));
            }
            Selector::Id(prefix) => {
                let exact = machines.iter().position(|m| m.id.as_str() == prefix);
                let all: Vec<usize> = machines
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.id.as_str().starts_with(prefix.as_str()))
                    .map(|(i, _)| i)
                    .collect();
                match (exact, all.len()) {
                    (Some(i), _) => out.insert(i),
                    (None, 1) => out.insert(all[0]),
                    (None, 0) if strict => {
                        return Err(format!("no machine ID is or starts with {prefix:?}"))
                    }
                    (None, 0) => false,
                    (None, k) => {
                        let ids: Vec<&str> = all
                            .iter()
                            .take(4)
                            .map(|&i| machines[i].id.as_str())
                            .collect();
                        return Err(format!(
                            "machine ID prefix {prefix:?} is ambiguous: {k} machines ({}{}); give more of the ID",
                            ids.join(", "),
                            if k > 4 { ", ..." } else { "" }
                        ));
                    }
                };
            }
            Selector::Meta(want) => {
                // The scheduler's `MachineMetadata=` rule, not a copy of it.
                let rule = Requirements {
                    metadata: want.clone(),
                    ..Requirements::default()
                };
                out.extend(
                    machines
                        .iter()
                        .enumerate()
                        .filter(|(_, m)| rule.metadata_matches(&m.metadata))
                        .map(|(i, _)| i),
                );
                if strict && out.len() == before {
                    return Err(format!(
                        "no machine has metadata {}{}",
                        meta_text(want),
                        known_values(want, machines)
                    ));
                }
            }
            Selector::Random(k) => {
                if strict && *k == 0 {
                    return Err("random:0 picks no machine".into());
                }
                let mut all: Vec<usize> = (0..n).collect();
                for i in 0..(*k).min(n) {
                    let j = rng.random_range(i..n);
                    all.swap(i, j);
                    out.insert(all[i]);
                }
            }
            Selector::Union(v) => {
                for s in v {
                    s.pick(machines, rng, strict, out)?;
                }
            }
        }
        Ok(())
    }
}

fn id_term(id: &str, whole: &str) -> Result<String, String> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!(
            "unknown selector term {id:?} in {whole:?}: expected a machine ID prefix (letters and \
             digits), key=value metadata, an index 7, a range 0-99, all, etcd or random:5"
        ));
    }
    Ok(id.to_string())
}

fn meta_text(want: &BTreeMap<String, Vec<String>>) -> String {
    want.iter()
        .map(|(k, vs)| {
            vs.iter()
                .map(|v| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" or ")
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

/// What the machines have for the keys asked, as a hint: ` (rack is a or b; no machine has zone)`.
fn known_values(want: &BTreeMap<String, Vec<String>>, machines: &[MachineInfo]) -> String {
    let mut hints = Vec::new();
    for k in want.keys() {
        let have: BTreeSet<&str> = machines
            .iter()
            .filter_map(|m| m.metadata.get(k).map(String::as_str))
            .collect();
        if have.is_empty() {
            hints.push(format!("no machine has {k}"));
        } else {
            let list: Vec<&str> = have.iter().take(8).copied().collect();
            let more = if have.len() > 8 { " or ..." } else { "" };
            hints.push(format!("{k} is {}{more}", list.join(" or ")));
        }
    }
    format!(" ({})", hints.join("; "))
}

#[cfg(test)]
mod tests {
    use fleet_sched::{schedule, DesiredState, MachineId, UnitFile, UnitInfo, UnitName};
    use rand::SeedableRng;

    use super::*;

    /// A metadata selector picks exactly the machines the scheduler runs a global unit with the same
    /// `MachineMetadata=` on: keys AND'ed, one key's values OR'ed, exact (case-sensitive) values, a
    /// machine without the key never picked.
    #[test]
    fn metadata_terms_pick_what_the_scheduler_places_on() {
        let spec: &[(&str, &[(&str, &str)])] = &[
            ("m0", &[("rack", "a"), ("region", "eu")]),
            ("m1", &[("rack", "b"), ("region", "eu")]),
            ("m2", &[("rack", "c"), ("region", "eu")]),
            ("m3", &[("rack", "a"), ("region", "us")]),
            ("m4", &[("rack", "A"), ("region", "eu")]),
            ("m5", &[("region", "eu")]),
            ("m6", &[("rack", "b"), ("region", "eu"), ("disk", "ssd")]),
        ];
        let machines: Vec<MachineInfo> = spec
            .iter()
            .map(|(id, md)| {
                md.iter().fold(
                    MachineInfo::new(MachineId::parse(id).unwrap()),
                    |m, (k, v)| m.with_metadata(k, v),
                )
            })
            .collect();
        let mut rng = StdRng::seed_from_u64(1);
        for (selector, xfleet) in [
            (
                "rack=a,rack=b,region=eu",
                "MachineMetadata=rack=a\nMachineMetadata=rack=b\nMachineMetadata=region=eu",
            ),
            ("region=eu", "MachineMetadata=region=eu"),
            (
                "rack=b,disk=ssd",
                "MachineMetadata=rack=b\nMachineMetadata=disk=ssd",
            ),
            ("rack=A", "MachineMetadata=rack=A"),
        ] {
            let name = UnitName::parse("probe.service").unwrap();
            let file = UnitFile::parse(&format!(
                "[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\n{xfleet}\n"
            ))
            .unwrap();
            let req = Requirements::from_unit(&name, &file).unwrap();
            let plan = schedule(
                &machines,
                &[UnitInfo::new(name.clone(), req, DesiredState::Launched)],
            );
            let placed: Vec<&str> = plan
                .decision(&name)
                .unwrap()
                .machines()
                .iter()
                .map(MachineId::as_str)
                .collect();
            let picked: Vec<&str> = Selector::parse(selector)
                .unwrap()
                .resolve(&machines, &mut rng, true)
                .unwrap()
                .into_iter()
                .map(|i| machines[i].id.as_str())
                .collect();
            assert_eq!(picked, placed, "{selector}");
            assert!(!picked.is_empty(), "{selector}");
        }
        assert_eq!(
            Selector::parse("rack=a,region=eu")
                .unwrap()
                .resolve(&machines, &mut rng, true),
            Ok(vec![0])
        );
        let err = Selector::parse("rack=z")
            .unwrap()
            .resolve(&machines, &mut rng, true)
            .unwrap_err();
        assert!(
            err.contains("rack=z") && err.contains("rack is A or a or b or c"),
            "{err}"
        );
    }
}
