//! The in-memory etcd: the claim keys, leases and revisions, with the agents' transactions.
//!
//! Only what the agents' decisions read is modelled: one claim key per unit (`claims/<unit>`, bound
//! to a lease, with its `mod_revision`), leases with a TTL that keep-alives extend and that expire
//! (deleting their keys), and one global revision. Unit records never change during a run (they are
//! written once when the scenario submits them). The transactions are the agent's
//! (`src/agent/claims.rs`): create-if-absent, supersede/rebind at the seen revision, release at the
//! seen revision. Outages and latency are decided by the caller.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// A claim key's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The claiming machine (index).
    pub machine: u32,
    /// The lease it is bound to.
    pub lease: u64,
    /// Revision of its last change.
    pub mod_revision: u64,
}

#[derive(Clone, Debug)]
struct Lease {
    machine: u32,
    /// Server time (µs) at which it expires.
    expires_at: u64,
    ttl: u64,
    keys: BTreeSet<u32>,
}

/// Operation counters.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct EtcdOps {
    /// Claim transactions that succeeded.
    pub txn_ok: u64,
    /// Claim transactions whose compare failed.
    pub txn_failed: u64,
    /// Lease grants.
    pub lease_grants: u64,
    /// Lease keep-alives answered.
    pub keepalives: u64,
    /// Leases that expired (their claims deleted).
    pub lease_expiries: u64,
    /// Machine announcements (`machines/<id>`, once per lease).
    pub announces: u64,
    /// Requests lost to an outage or a partition from etcd.
    pub unavailable: u64,
    /// Watch events delivered to agents (one per agent per change batch).
    pub watch_deliveries: u64,
}

/// The etcd state.
#[derive(Debug, Default)]
pub struct Etcd {
    revision: u64,
    claims: Vec<Option<Claim>>,
    by_machine: BTreeMap<u32, BTreeSet<u32>>,
    leases: BTreeMap<u64, Lease>,
    next_lease: u64,
    /// Counters.
    pub ops: EtcdOps,
}

impl Etcd {
    /// An etcd holding `units` unit records and no claims.
    pub fn new(units: usize) -> Etcd {
        Etcd {
            revision: 1,
            claims: vec![None; units],
            next_lease: 0x1000,
            ..Default::default()
        }
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The claim of `unit`.
    pub fn claim(&self, unit: u32) -> Option<Claim> {
        self.claims[unit as usize]
    }

    /// Every unit's claim (a copy is what agents' mirrors hold).
    pub fn claims(&self) -> &[Option<Claim>] {
        &self.claims
    }

    /// Units whose claim `machine` holds.
    pub fn claims_of(&self, machine: u32) -> impl Iterator<Item = u32> + '_ {
        self.by_machine.get(&machine).into_iter().flatten().copied()
    }

    /// Grants a lease of `ttl` µs to `machine` at server time `now`.
    pub fn grant(&mut self, machine: u32, ttl: u64, now: u64) -> u64 {
        self.ops.lease_grants += 1;
        self.next_lease += 1;
        let id = self.next_lease;
        self.leases.insert(
            id,
            Lease {
                machine,
                expires_at: now + ttl,
                ttl,
                keys: BTreeSet::new(),
            },
        );
        id
    }

    /// Keeps `lease` alive; `false` if it is gone (expired or revoked).
    pub fn keepalive(&mut self, lease: u64, now: u64) -> bool {
        match self.leases.get_mut(&lease) {
            Some(l) if l.expires_at > now => {
                l.expires_at = now + l.ttl;
                self.ops.keepalives += 1;
                true
            }
            _ => false,
        }
    }

    /// When the next lease expires, if any lease exists.
    pub fn next_expiry(&self) -> Option<u64> {
        self.leases.values().map(|l| l.expires_at).min()
    }

