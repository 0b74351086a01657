//! Unit tests of the store's invariant: stamps, `synced`, tombstones, the digest's sums.

use super::*;
use crate::crypto::Unsigned;

fn ok(_: &Update) -> Result<(), Refusal> {
    Ok(())
}

/// The store's calls with every update accepted (what the unsigned mode does).
trait Unchecked {
    fn apply_ok(&mut self, u: &Update) -> bool;
    fn merge_ok(&mut self, d: Vec<OriginDelta>) -> Vec<Update>;
    fn delta_ok(&self, digest: &[(MachineId, Stamp)]) -> Vec<OriginDelta>;
}

impl Unchecked for Store {
    fn apply_ok(&mut self, u: &Update) -> bool {
        self.apply(u, &mut ok).unwrap()
    }
    fn merge_ok(&mut self, d: Vec<OriginDelta>) -> Vec<Update> {
        self.merge(d, &mut ok).0
    }
    fn delta_ok(&self, digest: &[(MachineId, Stamp)]) -> Vec<OriginDelta> {
        self.delta_for(digest, &|_| None)
    }
}

fn unit(active: &str) -> UnitState {
    UnitState {
        load_state: "loaded".into(),
        active_state: active.into(),
        sub_state: "running".into(),
        unit_hash: [7; 20],
    }
}

fn units(list: &[(&str, &str)]) -> BTreeMap<String, UnitState> {
    list.iter().map(|(n, a)| (n.to_string(), unit(a))).collect()
}

fn store(id: &str, epoch: u64) -> Store {
    let mut s = Store::new(MachineId::parse(id).unwrap(), epoch);
    for other in ["a", "b", "c"] {
        s.allow_epoch(&MachineId::parse(other).unwrap(), 1);
    }
    s
}

/// The bucket sums, recomputed from scratch.
fn sums_from_scratch(s: &Store) -> Vec<u64> {
    let mut sums = vec![0u64; BUCKETS];
    for (id, o) in s.origins.iter() {
        let b = bucket_of(id);
        sums[b] = sums[b].wrapping_add(contribution(id, o.synced));
    }
    sums
}

#[test]
fn newer_stamp_wins_and_older_is_ignored() {
    let mut a = store("a", 1);
    let mut b = store("b", 1);
    let u1 = a.set_local_units(&units(&[("x.service", "active")]), &Unsigned);
    let u2 = a.set_local_units(&units(&[("x.service", "failed")]), &Unsigned);
    // Delivered out of order: the newer one first.
    assert!(b.apply_ok(&u2[0]));
    assert!(!b.apply_ok(&u1[0]), "an older update must not win");
    let o = b.origin(&MachineId::parse("a").unwrap()).unwrap();
    assert_eq!(
        o.units().next().unwrap().1.active_state,
        fleet_sched::systemd_state::ActiveState::Failed
    );
    assert_eq!(b.sums, sums_from_scratch(&b));
}

#[test]
fn versions_are_contiguous_and_synced_crosses_no_gap() {
    let mut a = store("a", 1);
    let mut b = store("b", 1);
    let ups = a.set_local_units(
        &units(&[
            ("x.service", "active"),
            ("y.service", "active"),
            ("z.service", "active"),
        ]),
        &Unsigned,
    );
    let versions: Vec<u64> = ups.iter().map(|u| u.stamp.version).collect();
    assert_eq!(versions, [1, 2, 3]);
    b.apply_ok(&ups[2]);
    b.apply_ok(&ups[0]);
    let a_id = MachineId::parse("a").unwrap();
    assert_eq!(b.origin(&a_id).unwrap().synced.version, 1, "gap at 2");
    b.apply_ok(&ups[1]);
    assert_eq!(b.origin(&a_id).unwrap().synced.version, 3);
    assert_eq!(b.summary(8, &[]), {
        let mut c = store("b", 1);
        c.merge_ok(a.delta_ok(&c.digest()));
        c.summary(8, &[])
    });
    assert_eq!(b.sums, sums_from_scratch(&b));
}

