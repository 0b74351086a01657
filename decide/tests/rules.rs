//! The decision core against the cases of docs/safety.md, one test per row (table-driven where rows share
//! a shape). Times are in milliseconds on the deciding machine's clock.

use std::time::Duration;

use fleet_decide::*;
use fleet_sched::MachineId;

fn ms(x: u64) -> Time {
    Time::from_micros(x * 1000)
}

fn id(s: &str) -> MachineId {
    MachineId::parse(s).unwrap()
}

fn timing() -> Timing {
    Timing {
        clock_rate_ppm: 0,
        ..Timing::new(Duration::from_millis(500), Duration::from_secs(10))
    }
}

/// Three witnesses, this machine ("me") among them: a takeover needs 2 votes, keeping units without the
/// lease needs 2 supporters (this machine and one more).
fn committee() -> Committee {
    let seats: Vec<Seat> = ["me", "h", "x"]
        .iter()
        .enumerate()
        .map(|(i, m)| Seat {
            id: id(m),
            since: i as i64,
            departed_at: None,
        })
        .collect();
    Committee::choose(&seats, Duration::from_secs(10), Time::ZERO)
}

/// A guard confirmed by the lease at `conf` (mirror caught up), with support granted by `supporters`
/// (request sent at `now`), evaluated at `now`.
fn lease_guard(conf: u64, supporters: &[&str], now: u64) -> Guard {
    let l = OwnLease {
        id: 1,
        ttl: Duration::from_secs(10),
        confirmations: vec![Confirmation {
            sent: ms(conf),
            revision: 1,
        }],
    };
    let c = committee();
    let me = id("me");
    let granted = supporters.iter().map(|w| (id(w), ms(now))).collect();
    let s = Support {
        committee: &c,
        me: &me,
        granted: &granted,
    };
    guard(&timing(), &l, 1, Some(&s), ms(now))
}

struct World {
    t: Timing,
    me: MachineId,
    g: Guard,
    c: Committee,
    now: u64,
}

impl World {
    fn new(now: u64) -> World {
        World {
            t: timing(),
            me: id("me"),
            g: lease_guard(now.saturating_sub(50), &[], now),
            c: committee(),
            now,
        }
    }

    fn decide(&self, case: &Case<'_>) -> Verdict {
        let ctx = Ctx {
            timing: &self.t,
            me: &self.me,
            lease: 1,
            guard: &self.g,
            committee: &self.c,
            now: ms(self.now),
        };
        decide(&ctx, case)
    }
}

fn claim(machine: &str, lease: i64, handoff: Option<(&str, i64)>) -> Claim {
    Claim {
        machine: id(machine),
        lease,
        mod_revision: 40,
        handoff: handoff.map(|(m, l)| Handoff {
            machine: id(m),
            lease: l,
        }),
    }
}

fn case<'a>(placement: Placement, claim: Option<&'a Claim>, peer: Peer<'a>) -> Case<'a> {
    Case {
        placement,
        claim,
        loaded: false,
        running: false,
        peer,
        superseded_at: Time::ZERO,
    }
}

/// A poll of a 10 s lease sent at `sent` answering `ttl` seconds.
fn poll(sent: u64, ttl: i64) -> LeasePoll {
    LeasePoll {
        sent: ms(sent),
        received: ms(sent + 2),
        answer: LeaseAnswer::Remaining { ttl, granted: 10 },
    }
}

/// A holder gossip declares down, with the majority's votes in.
fn down(polls: &[LeasePoll]) -> Peer<'_> {
    Peer {
        down: true,
        votes: 2,
        polls,
        ..Peer::default()
    }
}

// ---- A machine crashes -------------------------------------------------------------------------------

