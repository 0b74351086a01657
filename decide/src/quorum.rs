//! Quorums over a membership that a partition cannot shrink and a dead or new member cannot inflate.
//!
//! The membership `S` is every machine with an announcement in etcd (a live lease), plus machines whose
//! announcement vanished less than a TTL ago. A machine is *alive* for this node when gossip shows it
//! alive (not suspected, not down); this node itself always is. It is *up* when alive **and** known to
//! this node for at least a TTL.
//!
//! - A node may take a unit over from a holder it sees down only with a quorum: at least
//!   `floor(|S|/2) + 1` members up ([`Quorum::holds`]).
//! - A node whose lease is unconfirmed keeps its units only while the members it does not see alive
//!   could not form such a quorum ([`Quorum::others_could_take_over`]).
//!
//! With the same `S` on both sides and views that are not stale, both cannot be true at once: the
//! taker's up members are among the holder's not-alive members. Why the two sides agree on `S`:
//! - a machine that joined counts as up for a taker only after a TTL, and a holder that has been cut
//!   off from etcd for a TTL has stopped its units anyway (its lease expired), so a member the holder
//!   could not know never tips a quorum against it; members not yet up still count in `|S|`, which
//!   only makes a quorum harder;
//! - a machine that left keeps counting in `|S|` (as not up) for a TTL, so a side whose members' leases
//!   expire cannot shrink `S` under a holder that still runs its units.

use std::time::Duration;

use fleet_sched::MachineId;

use crate::time::Time;

/// One machine of the membership, as this node knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The machine.
    pub id: MachineId,
    /// When this node first saw its announcement (its current lease).
    pub known_since: Time,
    /// When its announcement vanished from etcd (lease expired or revoked), if it did.
    pub departed_at: Option<Time>,
    /// Whether gossip shows it alive: not suspected, not down. This node itself: `true`.
    pub alive: bool,
}

/// A quorum count: how many members there are, how many are alive and up here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quorum {
    /// `|S|`: current members and those that left less than a TTL ago.
    pub size: usize,
    /// Members up: alive in gossip and known for at least a TTL (what a taker counts).
    pub up: usize,
    /// Members alive in gossip, however new (what a holder counts on its side).
    pub alive: usize,
}

