//! The versioned store of every machine's metadata and unit states, and the foca broadcast handler
//! that feeds it.
//!
//! Each origin (machine) owns its entries: one metadata entry and one entry per unit (a removed unit
//! stays as a tombstone so that the removal spreads too). Every entry carries the [`Stamp`] at which
//! the origin last changed it, and an entry only ever replaces an older one. Entries travel one by one
//! as foca custom broadcasts, and in bulk through anti-entropy.
//!
//! Anti-entropy relies on one invariant: a node's `synced` stamp for an origin means "I have the newest
//! value of every entry of this origin whose stamp is at most `synced`". Broadcasts may arrive in any
//! order, so they change entries but never `synced`; only the origin itself (always fully synced with
//! itself) and complete anti-entropy deltas advance it. A delta carries every entry newer than the
//! receiver's `synced`, plus the sender's own `synced`, so the receiver may then take the larger one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use foca::{BroadcastHandler, Invalidates};
use serde::{Deserialize, Serialize};

use crate::types::{MachineId, Metadata, Stamp, UnitState};

/// One piece of an origin's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// The origin's metadata.
    Metadata(Metadata),
    /// One unit's runtime state; `None` is a tombstone (the origin no longer reports the unit).
    Unit {
        /// The unit's name.
        name: String,
        /// Its state, or `None` once removed.
        state: Option<UnitState>,
    },
}

/// Which piece of an origin's state an entry is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntryKey {
    /// The metadata entry.
    Metadata,
    /// The entry of the named unit.
    Unit(String),
}

impl Entry {
    fn key(&self) -> EntryKey {
        match self {
            Entry::Metadata(_) => EntryKey::Metadata,
            Entry::Unit { name, .. } => EntryKey::Unit(name.clone()),
        }
    }
}

/// One versioned change of an origin's state: the payload of a custom broadcast.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// The machine whose state this is.
    pub origin: MachineId,
    /// When the origin made the change.
    pub stamp: Stamp,
    /// The new value.
    pub entry: Entry,
}

/// What foca keeps per custom broadcast, to drop stale ones from its backlog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateKey {
    origin: MachineId,
    key: EntryKey,
    stamp: Stamp,
}

impl Invalidates for UpdateKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.origin == other.origin && self.key == other.key && self.stamp >= other.stamp
    }
}

/// The part of an origin's state that a peer lacks, with the sender's `synced` stamp for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginDelta {
    /// The machine whose state this is.
    pub origin: MachineId,
    /// The sender has every entry of this origin up to this stamp.
    pub synced: Stamp,
    /// The sender's entries newer than the receiver's `synced` stamp.
    pub entries: Vec<(Stamp, Entry)>,
}

/// What changed in the store, reported as events by the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Change {
    Metadata,
    Units,
}

#[derive(Debug, Default)]
pub(crate) struct OriginData {
    epoch: u64,
    synced: Stamp,
    metadata: Option<(Stamp, Metadata)>,
    units: BTreeMap<String, (Stamp, Option<UnitState>)>,
}

impl OriginData {
    pub(crate) fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref().map(|(_, m)| m)
    }

    pub(crate) fn units(&self) -> impl Iterator<Item = (&String, &UnitState)> {
        self.units
            .iter()
            .filter_map(|(name, (_, state))| state.as_ref().map(|s| (name, s)))
    }

    /// The newest stamp among the entries (or `synced`, if larger).
    pub(crate) fn newest(&self) -> Stamp {
        let units = self.units.values().map(|(s, _)| *s);
        let meta = self.metadata.iter().map(|(s, _)| *s);
        units.chain(meta).fold(self.synced, Stamp::max)
    }

    fn entries_after(&self, after: Stamp) -> Vec<(Stamp, Entry)> {
        let mut out = Vec::new();
        if let Some((stamp, m)) = &self.metadata {
            if *stamp > after {
                out.push((*stamp, Entry::Metadata(m.clone())));
            }
        }
        for (name, (stamp, state)) in &self.units {
            if *stamp > after {
                out.push((
                    *stamp,
                    Entry::Unit {
                        name: name.clone(),
                        state: state.clone(),
                    },
                ));
            }
        }
        out
    }
}