/// In any order, with repeats: `synced` is always the largest version up to which every version
/// was taken in, and every update's changes are reported once, in (origin, change) order.
#[test]
fn synced_follows_updates_delivered_in_any_order() {
    let mut a = store("a", 1);
    let ups: Vec<Update> = (0..120)
        .map(|i| {
            let state = if i % 2 == 0 { "active" } else { "failed" };
            // Mostly a unit each (every version news in any order), some units changed twice.
            let name = format!("u{}.service", if i % 10 == 9 { i - 5 } else { i });
            a.set_local_unit(&name, Some(unit(state)), &Unsigned)
                .unwrap()
        })
        .collect();
    let a_id = MachineId::parse("a").unwrap();
    for seed in 1..=20u64 {
        let mut b = store("b", 1);
        let mut seen = std::collections::BTreeSet::new();
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for _ in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = &ups[(x % ups.len() as u64) as usize];
            // A version that came after a newer one of its unit is not news, and not taken.
            if b.apply_ok(u) {
                seen.insert(u.stamp.version);
            }
            let contiguous = (1..).take_while(|v| seen.contains(v)).count() as u64;
            assert_eq!(b.origin(&a_id).unwrap().synced.version, contiguous);
            let changes = b.take_changes();
            assert!(changes.windows(2).all(|w| w[0] < w[1]), "{changes:?}");
        }
        assert_eq!(b.sums, sums_from_scratch(&b));
    }
}

#[test]
fn a_new_epoch_replaces_the_previous_life() {
    let mut a = store("a", 1);
    let mut b = store("b", 1);
    for u in a.set_local_units(
        &units(&[("x.service", "active"), ("y.service", "active")]),
        &Unsigned,
    ) {
        b.apply_ok(&u);
    }
    let mut a2 = Store::new(MachineId::parse("a").unwrap(), 2);
    let u = a2.set_local_units(&units(&[("z.service", "active")]), &Unsigned);
    assert!(
        !b.apply_ok(&u[0]),
        "a new life the membership has not accepted yet is refused"
    );
    assert_eq!(b.refused(), 1);
    b.allow_epoch(&MachineId::parse("a").unwrap(), 2);
    assert!(b.apply_ok(&u[0]));
    let names: Vec<_> = b
        .origin(&MachineId::parse("a").unwrap())
        .unwrap()
        .units()
        .map(|(n, _)| n.to_owned())
        .collect();
    assert_eq!(names, vec!["z.service".to_string()]);
    // A straggler from the old life is stale.
    let old = Update {
        origin: MachineId::parse("a").unwrap(),
        stamp: Stamp {
            epoch: 1,
            version: 99,
        },
        entry: Entry::Metadata(Metadata::default()),
        signature: Vec::new(),
    };
    assert!(!b.apply_ok(&old));
    assert_eq!(b.sums, sums_from_scratch(&b));
}

#[test]
fn delta_after_out_of_order_pushes_fills_the_gaps() {
    let mut a = store("a", 1);
    let mut b = store("b", 1);
    let first = a.set_local_units(&units(&[("x.service", "active")]), &Unsigned);
    let second = a.set_local_unit("y.service", Some(unit("active")), &Unsigned);
    // b only hears the second push.
    b.apply_ok(second.as_ref().unwrap());
    assert!(first.len() == 1);
    assert_ne!(a.summary(8, &[]), b.summary(8, &[]));
    let delta = a.delta_ok(&b.digest());
    b.merge_ok(delta);
    let o = b.origin(&MachineId::parse("a").unwrap()).unwrap();
    assert_eq!(
        o.units().count(),
        2,
        "the missed entry arrives via anti-entropy"
    );
    assert_eq!(
        o.synced,
        a.origin(&MachineId::parse("a").unwrap()).unwrap().synced
    );
    // Nothing left to send once synced.
    assert!(a.delta_ok(&b.digest()).is_empty());
}

