//! A map keyed by machine ID for the hot paths: every datagram, membership update, push and sync
//! delta looks members and origins up by machine ID. Each entry has a slot (a small integer,
//! reused after the entry is removed) found through a hash index: one hash of the ID and one
//! comparison, where a B-tree search makes a dozen string comparisons, each a cache miss, at 1,000
//! entries. Walks go in machine-ID order through an ordered map of slots, so that a seeded run
//! makes the same choices every time; the hash index is never walked.
//!
//! Anti-entropy details a few buckets of the digest ([`crate::store::bucket_of`]) at a time: each
//! bucket's entries are kept apart, in machine-ID order, so that a walk of a few buckets visits
//! only their entries (each ID hashed once, when it comes in), not the whole map.

use std::collections::{BTreeMap, HashMap};

use crate::store::{bucket_of, summary_count, BUCKETS};
use crate::types::MachineId;

#[derive(Debug)]
pub(crate) struct Dense<V> {
    slots: Vec<Option<V>>,
    free: Vec<u32>,
    index: HashMap<MachineId, u32, foldhash::fast::RandomState>,
    order: BTreeMap<MachineId, u32>,
    /// Per bucket (of [`BUCKETS`]), its entries' IDs and slots, sorted by ID.
    buckets: Vec<Vec<(MachineId, u32)>>,
}

impl<V> Default for Dense<V> {
    fn default() -> Self {
        Dense {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::default(),
            order: BTreeMap::new(),
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
        }
    }
}

impl<V> Dense<V> {
    pub(crate) fn get(&self, id: &MachineId) -> Option<&V> {
        let slot = *self.index.get(id)?;
        self.slots[slot as usize].as_ref()
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Sets `id`'s value, returning the one it replaces.
    pub(crate) fn insert(&mut self, id: MachineId, value: V) -> Option<V> {
        if let Some(slot) = self.index.get(&id).copied() {
            return self.slots[slot as usize].replace(value);
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(value);
                slot
            }
            None => {
                self.slots.push(Some(value));
                (self.slots.len() - 1) as u32
            }
        };
        let bucket = &mut self.buckets[bucket_of(&id)];
        let at = bucket.partition_point(|(other, _)| *other < id);
        bucket.insert(at, (id.clone(), slot));
        self.index.insert(id.clone(), slot);
        self.order.insert(id, slot);
        None
    }

    /// `id`'s value, inserted as the default if absent (the ID is cloned only then).
    pub(crate) fn get_or_default(&mut self, id: &MachineId) -> &mut V
    where
        V: Default,
    {
        self.get_or_default_new(id).0
    }

    /// As [`Dense::get_or_default`], and whether the entry is new: one lookup of the ID when it
    /// is held.
    pub(crate) fn get_or_default_new(&mut self, id: &MachineId) -> (&mut V, bool)
    where
        V: Default,
    {
        let (slot, new) = match self.index.get(id).copied() {
            Some(slot) => (slot, false),
            None => {
                self.insert(id.clone(), V::default());
                (self.index[id], true)
            }
        };
        (
            self.slots[slot as usize].get_or_insert_with(V::default),
            new,
        )
    }

    /// Removes `id`'s entry (its slot is reused), returning its value.
    pub(crate) fn remove(&mut self, id: &MachineId) -> Option<V> {
        let slot = self.index.remove(id)?;
        self.order.remove(id);
        let bucket = &mut self.buckets[bucket_of(id)];
        if let Ok(at) = bucket.binary_search_by(|(other, _)| other.cmp(id)) {
            bucket.remove(at);
        }
        self.free.push(slot);
        self.slots[slot as usize].take()
    }

