//! Property tests for placement over random small clusters: no decision breaks a rule (checked by the
//! brute-force `Plan::violations`), the plan depends only on the inputs (not their order), claims on dead
//! machines count as no claim, and the plan is stable (fed back as claims, with or without a new machine,
//! it does not move anything).

use fleet_sched::{schedule, Decision, DesiredState, MachineId, MachineInfo, Reason, UnitInfo};
use proptest::prelude::*;

mod common;
use common::{big_requirements, machine, unit, units, with_plan_claims, MACHINE_IDS};

fn machines() -> impl Strategy<Value = Vec<MachineInfo>> {
    prop::sample::subsequence(MACHINE_IDS, 0..=MACHINE_IDS.len()).prop_flat_map(|ids| {
        let n = ids.len();
        (
            Just(ids),
            prop::collection::vec((0..3usize, any::<bool>()), n),
        )
            .prop_map(|(ids, md)| {
                ids.iter()
                    .zip(md)
                    .map(|(id, (role, ssd))| machine(id, role, ssd))
                    .collect()
            })
    })
}

/// Clusters large enough for the per-metadata ordered sets (more than 32 matching machines) and for
/// groups of self-conflicting template instances.
fn big_machines() -> impl Strategy<Value = Vec<MachineInfo>> {
    (
        33..90usize,
        prop::collection::vec((0..3usize, any::<bool>()), 90),
    )
        .prop_map(|(n, md)| {
            (0..n)
                .map(|i| {
                    let (role, ssd) = md[i];
                    machine(&format!("m{i:03}"), role, ssd)
                })
                .collect()
        })
}

fn big_units() -> impl Strategy<Value = Vec<UnitInfo>> {
    let names: Vec<String> = (0..40)
        .map(|i| format!("web@{i}.service"))
        .chain((0..40).map(|i| format!("app{i}.service")))
        .collect();
    let pool = names.clone();
    prop::sample::subsequence(names, 10..80).prop_flat_map(move |chosen| {
        let n = chosen.len();
        let claim = prop_oneof![
            2 => Just(None),
            2 => (0..90usize).prop_map(|i| Some(format!("m{i:03}"))),
        ];
        (
            Just(chosen),
            prop::collection::vec((big_requirements(pool.clone(), 0.05), claim), n),
        )
            .prop_map(|(chosen, specs)| {
                chosen
                    .iter()
                    .zip(specs)
                    .map(|(name, (req, claim))| unit(name, req, DesiredState::Launched, claim))
                    .collect()
            })
    })
}

/// One line per machine and active unit, for failure messages.
fn describe(ms: &[MachineInfo], us: &[UnitInfo]) -> String {
    let mut out = String::new();
    for m in ms {
        out += &format!("machine {} {:?}\n", m.id, m.metadata);
    }
    for u in us {
        let r = &u.requirements;
        out += &format!(
            "unit {} {:?} claim={:?} id={:?} of={:?} md={:?} conflicts={:?} global={} replaces={:?}\n",
            u.name,
            u.desired,
            u.claim.as_ref().map(|c| c.as_str()),
            r.machine_id,
            r.machine_of,
            r.metadata,
            r.conflicts,
            r.global,
            r.replaces
        );
    }
    out
}

/// A deterministic permutation from `seed`.
fn shuffled<T: Clone>(v: &[T], mut seed: u64) -> Vec<T> {
    let mut out = v.to_vec();
    for i in (1..out.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.swap(i, (seed >> 33) as usize % (i + 1));
    }
    out
}

proptest! {
    // 2000 cases each by default; PROPTEST_CASES=N for a longer campaign.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(2000)
    ))]

    #[test]
    fn no_decision_violates_a_requirement(ms in machines(), us in units(1, 3)) {
        let plan = schedule(&ms, &us);
        let v = plan.violations(&ms, &us);
        prop_assert!(v.is_empty(), "{v:#?}\n{plan:#?}");
        for (name, reason) in plan.unplaceable() {
            prop_assert!(!reason.to_string().is_empty(), "{name}");
            // The fallback reason means a blocked unit was not retried after a reservation was given up.
            prop_assert!(!matches!(reason, Reason::NoRoom { .. }), "{name}: {reason}\n{}", describe(&ms, &us));
        }
    }

    #[test]
    fn same_inputs_in_any_order_give_the_same_plan(ms in machines(), us in units(1, 3), seed in any::<u64>()) {
        let plan = schedule(&ms, &us);
        prop_assert_eq!(&schedule(&ms, &us), &plan);
        let again = schedule(&shuffled(&ms, seed), &shuffled(&us, seed ^ 0x9e37_79b9));
        prop_assert_eq!(again, plan);
    }

    #[test]
    fn claims_on_dead_machines_count_as_none(ms in machines(), us in units(1, 3)) {
        let cleared: Vec<UnitInfo> = us
            .iter()
            .map(|u| {
                let mut u = u.clone();
                if u.claim.as_ref().is_some_and(|c| !ms.iter().any(|m| &m.id == c)) {
                    u.claim = None;
                }
                u
            })
            .collect();
        prop_assert_eq!(schedule(&ms, &cleared), schedule(&ms, &us));
    }

    #[test]
    fn the_plan_fed_back_as_claims_is_stable(ms in machines(), us in units(1, 3)) {
        let plan = schedule(&ms, &us);
        let claimed = with_plan_claims(&us, &plan);
        let again = schedule(&ms, &claimed);
        prop_assert_eq!(&again, &plan, "\nfirst run:\n{}\nsecond run:\n{}", describe(&ms, &us), describe(&ms, &claimed));
    }

    #[test]
    fn a_new_machine_moves_no_placed_unit(ms in machines(), us in units(1, 3)) {
        let plan = schedule(&ms, &us);
        let claimed = with_plan_claims(&us, &plan);
        let mut more = ms.clone();
        more.push(MachineInfo::new(MachineId::parse("zz1").unwrap()).with_metadata("role", "web"));
        let after = schedule(&more, &claimed);
        let v = after.violations(&more, &claimed);
        prop_assert!(v.is_empty(), "{v:#?}");
        for (name, d) in &plan.decisions {
            if let Decision::On(m) = d {
                prop_assert_eq!(after.decision(name), Some(&Decision::On(m.clone())), "{}\nfirst run:\n{}\nsecond run:\n{}", name, describe(&ms, &us), describe(&more, &claimed));
            }
        }
    }
}

proptest! {
    // Bigger inputs, fewer cases (PROPTEST_CASES / 10).
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(2000) / 10
    ))]

    #[test]
    fn large_clusters_are_sound_and_stable(ms in big_machines(), us in big_units(), seed in any::<u64>()) {
        let plan = schedule(&ms, &us);
        let v = plan.violations(&ms, &us);
        prop_assert!(v.is_empty(), "{v:#?}\n{}", describe(&ms, &us));
        for (name, reason) in plan.unplaceable() {
            prop_assert!(!matches!(reason, Reason::NoRoom { .. }), "{name}: {reason}\n{}", describe(&ms, &us));
        }
        prop_assert_eq!(&schedule(&shuffled(&ms, seed), &shuffled(&us, !seed)), &plan);
        let claimed = with_plan_claims(&us, &plan);
        prop_assert_eq!(&schedule(&ms, &claimed), &plan, "\n{}", describe(&ms, &us));
    }
}
