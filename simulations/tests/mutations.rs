//! Mutation tests: a rule bug planted in the shared decision core (`fleet_decide`) or in placement
//! (`fleet_sched`), both behind feature `mutations` which only these tests turn on, must make the
//! `fleet-sim` binary exit non-zero with a shrunk fault timeline, on a scenario that passes without it.

use std::path::Path;
use std::process::{Command, Output};

fn fleet_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleet-sim"))
        .args(args)
        .output()
        .expect("fleet-sim runs")
}

fn scenario(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"))
        .display()
        .to_string()
}

fn test_scenario(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scenarios")
        .join(format!("{name}.toml"))
        .display()
        .to_string()
}

/// `sc` with `seed` passes as is, and fails with the mutation: exit status 1, the broken invariant
/// named, and a shrunk timeline printed (returned).
fn caught(mutation: &str, sc: &str, seed: &str, invariant: &str) -> String {
    let run = ["run", sc, "--seed", seed];
    let clean = fleet_sim(&run);
    assert!(
        clean.status.success(),
        "{sc} must pass without the mutation:\n{}",
        String::from_utf8_lossy(&clean.stdout)
    );
    let out = fleet_sim(&[run.as_slice(), &["--mutation", mutation]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{mutation}: not caught:\n{stdout}"
    );
    assert!(stdout.contains(invariant), "{mutation}:\n{stdout}");
    assert!(
        stdout.contains("breaks an invariant") && stdout.contains("shortest fault timeline"),
        "{mutation}: no shrunk timeline:\n{stdout}"
    );
    stdout[stdout.find("shortest fault timeline").unwrap()..].to_string()
}

/// [`caught`], with at least one fault left in the shrunk timeline.
fn caught_with_faults(mutation: &str, sc: &str, seed: &str, invariant: &str) {
    let shrunk = caught(mutation, sc, seed, invariant);
    assert!(shrunk.contains("[[fault]]"), "{mutation}:\n{shrunk}");
}

#[test]
fn ignoring_the_votes_is_caught() {
    // 2|2: the half without etcd keeps its units with the support of its two witnesses; with the bug
    // the half with etcd takes them over on the lease proof alone.
    caught_with_faults(
        "ignore-votes",
        &scenario("two-two-partition"),
        "1",
        "DoubleRun",
    );
}

#[test]
fn ignoring_the_holder_proof_is_caught() {
    // fleetd paused with fence_after 3 s: the witnesses vote once etcd shows its lease lapsing (after
    // a second); with the bug the votes are enough and the unit starts elsewhere while the paused
    // machine's guard lets it run until 3 s after the last confirmation. (With fence_after 500 ms the
    // votes, asked only once the lease lapses, come after the proof anyway.)
    let sc =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/agent-freeze-slow-fence.toml");
    caught(
        "ignore-holder-proof",
        &sc.display().to_string(),
        "1",
        "DoubleRun",
    );
}

#[test]
fn fencing_after_the_ttl_is_caught() {
    // fleetd paused, its units and guard running: with the bug the guard kills only a TTL after the
    // last confirmation, long after the takers' proof.
    caught(
        "fence-after-ttl",
        &scenario("agent-freeze"),
        "1",
        "DoubleRun",
    );
}

#[test]
fn releasing_under_an_unresolved_handover_is_caught() {
    // fleetd paused 2.2 s with fence_after 3 s: the takers prove its units fenced and supersede
    // them; it thaws just after, renews its lease and restarts them before it sees the supersede.
    // The takers' metadata then loses role=web: with the bug they release the claims at once, and
    // machines 6-9 claim and start the units while the thawed holder still runs them (2 s stops).
    caught_with_faults(
        "ignore-handover-on-release",
        &test_scenario("handover-release"),
        "1",
        "DoubleRun",
    );
}

#[test]
fn keeping_a_voted_away_lease_is_caught() {
    // h drops all its traffic for 5 s: its units are taken over on its witnesses' votes, which refuse
    // that lease's support for good. With the bug it keeps renewing that lease, and its etcd-only
    // losses afterwards (its peers in sight) fence it: a liveness bug, which only the no-needless-fence
    // invariant sees (the unit only h may run stops there; nothing runs twice, nothing moves).
    caught_with_faults(
        "keep-voted-lease",
        &scenario("voted-lease"),
        "1",
        "NeedlessFence",
    );
}

#[test]
fn planning_over_machines_without_etcd_is_caught() {
    // m2, which runs nothing, loses etcd (its gossip fine); then m1 crashes. With the bug the plan still
    // counts m2, the least loaded, and gives it m1's units, which it cannot claim: they run nowhere
    // until its etcd is back, past the scenario's 5 s placement bound (a liveness bug: NotPlaced).
    caught_with_faults(
        "plan-machines-without-etcd",
        &scenario("idle-loses-etcd"),
        "1",
        "NotPlaced",
    );
}

#[test]
fn placement_ignoring_conflicts_is_caught_by_the_independent_checker() {
    // Six api@ instances (Conflicts=api@*.service) on four machines: with the bug in `schedule`, two
    // machines run two each. The checker reads Conflicts= itself; no fault is needed (the shrinker
    // drops the crash).
    let shrunk = caught(
        "ignore-conflicts",
        &test_scenario("api-conflicts"),
        "1",
        "Requirement",
    );
    assert!(shrunk.contains("fault = []"), "{shrunk}");
}

#[test]
fn an_unknown_mutation_is_refused() {
    let out = fleet_sim(&["run", &scenario("pair-cut"), "--mutation", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mutation"));
}
