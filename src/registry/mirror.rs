//! The in-memory mirror of the prefix: built from one range read, kept current by one watch.
//!
//! Garbage in etcd never stops a healthy unit. A value that stops parsing (random bytes in a unit
//! record, `[Service` as a unit file, `bogus` as a desired state, `garbage` in a claim) does not make
//! the key vanish from the mirror: the mirror keeps its **last good value** (with the key's current
//! `mod_revision`, so that a write that fixes it compares right), marks it damaged, logs an error,
//! and counts it ([`Mirror::damage`], `fleet_registry_damaged_keys` in `/metrics`; the API shows the
//! unit as damaged). A later value that parses replaces it: the key has recovered. A key that never
//! parsed has no last good value and stands for nothing (as before).
//!
//! Claims need more care, because the decision core's safety rests on them (docs/safety.md):
//! - a claim bound to a lease with a value that does not parse keeps its last good holder; without
//!   one, its holder is the machine announced under the same lease (only that machine's agent binds
//!   keys to it), or else an unknown holder nobody takes the unit from: the claim vanishes with its
//!   lease, as every claim does;
//! - a claim bound to **no** lease (lease 0: written by something other than an agent, which always
//!   binds its claims) would never vanish. If it replaced a claim the mirror saw bound to a lease, that
//!   holder may still run the unit: the claim is kept as that holder's, under its lease, flagged
//!   [`Claim::unbound`] (the holder binds it again; once its lease is gone the agent the plan puts
//!   the unit on deletes the key). Without such a last good value it is a [`FreeClaim`]: nobody runs
//!   the unit under it, and the agent that claims the unit replaces the key at its `mod_revision`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fleet_sched::{DesiredState, MachineId, UnitFile, UnitHash, UnitName};

use super::keys::{ClaimRecord, KeyKind, Keys, MachineRecord, UnitRecord};

/// The holder shown for a lease-bound claim that never parsed and whose lease no machine announced.
/// Not a machine any agent has: nobody takes the unit over from it, and the claim vanishes with its
/// lease.
pub const UNKNOWN_HOLDER: &str = "fleetunreadableclaimholder";

/// Values under the prefix that did not parse, since this process started.
static UNPARSABLE: AtomicU64 = AtomicU64::new(0);

/// How many values under the prefix did not parse since this process started (`/metrics`).
pub fn unparsable_values_total() -> u64 {
    UNPARSABLE.load(Ordering::Relaxed)
}

/// A unit as stored: its record joined with its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// The unit name.
    pub name: UnitName,
    /// Hash of its content (the `unit-files/` key).
    pub hash: UnitHash,
    /// Its unit file (shared by every unit with the same content).
    pub file: Arc<UnitFile>,
    /// The state the user asked for.
    pub desired_state: DesiredState,
    /// etcd `mod_revision` of the record (the compare of replace / set-state / destroy).
    pub mod_revision: i64,
    /// Set when the record or the content stored in etcd does not parse: this is the last good value,
    /// and this says what is wrong.
    pub damaged: Option<String>,
}

/// A placement claim: the machine that runs a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The machine that claimed the unit.
    pub machine_id: MachineId,
    /// etcd `mod_revision` of the claim key.
    pub mod_revision: i64,
    /// The lease the claim is bound to (for an [`Claim::unbound`] claim: the lease its last good value
    /// was bound to).
    pub lease: i64,
    /// The previous holder and its lease, while a takeover is not acknowledged (docs/safety.md).
    pub handoff: Option<(MachineId, i64)>,
    /// Set when the stored value is not what is shown (it does not parse, or it is bound to no
    /// lease): what is wrong. The claim shown is the last good one (see the module documentation).
    pub damaged: Option<String>,
    /// The key is bound to no lease (etcd would never delete it); the claim shown is its last good
    /// value, bound to [`Claim::lease`].
    pub unbound: bool,
}

/// A claim key that binds nobody: bound to no lease, and the mirror never saw it bound to one.
/// The unit counts as unclaimed; the agent that claims it replaces the key at `mod_revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeClaim {
    /// etcd `mod_revision` of the key.
    pub mod_revision: i64,
    /// What is wrong with it.
    pub reason: String,
}

