//! The versioned store of every machine's metadata and unit states.
//!
//! Each origin (machine) owns its entries: one metadata entry and one entry per unit (a removed unit
//! stays as a tombstone so that the removal spreads too). Every change of an entry gets the origin's
//! next [`Stamp`] (epoch, version): versions of one origin are contiguous, one per change, and an
//! entry only ever replaces an older one. Changes travel one by one in state pushes, and in bulk
//! through anti-entropy.
//!
//! Anti-entropy relies on one invariant: a node's `synced` stamp for an origin means "I have the newest
//! value of every entry of this origin whose stamp is at most `synced`". Pushes may arrive in any
//! order: an update advances `synced` only when it is the next version (and then any later versions
//! already received), so a lost update leaves a gap that `synced` cannot cross. Complete anti-entropy
//! deltas carry every entry newer than the receiver's `synced`, plus the sender's own `synced`, so the
//! receiver may then take the larger one. An update superseded at its origin before it reached
//! someone leaves such a gap too; the next delta closes it.
//!
//! The digest of the whole store and the deltas computed from a peer's digest live in `store/digest.rs`;
//! the unit tests of the invariant in `store/tests.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::crypto::{signed_message, Credentials, Refusal};
use crate::dense::Dense;
use crate::types::{MachineId, Metadata, Stamp, UnitState};

mod digest;
mod entries;

use digest::contribution;
#[cfg(any(test, feature = "testing"))]
pub(crate) use digest::mix;
pub(crate) use digest::{bucket_of, member_contribution, summary_count};

/// How many buckets the store's digest keeps (a power of two); summaries fold them further.
pub(crate) const BUCKETS: usize = 256;
/// Versions received ahead of a gap, kept per origin until the gap closes (beyond: dropped, and
/// anti-entropy brings them again).
const MAX_PENDING: usize = 4096;

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
    /// Not state: the origin's claim that its own probe of `target` failed, at foca incarnation
    /// `incarnation` (Lifeguard's independent confirmations). Pushed and passed on like state,
    /// never stored.
    Suspicion {
        /// The life of the member the origin suspects.
        target: crate::types::NodeIdentity,
        /// The suspect's foca incarnation the suspicion is about.
        incarnation: u16,
    },
    /// Not state: the origin's certificate (DER), which the signatures of its updates are checked
    /// against ([`crate::crypto`]). Published once per epoch with stamp `(epoch, 0)`, pushed and
    /// passed on like state, kept apart from the state. Needs no signature: the cluster CA's
    /// signature in it is checked, and that it names the origin.
    Certificate(Vec<u8>),
    /// The origin's own word that it is alive at foca incarnation `incarnation` in its life
    /// `life` (its identity's incarnation): published, signed, when a refutation raises its foca
    /// incarnation. A relayed membership update that raises the origin's foca incarnation (a
    /// refutation) is taken only up to what the origin vouched for (the `trust` module). Stored
    /// with the origin's state (its newest one), so that anti-entropy repairs it too.
    Incarnation {
        /// The origin's identity incarnation the vouch is about.
        life: u64,
        /// The foca incarnation it is alive at.
        incarnation: u16,
    },
}

/// Which piece of an origin's state an entry is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntryKey {
    /// The metadata entry.
    Metadata,
    /// The entry of the named unit.
    Unit(String),
    /// A suspicion claim: the suspect, its life and its foca incarnation.
    Suspicion(MachineId, u64, u16),
    /// The origin's certificate.
    Certificate,
    /// The origin's vouch for its foca incarnation.
    Incarnation,
}

impl Entry {
    pub(crate) fn key(&self) -> EntryKey {
        match self {
            Entry::Metadata(_) => EntryKey::Metadata,
            Entry::Unit { name, .. } => EntryKey::Unit(name.clone()),
            Entry::Suspicion {
                target,
                incarnation,
            } => EntryKey::Suspicion(target.machine_id.clone(), target.incarnation, *incarnation),
            Entry::Certificate(_) => EntryKey::Certificate,
            Entry::Incarnation { .. } => EntryKey::Incarnation,
        }
    }
}

