//! Property tests for placement over random small clusters: no decision breaks a rule (checked by the
//! brute-force `Plan::violations`), the plan depends only on the inputs (not their order), claims on dead
//! machines count as no claim, and the plan is stable (fed back as claims, with or without a new machine,
//! it does not move anything).

use std::collections::BTreeMap;

use fleet_sched::{
    schedule, Decision, DesiredState, MachineId, MachineInfo, Plan, Reason, Requirements, UnitInfo,
    UnitName,
};
use proptest::prelude::*;

const MACHINE_IDS: &[&str] = &[
    "aaaaaaaa01",
    "aaaaaaaa02",
    "bbbbbbbb01",
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
];
const UNIT_NAMES: &[&str] = &[
    "a.service",
    "b.service",
    "c.service",
    "d.service",
    "e.service",
    "web@1.service",
    "web@2.service",
    "web@3.service",
    "web@.service",
    "x.socket",
];

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
                    .map(|(id, (role, ssd))| {
                        let mut m = MachineInfo::new(MachineId::parse(id).unwrap());
                        if role > 0 {
                            m = m.with_metadata("role", ["web", "db"][role - 1]);
                        }
                        if ssd {
                            m = m.with_metadata("disk", "ssd");
                        }
                        m
                    })
                    .collect()
            })
    })
}

fn words(pool: &'static [&'static str], max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop::sample::select(pool), 0..=max).prop_map(|v| {
        let mut out: Vec<String> = Vec::new();
        for w in v {
            if !out.iter().any(|x| x == w) {
                out.push(w.to_string());
            }
        }
        out
    })
}

fn requirements() -> impl Strategy<Value = Requirements> {
    let machine_id = prop_oneof![
        6 => Just(None),
        1 => prop::sample::select(&["aaaaaaaa", "aaaaaaaa01", "m1", "m9"][..]).prop_map(|s| Some(s.to_string())),
    ];
    let metadata = (0..4usize, any::<bool>()).prop_map(|(role, ssd)| {
        let mut md = BTreeMap::new();
        match role {
            1 => {
                md.insert("role".to_string(), vec!["web".to_string()]);
            }
            2 => {
                md.insert(
                    "role".to_string(),
                    vec!["db".to_string(), "web".to_string()],
                );
            }
            _ => {}
        }
        if ssd && role != 3 {
            md.insert("disk".to_string(), vec!["ssd".to_string()]);
        }
        md
    });
    (
        machine_id,
        words(
            &["a.service", "b.service", "web@1.service", "missing.service"],
            2,
        ),
        metadata,
        words(
            &[
                "*.service",
                "web@*.service",
                "a.service",
                "b*",
                "[ab].service",
                "c.service",
                "[x",
            ],
            2,
        ),
        prop::bool::weighted(0.15),
        words(
            &["a.service", "b.service", "web@*.service", "d.service", "e*"],
            1,
        ),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(machine_id, machine_of, metadata, conflicts, global, replaces, keep_invalid)| {
                let mut r = Requirements {
                    machine_id,
                    machine_of,
                    metadata,
                    conflicts,
                    global,
                    replaces,
                    ..Requirements::default()
                };
                if !keep_invalid {
                    // Drop options until the combination is one fleet accepts.
                    let fixes: [fn(&mut Requirements); 5] = [
                        |r| r.machine_id = None,
                        |r| r.global = false,
                        |r| r.replaces.clear(),
                        |r| r.machine_of.clear(),
                        |r| r.conflicts.clear(),
                    ];
                    for fix in fixes {
                        if r.validate().is_ok() {
                            break;
                        }
                        fix(&mut r);
                    }
                }
                r
            },
        )
}

fn units() -> impl Strategy<Value = Vec<UnitInfo>> {
    prop::sample::subsequence(UNIT_NAMES, 0..=UNIT_NAMES.len()).prop_flat_map(|names| {
        let n = names.len();
        let desired = prop_oneof![
            1 => Just(DesiredState::Inactive),
            1 => Just(DesiredState::Loaded),
            3 => Just(DesiredState::Launched),
        ];
        let claim = prop_oneof![
            2 => Just(None),
            3 => prop::sample::select(MACHINE_IDS).prop_map(Some),
            1 => Just(Some("dead")),
        ];
        (
            Just(names),
            prop::collection::vec((requirements(), desired, claim), n),
        )
            .prop_map(|(names, specs)| {
                names
                    .iter()
                    .zip(specs)
                    .map(|(name, (req, desired, claim))| UnitInfo {
                        name: UnitName::parse(name).unwrap(),
                        requirements: req,
                        desired,
                        claim: claim.map(|c| MachineId::parse(c).unwrap()),
                    })
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
                    let mut m = MachineInfo::new(MachineId::parse(&format!("m{i:03}")).unwrap());
                    if role > 0 {
                        m = m.with_metadata("role", ["web", "db"][role - 1]);
                    }
                    if ssd {
                        m = m.with_metadata("disk", "ssd");
                    }
                    m
                })
                .collect()
        })
}

