//! The updates this node still passes on (rumour mongering), outside foca's broadcast queue.
//!
//! Every state update this node makes or learns (news only) is pushed to `gossip_fanout` random
//! live members per `gossip_interval`, at most `max_transmissions` times, newest first; a newer
//! update of the same entry replaces an older one at once. Each update is encoded once, when it
//! enters; filling a datagram takes updates from the front of a queue in O(1) each, so the cost of
//! a push is proportional to what it carries, never to the backlog.

use std::collections::{HashMap, VecDeque};

use crate::store::{EntryKey, Update};
use crate::types::MachineId;

struct Pending {
    /// The update, postcard-encoded.
    bytes: Vec<u8>,
    stamp: crate::types::Stamp,
    remaining: u8,
    /// Tells a live queue slot from one left behind by a replaced update.
    seq: u64,
}

/// Updates waiting to be pushed, each a bounded number of times.
#[derive(Default)]
pub(crate) struct Outbox {
    pending: HashMap<(MachineId, EntryKey), Pending>,
    queue: VecDeque<((MachineId, EntryKey), u64)>,
    seq: u64,
}

impl Outbox {
    /// How many updates wait.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Adds an update to pass on `transmissions` times (it replaces an older update of the same
    /// entry; an older or equal one is ignored).
    pub(crate) fn add(&mut self, update: &Update, transmissions: u8) {
        let key = (update.origin.clone(), update.entry.key());
        if self
            .pending
            .get(&key)
            .is_some_and(|p| p.stamp >= update.stamp)
        {
            return;
        }
        self.seq += 1;
        let bytes = postcard::to_allocvec(update).expect("encoding to a Vec cannot fail");
        self.pending.insert(
            key.clone(),
            Pending {
                bytes,
                stamp: update.stamp,
                remaining: transmissions.max(1),
                seq: self.seq,
            },
        );
        // Fresh news goes first.
        self.queue.push_front((key, self.seq));
    }

    /// Takes updates for one datagram: at most `room` bytes of encoded updates. Returns their
    /// concatenated encodings and how many there are. Each taken update counts one transmission.
    pub(crate) fn fill(&mut self, room: usize) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut count = 0;
        let mut requeue = Vec::new();
        let mut looked = 0;
        let limit = self.queue.len();
        while looked < limit {
            let Some((key, seq)) = self.queue.pop_front() else {
                break;
            };
            looked += 1;
            let Some(p) = self.pending.get_mut(&key).filter(|p| p.seq == seq) else {
                continue; // replaced by a newer update, or done
            };
            if out.len() + p.bytes.len() > room {
                requeue.push((key, seq));
                // One that does not fit ends the datagram (most updates are about the same size).
                break;
            }
            out.extend_from_slice(&p.bytes);
            count += 1;
            p.remaining -= 1;
            if p.remaining == 0 {
                self.pending.remove(&key);
            } else {
                requeue.push((key, seq));
            }
        }
        // Passed on: behind the fresher ones.
        self.queue.extend(requeue);
        (out, count)
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

    #[test]
    fn each_update_goes_out_a_bounded_number_of_times_and_newer_replaces_older() {
        let mut o = Outbox::default();
        o.add(&update("a", 1, "x"), 2);
        o.add(&update("a", 2, "x"), 2);
        o.add(&update("a", 1, "x"), 2);
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
            o.add(&update("a", i + 1, &format!("unit-{i}.service")), 1);
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
}