/// One versioned change of an origin's state: what a state push carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// The machine whose state this is.
    pub origin: MachineId,
    /// When the origin made the change.
    pub stamp: Stamp,
    /// The new value.
    pub entry: Entry,
    /// The origin's signature of (origin, stamp, entry) ([`crate::crypto::signed_message`]):
    /// empty in the insecure development mode and for certificates.
    pub signature: Vec<u8>,
}

/// The part of an origin's state that a peer lacks, with the sender's `synced` stamp for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginDelta {
    /// The machine whose state this is.
    pub origin: MachineId,
    /// The sender has every entry of this origin up to this stamp.
    pub synced: Stamp,
    /// The sender's entries newer than the receiver's `synced` stamp, each with its origin's
    /// signature.
    pub entries: Vec<(Stamp, Entry, Vec<u8>)>,
    /// The origin's certificate, when the receiver's digest shows that it lacks the origin's
    /// current epoch (so that it can check the entries' signatures).
    pub certificate: Option<Vec<u8>>,
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
    /// Versions of this epoch received beyond `synced` (a gap in between), sorted from the
    /// largest to the smallest: a vector, not a set, as it is mostly empty and every update of a
    /// burst may pass through it (a set's first insertion allocates a whole node), and the next
    /// version to take is its last.
    pending: Vec<u64>,
    /// Shared with every view that shows it (replaced, never changed in place).
    metadata: Option<(Stamp, Arc<Metadata>, Vec<u8>)>,
    units: entries::UnitMap<(Stamp, Option<UnitState>, Vec<u8>)>,
    /// The origin's newest vouch for its foca incarnation: stamp, life, incarnation, signature.
    incarnation: Option<(Stamp, u64, u16, Vec<u8>)>,
    /// What a view shows of this origin, built when a view first asks after a change and shared
    /// by every view until the next change ([`OriginData::touch`] drops it).
    shown: OnceLock<Shown>,
    /// Counts [`OriginData::touch`]'s calls.
    revision: u64,
}

/// What a [`crate::View`] shows of one origin: its unit states (tombstones left out) and its
/// newest stamp.
#[derive(Debug, Clone)]
pub(crate) struct Shown {
    pub(crate) units: Arc<BTreeMap<String, UnitState>>,
    pub(crate) newest: Stamp,
}

impl OriginData {
    pub(crate) fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref().map(|(_, m, _)| &**m)
    }

    /// The metadata, shared (a view's copy is this pointer).
    pub(crate) fn metadata_shared(&self) -> Option<&Arc<Metadata>> {
        self.metadata.as_ref().map(|(_, m, _)| m)
    }

    /// What a view shows of this origin: built once per change of its data (see `shown`).
    pub(crate) fn shown(&self) -> &Shown {
        self.shown.get_or_init(|| Shown {
            units: Arc::new(
                self.units()
                    .map(|(n, s)| (n.to_owned(), s.clone()))
                    .collect(),
            ),
            newest: self.newest(),
        })
    }

    /// Every change of what a view shows of this origin (its metadata, units, vouch, `synced` or
    /// epoch) goes through here: the shared copy is dropped, and the store's `generation` moves
    /// (see [`Store::with_origin`]).
    fn touch(&mut self) {
        self.revision += 1;
        self.shown = OnceLock::new();
    }

    pub(crate) fn units(&self) -> impl Iterator<Item = (&str, &UnitState)> {
        self.units
            .iter()
            .filter_map(|(name, (_, state, _))| state.as_ref().map(|s| (name, s)))
    }

    /// The origin's newest vouch: the life and the foca incarnation it is alive at.
    pub(crate) fn vouched(&self) -> Option<(u64, u16)> {
        self.incarnation.as_ref().map(|(_, l, i, _)| (*l, *i))
    }

    /// The newest stamp among the entries (or `synced`, if larger).
    pub(crate) fn newest(&self) -> Stamp {
        self.newest_entry().max(self.synced)
    }

    /// The newest stamp among the entries themselves (each one checked when it came in).
    fn newest_entry(&self) -> Stamp {
        let units = self.units.values().map(|(s, _, _)| *s);
        let meta = self.metadata.iter().map(|(s, _, _)| *s);
        let vouch = self.incarnation.iter().map(|(s, _, _, _)| *s);
        units
            .chain(meta)
            .chain(vouch)
            .fold(Stamp::default(), Stamp::max)
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
    /// Looked up for every update and delta: found by a hash of the ID, walked in ID order.
    origins: Dense<OriginData>,
    /// Drained after every datagram and sync step ([`Store::take_changes`]): mostly empty, so a
    /// vector (a set's first insertion allocates a whole node), sorted and deduplicated when taken.
    changes: Vec<(MachineId, Change)>,
    /// Looked up for every member of every membership update, never walked: hashed (foldhash, as
    /// `Dense`'s index).
    limits: HashMap<MachineId, u64, foldhash::fast::RandomState>,
    refused: u64,
    /// Per bucket, the wrapping sum of its origins' contributions.
    sums: Vec<u64>,
    /// Counts the changes of any origin's metadata (this node's own included): set, replaced by a
    /// different one, dropped with a life, forgotten with the origin.
    metadata_generation: u64,
    /// The origins whose metadata says they cannot take units now
    /// ([`Metadata::cannot_take_units`]), kept with every metadata change.
    refusing: BTreeSet<MachineId>,
    /// Moves whenever what a view shows of any origin may have changed: an origin's data
    /// touched ([`OriginData::touch`]), added or forgotten.
    generation: u64,
    /// The origins whose data changed (with `generation`) since [`Store::take_changed`].
    changed: crate::types::Changed,
    /// Copies shared with the other nodes of a simulator ([`crate::Shared`]), if any.
    pub(crate) shared: Option<crate::Shared>,
}

