//! The witness committee: the (at most) five oldest members, whose promises decide whether a machine
//! that lost its etcd lease may keep its units, and whether its units may be taken over.
//!
//! A machine's lease confirmations stop when it loses etcd. It may go on running its claimed units only
//! with *support*: witnesses that answered its request recently (each witness records when). Another
//! machine may take its units over only with *votes*: witnesses that promise they have not supported that
//! lease for a while and never will again. A holder needs `n − m + 1` supporters and a taker `m` votes
//! (`n` witnesses, `m` a majority of them), so some witness would have to both support and vote: it never
//! does both ([`crate::witness`]). Views of the cluster play no part: a stale gossip view cannot make two
//! machines both act.
//!
//! Which machines are witnesses is read from etcd only, so that every machine picks the same ones:
//! members in the order their announcement was created (its `create_revision`; then by ID), the first
//! [`Committee::SIZE`]. A machine that joins never displaces a witness. A witness whose announcement
//! vanished keeps its seat for a TTL (as seen by the deciding machine), so that a holder cut off from etcd,
//! which cannot see departures, counts the same committee until its own lease may expire (when it stops
//! its units anyway).

use std::time::Duration;

use fleet_sched::MachineId;

use crate::time::Time;

/// One member as the registry shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seat {
    /// The machine.
    pub id: MachineId,
    /// The `create_revision` of its announcement (`machines/<id>`): its place in line.
    pub since: i64,
    /// When this machine saw its announcement vanish, if it did.
    pub departed_at: Option<Time>,
}

/// The witnesses, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committee {
    /// At most [`Committee::SIZE`] machines.
    pub witnesses: Vec<MachineId>,
}

impl Committee {
    /// How many witnesses a full committee has.
    pub const SIZE: usize = 5;

    /// The committee among `seats` at `now` (seats that departed a TTL ago or more are gone).
    pub fn choose<'a>(
        seats: impl IntoIterator<Item = &'a Seat>,
        ttl: Duration,
        now: Time,
    ) -> Committee {
        let mut v: Vec<&Seat> = seats
            .into_iter()
            .filter(|s| s.departed_at.is_none_or(|d| now.since(d) < ttl))
            .collect();
        v.sort_by(|a, b| (a.since, &a.id).cmp(&(b.since, &b.id)));
        v.dedup_by(|a, b| a.id == b.id);
        Committee {
            witnesses: v
                .into_iter()
                .take(Committee::SIZE)
                .map(|s| s.id.clone())
                .collect(),
        }
    }

    /// A majority of the witnesses: the votes a takeover needs.
    pub fn majority(&self) -> usize {
        self.witnesses.len() / 2 + 1
    }

    /// The supporters a machine needs to keep its units without its lease: enough that the witnesses
    /// that do not support it could not form a majority (a machine that is a witness supports itself).
    pub fn support_needed(&self) -> usize {
        self.witnesses.len() + 1 - self.majority()
    }

    /// Whether `id` is a witness.
    pub fn contains(&self, id: &MachineId) -> bool {
        self.witnesses.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat(id: &str, since: i64) -> Seat {
        Seat {
            id: MachineId::parse(id).unwrap(),
            since,
            departed_at: None,
        }
    }

    fn ids(c: &Committee) -> Vec<&str> {
        c.witnesses.iter().map(MachineId::as_str).collect()
    }

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn the_five_oldest_members_are_the_witnesses() {
        let seats: Vec<Seat> = (0..8).map(|i| seat(&format!("m{i}"), 100 - i)).collect();
        let c = Committee::choose(&seats, TTL, Time::ZERO);
        assert_eq!(ids(&c), ["m7", "m6", "m5", "m4", "m3"]);
        assert_eq!((c.majority(), c.support_needed()), (3, 3));
    }

    #[test]
    fn small_clusters_need_what_their_size_allows() {
        let c = |n: usize| {
            let seats: Vec<Seat> = (0..n).map(|i| seat(&format!("m{i}"), i as i64)).collect();
            let c = Committee::choose(&seats, TTL, Time::ZERO);
            (c.majority(), c.support_needed())
        };
        assert_eq!(
            c(0),
            (1, 0),
            "no witness: nobody takes over, nobody needs support"
        );
        assert_eq!(c(1), (1, 1));
        assert_eq!(
            c(2),
            (2, 1),
            "two machines: one alone keeps its units, cannot take the other's"
        );
        assert_eq!(c(3), (2, 2));
        assert_eq!(
            c(4),
            (3, 2),
            "2|2: both halves keep their units, neither takes over"
        );
        assert_eq!(c(5), (3, 3));
    }

    #[test]
    fn a_new_member_never_displaces_a_witness_and_a_departed_one_keeps_its_seat_for_a_ttl() {
        let mut seats: Vec<Seat> = (0..5).map(|i| seat(&format!("m{i}"), 10 + i)).collect();
        seats.push(seat("a0", 99));
        let c = Committee::choose(&seats, TTL, Time::ZERO);
        assert!(!c.contains(&MachineId::parse("a0").unwrap()));
        seats[0].departed_at = Some(Time::from_micros(1_000_000));
        let c = Committee::choose(&seats, TTL, Time::from_micros(5_000_000));
        assert!(c.contains(&MachineId::parse("m0").unwrap()));
        let c = Committee::choose(&seats, TTL, Time::from_micros(11_000_000));
        assert_eq!(ids(&c), ["m1", "m2", "m3", "m4", "a0"]);
    }

    proptest::proptest! {
        /// Whatever each witness does (support the holder, vote against it, or neither; never both, as
        /// [`crate::witness`] guarantees; the holder never votes against itself), the holder keeping its
        /// units and a taker taking them over never happen together.
        #[test]
        fn support_and_votes_exclude_each_other(
            acts in proptest::collection::vec(0u8..3, 0..=5),
            holder_is_witness in proptest::bool::ANY,
        ) {
            let n = acts.len();
            let seats: Vec<Seat> = (0..n).map(|i| seat(&format!("m{i}"), i as i64)).collect();
            let c = Committee::choose(&seats, TTL, Time::ZERO);
            let holder = if holder_is_witness && n > 0 { 0 } else { usize::MAX };
            let mut support = 0;
            let mut votes = 0;
            for (i, a) in acts.iter().enumerate() {
                if i == holder {
                    support += 1; // a witness supports itself
                } else if *a == 0 {
                    support += 1;
                } else if *a == 1 {
                    votes += 1;
                }
            }
            let keeps = support >= c.support_needed();
            let taken = votes >= c.majority();
            proptest::prop_assert!(!(keeps && taken), "{acts:?} holder={holder}");
        }
    }
}
