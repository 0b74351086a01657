//! The in-memory etcd: claim keys, machine announcements and leases, with revisions and the agents'
//! transactions.
//!
//! Only what the agents read is modelled: one claim key per unit (`claims/<unit>`: holder, lease, the
//! previous holder of a handover, `mod_revision`), one announcement per machine (`machines/<id>`, bound to
//! the machine's lease, with the address of the agent that wrote it), leases with a TTL that keep-alives
//! extend and that expire (deleting their keys), and one global revision. Agents' registry mirrors lag
//! behind: each reads the keys *as of* its own revision, so the store keeps the recent history of every
//! key ([`Etcd::claim_at`], [`Etcd::compact`]).
//!
//! The transactions are the agent's: create-if-absent, supersede (recording the handover), rebind,
//! release and acknowledge, each comparing the claim's `mod_revision`; a put needs a live lease, as in
//! etcd. `LeaseTimeToLive` answers whole seconds, truncated, and `-1` for a lease that is gone. When
//! etcd regains a leader after an outage, every lease is extended by its TTL (etcd's lessor does this on
//! promotion). Outages, latency and reachability are the caller's.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

/// A claim key's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The claiming machine (index).
    pub machine: u32,
    /// The lease it is bound to.
    pub lease: i64,
    /// Revision of its last change.
    pub mod_revision: i64,
    /// A handover in progress: the previous holder and its lease.
    pub handoff: Option<(u32, i64)>,
}

/// A machine's announcement (`machines/<id>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The lease it is bound to.
    pub lease: i64,
    /// Which agent wrote it (its address: a second agent with the same machine ID has another one).
    pub addr: u32,
    /// The key's `create_revision` (its place in the witness committee's line).
    pub created: i64,
}

#[derive(Clone, Debug)]
struct Lease {
    /// Server time (µs) at which it expires.
    expires_at: u64,
    ttl: u64,
    claims: BTreeSet<u32>,
    /// The machine whose announcement is bound to it.
    announces: Option<u32>,
}

/// Operation counters.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct EtcdOps {
    /// Claim transactions that succeeded.
    pub txn_ok: u64,
    /// Claim transactions whose compare failed (or whose lease was gone).
    pub txn_failed: u64,
    /// Lease grants.
    pub lease_grants: u64,
    /// Lease keep-alives answered.
    pub keepalives: u64,
    /// `LeaseTimeToLive` requests answered.
    pub ttl_polls: u64,
    /// Leases that expired (their keys deleted).
    pub lease_expiries: u64,
    /// Machine announcements written.
    pub announces: u64,
    /// Announcements refused because another agent's live announcement holds the machine ID.
    pub identity_conflicts: u64,
    /// Requests lost to an outage, a partition from etcd, loss, or the client's timeout.
    pub unavailable: u64,
    /// Watch batches delivered to agents (one per agent per change batch).
    pub watch_deliveries: u64,
}

/// One change of the announcement log: (revision, machine, new value).
pub type AnnounceChange = (i64, u32, Option<Announcement>);

/// Another agent's live announcement holds the machine ID (or the lease is gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused;

/// What a claim transaction does (the verdicts of `fleet_decide::unit::decide`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Txn {
    /// Create the claim if absent.
    Claim,
    /// Take it over at `seen`, recording the holder `from` (machine, lease).
    Supersede {
        /// The revision the taker saw.
        seen: i64,
        /// The holder taken over from.
        from: (u32, i64),
    },
    /// Bind our claim to our current lease, at `seen`.
    Rebind {
        /// The revision seen.
        seen: i64,
    },
    /// Delete our claim at `seen`.
    Release {
        /// The revision seen.
        seen: i64,
    },
    /// Clear the handover of a claim taken from us, at `seen`.
    Ack {
        /// The revision seen.
        seen: i64,
    },
}

/// The etcd state.
#[derive(Debug, Default)]
pub struct Etcd {
    revision: i64,
    claims: Vec<Option<Claim>>,
    /// Per unit, its changes after the compaction point: (revision, value from then on), oldest first;
    /// `base` is its value at the compaction point.
    history: Vec<Vec<(i64, Option<Claim>)>>,
    base: Vec<Option<Claim>>,
    /// Units with history entries (to compact them without scanning every unit).
    dirty: BTreeSet<u32>,
    compacted: i64,
    by_machine: BTreeMap<u32, BTreeSet<u32>>,
    by_handoff: BTreeMap<u32, BTreeSet<u32>>,
    announcements: BTreeMap<u32, Announcement>,
    /// Every announcement change.
    announce_log: Vec<AnnounceChange>,
    leases: BTreeMap<i64, Lease>,
    /// The machine each lease was granted to.
    granted: HashMap<i64, u32>,
    next_lease: i64,
    /// Counters.
    pub ops: EtcdOps,
}

