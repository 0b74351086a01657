//! The in-memory mirror of the prefix: built from one range read, kept current by one watch.

use std::collections::BTreeMap;
use std::sync::Arc;

use fleet_sched::{DesiredState, MachineId, UnitFile, UnitHash, UnitName};

use super::keys::{ClaimRecord, KeyKind, Keys, MachineRecord, UnitRecord};

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
}

/// A placement claim: the machine that runs a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The machine that claimed the unit.
    pub machine_id: MachineId,
    /// etcd `mod_revision` of the claim key.
    pub mod_revision: i64,
    /// The lease the claim is bound to (0 = none).
    pub lease: i64,
    /// The previous holder and its lease, while a takeover is not acknowledged (docs/safety.md).
    pub handoff: Option<(MachineId, i64)>,
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

#[derive(Debug, Clone)]
pub(crate) struct RecordEntry {
    pub hash: UnitHash,
    pub desired_state: DesiredState,
    pub mod_revision: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct FileEntry {
    pub file: Arc<UnitFile>,
    pub mod_revision: i64,
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
    pub claims: BTreeMap<UnitName, Claim>,
    pub machines: BTreeMap<MachineId, Machine>,
    pub restarting: std::collections::BTreeSet<MachineId>,
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

    /// Applies one change; values that cannot be parsed are logged and treated as absent.
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
            } => match keys.classify(key) {
                Some(KeyKind::Unit(name)) => match parse_record(&name, value) {
                    Ok((hash, desired_state)) => {
                        self.records.insert(
                            name,
                            RecordEntry {
                                hash,
                                desired_state,
                                mod_revision,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::warn!(unit = %name, "ignoring unit record: {e}");
                        self.records.remove(&name);
                    }
                },
                Some(KeyKind::UnitFile(hash)) => {
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
                                },
                            );
                        }
                        Err(e) => {
                            tracing::warn!(%hash, "ignoring unit file: {e}");
                            self.files.remove(&hash);
                        }
                    }
                }
                Some(KeyKind::Claim(name)) => match parse_claim(value) {
                    Ok((machine_id, handoff)) => {
                        self.claims.insert(
                            name,
                            Claim {
                                machine_id,
                                mod_revision,
                                lease,
                                handoff,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::warn!(unit = %name, "ignoring claim: {e}");
                        self.claims.remove(&name);
                    }
                },
                Some(KeyKind::Machine(id)) => {
                    match serde_json::from_slice::<MachineRecord>(value) {
                        Ok(record) if record.id == id => {
                            self.machines.insert(
                                id,
                                Machine {
                                    record,
                                    lease,
                                    since: create_revision,
                                },
                            );
                        }
                        Ok(record) => {
                            tracing::warn!(machine = %id, other = %record.id, "machine key names another machine: ignored");
                            self.machines.remove(&id);
                        }
                        Err(e) => {
                            tracing::warn!(machine = %id, "ignoring machine record: {e}");
                            self.machines.remove(&id);
                        }
                    }
                }
                Some(KeyKind::Restarting(id)) => {
                    self.restarting.insert(id);
                }
                Some(KeyKind::Other) | None => {}
            },
            Change::Delete { key } => match keys.classify(key) {
                Some(KeyKind::Unit(name)) => {
                    self.records.remove(&name);
                }
                Some(KeyKind::UnitFile(hash)) => {
                    self.files.remove(&hash);
                }
                Some(KeyKind::Claim(name)) => {
                    self.claims.remove(&name);
                }
                Some(KeyKind::Machine(id)) => {
                    self.machines.remove(&id);
                }
                Some(KeyKind::Restarting(id)) => {
                    self.restarting.remove(&id);
                }
                Some(KeyKind::Other) | None => {}
            },
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
        })
    }

    /// Every unit with content, sorted by name.
    pub fn units(&self) -> Vec<Unit> {
        self.records
            .iter()
            .filter_map(|(n, r)| self.join(n, r))
            .collect()
    }

    /// `true` if a record other than `except` references `hash`.
    pub fn hash_referenced(&self, hash: &UnitHash, except: &UnitName) -> bool {
        self.records
            .iter()
            .any(|(n, r)| n != except && r.hash == *hash)
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
mod tests {
    use super::*;

    fn put<'a>(key: &'a str, value: &'a str, rev: i64) -> Change<'a> {
        Change::Put {
            key: key.as_bytes(),
            value: value.as_bytes(),
            mod_revision: rev,
            create_revision: rev,
            lease: 0,
        }
    }

    #[test]
    fn a_unit_needs_its_record_and_its_content() {
        let keys = Keys::new("/p/");
        let file = UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
        let hash = file.hash();
        let record = format!(r#"{{"name":"a.service","hash":"{hash}","desiredState":"loaded"}}"#);
        let mut m = Mirror::default();
        m.apply(&keys, put("/p/units/a.service", &record, 2));
        assert!(m.units().is_empty(), "no content yet");
        let text = file.serialize();
        m.apply(&keys, put(&format!("/p/unit-files/{hash}"), &text, 2));
        let units = m.units();
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].desired_state, DesiredState::Loaded);
        assert_eq!(*units[0].file, file);
        assert_eq!(units[0].mod_revision, 2);
        m.apply(
            &keys,
            Change::Delete {
                key: b"/p/units/a.service",
            },
        );
        assert!(m.units().is_empty());
    }

    #[test]
    fn garbage_values_are_ignored() {
        let keys = Keys::new("/p/");
        let mut m = Mirror::default();
        m.apply(&keys, put("/p/units/a.service", "not json", 2));
        m.apply(
            &keys,
            put("/p/claims/a.service", r#"{"machineID":"no/slash"}"#, 3),
        );
        m.apply(
            &keys,
            put(
                "/p/units/b.service",
                r#"{"name":"c.service","hash":"0123456789abcdef0123456789abcdef01234567","desiredState":"loaded"}"#,
                4,
            ),
        );
        assert!(m.records.is_empty());
        assert!(m.claims.is_empty());
    }

    #[test]
    fn claims_are_mirrored() {
        let keys = Keys::new("/p/");
        let mut m = Mirror::default();
        m.apply(
            &keys,
            Change::Put {
                key: b"/p/claims/a.service",
                value: br#"{"machineID":"abc123"}"#,
                mod_revision: 5,
                create_revision: 5,
                lease: 77,
            },
        );
        let c = &m.claims[&UnitName::parse("a.service").unwrap()];
        assert_eq!(c.machine_id.as_str(), "abc123");
        assert_eq!(c.lease, 77);
    }
}