#[test]
fn summaries_find_the_differing_buckets_and_their_deltas_repair_them() {
    let mut a = store("a", 1);
    let mut b = store("b", 1);
    let mut c = store("c", 1);
    for s in [&mut a, &mut b] {
        s.allow_epoch(&MachineId::parse("c").unwrap(), 1);
    }
    for u in c.set_local_units(&units(&[("x.service", "active")]), &Unsigned) {
        a.apply_ok(&u);
    }
    b.merge_ok(a.delta_ok(&b.digest()));
    a.merge_ok(b.delta_ok(&a.digest()));
    assert_eq!(a.differing(&b.summary(16, &[]), &[]), Vec::<u16>::new());
    // c changes; a hears it, b does not.
    for u in c.set_local_units(&units(&[("x.service", "failed")]), &Unsigned) {
        a.apply_ok(&u);
    }
    let differ = b.differing(&a.summary(16, &[]), &[]);
    assert_eq!(differ.len(), 1);
    let theirs = b.digest_of(&differ, 16);
    let delta = a.delta_for_buckets(&theirs, &differ, 16, &|_| None);
    assert_eq!(delta.len(), 1);
    assert_eq!(delta[0].origin, MachineId::parse("c").unwrap());
    let news = b.merge_ok(delta);
    assert_eq!(news.len(), 1);
    assert_eq!(a.differing(&b.summary(16, &[]), &[]), Vec::<u16>::new());
}

#[test]
fn removed_units_travel_as_tombstones() {
    let mut a = store("a", 1);
    let mut b = store("b", 1);
    b.merge_ok(a.delta_ok(&b.digest()));
    a.set_local_units(&units(&[("x.service", "active")]), &Unsigned);
    b.merge_ok(a.delta_ok(&b.digest()));
    assert_eq!(
        b.origin(&MachineId::parse("a").unwrap())
            .unwrap()
            .units()
            .count(),
        1
    );
    let removal = a.set_local_units(&BTreeMap::new(), &Unsigned);
    assert_eq!(removal.len(), 1);
    assert!(b.apply_ok(&removal[0]));
    assert_eq!(
        b.origin(&MachineId::parse("a").unwrap())
            .unwrap()
            .units()
            .count(),
        0
    );
    assert!(b
        .take_changes()
        .contains(&(MachineId::parse("a").unwrap(), Change::Units)));
}

#[test]
fn a_vouch_travels_with_the_state_and_the_newest_wins() {
    let mut a = store("a", 1);
    let mut b = store("b", 1);
    let v1 = a.set_local_incarnation(1, 2, &Unsigned).unwrap();
    assert!(a.set_local_incarnation(1, 2, &Unsigned).is_none());
    let v2 = a.set_local_incarnation(1, 3, &Unsigned).unwrap();
    assert!(b.apply_ok(&v2));
    assert!(!b.apply_ok(&v1), "an older vouch must not win");
    let a_id = MachineId::parse("a").unwrap();
    assert_eq!(b.origin(&a_id).unwrap().vouched(), Some((1, 3)));
    assert!(
        b.take_changes().is_empty(),
        "a vouch changes no metadata or unit"
    );
    let mut c = store("c", 1);
    c.merge_ok(a.delta_ok(&c.digest()));
    assert_eq!(c.origin(&a_id).unwrap().vouched(), Some((1, 3)));
    assert_eq!(c.sums, sums_from_scratch(&c));
}

#[test]
fn updates_about_ourselves_are_ignored() {
    let mut a = store("a", 5);
    let forged = Update {
        origin: MachineId::parse("a").unwrap(),
        stamp: Stamp {
            epoch: 9,
            version: 1,
        },
        entry: Entry::Metadata(Metadata::default()),
        signature: Vec::new(),
    };
    assert!(!a.apply_ok(&forged));
}

#[test]
fn state_of_an_unknown_machine_or_a_newer_life_is_refused_whole() {
    let mut a = Store::new(MachineId::parse("a").unwrap(), 7);
    let mut b = Store::new(MachineId::parse("b").unwrap(), 1);
    a.set_local_metadata(Metadata::default(), &Unsigned);
    b.merge_ok(a.delta_ok(&b.digest()));
    assert!(
        b.origin(&MachineId::parse("a").unwrap()).is_none(),
        "unknown machine"
    );
    b.allow_epoch(&MachineId::parse("a").unwrap(), 6);
    b.merge_ok(a.delta_ok(&b.digest()));
    assert!(
        b.origin(&MachineId::parse("a").unwrap()).is_none(),
        "epoch 7 > 6"
    );
    assert_eq!(b.refused(), 2);
    b.allow_epoch(&MachineId::parse("a").unwrap(), 7);
    b.merge_ok(a.delta_ok(&b.digest()));
    assert!(b
        .origin(&MachineId::parse("a").unwrap())
        .unwrap()
        .metadata()
        .is_some());
}