/// Every origin's state, this node's own included.
///
/// A remote origin's state is accepted only up to the epoch of the origin's identity that the
/// membership holds (`limits`): a new life of a machine is learnt from that machine (or through
/// the membership's rules), never from state someone else relays, so a peer cannot replace another
/// machine's state by inventing a newer epoch for it.
#[derive(Debug)]
pub(crate) struct Store {
    local: MachineId,
    local_stamp: Stamp,
    origins: BTreeMap<MachineId, OriginData>,
    changes: BTreeSet<(MachineId, Change)>,
    limits: BTreeMap<MachineId, u64>,
    refused: u64,
}

impl Store {
    pub(crate) fn new(local: MachineId, epoch: u64) -> Self {
        let local_stamp = Stamp { epoch, version: 0 };
        let mut origins = BTreeMap::new();
        origins.insert(
            local.clone(),
            OriginData {
                epoch,
                synced: local_stamp,
                ..OriginData::default()
            },
        );
        Store {
            local,
            local_stamp,
            origins,
            changes: BTreeSet::new(),
            limits: BTreeMap::new(),
            refused: 0,
        }
    }

    /// The membership holds `origin` with this identity incarnation: its state may now come in
    /// epochs up to it.
    pub(crate) fn allow_epoch(&mut self, origin: &MachineId, incarnation: u64) {
        let limit = self.limits.entry(origin.clone()).or_insert(0);
        *limit = (*limit).max(incarnation);
    }

    fn epoch_allowed(&mut self, origin: &MachineId, epoch: u64) -> bool {
        let ok = self.limits.get(origin).is_some_and(|l| epoch <= *l);
        if !ok {
            self.refused += 1;
            tracing::debug!(%origin, epoch, limit = ?self.limits.get(origin), "state from a life the membership does not know: refused");
        }
        ok
    }

    /// State updates refused because their epoch was newer than the origin's known identity.
    pub(crate) fn refused(&self) -> u64 {
        self.refused
    }

    pub(crate) fn origin(&self, id: &MachineId) -> Option<&OriginData> {
        self.origins.get(id)
    }

    pub(crate) fn take_changes(&mut self) -> BTreeSet<(MachineId, Change)> {
        std::mem::take(&mut self.changes)
    }

    fn next_local_stamp(&mut self) -> Stamp {
        self.local_stamp.version += 1;
        let stamp = self.local_stamp;
        if let Some(o) = self.origins.get_mut(&self.local) {
            o.synced = stamp;
        }
        stamp
    }

    fn local_data(&mut self) -> &mut OriginData {
        self.origins.entry(self.local.clone()).or_default()
    }

    /// Replaces the local metadata; returns the update to broadcast, or `None` if nothing changed.
    pub(crate) fn set_local_metadata(&mut self, metadata: Metadata) -> Option<Update> {
        if self.local_data().metadata() == Some(&metadata) {
            return None;
        }
        let stamp = self.next_local_stamp();
        self.local_data().metadata = Some((stamp, metadata.clone()));
        Some(Update {
            origin: self.local.clone(),
            stamp,
            entry: Entry::Metadata(metadata),
        })
    }

    /// Replaces the local unit states with `units`; returns one update per changed unit.
    pub(crate) fn set_local_units(&mut self, units: &BTreeMap<String, UnitState>) -> Vec<Update> {
        let data = self.local_data();
        let mut changed: Vec<(String, Option<UnitState>)> = Vec::new();
        for (name, state) in units {
            let current = data.units.get(name).and_then(|(_, s)| s.as_ref());
            if current != Some(state) {
                changed.push((name.clone(), Some(state.clone())));
            }
        }
        for (name, (_, state)) in &data.units {
            if state.is_some() && !units.contains_key(name) {
                changed.push((name.clone(), None));
            }
        }
        if changed.is_empty() {
            return Vec::new();
        }
        let stamp = self.next_local_stamp();
        let origin = self.local.clone();
        let data = self.local_data();
        changed
            .into_iter()
            .map(|(name, state)| {
                data.units.insert(name.clone(), (stamp, state.clone()));
                Update {
                    origin: origin.clone(),
                    stamp,
                    entry: Entry::Unit { name, state },
                }
            })
            .collect()
    }

    /// Sets or removes (`None`) one local unit's state; returns the update to broadcast, if any.
    pub(crate) fn set_local_unit(
        &mut self,
        name: &str,
        state: Option<UnitState>,
    ) -> Option<Update> {
        let current = self
            .local_data()
            .units
            .get(name)
            .and_then(|(_, s)| s.clone());
        if current == state {
            return None;
        }
        let stamp = self.next_local_stamp();
        self.local_data()
            .units
            .insert(name.to_string(), (stamp, state.clone()));
        Some(Update {
            origin: self.local.clone(),
            stamp,
            entry: Entry::Unit {
                name: name.to_string(),
                state,
            },
        })
    }