#[test]
fn crash_takeover_waits_for_the_proof_then_supersedes_then_starts_after_a_fresh_proof() {
    // The holder crashed at 0 (last renewal just before 0); our view declared it down at 1000.
    let c = claim("h", 9, None);
    let polls = [poll(950, 9)]; // bound: renewed before 952 - 0 s (= 952): lease bound 952 + 600.
    let w = World::new(1200);
    let v = w.decide(&case(Placement::Here, Some(&c), down(&polls)));
    assert_eq!(v.write, None, "not proven yet: {v:?}");
    assert_eq!(v.poll, Some(9));
    assert_eq!(v.why, Why::HolderNotFenced);
    // After the tick (at 2.0 s etcd says 7): renewed before ~3 ms: fenced by 603.
    let polls = [poll(950, 9), poll(2001, 7)];
    let w = World::new(2010);
    let v = w.decide(&case(Placement::Here, Some(&c), down(&polls)));
    assert!(
        matches!(
            v.write,
            Some(Write::Supersede {
                mod_revision: 40,
                ..
            })
        ),
        "{v:?}"
    );
    assert!(!v.run, "a supersede runs nothing before a fresh proof");
    // Now the claim is ours with a handover; polls before the supersede do not count.
    let mine = claim("me", 1, Some(("h", 9)));
    let mut k = case(Placement::Here, Some(&mine), down(&polls));
    k.superseded_at = ms(2015);
    let v = World::new(2016).decide(&k);
    assert!(!v.run);
    assert_eq!(v.why, Why::HandoffPending);
    assert_eq!(v.poll, Some(9));
    let fresh = [poll(950, 9), poll(2001, 7), poll(2020, 7)];
    let mut k = case(Placement::Here, Some(&mine), down(&fresh));
    k.superseded_at = ms(2015);
    let v = World::new(2030).decide(&k);
    assert!(v.run, "{v:?}");
}

#[test]
fn without_a_majority_of_votes_nothing_is_taken_over_and_the_votes_are_asked_for() {
    // The holder's lease is long stale, but only one witness voted (a majority of three is two).
    let c = claim("h", 9, None);
    let polls = [poll(5001, 4)];
    let mut peer = down(&polls);
    peer.votes = 1;
    let v = World::new(5050).decide(&case(Placement::Here, Some(&c), peer));
    assert_eq!((v.write.clone(), v.why), (None, Why::NoVotes), "{v:?}");
    assert_eq!(
        v.votes.as_ref().map(|h| (h.machine.as_str(), h.lease)),
        Some(("h", 9))
    );
    let v = World::new(5050).decide(&case(Placement::Here, Some(&c), down(&polls)));
    assert!(matches!(v.write, Some(Write::Supersede { .. })), "{v:?}");
}

#[test]
fn votes_are_asked_only_once_etcd_shows_the_lease_lapsing() {
    // fleet-sim (partition healed, then an etcd outage): a holder declared down by a stale view but
    // renewing its lease had its witnesses vote it away; they refused it support for good and it fenced
    // at the next etcd outage.
    let c = claim("h", 9, None);
    let mut peer = down(&[]);
    peer.votes = 0;
    let v = World::new(5050).decide(&case(Placement::Here, Some(&c), peer.clone()));
    assert_eq!(
        (v.why, v.poll, v.votes.clone()),
        (Why::NoVotes, Some(9), None)
    );
    let renewing = [poll(5001, 9)];
    peer.polls = &renewing;
    let v = World::new(5050).decide(&case(Placement::Here, Some(&c), peer.clone()));
    assert_eq!((v.why, v.votes.clone()), (Why::NoVotes, None), "{v:?}");
    let lapsing = [poll(5001, 8)];
    peer.polls = &lapsing;
    let v = World::new(5050).decide(&case(Placement::Here, Some(&c), peer.clone()));
    assert_eq!(v.votes.as_ref().map(|h| h.lease), Some(9), "{v:?}");
    // An old answer asks nothing.
    let v = World::new(9000).decide(&case(Placement::Here, Some(&c), peer));
    assert_eq!(v.votes, None);
}

// ---- The holder is alive, restarting, suspected, unknown ------------------------------------------------

#[test]
fn nothing_is_taken_from_a_holder_that_is_not_down() {
    let c = claim("h", 9, None);
    let polls = [poll(5001, 1)];
    let alive = Peer {
        alive: true,
        polls: &polls,
        ..Peer::default()
    };
    let restarting = Peer {
        restarting: true,
        down: true,
        votes: 2,
        polls: &polls,
        ..Peer::default()
    };
    let suspect = Peer {
        alive: true,
        suspect: true,
        polls: &polls,
        ..Peer::default()
    };
    let unknown = Peer {
        polls: &polls,
        ..Peer::default()
    };
    let w = World::new(9000);
    for (peer, why) in [
        (alive, Why::HolderAlive),
        (restarting, Why::HolderAlive),
        (suspect.clone(), Why::HolderSuspect),
        (unknown, Why::HolderUnknown),
    ] {
        let v = w.decide(&case(Placement::Here, Some(&c), peer));
        assert_eq!((v.write.clone(), v.run, v.why), (None, false, why), "{v:?}");
    }
    // A suspect's lease is polled early.
    assert_eq!(
        w.decide(&case(Placement::Here, Some(&c), suspect)).poll,
        Some(9)
    );
}

