//! The updates this node still passes on (rumour mongering), outside foca's broadcast queue.
//!
//! Every state update this node makes or learns (news only) is pushed to `gossip_fanout` random
//! live members per `gossip_interval`, at most `max_transmissions` times, newest first; a newer
//! update of the same entry replaces an older one at once. Each update is encoded once, when it
//! enters; filling a datagram takes updates from the front of a queue in O(1) each, so the cost of
//! a push is proportional to what it carries, never to the backlog.
//!
//! A relayed rumour may be given an expiry ([`Outbox::add`]): past it, it is dropped, sent or not
//! ([`Outbox::expire`]), and left to anti-entropy. A burst of updates larger than the pushes can
//! carry (thousands of unit states at once) then costs each node what its pushes carry for that
//! long, not every update `max_transmissions` times for minutes after everyone has it. Updates
//! added without an expiry (this node's own, metadata, suspicion claims, vouches, certificates)
//! keep all their transmissions.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::time::Instant;

use hashbrown::HashTable;

use crate::store::{EntryKey, Update};
use crate::types::MachineId;

type Key = (MachineId, EntryKey);

struct Pending {
    /// The entry it updates.
    key: Key,
    /// The key's hash, by which the index finds this slot again (to remove it, or to move it
    /// when the index grows) without hashing or comparing the key.
    hash: u64,
    /// The update, postcard-encoded.
    bytes: Vec<u8>,
    stamp: crate::types::Stamp,
    remaining: u8,
    /// How many times it went out.
    sent: u8,
    /// Tells a live queue slot from one left behind by a replaced update.
    seq: u64,
}

/// Updates waiting to be pushed, each a bounded number of times.
///
/// The pending updates live in `slots`; the queue and the expiry list name them by slot and
/// sequence number, so a push round neither hashes nor clones an entry's key (only an update's
/// arrival and its last transmission or expiry touch the index). The index holds slot numbers
/// only: an arrival hashes its key once and compares it with a held key only where the hashes
/// match; a removal finds its slot by the hash it kept and compares slot numbers.
#[derive(Default)]
pub(crate) struct Outbox {
    index: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    slots: Vec<Option<Pending>>,
    /// Slots free for reuse.
    free: Vec<u32>,
    queue: VecDeque<(u32, u64)>,
    seq: u64,
    /// The rumours with an expiry, in the order they came (so by expiry: every one is given the
    /// same wait).
    expiring: VecDeque<(u32, u64, Instant)>,
    /// When this node last asked for a repair (an anti-entropy exchange after dropping rumours).
    pub(crate) repaired_at: Option<Instant>,
    /// Until when it asks for repairs (a while after it last dropped rumours).
    pub(crate) repair_until: Option<Instant>,
}

/// `update`'s postcard encoding, in a vector of its size (encoding straight into a vector grows it
/// several times for an update of a hundred bytes).
fn encode(update: &Update) -> Vec<u8> {
    let mut buf = [0u8; 1024];
    match postcard::to_slice(update, &mut buf) {
        Ok(bytes) => bytes.to_vec(),
        Err(_) => postcard::to_allocvec(update).expect("encoding to a Vec cannot fail"),
    }
}

impl Outbox {
    /// How many updates wait.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The pending update in `slot` if it is still the one of sequence number `seq`.
    fn live(&mut self, slot: u32, seq: u64) -> Option<&mut Pending> {
        self.slots
            .get_mut(slot as usize)
            .and_then(Option::as_mut)
            .filter(|p| p.seq == seq)
    }

    /// Removes the pending update in `slot`.
    fn remove(&mut self, slot: u32) {
        if let Some(p) = self.slots[slot as usize].take() {
            if let Ok(entry) = self.index.find_entry(p.hash, |s| *s == slot) {
                entry.remove();
            }
            self.free.push(slot);
        }
    }