    /// Applies a remote update; true if it was news (newer than what we had).
    pub(crate) fn apply(&mut self, update: &Update) -> bool {
        if update.origin == self.local {
            return false;
        }
        if !self.epoch_allowed(&update.origin, update.stamp.epoch) {
            return false;
        }
        let origin = update.origin.clone();
        let data = self.origins.entry(origin.clone()).or_default();
        let mut changes = Vec::new();
        if !enter_epoch(data, update.stamp.epoch, &mut changes) {
            return false;
        }
        let news = match &update.entry {
            Entry::Metadata(m) => {
                if data
                    .metadata
                    .as_ref()
                    .is_some_and(|(s, _)| *s >= update.stamp)
                {
                    false
                } else {
                    let differs = data.metadata() != Some(m);
                    data.metadata = Some((update.stamp, m.clone()));
                    if differs {
                        changes.push(Change::Metadata);
                    }
                    true
                }
            }
            Entry::Unit { name, state } => match data.units.get(name) {
                Some((s, _)) if *s >= update.stamp => false,
                previous => {
                    let differs = previous.and_then(|(_, s)| s.as_ref()) != state.as_ref();
                    data.units
                        .insert(name.clone(), (update.stamp, state.clone()));
                    if differs {
                        changes.push(Change::Units);
                    }
                    true
                }
            },
        };
        for c in changes {
            self.changes.insert((origin.clone(), c));
        }
        news
    }

    /// Per origin, the stamp up to which this node has everything.
    pub(crate) fn digest(&self) -> Vec<(MachineId, Stamp)> {
        self.origins
            .iter()
            .map(|(id, o)| (id.clone(), o.synced))
            .collect()
    }

    /// What a peer whose digest is `peer` lacks.
    pub(crate) fn delta_for(&self, peer: &[(MachineId, Stamp)]) -> Vec<OriginDelta> {
        let peer: BTreeMap<&MachineId, Stamp> = peer.iter().map(|(id, s)| (id, *s)).collect();
        let mut out = Vec::new();
        for (id, data) in &self.origins {
            let theirs = peer.get(id).copied().unwrap_or_default();
            let entries = data.entries_after(theirs);
            if !entries.is_empty() || data.synced > theirs {
                out.push(OriginDelta {
                    origin: id.clone(),
                    synced: data.synced,
                    entries,
                });
            }
        }
        out
    }

    /// Merges a delta computed by a peer from our digest (or a full snapshot).
    pub(crate) fn merge(&mut self, deltas: Vec<OriginDelta>) {
        for delta in deltas {
            if delta.origin == self.local {
                if delta.synced > self.local_stamp {
                    tracing::debug!(
                        theirs = ?delta.synced,
                        ours = ?self.local_stamp,
                        "a peer has a newer stamp for our own state (clock went back?)"
                    );
                }
                continue;
            }
            if !self.epoch_allowed(&delta.origin, delta.synced.epoch) {
                continue;
            }
            for (stamp, entry) in delta.entries {
                self.apply(&Update {
                    origin: delta.origin.clone(),
                    stamp,
                    entry,
                });
            }
            let data = self.origins.entry(delta.origin.clone()).or_default();
            let mut changes = Vec::new();
            if enter_epoch(data, delta.synced.epoch, &mut changes) && delta.synced > data.synced {
                data.synced = delta.synced;
            }
            for c in changes {
                self.changes.insert((delta.origin.clone(), c));
            }
        }
    }

    /// Forgets an origin's state (never our own): the membership forgot the machine.
    pub(crate) fn forget(&mut self, origin: &MachineId) {
        if *origin != self.local {
            self.origins.remove(origin);
            self.limits.remove(origin);
        }
    }
}

/// Moves an origin's data to `epoch` if that is newer (dropping the previous life's entries).
/// Returns false if `epoch` is older than the data's, i.e. the update is stale.
fn enter_epoch(data: &mut OriginData, epoch: u64, changes: &mut Vec<Change>) -> bool {
    if epoch < data.epoch {
        return false;
    }
    if epoch > data.epoch {
        if data.metadata.take().is_some() {
            changes.push(Change::Metadata);
        }
        if data.units.values().any(|(_, s)| s.is_some()) {
            changes.push(Change::Units);
        }
        data.units.clear();
        data.epoch = epoch;
    }
    true
}