impl Etcd {
    /// An etcd holding `units` unit records and no claims.
    pub fn new(units: usize) -> Etcd {
        Etcd {
            revision: 1,
            claims: vec![None; units],
            history: vec![Vec::new(); units],
            base: vec![None; units],
            compacted: 1,
            next_lease: 0x1000,
            ..Default::default()
        }
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The claim of `unit` now.
    pub fn claim(&self, unit: u32) -> Option<Claim> {
        self.claims[unit as usize]
    }

    /// The claim of `unit` as of revision `rev` (what a mirror at `rev` holds). Revisions older than the
    /// last compaction read as the compaction point.
    pub fn claim_at(&self, unit: u32, rev: i64) -> Option<Claim> {
        let h = &self.history[unit as usize];
        match h.iter().rposition(|(r, _)| *r <= rev) {
            Some(i) => h[i].1,
            None if h.is_empty() => self.claims[unit as usize],
            None => self.base[unit as usize],
        }
    }

    /// Forgets history older than `rev` (no mirror is older).
    pub fn compact(&mut self, rev: i64) {
        if rev <= self.compacted {
            return;
        }
        self.compacted = rev;
        let dirty = std::mem::take(&mut self.dirty);
        for u in dirty {
            let h = &mut self.history[u as usize];
            let keep = h.iter().rposition(|(r, _)| *r <= rev);
            if let Some(i) = keep {
                self.base[u as usize] = h[i].1;
                h.drain(..=i);
            }
            if !h.is_empty() {
                self.dirty.insert(u);
            }
        }
    }

    /// Units held by `machine` now.
    pub fn claims_of(&self, machine: u32) -> impl Iterator<Item = u32> + '_ {
        self.by_machine.get(&machine).into_iter().flatten().copied()
    }