impl Store {
    pub(crate) fn new(local: MachineId, epoch: u64) -> Self {
        let local_stamp = Stamp { epoch, version: 0 };
        let mut store = Store {
            local: local.clone(),
            local_stamp,
            origins: Dense::default(),
            changes: Vec::new(),
            limits: HashMap::default(),
            refused: 0,
            sums: vec![0; BUCKETS],
            metadata_generation: 0,
            refusing: BTreeSet::new(),
            generation: 0,
            changed: Default::default(),
            shared: None,
        };
        store.origins.insert(
            local.clone(),
            OriginData {
                epoch,
                synced: local_stamp,
                ..OriginData::default()
            },
        );
        store.sums[bucket_of(&local)] = contribution(&local, local_stamp);
        store
    }

    /// The membership holds `origin` with this identity incarnation: its state may now come in
    /// epochs up to it.
    pub(crate) fn allow_epoch(&mut self, origin: &MachineId, incarnation: u64) {
        // Called for every member of every membership update: no clone of the ID (an atomic
        // increment and decrement) unless it is new.
        match self.limits.get_mut(origin) {
            Some(limit) => *limit = (*limit).max(incarnation),
            None => {
                self.limits.insert(origin.clone(), incarnation);
            }
        }
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

    /// How many origins the store holds (this node included).
    pub(crate) fn len(&self) -> usize {
        self.origins.len()
    }

    /// How many times some origin's metadata changed (see the field).
    pub(crate) fn metadata_generation(&self) -> u64 {
        self.metadata_generation
    }

    /// A count that moves whenever what a view shows of some origin may have changed (see the
    /// field).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The origins whose data changed, or that came or went, since the last call (each such
    /// change also moves [`Store::generation`]).
    pub(crate) fn take_changed(&mut self) -> crate::types::Changed {
        self.changed.take()
    }

    /// The origins whose metadata says they cannot take units now, in machine-ID order.
    pub(crate) fn refusing(&self) -> impl Iterator<Item = &MachineId> {
        self.refusing.iter()
    }

    /// Records a change of `origin`'s store (an event for the node; metadata changes counted).
    fn changed(&mut self, origin: &MachineId, change: Change) {
        if change == Change::Metadata {
            self.metadata_generation += 1;
            self.metadata_changed(origin);
        }
        if !self
            .changes
            .last()
            .is_some_and(|(o, c)| o == origin && *c == change)
        {
            self.changes.push((origin.clone(), change));
        }
    }

    /// Keeps `refusing` true for `origin` after its metadata changed.
    fn metadata_changed(&mut self, origin: &MachineId) {
        let refuses = self
            .origins
            .get(origin)
            .and_then(OriginData::metadata)
            .is_some_and(Metadata::cannot_take_units);
        if refuses {
            self.refusing.insert(origin.clone());
        } else {
            self.refusing.remove(origin);
        }
    }

    /// The changes since the last call, each once, in (origin, change) order.
    pub(crate) fn take_changes(&mut self) -> Vec<(MachineId, Change)> {
        let mut changes = std::mem::take(&mut self.changes);
        changes.sort_unstable();
        changes.dedup();
        changes
    }

    /// Runs `f` on an origin's data and keeps its bucket's sum true if `synced` changed, and the
    /// store's `generation` if `f` touched the data (or the origin is new).
    ///
    /// Every change of an origin's data goes through here (or [`Store::local_mut`]), and every
    /// change `f` makes calls [`OriginData::touch`].
    fn with_origin<R>(&mut self, origin: &MachineId, f: impl FnOnce(&mut OriginData) -> R) -> R {
        let (data, new) = self.origins.get_or_default_new(origin);
        let existed = !new;
        let before = data.synced;
        let revision = data.revision;
        let r = f(data);
        let touched = data.revision != revision;
        let after = data.synced;
        if touched || !existed {
            self.generation += 1;
            self.changed.mark(origin);
        }
        if after != before || !existed {
            let b = bucket_of(origin);
            if existed {
                self.sums[b] = self.sums[b].wrapping_sub(contribution(origin, before));
            }
            self.sums[b] = self.sums[b].wrapping_add(contribution(origin, after));
        }
        r
    }

    fn next_local_stamp(&mut self) -> Stamp {
        self.local_stamp.version += 1;
        let stamp = self.local_stamp;
        let local = self.local.clone();
        self.with_origin(&local, |o| {
            o.touch();
            o.synced = stamp;
        });
        stamp
    }

    /// This node's own data, to read.
    fn local_ref(&self) -> &OriginData {
        self.origins
            .get(&self.local)
            .expect("the store holds its own origin")
    }

    /// This node's own data, to change: touched (see [`OriginData::touch`]).
    fn local_mut(&mut self) -> &mut OriginData {
        self.generation += 1;
        self.changed.mark(&self.local);
        let data = self.origins.get_or_default(&self.local);
        data.touch();
        data
    }

    /// The epoch this node stamps its own state with.
    pub(crate) fn local_epoch(&self) -> u64 {
        self.local_stamp.epoch
    }

    /// Whether state of `origin` at `epoch` may come in (the membership holds a life of it at
    /// least that new). Counts nothing.
    pub(crate) fn allows(&self, origin: &MachineId, epoch: u64) -> bool {
        self.limits.get(origin).is_some_and(|l| epoch <= *l)
    }

    /// Replaces the local metadata; returns the update to push (signed with `credentials`), or
    /// `None` if nothing changed.
    pub(crate) fn set_local_metadata(
        &mut self,
        metadata: Metadata,
        credentials: &dyn Credentials,
    ) -> Option<Update> {
        if self.local_ref().metadata() == Some(&metadata) {
            return None;
        }
        self.metadata_generation += 1;
        let stamp = self.next_local_stamp();
        let entry = Entry::Metadata(metadata.clone());
        let signature = credentials.sign(&signed_message(&self.local, stamp, &entry));
        self.local_mut().metadata = Some((stamp, Arc::new(metadata), signature.clone()));
        let local = self.local.clone();
        self.metadata_changed(&local);
        Some(Update {
            origin: self.local.clone(),
            stamp,
            entry,
            signature,
        })
    }

    /// Replaces the local unit states with `units`; returns one update per changed unit (each with
    /// its own version, signed with `credentials`).
    pub(crate) fn set_local_units(
        &mut self,
        units: &BTreeMap<String, UnitState>,
        credentials: &dyn Credentials,
    ) -> Vec<Update> {
        let data = self.local_ref();
        let mut changed: Vec<(String, Option<UnitState>)> = Vec::new();
        for (name, state) in units {
            let current = data.units.get(name).and_then(|(_, s, _)| s.as_ref());
            if current != Some(state) {
                changed.push((name.clone(), Some(state.clone())));
            }
        }
        for (name, (_, state, _)) in &data.units {
            if state.is_some() && !units.contains_key(name) {
                changed.push((name.to_owned(), None));
            }
        }
        changed
            .into_iter()
            .map(|(name, state)| self.put_local_unit(name, state, credentials))
            .collect()
    }

    fn put_local_unit(
        &mut self,
        name: String,
        state: Option<UnitState>,
        credentials: &dyn Credentials,
    ) -> Update {
        let stamp = self.next_local_stamp();
        let entry = Entry::Unit {
            name: name.clone(),
            state: state.clone(),
        };
        let signature = credentials.sign(&signed_message(&self.local, stamp, &entry));
        self.local_mut()
            .units
            .insert(&name, (stamp, state, signature.clone()));
        Update {
            origin: self.local.clone(),
            stamp,
            entry,
            signature,
        }
    }

    /// Vouches that this node is alive at foca incarnation `incarnation` in its life `life`;
    /// returns the update to push (signed with `credentials`), or `None` if nothing changed.
    pub(crate) fn set_local_incarnation(
        &mut self,
        life: u64,
        incarnation: u16,
        credentials: &dyn Credentials,
    ) -> Option<Update> {
        if self.local_ref().vouched() == Some((life, incarnation)) {
            return None;
        }
        let stamp = self.next_local_stamp();
        let entry = Entry::Incarnation { life, incarnation };
        let signature = credentials.sign(&signed_message(&self.local, stamp, &entry));
        self.local_mut().incarnation = Some((stamp, life, incarnation, signature.clone()));
        Some(Update {
            origin: self.local.clone(),
            stamp,
            entry,
            signature,
        })
    }

    /// Sets or removes (`None`) one local unit's state; returns the update to push, if any.
    pub(crate) fn set_local_unit(
        &mut self,
        name: &str,
        state: Option<UnitState>,
        credentials: &dyn Credentials,
    ) -> Option<Update> {
        let current = self
            .local_ref()
            .units
            .get(name)
            .and_then(|(_, s, _)| s.clone());
        if current == state {
            return None;
        }
        Some(self.put_local_unit(name.to_string(), state, credentials))
    }

    /// Whether a remote update would be news: of another origin, of a life the membership allows
    /// (counted as refused otherwise), not older than what is held. Changes nothing else.
    fn is_news(&mut self, update: &Update) -> bool {
        if update.origin == self.local
            || matches!(
                update.entry,
                Entry::Suspicion { .. } | Entry::Certificate(_)
            )
            || !self.epoch_allowed(&update.origin, update.stamp.epoch)
        {
            return false;
        }
        let Some(data) = self.origins.get(&update.origin) else {
            return true;
        };
        if update.stamp.epoch != data.epoch {
            return update.stamp.epoch > data.epoch;
        }
        match &update.entry {
            Entry::Metadata(_) => data
                .metadata
                .as_ref()
                .is_none_or(|(s, _, _)| *s < update.stamp),
            Entry::Unit { name, .. } => data
                .units
                .get(name)
                .is_none_or(|(s, _, _)| *s < update.stamp),
            Entry::Incarnation { .. } => data
                .incarnation
                .as_ref()
                .is_none_or(|(s, _, _, _)| *s < update.stamp),
            Entry::Suspicion { .. } | Entry::Certificate(_) => false,
        }
    }

    /// Applies a remote update if it is news and `verify` accepts it (called only for news, so
    /// that replays of known updates cost no signature check). `Ok(true)` if it was news.
    pub(crate) fn apply(
        &mut self,
        update: &Update,
        verify: &mut dyn FnMut(&Update) -> Result<(), Refusal>,
    ) -> Result<bool, Refusal> {
        if !self.is_news(update) {
            return Ok(false);
        }
        verify(update)?;
        let origin = update.origin.clone();
        let mut changes = Vec::new();
        let shared = match &update.entry {
            Entry::Metadata(_) => self.shared.clone(),
            _ => None,
        };
        let news = self.with_origin(&origin, |data| {
            if !enter_epoch(data, update.stamp.epoch, &mut changes) {
                return false;
            }
            let sig = update.signature.clone();
            let news = match &update.entry {
                Entry::Metadata(m) => {
                    data.take_metadata(update.stamp, m, sig, &mut changes, || match &shared {
                        Some(shared) => shared.metadata(&origin, m),
                        None => Arc::new(m.clone()),
                    })
                }
                Entry::Unit { name, state } => match data.units.get(name) {
                    Some((s, _, _)) if *s >= update.stamp => false,
                    previous => {
                        let differs = previous.and_then(|(_, s, _)| s.as_ref()) != state.as_ref();
                        data.touch();
                        data.units.insert(name, (update.stamp, state.clone(), sig));
                        if differs {
                            changes.push(Change::Units);
                        }
                        true
                    }
                },
                Entry::Incarnation { life, incarnation } => {
                    if data
                        .incarnation
                        .as_ref()
                        .is_some_and(|(s, _, _, _)| *s >= update.stamp)
                    {
                        false
                    } else {
                        data.touch();
                        data.incarnation = Some((update.stamp, *life, *incarnation, sig));
                        true
                    }
                }
                Entry::Suspicion { .. } | Entry::Certificate(_) => false,
            };
            data.received(update.stamp.version);
            news
        });
        for c in changes {
            self.changed(&origin, c);
        }
        Ok(news)
    }
    /// Merges a delta computed by a peer from our digest (or a full snapshot), each entry checked
    /// by `verify` before it is stored (an origin's certificate in a delta must be taken in before:
    /// see `Node::merge_state`). Returns the updates that were news, and the refused ones.
    ///
    /// The sender's `synced` stamp is taken only up to the newest entry of the origin this node
    /// holds (each one checked): a relay cannot make this node believe it has versions that it
    /// has not seen, which would keep anti-entropy from ever bringing them.
    pub(crate) fn merge(
        &mut self,
        deltas: Vec<OriginDelta>,
        verify: &mut dyn FnMut(&Update) -> Result<(), Refusal>,
    ) -> (Vec<Update>, Vec<(Update, Refusal)>) {
        let mut news = Vec::new();
        let mut refused = Vec::new();
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
            for (stamp, entry, signature) in delta.entries {
                let update = Update {
                    origin: delta.origin.clone(),
                    stamp,
                    entry,
                    signature,
                };
                match self.apply(&update, verify) {
                    Ok(true) => news.push(update),
                    Ok(false) => {}
                    Err(why) => refused.push((update, why)),
                }
            }
            let mut changes = Vec::new();
            self.with_origin(&delta.origin, |data| {
                if enter_epoch(data, delta.synced.epoch, &mut changes) {
                    let held = data.newest_entry().max(Stamp {
                        epoch: data.epoch,
                        version: 0,
                    });
                    data.raise_synced(delta.synced.min(held));
                }
            });
            for c in changes {
                self.changed(&delta.origin, c);
            }
        }
        (news, refused)
    }