#[test]
fn a_holder_that_keeps_renewing_its_lease_is_never_taken_over() {
    // Cut off from our gossip but not from etcd: every poll shows a fresh renewal.
    let c = claim("h", 9, None);
    for now in (2000..60_000).step_by(1000) {
        let polls = [poll(now - 100, 9)];
        let v = World::new(now).decide(&case(Placement::Here, Some(&c), down(&polls)));
        assert_eq!(v.write, None, "at {now}: {v:?}");
    }
}

#[test]
fn a_gone_lease_waits_for_its_claim_to_vanish_then_the_unit_is_claimed() {
    let c = claim("h", 9, None);
    let gone = [LeasePoll {
        sent: ms(100),
        received: ms(101),
        answer: LeaseAnswer::NotFound,
    }];
    let w = World::new(200);
    let v = w.decide(&case(Placement::Here, Some(&c), down(&gone)));
    assert_eq!((v.write, v.why), (None, Why::HolderGone));
    let v = w.decide(&case(Placement::Here, None, Peer::default()));
    assert_eq!(v.write, Some(Write::Claim));
}

#[test]
fn a_claim_that_is_itself_a_pending_takeover_is_not_taken_over() {
    let c = claim("h", 9, Some(("z", 3)));
    let polls = [poll(9000, 1)];
    let v = World::new(9100).decide(&case(Placement::Here, Some(&c), down(&polls)));
    assert_eq!((v.write, v.why), (None, Why::HandoffPending));
}

// ---- Our own claims ------------------------------------------------------------------------------------

#[test]
fn own_claims_run_only_unfenced_and_start_only_with_a_fresh_lease() {
    let mine = claim("me", 1, None);
    let mut k = case(Placement::Here, Some(&mine), Peer::default());
    // Fresh lease: start.
    assert!(World::new(1000).decide(&k).run);
    // Fenced (no support, lease unconfirmed for fence_after): stop.
    let mut w = World::new(1000);
    w.g = lease_guard(400, &[], 1000);
    assert_eq!(w.decide(&k).why, Why::Fenced);
    assert!(!w.decide(&k).run);
    // Kept alive by the witnesses' support only (lease unconfirmed): keep a running unit, start nothing.
    let mut w = World::new(5000);
    w.g = lease_guard(400, &["x"], 5000);
    assert!(!w.decide(&k).run);
    assert_eq!(w.decide(&k).why, Why::Unconfirmed);
    // ... but keeps it loaded: nothing says it belongs elsewhere.
    assert!(w.decide(&k).keeps_loaded());
    k.running = true;
    assert!(w.decide(&k).run);
    assert!(!w.decide(&k).keeps_loaded());
    // Fenced: not kept loaded either.
    let mut w = World::new(1000);
    w.g = lease_guard(400, &[], 1000);
    k.running = false;
    assert!(!w.decide(&k).keeps_loaded());
}

#[test]
fn an_own_claim_under_an_old_lease_is_rebound() {
    let old = claim("me", 77, None);
    let mut k = case(Placement::Here, Some(&old), Peer::default());
    k.running = true;
    let v = World::new(1000).decide(&k);
    assert_eq!(v.write, Some(Write::Rebind { mod_revision: 40 }));
    assert!(v.run);
}

#[test]
fn a_moved_unit_is_released_only_once_unloaded_and_never_with_a_pending_handover() {
    let mine = claim("me", 1, None);
    let mut k = case(Placement::NotHere, Some(&mine), Peer::default());
    k.loaded = true;
    let v = World::new(1000).decide(&k);
    assert_eq!((v.run, v.write), (false, None));
    k.loaded = false;
    let v = World::new(1000).decide(&k);
    assert_eq!(v.write, Some(Write::Release { mod_revision: 40 }));
    // Taken over from h, not yet proven: keep the claim (a released claim can be started at once).
    let pending = claim("me", 1, Some(("h", 9)));
    let polls = [poll(900, 9)];
    let k = case(Placement::NotHere, Some(&pending), down(&polls));
    let v = World::new(1000).decide(&k);
    assert_eq!(v.write, None);
    assert_eq!(v.poll, Some(9));
}

#[test]
fn a_unit_taken_from_us_is_stopped_then_acknowledged() {
    let theirs = claim("x", 5, Some(("me", 1)));
    let mut k = case(Placement::Here, Some(&theirs), Peer::default());
    k.loaded = true;
    k.running = true;
    let v = World::new(1000).decide(&k);
    assert_eq!(
        (v.run, v.write.clone(), v.why),
        (false, None, Why::TakenOver)
    );
    k.loaded = false;
    k.running = false;
    let v = World::new(1000).decide(&k);
    assert_eq!(v.write, Some(Write::Ack { mod_revision: 40 }));
}