fn big_requirements(names: Vec<String>) -> impl Strategy<Value = Requirements> {
    let md = prop_oneof![
        3 => Just(BTreeMap::new()),
        1 => Just([("role".to_string(), vec!["web".to_string()])].into()),
        1 => Just([("role".to_string(), vec!["db".to_string(), "web".to_string()])].into()),
        1 => Just([("disk".to_string(), vec!["ssd".to_string()])].into()),
    ];
    let conflicts = prop_oneof![
        3 => Just(vec![]),
        2 => Just(vec!["web@*.service".to_string()]),
        1 => Just(vec!["app1*.service".to_string()]),
        1 => Just(vec!["app2.service".to_string(), "app3*".to_string()]),
    ];
    let replaces = prop_oneof![
        6 => Just(vec![]),
        1 => prop::sample::select(names.clone()).prop_map(|n| vec![n]),
        1 => Just(vec!["app3*.service".to_string()]),
    ];
    let machine_of = prop_oneof![
        5 => Just(vec![]),
        1 => prop::sample::select(names).prop_map(|n| vec![n]),
    ];
    (
        md,
        conflicts,
        replaces,
        machine_of,
        prop::bool::weighted(0.05),
    )
        .prop_map(|(metadata, conflicts, replaces, machine_of, global)| {
            let mut r = Requirements {
                metadata,
                conflicts,
                replaces,
                machine_of,
                global,
                ..Requirements::default()
            };
            let fixes: [fn(&mut Requirements); 3] = [
                |r| r.global = false,
                |r| r.replaces.clear(),
                |r| r.machine_of.clear(),
            ];
            for fix in fixes {
                if r.validate().is_ok() {
                    break;
                }
                fix(&mut r);
            }
            r
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
            prop::collection::vec((big_requirements(pool.clone()), claim), n),
        )
            .prop_map(|(chosen, specs)| {
                chosen
                    .iter()
                    .zip(specs)
                    .map(|(name, (req, claim))| UnitInfo {
                        name: UnitName::parse(name).unwrap(),
                        requirements: req,
                        desired: DesiredState::Launched,
                        claim: claim.map(|c| MachineId::parse(&c).unwrap()),
                    })
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

/// The units with the plan's decisions as their claims (unplaceable and global units: no claim).
fn with_plan_claims(units: &[UnitInfo], plan: &Plan) -> Vec<UnitInfo> {
    units
        .iter()
        .map(|u| {
            let mut u = u.clone();
            u.claim = match plan.decision(&u.name) {
                Some(Decision::On(m)) => Some(m.clone()),
                _ => None,
            };
            u
        })
        .collect()
}

proptest! {
    // 2000 cases each by default; PROPTEST_CASES=N for a longer campaign.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(2000)
    ))]

    #[test]
    fn no_decision_violates_a_requirement(ms in machines(), us in units()) {
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
    fn same_inputs_in_any_order_give_the_same_plan(ms in machines(), us in units(), seed in any::<u64>()) {
        let plan = schedule(&ms, &us);
        prop_assert_eq!(&schedule(&ms, &us), &plan);
        let again = schedule(&shuffled(&ms, seed), &shuffled(&us, seed ^ 0x9e37_79b9));
        prop_assert_eq!(again, plan);
    }

    #[test]
    fn claims_on_dead_machines_count_as_none(ms in machines(), us in units()) {
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
    fn the_plan_fed_back_as_claims_is_stable(ms in machines(), us in units()) {
        let plan = schedule(&ms, &us);
        let claimed = with_plan_claims(&us, &plan);
        let again = schedule(&ms, &claimed);
        prop_assert_eq!(&again, &plan, "\nfirst run:\n{}\nsecond run:\n{}", describe(&ms, &us), describe(&ms, &claimed));
    }

    #[test]
    fn a_new_machine_moves_no_placed_unit(ms in machines(), us in units()) {
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