impl Quorum {
    /// Counts `members` at `now` with lease TTL `ttl`. Members that left a TTL ago or more are ignored.
    pub fn count<'a>(
        members: impl IntoIterator<Item = &'a Member>,
        ttl: Duration,
        now: Time,
    ) -> Quorum {
        let mut q = Quorum {
            size: 0,
            up: 0,
            alive: 0,
        };
        for m in members {
            match m.departed_at {
                Some(d) if now.since(d) >= ttl => continue,
                Some(_) => q.size += 1,
                None => {
                    q.size += 1;
                    if m.alive {
                        q.alive += 1;
                        if now.since(m.known_since) >= ttl {
                            q.up += 1;
                        }
                    }
                }
            }
        }
        q
    }

    /// A strict majority of `size`.
    pub fn needed(&self) -> usize {
        self.size / 2 + 1
    }

    /// This node sees a quorum up (it may take units over from machines it sees down).
    pub fn holds(&self) -> bool {
        self.size > 0 && self.up >= self.needed()
    }

    /// The members this node does not see alive could form a quorum without it (so, once its lease is
    /// unconfirmed, it must stop its units before they could be taken over).
    pub fn others_could_take_over(&self) -> bool {
        self.size - self.alive >= self.needed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn member(id: &str, known: u64, alive: bool) -> Member {
        Member {
            id: MachineId::parse(id).unwrap(),
            known_since: Time::from_micros(known * 1_000_000),
            departed_at: None,
            alive,
        }
    }

    fn at(s: u64) -> Time {
        Time::from_micros(s * 1_000_000)
    }

    #[test]
    fn two_machines_cut_apart_neither_holds_and_neither_must_fence() {
        let a = [member("a", 0, true), member("b", 0, false)];
        let q = Quorum::count(&a, TTL, at(100));
        assert_eq!(
            q,
            Quorum {
                size: 2,
                up: 1,
                alive: 1
            }
        );
        assert!(!q.holds());
        assert!(!q.others_could_take_over());
    }

    #[test]
    fn three_machines_one_cut_off_the_two_hold_and_the_one_must_fence() {
        let two = [
            member("a", 0, true),
            member("b", 0, true),
            member("c", 0, false),
        ];
        let one = [
            member("a", 0, false),
            member("b", 0, false),
            member("c", 0, true),
        ];
        assert!(Quorum::count(&two, TTL, at(100)).holds());
        let q = Quorum::count(&one, TTL, at(100));
        assert!(!q.holds());
        assert!(q.others_could_take_over());
    }

    #[test]
    fn a_two_two_split_holds_nowhere_and_fences_nowhere() {
        let side = [
            member("a", 0, true),
            member("b", 0, true),
            member("c", 0, false),
            member("d", 0, false),
        ];
        let q = Quorum::count(&side, TTL, at(100));
        assert!(!q.holds());
        assert!(!q.others_could_take_over());
    }

    #[test]
    fn a_new_member_is_counted_but_not_up_for_a_ttl() {
        let m = [
            member("a", 0, true),
            member("b", 0, true),
            member("n", 95, true),
        ];
        let q = Quorum::count(&m, TTL, at(100));
        assert_eq!(
            q,
            Quorum {
                size: 3,
                up: 2,
                alive: 3
            }
        );
        assert!(!q.others_could_take_over());
        let q = Quorum::count(&m, TTL, at(105));
        assert_eq!(
            q,
            Quorum {
                size: 3,
                up: 3,
                alive: 3
            }
        );
    }

    #[test]
    fn a_departed_member_keeps_counting_as_not_up_for_a_ttl() {
        let mut gone = member("c", 0, false);
        gone.departed_at = Some(at(95));
        let m = [member("a", 0, true), member("b", 0, false), gone];
        let q = Quorum::count(&m, TTL, at(100));
        assert_eq!(
            q,
            Quorum {
                size: 3,
                up: 1,
                alive: 1
            }
        );
        let q = Quorum::count(&m, TTL, at(105));
        assert_eq!(
            q,
            Quorum {
                size: 2,
                up: 1,
                alive: 1
            }
        );
    }

    #[test]
    fn a_fresh_node_holds_no_quorum_until_it_has_known_the_members_for_a_ttl() {
        let m = [
            member("a", 50, true),
            member("b", 50, true),
            member("c", 50, false),
        ];
        assert!(!Quorum::count(&m, TTL, at(55)).holds());
        assert!(Quorum::count(&m, TTL, at(60)).holds());
    }

    #[test]
    fn no_members_means_no_quorum() {
        let q = Quorum::count(&[], TTL, at(1));
        assert!(!q.holds());
        assert!(q.others_could_take_over() || q.size == 0);
    }

    proptest::proptest! {
        /// With the same membership, a taker's quorum and a holder that keeps its units cannot coexist
        /// when their up sets are disjoint (the holder's side and the taker's side of a partition).
        #[test]
        fn disjoint_sides_cannot_both_act(n in 1usize..12, split in proptest::collection::vec(0u8..3, 1..12)) {
            let n = n.min(split.len());
            // 0: holder's side, 1: taker's side, 2: dead.
            let side = |i: usize, s: u8| member(&format!("m{i}"), 0, split[i] == s);
            let holder: Vec<Member> = (0..n).map(|i| side(i, 0)).collect();
            let taker: Vec<Member> = (0..n).map(|i| side(i, 1)).collect();
            let qh = Quorum::count(&holder, TTL, at(100));
            let qt = Quorum::count(&taker, TTL, at(100));
            proptest::prop_assert!(!qt.holds() || qh.others_could_take_over());
        }
    }
}