    /// Expires every lease due at `now`; returns whether anything changed.
    pub fn expire(&mut self, now: u64) -> bool {
        let due: Vec<u64> = self
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
    pub fn revoke(&mut self, lease: u64) -> bool {
        self.drop_lease(lease)
    }

    fn drop_lease(&mut self, id: u64) -> bool {
        let Some(l) = self.leases.remove(&id) else {
            return false;
        };
        if l.keys.is_empty() {
            return false;
        }
        self.revision += 1;
        for unit in l.keys {
            if let Some(c) = self.claims[unit as usize].take() {
                if let Some(set) = self.by_machine.get_mut(&c.machine) {
                    set.remove(&unit);
                }
            }
        }
        let _ = l.machine;
        true
    }

    fn put_claim(&mut self, unit: u32, machine: u32, lease: u64) -> bool {
        if !self.leases.contains_key(&lease) {
            // etcd refuses a put bound to an unknown lease.
            self.ops.txn_failed += 1;
            return false;
        }
        self.revision += 1;
        if let Some(old) = self.claims[unit as usize] {
            if let Some(set) = self.by_machine.get_mut(&old.machine) {
                set.remove(&unit);
            }
            if let Some(l) = self.leases.get_mut(&old.lease) {
                l.keys.remove(&unit);
            }
        }
        self.claims[unit as usize] = Some(Claim {
            machine,
            lease,
            mod_revision: self.revision,
        });
        self.by_machine.entry(machine).or_default().insert(unit);
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.insert(unit);
        }
        self.ops.txn_ok += 1;
        true
    }

    /// `claim`: create the claim if absent.
    pub fn claim_if_absent(&mut self, unit: u32, machine: u32, lease: u64) -> bool {
        if self.claims[unit as usize].is_some() {
            self.ops.txn_failed += 1;
            return false;
        }
        self.put_claim(unit, machine, lease)
    }

    /// `supersede` / `rebind`: replace the claim only if it is still at `seen` revision.
    pub fn supersede(&mut self, unit: u32, seen: u64, machine: u32, lease: u64) -> bool {
        match self.claims[unit as usize] {
            Some(c) if c.mod_revision == seen => self.put_claim(unit, machine, lease),
            _ => {
                self.ops.txn_failed += 1;
                false
            }
        }
    }

    /// `release`: delete the claim only if it is still at `seen` revision.
    pub fn release(&mut self, unit: u32, seen: u64) -> bool {
        match self.claims[unit as usize] {
            Some(c) if c.mod_revision == seen => {
                self.revision += 1;
                self.claims[unit as usize] = None;
                if let Some(set) = self.by_machine.get_mut(&c.machine) {
                    set.remove(&unit);
                }
                if let Some(l) = self.leases.get_mut(&c.lease) {
                    l.keys.remove(&unit);
                }
                self.ops.txn_ok += 1;
                true
            }
            _ => {
                self.ops.txn_failed += 1;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_agents_with_different_views_never_both_win_a_claim() {
        let mut e = Etcd::new(1);
        let la = e.grant(0, 10, 0);
        let lb = e.grant(1, 10, 0);
        assert!(e.claim_if_absent(0, 0, la));
        let seen = e.claim(0).unwrap().mod_revision;
        assert!(!e.claim_if_absent(0, 1, lb));
        assert!(e.supersede(0, seen, 1, lb));
        assert!(!e.supersede(0, seen, 0, la), "stale revision must lose");
        assert_eq!(e.claim(0).unwrap().machine, 1);
    }

    #[test]
    fn an_expired_lease_takes_its_claims_with_it() {
        let mut e = Etcd::new(2);
        let l = e.grant(3, 100, 0);
        assert!(e.claim_if_absent(1, 3, l));
        assert!(e.keepalive(l, 50));
        assert!(!e.expire(149));
        assert!(e.expire(150));
        assert_eq!(e.claim(1), None);
        assert_eq!(e.claims_of(3).count(), 0);
        assert!(!e.keepalive(l, 151));
    }
}