    /// Every entry, in machine-ID order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&MachineId, &V)> {
        self.order
            .iter()
            .filter_map(|(id, slot)| Some((id, self.slots[*slot as usize].as_ref()?)))
    }

    /// The entries in `buckets` of a `count`-bucket summary (`count` taken as summaries take it:
    /// [`summary_count`]), in machine-ID order: those whose bucket `b` (of [`BUCKETS`]) has `b & (count - 1)`
    /// in `buckets`. Visits only those buckets' entries; bucket numbers out of range and
    /// repeated ones add nothing.
    pub(crate) fn in_buckets(&self, buckets: &[u16], count: usize) -> Vec<(&MachineId, &V)> {
        let count = summary_count(count);
        let mut wanted = [false; BUCKETS];
        for coarse in buckets.iter().map(|b| usize::from(*b)) {
            if coarse < count {
                for fine in (coarse..BUCKETS).step_by(count) {
                    wanted[fine] = true;
                }
            }
        }
        let mut out: Vec<(&MachineId, &V)> = wanted
            .iter()
            .zip(&self.buckets)
            .filter(|(w, _)| **w)
            .flat_map(|(_, bucket)| bucket)
            .filter_map(|(id, slot)| Some((id, self.slots[*slot as usize].as_ref()?)))
            .collect();
        // Each bucket is sorted, and an ID is in one bucket only.
        out.sort_unstable_by(|a, b| a.0.cmp(b.0));
        out
    }

    /// Every ID, in order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &MachineId> {
        self.order.keys()
    }

    /// How many slots are allocated (entries plus free slots).
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;

    fn id(s: &str) -> MachineId {
        MachineId::parse(s).unwrap()
    }

    /// Slots are reused after a removal; lookups find each entry's own value and walks go in
    /// machine-ID order whatever the slots' order.
    #[test]
    fn lookups_and_walks_hold_across_removal_and_slot_reuse() {
        let mut d: Dense<u32> = Dense::default();
        for (k, v) in [("d", 1), ("b", 2), ("a", 3)] {
            assert_eq!(d.insert(id(k), v), None);
        }
        assert_eq!(d.remove(&id("b")), Some(2));
        assert_eq!(d.remove(&id("b")), None);
        assert_eq!(d.insert(id("c"), 4), None);
        *d.get_or_default(&id("e")) += 5;
        *d.get_or_default(&id("a")) += 10;
        assert_eq!(d.insert(id("d"), 6), Some(1));
        assert_eq!(d.slots(), 4, "b's slot went to c");
        let walk: Vec<(String, u32)> = d.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let expected = [("a", 13), ("c", 4), ("d", 6), ("e", 5)];
        assert_eq!(walk, expected.map(|(k, v)| (k.to_string(), v)).to_vec());
        for (k, v) in expected {
            assert_eq!(d.get(&id(k)), Some(&v));
            assert_eq!(d.get_or_default_new(&id(k)), (&mut v.clone(), false));
        }
        assert_eq!(d.get(&id("b")), None);
        assert_eq!(d.len(), 4);
        assert_eq!(d.keys().count(), 4);
        assert_eq!(d.get_or_default_new(&id("b")), (&mut 0, true));
        assert_eq!(d.len(), 5);
    }

    /// Every (count, buckets) question a summary can ask, wrong ones included: counts that are
    /// no power of two or out of range, bucket numbers beyond the count, repeats.
    pub(crate) fn bucket_questions(rng: &mut StdRng) -> (usize, Vec<u16>) {
        let count = match rng.random_range(0..4) {
            0 => 1 << rng.random_range(0..9),
            1 => rng.random_range(0..300),
            _ => 8 << rng.random_range(0..3),
        };
        let buckets = (0..rng.random_range(0..10))
            .map(|_| rng.random_range(0..count.max(1) as u16 + 3))
            .collect();
        (count, buckets)
    }

    /// The slow reference of [`Dense::in_buckets`]: the whole walk, each ID hashed, filtered.
    pub(crate) fn in_buckets_slow<'a, V>(
        all: impl Iterator<Item = (&'a MachineId, &'a V)>,
        buckets: &[u16],
        count: usize,
    ) -> Vec<(&'a MachineId, &'a V)> {
        let mask = summary_count(count) - 1;
        all.filter(|(id, _)| buckets.contains(&((bucket_of(id) & mask) as u16)))
            .collect()
    }

    /// Over random inserts, replacements, removals and slot reuse, the entries of any buckets
    /// are those a whole walk finds, in the same (machine-ID) order.
    #[test]
    fn bucket_walks_equal_the_whole_walk_filtered() {
        let mut rng = StdRng::seed_from_u64(14);
        let mut d: Dense<u32> = Dense::default();
        let mut checked = 0;
        for step in 0..4000u32 {
            let k = id(&format!("m{:03}", rng.random_range(0..300)));
            match rng.random_range(0..3) {
                0 => {
                    d.insert(k, step);
                }
                1 => *d.get_or_default(&k) += 1,
                _ => {
                    d.remove(&k);
                }
            }
            if step % 7 == 0 {
                let (count, buckets) = bucket_questions(&mut rng);
                let fast = d.in_buckets(&buckets, count);
                assert_eq!(
                    fast,
                    in_buckets_slow(d.iter(), &buckets, count),
                    "step {step}: count {count}, buckets {buckets:?}"
                );
                checked += fast.len();
            }
        }
        assert!(checked > 1000, "the questions found entries: {checked}");
        let all: Vec<u16> = (0..8).collect();
        assert_eq!(d.in_buckets(&all, 8), d.iter().collect::<Vec<_>>());
    }
}