/// The store shared between the node and foca's broadcast handler.
///
/// foca owns its handler and offers no way back to it, so both hold the store. The node is driven by
/// one task at a time, so the lock is never contended.
#[derive(Clone, Debug)]
pub(crate) struct SharedStore(Arc<Mutex<Store>>);

impl SharedStore {
    pub(crate) fn new(store: Store) -> Self {
        SharedStore(Arc::new(Mutex::new(store)))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock would have aborted the node's task anyway; the data is a
        // cache of gossip, so continuing with it is safe.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a custom broadcast was rejected.
#[derive(Debug, thiserror::Error)]
pub enum BroadcastError {
    /// The bytes are not a postcard-encoded [`Update`].
    #[error("undecodable state update: {0}")]
    Decode(#[from] postcard::Error),
    /// The update decoded but bytes were left over.
    #[error("state update followed by {0} stray bytes")]
    TrailingBytes(usize),
}

/// Decodes one broadcast update, refusing trailing bytes.
pub(crate) fn decode_update(data: &[u8]) -> Result<Update, BroadcastError> {
    let (update, rest) = postcard::take_from_bytes::<Update>(data)?;
    if !rest.is_empty() {
        return Err(BroadcastError::TrailingBytes(rest.len()));
    }
    Ok(update)
}

/// foca's custom-broadcast handler: decodes updates and keeps only news.
pub(crate) struct Handler {
    pub(crate) store: SharedStore,
}

impl<T> BroadcastHandler<T> for Handler {
    type Key = UpdateKey;
    type Error = BroadcastError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&T>,
    ) -> Result<Option<UpdateKey>, BroadcastError> {
        let update = decode_update(data)?;
        let key = UpdateKey {
            origin: update.origin.clone(),
            key: update.entry.key(),
            stamp: update.stamp,
        };
        // `sender` is None for our own updates (added by the node, already in the store).
        if sender.is_none() || self.store.lock().apply(&update) {
            Ok(Some(key))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(active: &str) -> UnitState {
        UnitState {
            load_state: "loaded".into(),
            active_state: active.into(),
            sub_state: "running".into(),
            unit_hash: [7; 20],
        }
    }

    fn units(list: &[(&str, &str)]) -> BTreeMap<String, UnitState> {
        list.iter().map(|(n, a)| (n.to_string(), unit(a))).collect()
    }

    #[test]
    fn newer_stamp_wins_and_older_is_ignored() {
        let mut a = Store::new(MachineId::new("a"), 1);
        let mut b = Store::new(MachineId::new("b"), 1);
        b.allow_epoch(&MachineId::new("a"), 1);
        let u1 = a.set_local_units(&units(&[("x.service", "active")]));
        let u2 = a.set_local_units(&units(&[("x.service", "failed")]));
        // Delivered out of order: the newer one first.
        assert!(b.apply(&u2[0]));
        assert!(!b.apply(&u1[0]), "an older update must not win");
        let o = b.origin(&MachineId::new("a")).unwrap();
        assert_eq!(o.units().next().unwrap().1.active_state, "failed");
    }

    #[test]
    fn a_new_epoch_replaces_the_previous_life() {
        let mut a = Store::new(MachineId::new("a"), 1);
        let mut b = Store::new(MachineId::new("b"), 1);
        b.allow_epoch(&MachineId::new("a"), 1);
        for u in a.set_local_units(&units(&[("x.service", "active"), ("y.service", "active")])) {
            b.apply(&u);
        }
        let mut a2 = Store::new(MachineId::new("a"), 2);
        let u = a2.set_local_units(&units(&[("z.service", "active")]));
        assert!(
            !b.apply(&u[0]),
            "a new life the membership has not accepted yet is refused"
        );
        assert_eq!(b.refused(), 1);
        b.allow_epoch(&MachineId::new("a"), 2);
        assert!(b.apply(&u[0]));
        let names: Vec<_> = b
            .origin(&MachineId::new("a"))
            .unwrap()
            .units()
            .map(|(n, _)| n.clone())
            .collect();
        assert_eq!(names, vec!["z.service".to_string()]);
        // A straggler from the old life is stale.
        let old = Update {
            origin: MachineId::new("a"),
            stamp: Stamp {
                epoch: 1,
                version: 99,
            },
            entry: Entry::Metadata(Metadata::default()),
        };
        assert!(!b.apply(&old));
    }

    #[test]
    fn delta_after_out_of_order_broadcasts_fills_the_gaps() {
        let mut a = Store::new(MachineId::new("a"), 1);
        let mut b = Store::new(MachineId::new("b"), 1);
        b.allow_epoch(&MachineId::new("a"), 1);
        let first = a.set_local_units(&units(&[("x.service", "active")]));
        let second = a.set_local_unit("y.service", Some(unit("active")));
        // b only hears the second broadcast.
        b.apply(second.as_ref().unwrap());
        assert!(first.len() == 1);
        let delta = a.delta_for(&b.digest());
        b.merge(delta);
        let o = b.origin(&MachineId::new("a")).unwrap();
        assert_eq!(
            o.units().count(),
            2,
            "the missed entry arrives via anti-entropy"
        );
        assert_eq!(o.synced, a.origin(&MachineId::new("a")).unwrap().synced);
        // Nothing left to send once synced.
        assert!(a.delta_for(&b.digest()).is_empty());
    }

    #[test]
    fn removed_units_travel_as_tombstones() {
        let mut a = Store::new(MachineId::new("a"), 1);
        let mut b = Store::new(MachineId::new("b"), 1);
        b.allow_epoch(&MachineId::new("a"), 1);
        b.merge(a.delta_for(&b.digest()));
        a.set_local_units(&units(&[("x.service", "active")]));
        b.merge(a.delta_for(&b.digest()));
        assert_eq!(b.origin(&MachineId::new("a")).unwrap().units().count(), 1);
        let removal = a.set_local_units(&BTreeMap::new());
        assert_eq!(removal.len(), 1);
        assert!(b.apply(&removal[0]));
        assert_eq!(b.origin(&MachineId::new("a")).unwrap().units().count(), 0);
        assert!(b
            .take_changes()
            .contains(&(MachineId::new("a"), Change::Units)));
    }

    #[test]
    fn state_of_an_unknown_machine_or_a_newer_life_is_refused_whole() {
        let mut a = Store::new(MachineId::new("a"), 7);
        let mut b = Store::new(MachineId::new("b"), 1);
        a.set_local_metadata(Metadata::default());
        b.merge(a.delta_for(&b.digest()));
        assert!(b.origin(&MachineId::new("a")).is_none(), "unknown machine");
        b.allow_epoch(&MachineId::new("a"), 6);
        b.merge(a.delta_for(&b.digest()));
        assert!(b.origin(&MachineId::new("a")).is_none(), "epoch 7 > 6");
        assert_eq!(b.refused(), 2);
        b.allow_epoch(&MachineId::new("a"), 7);
        b.merge(a.delta_for(&b.digest()));
        assert!(b.origin(&MachineId::new("a")).unwrap().metadata().is_some());
    }

    #[test]
    fn updates_about_ourselves_are_ignored() {
        let mut a = Store::new(MachineId::new("a"), 5);
        let forged = Update {
            origin: MachineId::new("a"),
            stamp: Stamp {
                epoch: 9,
                version: 1,
            },
            entry: Entry::Metadata(Metadata::default()),
        };
        assert!(!a.apply(&forged));
    }

    #[test]
    fn invalidation_keeps_only_the_newest_per_entry() {
        let k = |v, key: EntryKey| UpdateKey {
            origin: MachineId::new("a"),
            key,
            stamp: Stamp {
                epoch: 1,
                version: v,
            },
        };
        assert!(k(2, EntryKey::Metadata).invalidates(&k(1, EntryKey::Metadata)));
        assert!(!k(1, EntryKey::Metadata).invalidates(&k(2, EntryKey::Metadata)));
        assert!(!k(2, EntryKey::Metadata).invalidates(&k(1, EntryKey::Unit("x".into()))));
    }

    #[test]
    fn garbage_broadcasts_are_errors() {
        assert!(decode_update(&[0xff, 0xff, 0xff]).is_err());
        let good = postcard::to_allocvec(&Update {
            origin: MachineId::new("a"),
            stamp: Stamp::default(),
            entry: Entry::Metadata(Metadata::default()),
        })
        .unwrap();
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode_update(&good).is_ok());
        assert!(matches!(
            decode_update(&trailing),
            Err(BroadcastError::TrailingBytes(1))
        ));
    }
}