#[test]
fn forgetting_an_origin_keeps_the_sums_true() {
    let mut a = store("a", 1);
    let mut b = store("b", 1);
    a.set_local_metadata(Metadata::default(), &Unsigned);
    b.merge_ok(a.delta_ok(&b.digest()));
    assert_eq!(b.len(), 2);
    b.forget(&MachineId::parse("a").unwrap());
    assert_eq!(b.len(), 1);
    assert_eq!(b.sums, sums_from_scratch(&b));
    assert_eq!(
        b.summary(4, &[]),
        Store::new(MachineId::parse("b").unwrap(), 1).summary(4, &[])
    );
}

/// Over random updates, restarts (new epochs), anti-entropy merges and forgotten origins, the
/// digest and deltas of a few buckets, which visit only those buckets' origins, are what a whole
/// walk of the store computes and then filters by bucket, in the same (machine-ID) order: a
/// peer merges the digest in one walk along its own store.
#[test]
fn digests_and_deltas_of_buckets_equal_the_whole_walk_filtered() {
    use crate::dense::tests::{bucket_questions, in_buckets_slow};
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    let mut rng = StdRng::seed_from_u64(14);
    let ids: Vec<MachineId> = (0..80)
        .map(|i| MachineId::parse(&format!("o{i:02}")).unwrap())
        .collect();
    let mut origins: Vec<Store> = ids.iter().map(|id| Store::new(id.clone(), 1)).collect();
    let (mut s, mut t) = (store("s", 1), store("t", 1));
    let mut checked = 0;
    for step in 0..3000 {
        let i = rng.random_range(0..ids.len());
        match rng.random_range(0..10) {
            0 => {
                // A restart: the origin's next life, which the membership then allows.
                let epoch = origins[i].local_epoch() + 1;
                origins[i] = Store::new(ids[i].clone(), epoch);
                if rng.random_bool(0.8) {
                    s.allow_epoch(&ids[i], epoch);
                }
                t.allow_epoch(&ids[i], epoch);
            }
            1 => s.forget(&ids[i]),
            2 => {
                s.merge_ok(t.delta_ok(&s.digest()));
            }
            3 => {
                t.merge_ok(s.delta_ok(&t.digest()));
            }
            _ => {
                let epoch = origins[i].local_epoch();
                s.allow_epoch(&ids[i], epoch);
                t.allow_epoch(&ids[i], epoch);
                let name = format!("u{}.service", rng.random_range(0..5));
                let state = rng.random_bool(0.8).then(|| unit("active"));
                if let Some(u) = origins[i].set_local_unit(&name, state, &Unsigned) {
                    // Each store hears some pushes only: gaps, out-of-date origins.
                    if rng.random_bool(0.6) {
                        s.apply_ok(&u);
                    }
                    if rng.random_bool(0.6) {
                        t.apply_ok(&u);
                    }
                }
            }
        }
        if step % 5 != 0 {
            continue;
        }
        let (count, buckets) = bucket_questions(&mut rng);
        let digest = s.digest_of(&buckets, count);
        let slow: Vec<(MachineId, Stamp)> = in_buckets_slow(s.origins.iter(), &buckets, count)
            .into_iter()
            .map(|(id, o)| (id.clone(), o.synced))
            .collect();
        assert_eq!(
            digest, slow,
            "step {step}: count {count}, buckets {buckets:?}"
        );
        let mask = super::summary_count(count) - 1;
        let theirs = t.digest_of(&buckets, count);
        let delta = s.delta_for_buckets(&theirs, &buckets, count, &|_| Some(vec![1]));
        let slow: Vec<OriginDelta> = s
            .delta_for(&t.digest(), &|_| Some(vec![1]))
            .into_iter()
            .filter(|d| buckets.contains(&((bucket_of(&d.origin) & mask) as u16)))
            .collect();
        assert_eq!(
            delta, slow,
            "step {step}: count {count}, buckets {buckets:?}"
        );
        checked += digest.len() + delta.len();
        assert_eq!(s.sums, sums_from_scratch(&s));
    }
    assert!(checked > 1000, "the questions found origins: {checked}");
}