/// A machine's announcement (`P machines/<id>`), present while its agent's lease lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// What the agent announced.
    pub record: MachineRecord,
    /// The lease the key is bound to.
    pub lease: i64,
    /// The announcement's `create_revision`: its place in line for the witness committee.
    pub since: i64,
}

/// A key whose value does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// What the key stands for.
    pub what: KeyKind,
    /// Why its value was refused.
    pub reason: String,
    /// The key's `mod_revision`.
    pub mod_revision: i64,
    /// The lease the key is bound to (0: none).
    pub lease: i64,
    /// Whether the mirror still has a last good value for it.
    pub kept: bool,
}

impl Damage {
    /// The kind of key, as a metrics label (`unit`, `unit_file`, `claim`, `machine`).
    pub fn kind(&self) -> &'static str {
        match self.what {
            KeyKind::Unit(_) => "unit",
            KeyKind::UnitFile(_) => "unit_file",
            KeyKind::Claim(_) => "claim",
            KeyKind::Machine(_) => "machine",
            KeyKind::Restarting(_) | KeyKind::Other | KeyKind::Malformed(_) => "other",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RecordEntry {
    pub hash: UnitHash,
    pub desired_state: DesiredState,
    pub mod_revision: i64,
    pub damaged: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct FileEntry {
    pub file: Arc<UnitFile>,
    pub mod_revision: i64,
    pub damaged: Option<String>,
}

/// One key-value change as seen in a range read or a watch event.
#[derive(Debug, Clone)]
pub(crate) enum Change<'a> {
    /// The key now holds `value`.
    Put {
        key: &'a [u8],
        value: &'a [u8],
        mod_revision: i64,
        /// The key's `create_revision` (a machine announcement's place in the witness line).
        create_revision: i64,
        lease: i64,
    },
    /// The key was deleted.
    Delete { key: &'a [u8] },
}

/// The mirror: records, contents and claims under the prefix at `revision`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Mirror {
    /// The newest revision applied: the range read's, then the newest event's.
    pub revision: i64,
    /// The prefix mirrored (empty before the first read).
    pub prefix: String,
    pub records: BTreeMap<UnitName, RecordEntry>,
    pub files: BTreeMap<UnitHash, FileEntry>,
    /// Claims as shown (see the module documentation); use [`Mirror::claims`], which names the holder
    /// of the unreadable ones.
    pub(super) claims: BTreeMap<UnitName, Claim>,
    /// Lease-bound claims that never parsed: their holder is found by their lease at read time.
    pub(super) unresolved: BTreeSet<UnitName>,
    /// Claim keys bound to nobody.
    pub free_claims: BTreeMap<UnitName, FreeClaim>,
    pub machines: BTreeMap<MachineId, Machine>,
    pub restarting: BTreeSet<MachineId>,
    /// Keys whose value does not parse, by key.
    pub(super) damaged: BTreeMap<String, Damage>,
    /// Every key under the prefix (also those the mirror ignores), for the delta read after a
    /// reconnect: it compares their number with etcd's and finds the ones deleted meanwhile.
    pub raw_keys: std::collections::HashSet<Box<[u8]>>,
}

impl Mirror {
    /// How many keys under the prefix the mirror has seen (and not seen deleted).
    pub fn key_count(&self) -> usize {
        self.raw_keys.len()
    }

    /// The keys held here that `present` lacks.
    pub fn keys_missing_from(&self, present: &std::collections::HashSet<&[u8]>) -> Vec<Box<[u8]>> {
        self.raw_keys
            .iter()
            .filter(|k| !present.contains(&k[..]))
            .cloned()
            .collect()
    }

    /// Keys whose value does not parse (or, for claims, that are bound to no lease), by key.
    pub fn damage(&self) -> &BTreeMap<String, Damage> {
        &self.damaged
    }

    /// Every claim as the agents act on it: an unreadable lease-bound claim without a last good value
    /// is held by the machine announced under its lease (or by [`UNKNOWN_HOLDER`]).
    pub fn claims(&self) -> BTreeMap<UnitName, Claim> {
        let mut claims = self.claims.clone();
        for name in &self.unresolved {
            if let Some(c) = claims.get_mut(name) {
                c.machine_id = self.holder_of_lease(c.lease);
            }
        }
        claims
    }

    /// The claim of `name` (see [`Mirror::claims`]).
    pub fn claim(&self, name: &UnitName) -> Option<Claim> {
        let mut c = self.claims.get(name)?.clone();
        if self.unresolved.contains(name) {
            c.machine_id = self.holder_of_lease(c.lease);
        }
        Some(c)
    }

    fn holder_of_lease(&self, lease: i64) -> MachineId {
        self.machines
            .iter()
            .find(|(_, m)| m.lease == lease)
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| MachineId::parse(UNKNOWN_HOLDER).expect("a valid machine ID"))
    }

    /// Applies one change. A value that cannot be parsed keeps the key's last good value (see the
    /// module documentation).
    pub fn apply(&mut self, keys: &Keys, change: Change<'_>) {
        match &change {
            Change::Put { key, .. } => {
                if !self.raw_keys.contains(*key) {
                    self.raw_keys.insert((*key).into());
                }
            }
            Change::Delete { key } => {
                self.raw_keys.remove(*key);
            }
        }
        match change {
            Change::Put {
                key,
                value,
                mod_revision,
                create_revision,
                lease,
            } => {
                let Some(what) = keys.classify(key) else {
                    return;
                };
                let key = String::from_utf8_lossy(key);
                let revs = (mod_revision, create_revision);
                let outcome = self.put(what.clone(), value, revs, lease);
                self.note(&key, what, outcome, mod_revision, lease);
            }
            Change::Delete { key } => {
                let Some(what) = keys.classify(key) else {
                    return;
                };
                if let Some(d) = self.damaged.remove(&*String::from_utf8_lossy(key)) {
                    tracing::info!(key = %String::from_utf8_lossy(key), was = %d.reason, "damaged key deleted");
                }
                match what {
                    KeyKind::Unit(name) => {
                        self.records.remove(&name);
                    }
                    KeyKind::UnitFile(hash) => {
                        self.files.remove(&hash);
                    }
                    KeyKind::Claim(name) => {
                        self.claims.remove(&name);
                        self.unresolved.remove(&name);
                        self.free_claims.remove(&name);
                    }
                    KeyKind::Machine(id) => {
                        self.machines.remove(&id);
                    }
                    KeyKind::Restarting(id) => {
                        self.restarting.remove(&id);
                    }
                    KeyKind::Other | KeyKind::Malformed(_) => {}
                }
            }
        }
    }

    /// Records how a put went: `Ok` (parsed; a damaged key recovered), or the reason it was refused
    /// and whether a last good value was kept.
    fn note(
        &mut self,
        key: &str,
        what: KeyKind,
        outcome: Result<(), (String, bool)>,
        mod_revision: i64,
        lease: i64,
    ) {
        match outcome {
            Ok(()) => {
                if let Some(d) = self.damaged.remove(key) {
                    tracing::info!(%key, was = %d.reason, "etcd value parses again: recovered");
                }
            }
            Err((reason, kept)) => {
                UNPARSABLE.fetch_add(1, Ordering::Relaxed);
                if kept {
                    tracing::error!(%key, revision = mod_revision, "damaged value in etcd: {reason}; keeping its last good value until it is fixed");
                } else {
                    tracing::error!(%key, revision = mod_revision, "damaged value in etcd: {reason}; there is no good value to keep");
                }
                self.damaged.insert(
                    key.to_string(),
                    Damage {
                        what,
                        reason,
                        mod_revision,
                        lease,
                        kept,
                    },
                );
            }
        }
    }

    /// Applies a put of `value`; `Err((why, kept a last good value))` when it does not parse.
    fn put(
        &mut self,
        what: KeyKind,
        value: &[u8],
        (mod_revision, create_revision): (i64, i64),
        lease: i64,
    ) -> Result<(), (String, bool)> {
        match what {
            KeyKind::Unit(name) => match parse_record(&name, value) {
                Ok((hash, desired_state)) => {
                    self.records.insert(
                        name,
                        RecordEntry {
                            hash,
                            desired_state,
                            mod_revision,
                            damaged: None,
                        },
                    );
                    Ok(())
                }
                Err(e) => {
                    let e = format!("unit record: {e}");
                    Err((e.clone(), self.keep_record(&name, mod_revision, e)))
                }
            },
            KeyKind::UnitFile(hash) => {
                match std::str::from_utf8(value)
                    .map_err(|e| e.to_string())
                    .and_then(|t| UnitFile::parse(t).map_err(|e| e.to_string()))
                {
                    Ok(file) => {
                        if file.hash() != hash {
                            tracing::warn!(%hash, actual = %file.hash(), "unit file content does not match its hash key");
                        }
                        self.files.insert(
                            hash,
                            FileEntry {
                                file: Arc::new(file),
                                mod_revision,
                                damaged: None,
                            },
                        );
                        Ok(())
                    }
                    Err(e) => {
                        let e = format!("unit file {}: {e}", hash.short());
                        Err((e.clone(), self.keep_file(&hash, mod_revision, e)))
                    }
                }
            }
            KeyKind::Claim(name) => self.put_claim(name, value, mod_revision, lease),
            KeyKind::Machine(id) => {
                let e = match serde_json::from_slice::<MachineRecord>(value) {
                    Ok(record) if record.id == id => {
                        self.machines.insert(
                            id,
                            Machine {
                                record,
                                lease,
                                since: create_revision,
                            },
                        );
                        return Ok(());
                    }
                    Ok(record) => format!("machine key names another machine, {}", record.id),
                    Err(e) => format!("machine record: {e}"),
                };
                Err((e, self.keep_machine(&id, lease)))
            }
            KeyKind::Restarting(id) => {
                self.restarting.insert(id);
                Ok(())
            }
            KeyKind::Other => Ok(()),
            KeyKind::Malformed(reason) => Err((reason, false)),
        }
    }

    fn keep_record(&mut self, name: &UnitName, mod_revision: i64, why: String) -> bool {
        let Some(r) = self.records.get_mut(name) else {
            return false;
        };
        r.mod_revision = mod_revision;
        r.damaged = Some(why);
        true
    }

    fn keep_file(&mut self, hash: &UnitHash, mod_revision: i64, why: String) -> bool {
        let Some(f) = self.files.get_mut(hash) else {
            return false;
        };
        f.mod_revision = mod_revision;
        f.damaged = Some(why);
        true
    }

    fn keep_machine(&mut self, id: &MachineId, lease: i64) -> bool {
        let Some(m) = self.machines.get_mut(id) else {
            return false;
        };
        m.lease = lease;
        true
    }

    /// A claim put: see the module documentation for what is kept.
    fn put_claim(
        &mut self,
        name: UnitName,
        value: &[u8],
        mod_revision: i64,
        lease: i64,
    ) -> Result<(), (String, bool)> {
        let parsed = parse_claim(value);
        if lease != 0 {
            if let Ok((machine_id, handoff)) = parsed {
                self.unresolved.remove(&name);
                self.free_claims.remove(&name);
                self.claims.insert(
                    name,
                    Claim {
                        machine_id,
                        mod_revision,
                        lease,
                        handoff,
                        damaged: None,
                        unbound: false,
                    },
                );
                return Ok(());
            }
        }
        let reason = match (&parsed, lease) {
            (Err(e), 0) => format!("claim: {e}, and bound to no lease"),
            (Err(e), _) => format!("claim: {e}"),
            (Ok(_), _) => "claim bound to no lease (not written by an agent)".to_string(),
        };
        // The last good value: a claim the mirror saw bound to a lease, with a known holder.
        let last_good = self
            .claims
            .get(&name)
            .filter(|_| !self.unresolved.contains(&name))
            .cloned();
        if let Some(prev) = last_good {
            self.claims.insert(
                name,
                Claim {
                    mod_revision,
                    damaged: Some(reason.clone()),
                    unbound: lease == 0,
                    ..prev
                },
            );
            return Err((reason, true));
        }
        self.claims.remove(&name);
        self.unresolved.remove(&name);
        self.free_claims.remove(&name);
        if lease == 0 {
            self.free_claims.insert(
                name,
                FreeClaim {
                    mod_revision,
                    reason: reason.clone(),
                },
            );
        } else {
            self.unresolved.insert(name.clone());
            self.claims.insert(
                name,
                Claim {
                    machine_id: MachineId::parse(UNKNOWN_HOLDER).expect("a valid machine ID"),
                    mod_revision,
                    lease,
                    handoff: None,
                    damaged: Some(reason.clone()),
                    unbound: false,
                },
            );
        }
        Err((reason, false))
    }

    /// After a full read replaced `old` (a compaction, say): damaged keys that have no last good
    /// value here take `old`'s.
    pub fn adopt_last_good(&mut self, old: &Mirror) {
        let damaged: Vec<(String, Damage)> = self
            .damaged
            .iter()
            .filter(|(_, d)| !d.kept)
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect();
        for (key, d) in damaged {
            let kept = match &d.what {
                KeyKind::Unit(name) => match old.records.get(name) {
                    Some(r) => {
                        self.records.insert(name.clone(), r.clone());
                        self.keep_record(name, d.mod_revision, d.reason.clone())
                    }
                    None => false,
                },
                KeyKind::UnitFile(hash) => match old.files.get(hash) {
                    Some(f) => {
                        self.files.insert(*hash, f.clone());
                        self.keep_file(hash, d.mod_revision, d.reason.clone())
                    }
                    None => false,
                },
                KeyKind::Claim(name) => {
                    match old
                        .claims
                        .get(name)
                        .filter(|_| !old.unresolved.contains(name))
                    {
                        Some(c) => {
                            self.unresolved.remove(name);
                            self.free_claims.remove(name);
                            self.claims.insert(
                                name.clone(),
                                Claim {
                                    mod_revision: d.mod_revision,
                                    damaged: Some(d.reason.clone()),
                                    unbound: d.lease == 0,
                                    ..c.clone()
                                },
                            );
                            true
                        }
                        None => false,
                    }
                }
                KeyKind::Machine(id) => match old.machines.get(id) {
                    Some(m) => {
                        self.machines.insert(
                            id.clone(),
                            Machine {
                                lease: d.lease,
                                ..m.clone()
                            },
                        );
                        true
                    }
                    None => false,
                },
                KeyKind::Restarting(_) | KeyKind::Other | KeyKind::Malformed(_) => false,
            };
            if kept {
                if let Some(d) = self.damaged.get_mut(&key) {
                    d.kept = true;
                }
            }
        }
    }

    /// The unit `name` joined with its content; `None` if absent or its content is missing.
    pub fn unit(&self, name: &UnitName) -> Option<Unit> {
        let r = self.records.get(name)?;
        self.join(name, r)
    }

    fn join(&self, name: &UnitName, r: &RecordEntry) -> Option<Unit> {
        let Some(f) = self.files.get(&r.hash) else {
            tracing::debug!(unit = %name, hash = %r.hash, "unit record without content: skipped");
            return None;
        };
        Some(Unit {
            name: name.clone(),
            hash: r.hash,
            file: f.file.clone(),
            desired_state: r.desired_state,
            mod_revision: r.mod_revision,
            damaged: r.damaged.clone().or_else(|| f.damaged.clone()),
        })
    }

    /// Every unit with content, sorted by name.
    pub fn units(&self) -> Vec<Unit> {
        self.records
            .iter()
            .filter_map(|(n, r)| self.join(n, r))
            .collect()
    }

    /// Up to `at_most` units other than `except` whose record references content `hash`, with the
    /// records' `mod_revision`s.
    pub fn hash_referencers(
        &self,
        hash: &UnitHash,
        except: &UnitName,
        at_most: usize,
    ) -> Vec<(UnitName, i64)> {
        self.records
            .iter()
            .filter(|(n, r)| *n != except && r.hash == *hash)
            .take(at_most)
            .map(|(n, r)| (n.clone(), r.mod_revision))
            .collect()
    }
}

fn parse_record(name: &UnitName, value: &[u8]) -> Result<(UnitHash, DesiredState), String> {
    let r: UnitRecord = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    if r.name != name.as_str() {
        return Err(format!("record names {:?}, its key names {name:?}", r.name));
    }
    let hash = r
        .hash
        .parse::<UnitHash>()
        .map_err(|e| format!("bad hash {:?}: {e}", r.hash))?;
    Ok((hash, r.desired_state))
}

type ParsedClaim = (MachineId, Option<(MachineId, i64)>);

fn parse_claim(value: &[u8]) -> Result<ParsedClaim, String> {
    let c: ClaimRecord = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    let id = MachineId::parse(&c.machine_id).map_err(|e| e.to_string())?;
    let handoff = match c.handoff {
        Some(h) => Some((
            MachineId::parse(&h.machine_id).map_err(|e| format!("handoff: {e}"))?,
            h.lease,
        )),
        None => None,
    };
    Ok((id, handoff))
}

#[cfg(test)]
mod tests;