#[test]
fn global_units_run_even_when_fenced() {
    let mut w = World::new(1000);
    w.g = lease_guard(0, &[], 1000);
    assert!(w.g.fenced(ms(1000)));
    let v = w.decide(&case(Placement::GlobalHere, None, Peer::default()));
    assert!(v.run);
}

#[test]
fn nothing_is_claimed_while_fenced_or_unconfirmed() {
    let mut w = World::new(1000);
    w.g = lease_guard(0, &[], 1000);
    let v = w.decide(&case(Placement::Here, None, Peer::default()));
    assert_eq!((v.write, v.why), (None, Why::Fenced));
    let mut w = World::new(5000);
    w.g = lease_guard(0, &["x"], 5000);
    let v = w.decide(&case(Placement::Here, None, Peer::default()));
    assert_eq!((v.write, v.why), (None, Why::Unconfirmed));
}

// ---- A holder cut off from its peers but not from etcd ---------------------------------------------------

/// Found by fleet-sim (`split-brain` with units that take 2 s to stop): a machine that keeps renewing its
/// lease was taken over, because the lease bound took the *earliest* of the answers it had (the minimum
/// over all polls) instead of the latest; the holder then stopped the unit slowly while the taker, proving
/// the handover from its first answer after the supersede, started it: a double run for as long as the
/// stop took.
#[test]
fn a_later_answer_showing_a_renewal_overrides_an_earlier_one() {
    let c = claim("h", 9, None);
    // Cut off from us at 800 (down at 1000) but renewing every ~170 ms: every answer says 9 s remain.
    let polls = [poll(900, 9), poll(1000, 9), poll(1100, 9)];
    let v = World::new(1150).decide(&case(Placement::Here, Some(&c), down(&polls)));
    assert_eq!(v.write, None, "{v:?}");
    // Later answers keep showing renewals: still no proof, however old the first answer is.
    let polls = [poll(900, 9), poll(5000, 9), poll(5100, 9)];
    let v = World::new(5150).decide(&case(Placement::Here, Some(&c), down(&polls)));
    assert_eq!(v.write, None, "{v:?}");
    // After the supersede, the first answer alone does not prove the handover either.
    let mine = claim("me", 1, Some(("h", 9)));
    let mut k = case(Placement::Here, Some(&mine), down(&polls));
    k.superseded_at = ms(4000);
    let v = World::new(5650).decide(&k);
    assert!(!v.run, "{v:?}");
    // An earlier answer still tightens the bound when the later one shows no renewal since it: renewed
    // at 0, answers at 1.5 s (8 s left: renewed before 0.5 s) and 2.0 s (7 s left: before 3 ms).
    let dead = [poll(1498, 8), poll(2001, 7), poll(2300, 7)];
    let v = World::new(2310).decide(&case(Placement::Here, Some(&c), down(&dead)));
    assert!(matches!(v.write, Some(Write::Supersede { .. })), "{v:?}");
}

/// Found by fleet-sim (`split-brain`, `flapping-link`): a machine whose plan moved a unit away and back
/// acted on answers it had received a second earlier, and took the unit from a holder that had renewed
/// its lease since (the handover then moved it, a needless move of a healthy unit).
#[test]
fn an_old_answer_does_not_prove_anything_now() {
    let c = claim("h", 9, None);
    let polls = [poll(1100, 9), poll(1200, 9)];
    // Without the old answers being refreshed, it asks again instead of taking over.
    let v = World::new(2500).decide(&case(Placement::Here, Some(&c), down(&polls)));
    assert_eq!((v.write.clone(), v.poll), (None, Some(9)), "{v:?}");
    // A fresh answer that shows the renewals stopped (renewed before ~1.2 s) proves it.
    let polls = [poll(1100, 9), poll(1200, 9), poll(2400, 8)];
    let v = World::new(2450).decide(&case(Placement::Here, Some(&c), down(&polls)));
    assert!(matches!(v.write, Some(Write::Supersede { .. })), "{v:?}");
}

