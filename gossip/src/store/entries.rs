//! An origin's entries: its unit entries by name ([`UnitMap`]), how a remote value of its
//! metadata is taken in, and how its `synced` stamp follows the versions that come in.

use std::sync::Arc;

use super::{Change, OriginData, MAX_PENDING};
use crate::types::{Metadata, Stamp};

impl OriginData {
    /// Takes in the origin's metadata `m` at `stamp` unless the one held is as new; `copy` makes
    /// the copy to hold (a value equal to the one held keeps that one, which views share). Returns
    /// whether it was news.
    pub(super) fn take_metadata(
        &mut self,
        stamp: Stamp,
        m: &Metadata,
        sig: Vec<u8>,
        changes: &mut Vec<Change>,
        copy: impl FnOnce() -> Arc<Metadata>,
    ) -> bool {
        if self.metadata.as_ref().is_some_and(|(s, _, _)| *s >= stamp) {
            return false;
        }
        let differs = self.metadata() != Some(m);
        let kept = match self.metadata.take() {
            Some((_, old, _)) if !differs => old,
            _ => copy(),
        };
        self.touch();
        self.metadata = Some((stamp, kept, sig));
        if differs {
            changes.push(Change::Metadata);
        }
        true
    }

    /// Records that version `v` of the current epoch is here; advances `synced` over every
    /// contiguous version.
    pub(super) fn received(&mut self, v: u64) {
        if v <= self.synced.version {
            return;
        }
        if v == self.synced.version + 1 {
            self.touch();
            self.synced.version = v;
            self.take_pending();
        } else if self.pending.len() < MAX_PENDING {
            if let Err(at) = self.pending.binary_search_by(|p| v.cmp(p)) {
                self.pending.insert(at, v);
            }
        }
    }

    /// Raises `synced` over the pending versions that follow it.
    fn take_pending(&mut self) {
        while self.pending.last() == Some(&(self.synced.version + 1)) {
            self.pending.pop();
            self.synced.version += 1;
        }
    }

    pub(super) fn raise_synced(&mut self, to: Stamp) {
        if to > self.synced && to.epoch == self.epoch {
            self.touch();
            self.synced = to;
            self.pending.retain(|v| *v > to.version);
            self.take_pending();
        }
    }
}

/// A map from unit name to `V`, kept as a vector sorted by name.
///
/// Every node keeps one per machine of the cluster, so its footprint counts n² times across a
/// simulated cluster (and n times in each fleetd). A `BTreeMap`'s first leaf has room for eleven
/// entries: about 1.2 kB for an origin's unit entries even when the machine runs one unit. This
/// vector holds what it holds, with at most a quarter more room. Lookups are binary searches; an
/// insertion moves the entries after it, which is cheap for the tens to hundreds of units a
/// machine runs.
///
/// Each entry keeps the first eight bytes of its name inline ([`prefix`]), in the room a `String`
/// takes beyond a `Box<str>`: a search compares those integers and reads a name's bytes (another
/// allocation, a cache miss in a large cluster) only where two prefixes are equal.
#[derive(Debug, Clone)]
pub(crate) struct UnitMap<V> {
    entries: Vec<(u64, Box<str>, V)>,
}

/// The first eight bytes of `name`, big-endian, padded with zeros: integers that order as the
/// names do wherever they differ (a zero pad sorts before any byte, as a shorter name sorts before
/// a longer one it begins), and that are equal only if the names' first eight bytes (or the whole
/// shorter names) are.
fn prefix(name: &str) -> u64 {
    let mut bytes = [0u8; 8];
    let n = name.len().min(8);
    bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
    u64::from_be_bytes(bytes)
}

impl<V> Default for UnitMap<V> {
    fn default() -> Self {
        UnitMap {
            entries: Vec::new(),
        }
    }
}

impl<V> UnitMap<V> {
    fn find(&self, name: &str) -> Result<usize, usize> {
        let key = prefix(name);
        self.entries
            .binary_search_by(|(p, n, _)| p.cmp(&key).then_with(|| (**n).cmp(name)))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&V> {
        self.find(name).ok().map(|i| &self.entries[i].2)
    }

    /// Sets `name` to `value`; returns the value it replaces, if any.
    pub(crate) fn insert(&mut self, name: &str, value: V) -> Option<V> {
        match self.find(name) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].2, value)),
            Err(i) => {
                if self.entries.len() == self.entries.capacity() {
                    self.entries.reserve_exact(1 + self.entries.len() / 4);
                }
                self.entries.insert(i, (prefix(name), name.into(), value));
                None
            }
        }
    }

    /// The entries in name order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.entries.iter().map(|(_, n, v)| (&**n, v))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, _, v)| v)
    }

    /// Drops every entry and the room they took.
    pub(crate) fn clear(&mut self) {
        self.entries = Vec::new();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

impl<'a, V> IntoIterator for &'a UnitMap<V> {
    type Item = (&'a str, &'a V);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (u64, Box<str>, V)>,
        fn(&'a (u64, Box<str>, V)) -> (&'a str, &'a V),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(_, n, v)| (&**n, v))
    }
}

#[cfg(test)]
mod tests {
    use super::UnitMap;
    use std::collections::BTreeMap;

    /// The same operations on a `UnitMap` and a `BTreeMap` give the same answers and contents, in
    /// the same order; the room taken stays within a quarter of the entries (plus one).
    #[test]
    fn behaves_like_a_btree_map_with_little_room_to_spare() {
        let mut ours: UnitMap<u64> = UnitMap::default();
        let mut reference: BTreeMap<String, u64> = BTreeMap::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Names that differ in their first eight bytes, that share them (the longer
            // ones), that are shorter than eight, that begin others, and that hold a NUL (a
            // peer's bytes: the prefix pads with zeros).
            let name = |k: u64| match k % 5 {
                0 => format!("u{}.service", k % 700),
                1 => format!("web@.service{}", k % 300),
                2 => format!("a{}", k % 50),
                3 => format!("a{}\0", k % 50),
                _ => format!("a\0{}", k % 50),
            };
            let (name, probe) = (name(x >> 3), name(x >> 23));
            assert_eq!(ours.insert(&name, step), reference.insert(name, step));
            assert_eq!(ours.get(&probe), reference.get(&probe));
            if step % 1_000 == 999 {
                let expected = || reference.iter().map(|(n, v)| (n.as_str(), v));
                assert!(ours.iter().eq(expected()));
                assert!(ours.values().eq(reference.values()));
                assert!((&ours).into_iter().eq(expected()));
                assert!(ours.entries.capacity() <= ours.len() + 1 + ours.len() / 4);
            }
        }
        ours.clear();
        assert_eq!(ours.iter().count(), 0);
        assert_eq!(ours.entries.capacity(), 0);
    }
}