    /// Adds an update to pass on `transmissions` times, until `expires` if given (it replaces an
    /// older update of the same entry; an older or equal one is ignored). Expiries must come in
    /// increasing order.
    pub(crate) fn add(&mut self, update: &Update, transmissions: u8, expires: Option<Instant>) {
        let key = (update.origin.clone(), update.entry.key());
        let hash = self.hasher.hash_one(&key);
        let slots = &self.slots;
        let held = self
            .index
            .find(hash, |s| {
                slots[*s as usize].as_ref().is_some_and(|p| p.key == key)
            })
            .copied();
        if let Some(slot) = held {
            let p = self.slots[slot as usize].as_ref().expect("indexed slot");
            if p.stamp >= update.stamp {
                return;
            }
        }
        self.seq += 1;
        let pending = Pending {
            key,
            hash,
            bytes: encode(update),
            stamp: update.stamp,
            remaining: transmissions.max(1),
            sent: 0,
            seq: self.seq,
        };
        let slot = match held {
            // A newer update of the same entry takes the older one's slot (its queue and
            // expiry places go stale: their sequence number is the older one's).
            Some(slot) => slot,
            None => {
                let slot = match self.free.pop() {
                    Some(slot) => slot,
                    None => {
                        self.slots.push(None);
                        (self.slots.len() - 1) as u32
                    }
                };
                let slots = &self.slots;
                self.index.insert_unique(hash, slot, |s| {
                    slots[*s as usize].as_ref().expect("indexed slot").hash
                });
                slot
            }
        };
        self.slots[slot as usize] = Some(pending);
        if let Some(at) = expires {
            self.expiring.push_back((slot, self.seq, at));
        }
        // Fresh news goes first.
        self.queue.push_front((slot, self.seq));
    }

