//! A map keyed by machine ID for the hot paths: every datagram, membership update, push and sync
//! delta looks members and origins up by machine ID. Each entry has a slot (a small integer,
//! reused after the entry is removed) found through a hash index: one hash of the ID and one
//! comparison, where a B-tree search makes a dozen string comparisons, each a cache miss, at 1,000
//! entries. Walks go in machine-ID order through an ordered map of slots, so that a seeded run
//! makes the same choices every time; the hash index is never walked.

use std::collections::{BTreeMap, HashMap};

use crate::types::MachineId;

#[derive(Debug)]
pub(crate) struct Dense<V> {
    slots: Vec<Option<V>>,
    free: Vec<u32>,
    index: HashMap<MachineId, u32, foldhash::fast::RandomState>,
    order: BTreeMap<MachineId, u32>,
}

impl<V> Default for Dense<V> {
    fn default() -> Self {
        Dense {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::default(),
            order: BTreeMap::new(),
        }
    }
}

impl<V> Dense<V> {
    pub(crate) fn get(&self, id: &MachineId) -> Option<&V> {
        let slot = *self.index.get(id)?;
        self.slots[slot as usize].as_ref()
    }

    pub(crate) fn contains_key(&self, id: &MachineId) -> bool {
        self.index.contains_key(id)
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
        self.index.insert(id.clone(), slot);
        self.order.insert(id, slot);
        None
    }

    /// `id`'s value, inserted as the default if absent (the ID is cloned only then).
    pub(crate) fn get_or_default(&mut self, id: &MachineId) -> &mut V
    where
        V: Default,
    {
        let slot = match self.index.get(id).copied() {
            Some(slot) => slot,
            None => {
                self.insert(id.clone(), V::default());
                self.index[id]
            }
        };
        self.slots[slot as usize].get_or_insert_with(V::default)
    }

    /// Removes `id`'s entry (its slot is reused), returning its value.
    pub(crate) fn remove(&mut self, id: &MachineId) -> Option<V> {
        let slot = self.index.remove(id)?;
        self.order.remove(id);
        self.free.push(slot);
        self.slots[slot as usize].take()
    }

    /// Every entry, in machine-ID order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&MachineId, &V)> {
        self.order
            .iter()
            .filter_map(|(id, slot)| Some((id, self.slots[*slot as usize].as_ref()?)))
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
mod tests {
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
            assert!(d.contains_key(&id(k)));
        }
        assert_eq!(d.get(&id("b")), None);
        assert_eq!(d.len(), 4);
        assert_eq!(d.keys().count(), 4);
    }
}
