//! Machine identities.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted machine ID.
pub const MAX_MACHINE_ID_LEN: usize = 64;

/// Length of the short form shown by `fleetctl` and accepted by `MachineID=`.
pub const SHORT_ID_LEN: usize = 8;

/// A machine's identity: normally systemd's `/etc/machine-id` (32 lowercase hex characters).
///
/// Accepted: 1 to [`MAX_MACHINE_ID_LEN`] ASCII letters and digits, so that tests and simulations may use
/// readable IDs. IDs are compared exactly (case-sensitive), as fleet did.
///
/// This is the one machine ID type of the workspace: the scheduler, the decisions, gossip, fleetd and
/// the simulator all use it, and every way in (`parse`, `FromStr`, serde) validates, so a value of this
/// type is always a valid ID. It is shared (`Arc<str>`): gossip (foca) compares members' addresses on
/// every update and clones them freely, so a clone is a reference count and comparing an ID with
/// itself is a pointer comparison; no comparison allocates.
///
/// IDs are interned: every live `MachineId` with the same string shares one `Arc` in the whole
/// process (see `intern`), so two equal IDs compare by pointer, without reading the string: a
/// node's maps hold many IDs, and reading each stored key's string on a lookup was a cache miss.
#[derive(Clone, Eq)]
pub struct MachineId(Arc<str>);

/// Equal IDs that share their string compare by pointer alone: `Arc<str>`'s own equality compares
/// the bytes even then (the standard library's pointer shortcut is only for sized types), and a hash
/// map lookup or a walk of gossip's members compares IDs on every step.
impl PartialEq for MachineId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

/// The string's order; an ID is equal to itself without reading it.
impl Ord for MachineId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            std::cmp::Ordering::Equal
        } else {
            self.0.cmp(&other.0)
        }
    }
}

impl PartialOrd for MachineId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The process's table of machine IDs: one `Arc` per string that some `MachineId` still holds.
///
/// An ID no value holds any more (only the table does) is dropped when the table has doubled since
/// its last sweep, so IDs that come and go (garbage from a peer, machines long gone) cost memory
/// only until then: the table is at most about twice the IDs in use, and the sweeps cost O(1) per
/// new ID, amortised.
struct Interner {
    ids: std::collections::HashSet<Arc<str>, foldhash::fast::RandomState>,
    sweep_at: usize,
}

static INTERNER: std::sync::Mutex<Option<Interner>> = std::sync::Mutex::new(None);

/// The one `Arc` of the (already validated) ID `s`.
fn intern(s: &str) -> Arc<str> {
    // A panic while the lock is held leaves the table as it was (each step below is whole).
    let mut guard = INTERNER.lock().unwrap_or_else(|e| e.into_inner());
    let table = guard.get_or_insert_with(|| Interner {
        ids: Default::default(),
        sweep_at: 1024,
    });
    if let Some(id) = table.ids.get(s) {
        return id.clone();
    }
    if table.ids.len() >= table.sweep_at {
        // Under the lock no one can clone an `Arc` that only the table holds.
        table.ids.retain(|id| Arc::strong_count(id) > 1);
        table.sweep_at = (2 * table.ids.len()).max(1024);
    }
    let id: Arc<str> = Arc::from(s);
    table.ids.insert(id.clone());
    id
}

/// As the string's (which `Borrow<str>` lookups need).
impl std::hash::Hash for MachineId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (*self.0).hash(state)
    }
}

/// Why a string is not a machine ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineIdError {
    /// The empty string.
    #[error("machine ID cannot be empty")]
    Empty,
    /// Longer than [`MAX_MACHINE_ID_LEN`].
    #[error("machine ID {0:?} is longer than {MAX_MACHINE_ID_LEN} characters")]
    TooLong(String),
    /// A character other than an ASCII letter or digit.
    #[error("machine ID {id:?} contains {ch:?}; only ASCII letters and digits are allowed")]
    InvalidChar {
        /// The rejected ID.
        id: String,
        /// The first offending character.
        ch: char,
    },
}