    /// Drops the rumours whose expiry is past `now`, sent or not. Returns how many of them had
    /// gone out fewer times than they had left (a backlog: others likely lack them). O(1) per
    /// rumour over its life.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        while let Some((_, _, at)) = self.expiring.front() {
            if *at > now {
                break;
            }
            let (slot, seq, _) = self.expiring.pop_front().expect("just seen");
            if let Some(p) = self.live(slot, seq) {
                if p.sent < p.remaining {
                    dropped += 1;
                }
                self.remove(slot);
            }
        }
        // Slots of dropped or replaced updates leave the queue when they reach its front; under a
        // sustained burst the front is all fresh news, so clear them out now and then.
        if self.queue.len() > 2 * self.len() + 64 {
            let slots = &self.slots;
            self.queue.retain(|(slot, seq)| {
                slots[*slot as usize]
                    .as_ref()
                    .is_some_and(|p| p.seq == *seq)
            });
        }
        self.release_if_empty();
        dropped
    }

    /// Takes updates for one datagram: at most `room` bytes of encoded updates. Returns their
    /// concatenated encodings and how many there are. Each taken update counts one transmission.
    pub(crate) fn fill(&mut self, room: usize) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut count = 0;
        // The updates passed on go behind the fresher ones; the queue's first `limit` slots are
        // the ones looked at, so those put back at its end are not seen again in this round.
        let limit = self.queue.len();
        for _ in 0..limit {
            let Some((slot, seq)) = self.queue.pop_front() else {
                break;
            };
            let Some(p) = self.live(slot, seq) else {
                continue; // replaced by a newer update, or done
            };
            if out.len() + p.bytes.len() > room {
                self.queue.push_back((slot, seq));
                // One that does not fit ends the datagram (most updates are about the same size).
                break;
            }
            out.extend_from_slice(&p.bytes);
            count += 1;
            p.remaining -= 1;
            p.sent = p.sent.saturating_add(1);
            if p.remaining == 0 {
                self.remove(slot);
            } else {
                self.queue.push_back((slot, seq));
            }
        }
        self.release_if_empty();
        (out, count)
    }

    /// Gives back the room of an outbox that emptied after a burst (a join or a merge passes on
    /// an update per member; the vectors kept that room for good): with nothing pending, whatever
    /// the queue and the expiry list still name is stale, and the slot numbers start again.
    fn release_if_empty(&mut self) {
        if self.index.is_empty() && self.slots.capacity() > crate::core::QUEUE_ROOM_KEPT {
            self.slots = Vec::new();
            self.free = Vec::new();
            self.queue = VecDeque::new();
            self.expiring = VecDeque::new();
            self.index = HashTable::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Entry;
    use crate::types::{Metadata, Stamp};

    fn update(origin: &str, version: u64, unit: &str) -> Update {
        Update {
            origin: MachineId::parse(origin).unwrap(),
            stamp: Stamp { epoch: 1, version },
            entry: if unit.is_empty() {
                Entry::Metadata(Metadata::default())
            } else {
                Entry::Unit {
                    name: unit.into(),
                    state: None,
                }
            },
            signature: Vec::new(),
        }
    }

    /// Fills datagrams of `room` bytes until the outbox is empty: every update sent, decoded.
    fn drain(o: &mut Outbox, room: usize) -> Vec<Update> {
        let mut sent = Vec::new();
        while !o.is_empty() {
            let (bytes, n) = o.fill(room);
            let mut rest = &bytes[..];
            for _ in 0..n {
                let (u, r): (Update, _) = postcard::take_from_bytes(rest).unwrap();
                rest = r;
                sent.push(u);
            }
            assert!(rest.is_empty(), "{} bytes past the updates", rest.len());
        }
        sent
    }

    #[test]
    fn each_update_goes_out_a_bounded_number_of_times_and_newer_replaces_older() {
        let mut o = Outbox::default();
        o.add(&update("a", 1, "x"), 2, None);
        o.add(&update("a", 2, "x"), 2, None);
        o.add(&update("a", 1, "x"), 2, None);
        assert_eq!(o.len(), 1);
        let mut sent = 0;
        while !o.is_empty() {
            let (bytes, n) = o.fill(1000);
            assert!(n > 0 && !bytes.is_empty());
            let decoded: Update = postcard::take_from_bytes(&bytes).unwrap().0;
            assert_eq!(decoded.stamp.version, 2);
            sent += n;
        }
        assert_eq!(sent, 2);
    }

    #[test]
    fn a_datagram_holds_what_fits_and_the_rest_waits() {
        let mut o = Outbox::default();
        for i in 0..50 {
            o.add(&update("a", i + 1, &format!("unit-{i}.service")), 1, None);
        }
        let (bytes, n) = o.fill(300);
        assert!(
            bytes.len() <= 300 && n >= 5,
            "{} bytes, {n} updates",
            bytes.len()
        );
        let mut total = n;
        while !o.is_empty() {
            total += o.fill(300).1;
        }
        assert_eq!(total, 50);
    }

    #[test]
    fn a_rumour_with_an_expiry_is_dropped_past_it_and_one_without_is_kept() {
        let t0 = Instant::now();
        let later = t0 + std::time::Duration::from_secs(1);
        let mut o = Outbox::default();
        o.add(&update("a", 1, "own.service"), 12, None);
        o.add(&update("b", 1, "relayed.service"), 12, Some(later));
        o.add(&update("b", 2, "claim"), 12, None);
        assert_eq!(o.expire(t0), 0);
        assert_eq!(o.len(), 3);
        // Sent once each: the expiring one is still dropped at its expiry.
        let (_, n) = o.fill(1000);
        assert_eq!(n, 3);
        assert_eq!(o.expire(later), 1);
        assert_eq!(o.len(), 2);
        let left: Vec<String> = drain(&mut o, 1000)
            .iter()
            .map(|u| u.origin.to_string())
            .collect();
        assert!(left.iter().all(|o| o == "a" || o == "b"));
        assert_eq!(left.len(), 22, "11 more of each: never dropped");
    }

    #[test]
    fn a_replaced_rumour_expires_with_its_replacement_only() {
        let t0 = Instant::now();
        let s = std::time::Duration::from_secs(1);
        let mut o = Outbox::default();
        o.add(&update("b", 1, "x"), 12, Some(t0 + s));
        o.add(&update("b", 2, "x"), 12, Some(t0 + 2 * s));
        assert_eq!(o.expire(t0 + s), 0, "the older one was replaced");
        assert_eq!(o.len(), 1);
        assert_eq!(o.expire(t0 + 2 * s), 1);
        assert!(o.is_empty());
    }

    /// A burst's room is given back once everything went out, and the outbox works on after it: each
    /// later update goes out its times, an expired one does not.
    #[test]
    fn an_outbox_emptied_after_a_burst_gives_its_room_back() {
        let mut o = Outbox::default();
        let t0 = Instant::now();
        for i in 0..2_000u64 {
            o.add(&update(&format!("m{i}"), 1, "web.service"), 3, Some(t0));
        }
        assert!(o.slots.capacity() >= 2_000);
        assert_eq!(drain(&mut o, 1400).len(), 6_000, "each update three times");
        assert_eq!(o.slots.capacity(), 0, "the burst's slots were kept");
        assert_eq!(
            o.queue.capacity() + o.expiring.capacity() + o.free.capacity(),
            0
        );
        // After it: two updates with a later expiry, one sent twice before it passes.
        let t1 = t0 + std::time::Duration::from_secs(1);
        o.add(&update("a", 2, "x.service"), 2, Some(t1));
        o.add(&update("b", 2, "y.service"), 4, Some(t1));
        let (_, n) = o.fill(1400);
        assert_eq!(n, 2);
        assert_eq!(o.expire(t1), 1, "b had gone out once of its four times");
        assert!(o.is_empty());
        o.add(&update("c", 3, "z.service"), 2, None);
        let sent = drain(&mut o, 1400);
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|u| u.origin.as_str() == "c"));
    }

    /// Many entries, updated in a random order, some sent and done in between: the outbox holds
    /// one update per entry that has not gone out its times, always the newest that came.
    #[test]
    fn the_index_finds_each_entry_and_only_it() {
        use std::collections::BTreeMap;
        let mut o = Outbox::default();
        // (origin, unit) -> the newest version added since the last drain.
        let mut newest: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 1..=20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (origin, unit) = (format!("m{}", x % 13), format!("u{}", (x >> 8) % 40));
            let version = step + 2 - (x >> 20) % 3;
            o.add(&update(&origin, version, &unit), 1, None);
            let v = newest.entry((origin, unit)).or_default();
            *v = (*v).max(version);
            if step % 1_000 == 0 {
                // Everything goes out once, and is done.
                let mut out = BTreeMap::new();
                for u in drain(&mut o, 1400) {
                    let Entry::Unit { name, .. } = u.entry else {
                        panic!("a unit update")
                    };
                    let first = out.insert((u.origin.to_string(), name), u.stamp.version);
                    assert!(first.is_none(), "an entry went out twice");
                }
                let expected = std::mem::take(&mut newest);
                assert_eq!(out, expected, "step {step}");
            }
        }
    }

    /// A sustained burst: every round brings more news than a datagram carries, and the older
    /// rumours expire. The queue keeps no more than a bounded number of dead slots.
    #[test]
    fn dropped_rumours_do_not_pile_up_in_the_queue() {
        let t0 = Instant::now();
        let wait = std::time::Duration::from_millis(1000);
        let mut o = Outbox::default();
        let mut v = 0;
        for round in 0..600u64 {
            let now = t0 + std::time::Duration::from_millis(100 * round);
            for _ in 0..100 {
                v += 1;
                o.add(&update("b", v, &format!("u{v}")), 12, Some(now + wait));
            }
            o.expire(now);
            for _ in 0..3 {
                o.fill(1000);
            }
            assert!(o.len() <= 1100, "round {round}: {} pending", o.len());
            assert!(
                o.queue.len() <= 2 * o.len() + 64 + 100,
                "round {round}: {} slots for {} pending",
                o.queue.len(),
                o.len()
            );
        }
    }
}
