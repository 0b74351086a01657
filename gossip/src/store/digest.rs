//! The store's digest and anti-entropy deltas.
//!
//! The digest of the whole store folds into [`BUCKETS`] sums (one per bucket of origins, kept up to
//! date on every change), so that two nodes compare their states with a few hundred bytes whatever
//! the cluster's size, and exchange details only for the buckets that differ. A delta is what a
//! peer lacks given its digest: every entry newer than its `synced` stamp, per origin.

use std::collections::BTreeMap;

use super::{Entry, OriginData, OriginDelta, Store, BUCKETS};
use crate::types::{MachineId, Metadata, Stamp};

/// A well-mixed 64-bit hash, the same on every machine (FNV-1a, then a finaliser).
pub(crate) fn mix(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The bucket of an origin (of [`BUCKETS`]).
pub(crate) fn bucket_of(origin: &MachineId) -> usize {
    (mix(origin.as_str().as_bytes(), 0) as usize) & (BUCKETS - 1)
}

/// An origin's contribution to its bucket's sum: its ID and `synced` stamp.
pub(super) fn contribution(origin: &MachineId, synced: Stamp) -> u64 {
    let h = mix(origin.as_str().as_bytes(), 1);
    mix(
        &[synced.epoch.to_le_bytes(), synced.version.to_le_bytes()].concat(),
        h,
    )
}

/// A member's contribution to its bucket's sum: its ID, its identity's incarnation, and whether it
/// is down (a suspect counts as alive: suspicion comes and goes too fast to compare).
pub(crate) fn member_contribution(id: &MachineId, incarnation: u64, down: bool) -> u64 {
    let h = mix(id.as_str().as_bytes(), 2);
    mix(
        &[&incarnation.to_le_bytes()[..], &[u8::from(down)]].concat(),
        h,
    )
}

/// How many buckets a summary asked for with `count` has: between 1 and [`BUCKETS`], rounded up to
/// a power of two. Bucket `b` (of [`BUCKETS`]) is in its bucket `b & (summary_count(count) - 1)`.
pub(crate) fn summary_count(count: usize) -> usize {
    count.clamp(1, BUCKETS).next_power_of_two()
}

/// Folds per-bucket sums (several tables of [`BUCKETS`], added) into `count` 32-bit sums.
fn fold(tables: &[&[u64]], count: usize) -> Vec<u32> {
    let count = summary_count(count);
    let mut out = vec![0u64; count];
    for table in tables {
        for (b, sum) in table.iter().enumerate() {
            out[b & (count - 1)] = out[b & (count - 1)].wrapping_add(*sum);
        }
    }
    out.into_iter().map(|s| (s ^ (s >> 32)) as u32).collect()
}

impl OriginData {
    fn entries_after(&self, after: Stamp) -> Vec<(Stamp, Entry, Vec<u8>)> {
        // Counted first (the stamps lie side by side), so that the vector is made once at its
        // size: a delta of a burst has hundreds of entries, each about 150 bytes.
        let units = self.units.values().filter(|(s, _, _)| *s > after).count();
        let mut out = Vec::with_capacity(units + 2);
        if let Some((stamp, m, sig)) = &self.metadata {
            if *stamp > after {
                out.push((*stamp, Entry::Metadata(Metadata::clone(m)), sig.clone()));
            }
        }
        if let Some((stamp, life, incarnation, sig)) = &self.incarnation {
            if *stamp > after {
                out.push((
                    *stamp,
                    Entry::Incarnation {
                        life: *life,
                        incarnation: *incarnation,
                    },
                    sig.clone(),
                ));
            }
        }
        for (name, (stamp, state, sig)) in &self.units {
            if *stamp > after {
                out.push((
                    *stamp,
                    Entry::Unit {
                        name: name.to_owned(),
                        state: state.clone(),
                    },
                    sig.clone(),
                ));
            }
        }
        out
    }
}

impl Store {
    /// Per origin, the stamp up to which this node has everything.
    pub(crate) fn digest(&self) -> Vec<(MachineId, Stamp)> {
        self.origins
            .iter()
            .map(|(id, o)| (id.clone(), o.synced))
            .collect()
    }

    /// The digest folded into `count` buckets (a power of two, at most [`BUCKETS`]): 32 bits each.
    /// `members` adds the membership's per-bucket sums (or is empty).
    pub(crate) fn summary(&self, count: usize, members: &[u64]) -> Vec<u32> {
        fold(&[&self.sums, members], count)
    }

    /// The buckets (of `count`) in which `theirs` differs from this node's summary.
    pub(crate) fn differing(&self, theirs: &[u32], members: &[u64]) -> Vec<u16> {
        let mine = self.summary(theirs.len(), members);
        if mine.len() != theirs.len() {
            return (0..mine.len() as u16).collect();
        }
        (0..mine.len())
            .filter(|b| mine[*b] != theirs[*b])
            .map(|b| b as u16)
            .collect()
    }

    /// Per origin in `buckets` (of `count`), the stamp up to which this node has everything.
    /// In machine-ID order (a peer's `delta_where` walks it along its store); only those
    /// buckets' origins are visited.
    pub(crate) fn digest_of(&self, buckets: &[u16], count: usize) -> Vec<(MachineId, Stamp)> {
        self.origins
            .in_buckets(buckets, count)
            .into_iter()
            .map(|(id, o)| (id.clone(), o.synced))
            .collect()
    }

    /// What a peer whose digest is `peer` lacks. `certificate` gives an origin's certificate,
    /// sent along when the peer lacks the origin's current epoch.
    pub(crate) fn delta_for(
        &self,
        peer: &[(MachineId, Stamp)],
        certificate: &dyn Fn(&MachineId) -> Option<Vec<u8>>,
    ) -> Vec<OriginDelta> {
        self.delta_where(peer, self.origins.iter(), certificate)
    }

    /// What a peer lacks of the origins in `buckets` (of `count`), `peer` being its digest of them.
    pub(crate) fn delta_for_buckets(
        &self,
        peer: &[(MachineId, Stamp)],
        buckets: &[u16],
        count: usize,
        certificate: &dyn Fn(&MachineId) -> Option<Vec<u8>>,
    ) -> Vec<OriginDelta> {
        let origins = self.origins.in_buckets(buckets, count);
        self.delta_where(peer, origins.into_iter(), certificate)
    }

    /// What a peer whose digest is `peer` lacks of `origins` (this store's, in machine-ID order).
    fn delta_where<'a>(
        &self,
        peer: &[(MachineId, Stamp)],
        origins: impl Iterator<Item = (&'a MachineId, &'a OriginData)>,
        certificate: &dyn Fn(&MachineId) -> Option<Vec<u8>>,
    ) -> Vec<OriginDelta> {
        // A digest comes in the order of its sender's store (by machine ID, as ours): then one
        // walk of both, without a lookup per origin. Any other order (duplicates included, the
        // last one counting) goes through a map.
        let sorted = peer.windows(2).all(|w| w[0].0 < w[1].0);
        let map: Option<BTreeMap<&MachineId, Stamp>> =
            (!sorted).then(|| peer.iter().map(|(id, s)| (id, *s)).collect());
        let mut cursor = 0;
        let mut out = Vec::with_capacity(origins.size_hint().0);
        for (id, data) in origins {
            let theirs = match &map {
                Some(map) => map.get(id).copied().unwrap_or_default(),
                None => {
                    while peer.get(cursor).is_some_and(|(p, _)| p < id) {
                        cursor += 1;
                    }
                    match peer.get(cursor) {
                        Some((p, s)) if p == id => *s,
                        _ => Stamp::default(),
                    }
                }
            };
            // A peer on an older epoch of this origin needs all of the current one.
            let new_life = theirs.epoch < data.epoch;
            let after = if new_life { Stamp::default() } else { theirs };
            let entries = data.entries_after(after);
            if !entries.is_empty() || data.synced > theirs {
                out.push(OriginDelta {
                    origin: id.clone(),
                    synced: data.synced,
                    certificate: if new_life || theirs.version == 0 {
                        certificate(id)
                    } else {
                        None
                    },
                    entries,
                });
            }
        }
        out
    }
}