impl MachineId {
    /// Validates `s` as a machine ID.
    pub fn parse(s: &str) -> Result<MachineId, MachineIdError> {
        if s.is_empty() {
            return Err(MachineIdError::Empty);
        }
        if s.len() > MAX_MACHINE_ID_LEN {
            return Err(MachineIdError::TooLong(s.to_owned()));
        }
        // Bytes first (every ID of every datagram comes through here); the character only for
        // the error.
        if !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            let ch = s
                .chars()
                .find(|c| !c.is_ascii_alphanumeric())
                .expect("a byte that is not an ASCII letter or digit");
            return Err(MachineIdError::InvalidChar {
                id: s.to_owned(),
                ch,
            });
        }
        Ok(MachineId(intern(s)))
    }

    /// The ID as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 8 characters (the whole ID when shorter), as `fleetctl` shows it.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(SHORT_ID_LEN)]
    }

    /// `true` if `id` is this machine's full ID or its short form, as `MachineID=` is matched by fleet.
    pub fn matches(&self, id: &str) -> bool {
        &*self.0 == id || self.short() == id
    }
}

impl fmt::Debug for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MachineId({:?})", &*self.0)
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for MachineId {
    type Err = MachineIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MachineId::parse(s)
    }
}

/// Lookups by `&str` in maps keyed by `MachineId` (equality, order and hash are the string's).
impl std::borrow::Borrow<str> for MachineId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for MachineId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for MachineId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Validates while deserializing (a bad ID from a peer, etcd or a file is an error naming it), from a
/// borrowed string where the format allows, so the only allocation is the `Arc`.
impl<'de> Deserialize<'de> for MachineId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MachineId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a machine ID string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MachineId, E> {
                MachineId::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_machine_id_is_accepted_and_shortened_to_eight() {
        let id = MachineId::parse("113f16a7f0e74e7a8d7e1ba3b0f9a3c2").unwrap();
        assert_eq!(id.short(), "113f16a7");
        assert!(id.matches("113f16a7"));
        assert!(id.matches("113f16a7f0e74e7a8d7e1ba3b0f9a3c2"));
        assert!(!id.matches("113f16a"));
        assert!(!id.matches("113f16a7f"));
    }

    #[test]
    fn short_test_ids_are_their_own_short_form() {
        let id = MachineId::parse("m1").unwrap();
        assert_eq!(id.short(), "m1");
        assert!(id.matches("m1"));
    }

    #[test]
    fn equal_ids_share_one_string_and_unused_ones_are_swept() {
        let a = MachineId::parse("internedA").unwrap();
        let b: MachineId = serde_json::from_str("\"internedA\"").unwrap();
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a.cmp(&b), std::cmp::Ordering::Equal);
        assert!(MachineId::parse("internedB").unwrap() > a);
        // IDs that nothing holds any more leave the table at a sweep, which comes at the latest
        // when it doubles: thousands of passing IDs leave it small.
        let weak = Arc::downgrade(&MachineId::parse("internedGone").unwrap().0);
        for i in 0..100_000 {
            MachineId::parse(&format!("passing{i}")).unwrap();
        }
        assert!(weak.upgrade().is_none(), "an unused ID stayed in the table");
        let len = INTERNER.lock().unwrap().as_ref().unwrap().ids.len();
        assert!(len < 10_000, "{len} IDs in the table");
        // Those still held stay shared.
        assert!(Arc::ptr_eq(&a.0, &MachineId::parse("internedA").unwrap().0));
    }

    #[test]
    fn clones_share_the_string() {
        let a = MachineId::parse("m1").unwrap();
        let b = a.clone();
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, b);
        assert_eq!(format!("{a:?}"), "MachineId(\"m1\")");
    }

    #[test]
    fn bad_ids_are_rejected_with_the_reason() {
        assert_eq!(MachineId::parse(""), Err(MachineIdError::Empty));
        assert!(matches!(
            MachineId::parse(&"a".repeat(65)),
            Err(MachineIdError::TooLong(_))
        ));
        let err = MachineId::parse("abc/def").unwrap_err();
        assert_eq!(
            err,
            MachineIdError::InvalidChar {
                id: "abc/def".into(),
                ch: '/'
            }
        );
        assert!(serde_json::from_str::<MachineId>("\"a b\"").is_err());
        assert_eq!(
            serde_json::from_str::<MachineId>("\"ab12\"")
                .unwrap()
                .as_str(),
            "ab12"
        );
    }
}