    /// Units whose claim records `machine` as the previous holder of a handover, now.
    pub fn handoffs_from(&self, machine: u32) -> impl Iterator<Item = u32> + '_ {
        self.by_handoff.get(&machine).into_iter().flatten().copied()
    }

    /// The announcement changes from position `from` of the log up to revision `rev`: (new position,
    /// changes).
    pub fn announcements_since(&self, from: usize, rev: i64) -> (usize, &[AnnounceChange]) {
        let log = &self.announce_log[from.min(self.announce_log.len())..];
        let n = log.iter().take_while(|(r, _, _)| *r <= rev).count();
        (from + n, &log[..n])
    }

    /// Every announcement now.
    pub fn announcements(&self) -> &BTreeMap<u32, Announcement> {
        &self.announcements
    }

    /// The announcement of `machine` now.
    pub fn announcement(&self, machine: u32) -> Option<Announcement> {
        self.announcements.get(&machine).copied()
    }

    /// Whether `lease` exists now.
    pub fn lease_alive(&self, lease: i64) -> bool {
        self.leases.contains_key(&lease)
    }

    /// The machine that was granted `lease` (any lease ever granted).
    pub fn lease_owner(&self, lease: i64) -> Option<u32> {
        self.granted.get(&lease).copied()
    }

    fn bump(&mut self) -> i64 {
        self.revision += 1;
        self.revision
    }

    fn set_claim(&mut self, unit: u32, value: Option<Claim>) {
        let old = self.claims[unit as usize];
        if let Some(c) = old {
            if let Some(s) = self.by_machine.get_mut(&c.machine) {
                s.remove(&unit);
            }
            if let Some((h, _)) = c.handoff {
                if let Some(s) = self.by_handoff.get_mut(&h) {
                    s.remove(&unit);
                }
            }
            if let Some(l) = self.leases.get_mut(&c.lease) {
                l.claims.remove(&unit);
            }
        }
        if let Some(c) = value {
            self.by_machine.entry(c.machine).or_default().insert(unit);
            if let Some((h, _)) = c.handoff {
                self.by_handoff.entry(h).or_default().insert(unit);
            }
            if let Some(l) = self.leases.get_mut(&c.lease) {
                l.claims.insert(unit);
            }
        }
        self.claims[unit as usize] = value;
        self.history[unit as usize].push((self.revision, value));
        self.dirty.insert(unit);
    }

    /// Grants a lease of `ttl` µs to `machine` at server time `now`.
    pub fn grant(&mut self, machine: u32, ttl: u64, now: u64) -> i64 {
        self.ops.lease_grants += 1;
        self.next_lease += 1;
        let id = self.next_lease;
        self.granted.insert(id, machine);
        self.leases.insert(
            id,
            Lease {
                expires_at: now + ttl,
                ttl,
                claims: BTreeSet::new(),
                announces: None,
            },
        );
        id
    }

    /// Keeps `lease` alive at server time `now`; `false` if it is gone (expired or revoked).
    pub fn keepalive(&mut self, lease: i64, now: u64) -> bool {
        match self.leases.get_mut(&lease) {
            Some(l) if l.expires_at > now => {
                l.expires_at = now + l.ttl;
                self.ops.keepalives += 1;
                true
            }
            _ => false,
        }
    }

    /// `LeaseTimeToLive` at server time `now`: (remaining whole seconds, truncated; granted seconds), or
    /// `None` for a lease that is gone (etcd's `TTL: -1`).
    pub fn time_to_live(&mut self, lease: i64, now: u64) -> Option<(i64, i64)> {
        self.ops.ttl_polls += 1;
        let l = self.leases.get(&lease)?;
        let remaining = l.expires_at.saturating_sub(now);
        Some(((remaining / 1_000_000) as i64, (l.ttl / 1_000_000) as i64))
    }

    /// Extends every lease by its TTL from `now` (a new leader was elected).
    pub fn promote(&mut self, now: u64) {
        for l in self.leases.values_mut() {
            l.expires_at = l.expires_at.max(now + l.ttl);
        }
    }

    /// Expires every lease due at `now`; returns whether any key changed.
    pub fn expire(&mut self, now: u64) -> bool {
        let due: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut changed = false;
        for id in due {
            self.ops.lease_expiries += 1;
            changed |= self.drop_lease(id);
        }
        changed
    }

    /// Revokes `lease` (its keys go at once).
    pub fn revoke(&mut self, lease: i64) -> bool {
        self.drop_lease(lease)
    }

    fn drop_lease(&mut self, id: i64) -> bool {
        let Some(l) = self.leases.remove(&id) else {
            return false;
        };
        if l.claims.is_empty() && l.announces.is_none() {
            return false;
        }
        self.bump();
        for unit in l.claims {
            self.set_claim(unit, None);
        }
        if let Some(m) = l.announces {
            if self.announcements.get(&m).is_some_and(|a| a.lease == id) {
                self.announcements.remove(&m);
                self.announce_log.push((self.revision, m, None));
            }
        }
        true
    }

    /// Writes `machines/<id>` for `machine` under `lease`, unless another agent (another address)
    /// announced the same machine ID under a live lease. `Ok(revision)` or `Err(())` on that conflict or
    /// a lease that is gone.
    pub fn announce(&mut self, machine: u32, lease: i64, addr: u32) -> Result<i64, Refused> {
        if !self.leases.contains_key(&lease) {
            return Err(Refused);
        }
        let mut created = None;
        if let Some(a) = self.announcements.get(&machine) {
            if a.addr != addr && self.leases.contains_key(&a.lease) {
                self.ops.identity_conflicts += 1;
                return Err(Refused);
            }
            if a.lease == lease {
                return Ok(self.revision);
            }
            created = Some(a.created);
            if let Some(l) = self.leases.get_mut(&a.lease) {
                l.announces = None;
            }
        }
        self.ops.announces += 1;
        let rev = self.bump();
        let a = Announcement {
            lease,
            addr,
            created: created.unwrap_or(rev),
        };
        self.announcements.insert(machine, a);
        self.announce_log.push((self.revision, machine, Some(a)));
        if let Some(l) = self.leases.get_mut(&lease) {
            l.announces = Some(machine);
        }
        Ok(self.revision)
    }

    /// Runs a claim transaction for `unit` by `machine` under `lease`; the new revision if it succeeded.
    pub fn txn(&mut self, unit: u32, machine: u32, lease: i64, t: Txn) -> Option<i64> {
        let cur = self.claims[unit as usize];
        let seen_ok = |seen: i64| cur.is_some_and(|c| c.mod_revision == seen);
        let value = match t {
            Txn::Claim if cur.is_none() => Some(Claim {
                machine,
                lease,
                mod_revision: 0,
                handoff: None,
            }),
            Txn::Supersede { seen, from } if seen_ok(seen) => Some(Claim {
                machine,
                lease,
                mod_revision: 0,
                handoff: Some(from),
            }),
            Txn::Rebind { seen } if seen_ok(seen) => Some(Claim {
                machine,
                lease,
                mod_revision: 0,
                handoff: cur.and_then(|c| c.handoff),
            }),
            Txn::Release { seen } if seen_ok(seen) => None,
            Txn::Ack { seen } if seen_ok(seen) => cur.map(|c| Claim { handoff: None, ..c }),
            _ => {
                self.ops.txn_failed += 1;
                return None;
            }
        };
        // A put names a lease, which must exist (etcd refuses an unknown lease).
        if let Some(v) = value {
            if !self.leases.contains_key(&v.lease) {
                self.ops.txn_failed += 1;
                return None;
            }
        }
        let rev = self.bump();
        self.set_claim(
            unit,
            value.map(|v| Claim {
                mod_revision: rev,
                ..v
            }),
        );
        self.ops.txn_ok += 1;
        Some(rev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_agents_with_different_views_never_both_win_a_claim() {
        let mut e = Etcd::new(1);
        let la = e.grant(0, 10_000_000, 0);
        let lb = e.grant(1, 10_000_000, 0);
        assert!(e.txn(0, 0, la, Txn::Claim).is_some());
        let seen = e.claim(0).unwrap().mod_revision;
        assert!(e.txn(0, 1, lb, Txn::Claim).is_none());
        let from = (0, la);
        assert!(e.txn(0, 1, lb, Txn::Supersede { seen, from }).is_some());
        assert!(
            e.txn(
                0,
                0,
                la,
                Txn::Supersede {
                    seen,
                    from: (1, lb)
                }
            )
            .is_none(),
            "stale revision must lose"
        );
        let c = e.claim(0).unwrap();
        assert_eq!((c.machine, c.handoff), (1, Some((0, la))));
        assert_eq!(e.handoffs_from(0).collect::<Vec<_>>(), vec![0]);
        // The previous holder acknowledges: the handover is cleared, the holder stays.
        assert!(e
            .txn(
                0,
                0,
                la,
                Txn::Ack {
                    seen: c.mod_revision
                }
            )
            .is_some());
        assert_eq!(e.claim(0).unwrap().handoff, None);
        assert_eq!(e.handoffs_from(0).count(), 0);
    }

    #[test]
    fn an_expired_lease_takes_its_claims_and_announcement_with_it() {
        let mut e = Etcd::new(2);
        let l = e.grant(3, 100, 0);
        assert!(e.announce(3, l, 3).is_ok());
        assert!(e.txn(1, 3, l, Txn::Claim).is_some());
        assert!(e.keepalive(l, 50));
        assert!(!e.expire(149));
        assert!(e.expire(150));
        assert_eq!(e.claim(1), None);
        assert_eq!(e.announcement(3), None);
        assert_eq!(e.claims_of(3).count(), 0);
        assert!(!e.keepalive(l, 151));
        assert_eq!(e.time_to_live(l, 151), None);
        let (_, log) = e.announcements_since(0, e.revision());
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn a_mirror_reads_the_claims_as_of_its_revision() {
        let mut e = Etcd::new(1);
        let l = e.grant(0, 10_000_000, 0);
        let r0 = e.revision();
        let r1 = e.txn(0, 0, l, Txn::Claim).unwrap();
        let r2 = e.txn(0, 0, l, Txn::Release { seen: r1 }).unwrap();
        assert_eq!(e.claim_at(0, r0), None);
        assert_eq!(e.claim_at(0, r1).map(|c| c.machine), Some(0));
        assert_eq!(e.claim_at(0, r2), None);
        e.compact(r1);
        assert_eq!(e.claim_at(0, r1).map(|c| c.machine), Some(0));
        assert_eq!(e.claim_at(0, r2), None);
    }

    #[test]
    fn time_to_live_truncates_and_a_second_agent_cannot_announce_a_live_id() {
        let mut e = Etcd::new(0);
        let l = e.grant(0, 10_000_000, 0);
        assert_eq!(e.time_to_live(l, 1_500_000), Some((8, 10)));
        assert_eq!(e.time_to_live(l, 2_000_001), Some((7, 10)));
        assert!(e.announce(0, l, 0).is_ok());
        let other = e.grant(0, 10_000_000, 0);
        assert!(e.announce(0, other, 99).is_err(), "another address");
        assert!(e.announce(0, other, 0).is_ok(), "the same agent, new lease");
        e.promote(9_000_000);
        assert_eq!(e.time_to_live(other, 9_000_000), Some((10, 10)));
    }
}