/// Found by fleet-sim (`fleetd-dies`): a unit taken over from a machine whose fleetd died (so it never
/// acknowledges) was stopped and started again on every other pass until that machine's lease expired:
/// once the handover was proven, the verdict no longer asked for votes, the agent dropped them, the next
/// verdict found the handover unproven and stopped the unit, asked again, and so on. A fleetd restart had
/// the same effect (the new life has no observation yet): the unit stopped until the lease expired.
#[test]
fn a_unit_running_under_an_unresolved_handover_keeps_running_while_it_is_proven_again() {
    let mine = claim("me", 1, Some(("h", 9)));
    let mut k = case(Placement::Here, Some(&mine), Peer::default());
    k.loaded = true;
    k.running = true;
    k.superseded_at = ms(1000); // this fleetd's start, or the supersede
    let v = World::new(1100).decide(&k);
    assert_eq!((v.run, v.why, v.poll), (true, Why::HandoffPending, Some(9)));
    assert!(v.votes.is_some(), "{v:?}");
    // Not running: nothing starts before the proof.
    k.running = false;
    let v = World::new(1100).decide(&k);
    assert!(!v.run, "{v:?}");
}

/// A unit taken over is prepared (loaded, not started) from the pass that supersedes its claim until the
/// proof holds, so that only the start is left then: never run before the proof, never prepared
/// before the supersede, and no longer prepared once the takeover is abandoned (the plan moved it, the
/// claim was taken from this machine, fenced), which unloads it.
#[test]
fn a_unit_taken_over_is_prepared_not_started_until_the_proof_and_unprepared_when_abandoned() {
    let c = claim("h", 9, None);
    // Before the supersede (not proven, no votes, suspected, alive): nothing prepared.
    let early = [poll(950, 9)];
    let v = World::new(1200).decide(&case(Placement::Here, Some(&c), down(&early)));
    assert_eq!(
        (v.run, v.prepare, v.why),
        (false, false, Why::HolderNotFenced)
    );
    let mut few = down(&early);
    few.votes = 1;
    let v = World::new(1200).decide(&case(Placement::Here, Some(&c), few));
    assert_eq!((v.run, v.prepare), (false, false), "{v:?}");
    let suspect = Peer {
        alive: true,
        suspect: true,
        ..Peer::default()
    };
    let v = World::new(1200).decide(&case(Placement::Here, Some(&c), suspect));
    assert_eq!((v.run, v.prepare), (false, false), "{v:?}");
    // The pass that supersedes prepares it (once the write succeeded), starts nothing.
    let polls = [poll(950, 9), poll(2001, 7)];
    let v = World::new(2010).decide(&case(Placement::Here, Some(&c), down(&polls)));
    assert!(matches!(v.write, Some(Write::Supersede { .. })), "{v:?}");
    assert_eq!((v.run, v.prepare), (false, true), "{v:?}");
    // ... and keeps the votes wanted: the proof after the supersede needs them too.
    assert_eq!(
        v.votes.as_ref().map(|h| (h.machine.as_str(), h.lease)),
        Some(("h", 9))
    );
    // Ours with the handover, no proof after the supersede yet: prepared, not run.
    let mine = claim("me", 1, Some(("h", 9)));
    let mut k = case(Placement::Here, Some(&mine), down(&polls));
    k.superseded_at = ms(2015);
    k.loaded = true;
    let v = World::new(2016).decide(&k);
    assert_eq!(
        (v.run, v.prepare, v.why),
        (false, true, Why::HandoffPending)
    );
    // The fresh proof: run (no longer merely prepared).
    let fresh = [poll(950, 9), poll(2001, 7), poll(2020, 7)];
    let mut k2 = case(Placement::Here, Some(&mine), down(&fresh));
    k2.superseded_at = ms(2015);
    k2.loaded = true;
    let v = World::new(2030).decide(&k2);
    assert_eq!((v.run, v.prepare), (true, false), "{v:?}");
    // Abandoned: the plan puts it elsewhere (the claim is kept until the proof, the unit unloaded).
    let mut moved = k.clone();
    moved.placement = Placement::NotHere;
    let v = World::new(2016).decide(&moved);
    assert_eq!(
        (v.run, v.prepare, v.write.clone()),
        (false, false, None),
        "{v:?}"
    );
    // Abandoned: another machine took the claim from us.
    let theirs = claim("x", 5, Some(("me", 1)));
    let mut taken = case(Placement::Here, Some(&theirs), Peer::default());
    taken.loaded = true;
    let v = World::new(2016).decide(&taken);
    assert_eq!((v.run, v.prepare, v.why), (false, false, Why::TakenOver));
    // Abandoned: fenced.
    let mut w = World::new(2016);
    w.g = lease_guard(0, &[], 2016);
    let v = w.decide(&k);
    assert_eq!(
        (v.run, v.prepare, v.why),
        (false, false, Why::Fenced),
        "{v:?}"
    );
}
