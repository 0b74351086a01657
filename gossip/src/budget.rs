//! A budget of refused input per peer.
//!
//! Every state update that is news costs a signature check (about 0.26 ms with fleetd's ECDSA
//! keys on a loaded host), every new certificate a chain check (about 0.35 ms), and each refusal a
//! counter and perhaps a log line. An honest peer relays almost nothing that is refused (a forged
//! update is never passed on, and an update waiting for its origin's certificate is not charged),
//! so a peer whose input keeps being refused holds a stolen key or is broken. Each peer (the
//! machine its certificate names) has a budget of [`BURST`] refusals, refilled by one every
//! [`REFILL_EVERY`]: a refused update signature, a refused certificate, or a refutation its
//! machine never vouched for ([`crate::vouch`]) spends one. While a peer's budget is spent, the
//! state updates and certificates it relays are dropped unchecked, and so are its rumours about
//! other machines (what it says about itself, its probes and acks, still count: SWIM goes on);
//! each drop is counted in [`crate::Counters::over_budget_dropped`], and one WARN per peer every
//! 10 s names it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::core::Node;
use crate::types::MachineId;

/// How many refusals a peer may cause before its input is dropped unchecked.
pub const BURST: u32 = 64;
/// A peer's budget regains one refusal this often (4 per second).
pub const REFILL_EVERY: Duration = Duration::from_millis(250);
/// How often the drops of one peer are logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// At most this many peers' budgets are tracked (full budgets are forgotten first).
const MAX_TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Budget {
    left: u32,
    /// When `left` was last refilled.
    at: Instant,
    /// When the drops were last logged.
    logged: Option<Instant>,
}

/// The budgets of the peers that had input refused lately.
#[derive(Debug, Default)]
pub(crate) struct Budgets {
    peers: BTreeMap<MachineId, Budget>,
}

impl Budgets {
    fn refilled(&mut self, peer: &MachineId, now: Instant) -> Option<&mut Budget> {
        let b = self.peers.get_mut(peer)?;
        let periods = (now.saturating_duration_since(b.at).as_nanos()
            / REFILL_EVERY.as_nanos().max(1))
        .min(u128::from(BURST)) as u32;
        if periods > 0 {
            b.left = (b.left + periods).min(BURST);
            b.at = if b.left == BURST {
                now
            } else {
                b.at + REFILL_EVERY * periods
            };
        }
        Some(b)
    }

    /// How many refusals `peer` may still cause now.
    pub(crate) fn left(&mut self, peer: &MachineId, now: Instant) -> u32 {
        self.refilled(peer, now).map_or(BURST, |b| b.left)
    }

    /// `peer` caused one refusal.
    fn spend(&mut self, peer: &MachineId, now: Instant) {
        if !self.peers.contains_key(peer) {
            if self.peers.len() >= MAX_TRACKED {
                self.prune(now);
            }
            self.peers.insert(
                peer.clone(),
                Budget {
                    left: BURST,
                    at: now,
                    logged: None,
                },
            );
        }
        if let Some(b) = self.refilled(peer, now) {
            b.left = b.left.saturating_sub(1);
        }
    }

    /// Forgets the budgets that are full again (and, if that is not enough, every budget).
    pub(crate) fn prune(&mut self, now: Instant) {
        let ids: Vec<MachineId> = self.peers.keys().cloned().collect();
        for id in ids {
            if self.left(&id, now) == BURST {
                self.peers.remove(&id);
            }
        }
        if self.peers.len() >= MAX_TRACKED {
            self.peers.clear();
        }
    }
}

impl Node {
    /// `peer` caused a refusal: it spends one of its budget.
    pub(crate) fn charge(&mut self, peer: &MachineId) {
        let now = self.now;
        self.budgets.spend(peer, now);
    }

    /// How many refusals `peer` may still cause now (0: its input is dropped unchecked).
    pub(crate) fn budget_left(&mut self, peer: &MachineId) -> u32 {
        let now = self.now;
        self.budgets.left(peer, now)
    }

    /// Drops `count` inputs of `peer` unchecked: its budget is spent.
    pub(crate) fn over_budget(&mut self, peer: &MachineId, count: u64) {
        if count == 0 {
            return;
        }
        self.counters.over_budget_dropped += count;
        let now = self.now;
        let dropped = self.counters.over_budget_dropped;
        let Some(b) = self.budgets.peers.get_mut(peer) else {
            return;
        };
        if b.logged.is_some_and(|at| now < at + LOG_EVERY) {
            return;
        }
        b.logged = Some(now);
        tracing::warn!(
            peer = %peer,
            dropped,
            "gossip from {peer} is being refused faster than its budget allows ({BURST} \
             refusals, then one per {} ms): dropping its state updates, certificates and rumours \
             about other machines unchecked",
            REFILL_EVERY.as_millis()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_budget_refills_over_time() {
        let t0 = Instant::now();
        let peer = MachineId::parse("rogue").unwrap();
        let mut b = Budgets::default();
        assert_eq!(b.left(&peer, t0), BURST);
        for _ in 0..BURST + 10 {
            b.spend(&peer, t0);
        }
        assert_eq!(b.left(&peer, t0), 0);
        assert_eq!(b.left(&peer, t0 + REFILL_EVERY / 2), 0);
        assert_eq!(b.left(&peer, t0 + REFILL_EVERY * 3), 3);
        // A partial refill keeps its remainder.
        assert_eq!(b.left(&peer, t0 + REFILL_EVERY * 7 / 2), 3);
        assert_eq!(b.left(&peer, t0 + REFILL_EVERY * 4), 4);
        assert_eq!(b.left(&peer, t0 + REFILL_EVERY * 1000), BURST);
        b.prune(t0 + REFILL_EVERY * 1000);
        assert!(b.peers.is_empty());
    }
}