    /// Forgets an origin's state (never our own): the membership forgot the machine.
    pub(crate) fn forget(&mut self, origin: &MachineId) {
        if *origin == self.local {
            return;
        }
        if let Some(data) = self.origins.remove(origin) {
            self.generation += 1;
            self.changed.mark(origin);
            if data.metadata.is_some() {
                self.metadata_generation += 1;
            }
            self.refusing.remove(origin);
            let b = bucket_of(origin);
            self.sums[b] = self.sums[b].wrapping_sub(contribution(origin, data.synced));
        }
        self.limits.remove(origin);
    }
}

/// Moves an origin's data to `epoch` if that is newer (dropping the previous life's entries).
/// Returns false if `epoch` is older than the data's, i.e. the update is stale.
fn enter_epoch(data: &mut OriginData, epoch: u64, changes: &mut Vec<Change>) -> bool {
    if epoch < data.epoch {
        return false;
    }
    if epoch > data.epoch {
        data.touch();
        if data.metadata.take().is_some() {
            changes.push(Change::Metadata);
        }
        if data.units.values().any(|(_, s, _)| s.is_some()) {
            changes.push(Change::Units);
        }
        data.units.clear();
        data.incarnation = None;
        data.pending.clear();
        data.epoch = epoch;
        data.synced = Stamp { epoch, version: 0 };
    }
    true
}

#[cfg(test)]
mod tests;
