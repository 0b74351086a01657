//! Generators shared by the placement property tests (`placement_props`: `schedule` alone,
//! `planner_props`: the incremental planner against `schedule`): small clusters over fixed machine IDs and
//! unit names with every `[X-Fleet]` option, and larger ones past the size from which a metadata
//! requirement gets its own ordered set. Test-only (a module of the test crates, not of the library).

// Each test crate uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;

use fleet_sched::{
    Decision, DesiredState, MachineId, MachineInfo, Plan, Requirements, UnitInfo, UnitName,
};
use proptest::prelude::*;

pub const MACHINE_IDS: &[&str] = &[
    "aaaaaaaa01",
    "aaaaaaaa02",
    "bbbbbbbb01",
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
];

pub const UNIT_NAMES: &[&str] = &[
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

/// A machine with role `web` (1), `db` (2) or none (0), and maybe `disk=ssd`.
pub fn machine(id: &str, role: usize, ssd: bool) -> MachineInfo {
    let mut m = MachineInfo::new(MachineId::parse(id).unwrap());
    if role > 0 {
        m = m.with_metadata("role", ["web", "db"][role - 1]);
    }
    if ssd {
        m = m.with_metadata("disk", "ssd");
    }
    m
}

/// A unit from its parts (`claim`: a machine ID).
pub fn unit(
    name: &str,
    requirements: Requirements,
    desired: DesiredState,
    claim: Option<String>,
) -> UnitInfo {
    UnitInfo {
        name: UnitName::parse(name).unwrap(),
        requirements,
        desired,
        claim: claim.map(|c| MachineId::parse(&c).unwrap()),
    }
}

/// The units with the plan's decisions as their claims (unplaceable and global units: no claim), as
/// the agents write them.
pub fn with_plan_claims(units: &[UnitInfo], plan: &Plan) -> Vec<UnitInfo> {
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

/// Up to `max` distinct words of `pool`.
pub fn words(
    pool: &'static [&'static str],
    max: usize,
) -> impl Strategy<Value = Vec<String>> + Clone {
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

/// Drops options, in the order of `fixes`, until the combination is one fleet accepts.
pub fn made_valid(mut r: Requirements, fixes: &[fn(&mut Requirements)]) -> Requirements {
    for fix in fixes {
        if r.validate().is_ok() {
            break;
        }
        fix(&mut r);
    }
    r
}

/// Requirements over [`UNIT_NAMES`]: MachineOf/Replaces chains and cycles (up to `max_replaces`
/// `Replaces=` patterns), conflicting globs, pins, metadata, global units, and (sometimes) combinations
/// fleet rejects.
pub fn requirements(max_replaces: usize) -> impl Strategy<Value = Requirements> + Clone {
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
            &[
                "a.service",
                "b.service",
                "c.service",
                "web@1.service",
                "missing.service",
            ],
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
            max_replaces,
        ),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(machine_id, machine_of, metadata, conflicts, global, replaces, keep_invalid)| {
                let r = Requirements {
                    machine_id,
                    machine_of,
                    metadata,
                    conflicts,
                    global,
                    replaces,
                    ..Requirements::default()
                };
                if keep_invalid {
                    return r;
                }
                made_valid(
                    r,
                    &[
                        |r| r.machine_id = None,
                        |r| r.global = false,
                        |r| r.replaces.clear(),
                        |r| r.machine_of.clear(),
                        |r| r.conflicts.clear(),
                    ],
                )
            },
        )
}

/// A desired state: inactive, loaded, or (`launched` times as often) launched.
pub fn desired(launched: u32) -> impl Strategy<Value = DesiredState> + Clone {
    prop_oneof![
        1 => Just(DesiredState::Inactive),
        1 => Just(DesiredState::Loaded),
        launched => Just(DesiredState::Launched),
    ]
}

/// A claim: none, a machine of [`MACHINE_IDS`] (live or not), or a machine that never exists.
pub fn claim() -> impl Strategy<Value = Option<String>> + Clone {
    prop_oneof![
        2 => Just(None),
        3 => prop::sample::select(MACHINE_IDS).prop_map(|s| Some(s.to_string())),
        1 => Just(Some("dead".to_string())),
    ]
}

/// Some of [`UNIT_NAMES`], each with [`requirements`], a desired state and a [`claim`].
pub fn units(max_replaces: usize, launched: u32) -> impl Strategy<Value = Vec<UnitInfo>> {
    prop::sample::subsequence(UNIT_NAMES, 0..=UNIT_NAMES.len()).prop_flat_map(move |names| {
        let n = names.len();
        (
            Just(names),
            prop::collection::vec((requirements(max_replaces), desired(launched), claim()), n),
        )
            .prop_map(|(names, specs)| {
                names
                    .iter()
                    .zip(specs)
                    .map(|(name, (req, desired, claim))| unit(name, req, desired, claim))
                    .collect()
            })
    })
}

/// Requirements of the large clusters over the unit `names`: metadata classes, self-conflicting instance
/// groups, Replaces and MachineOf between them, and global units (with probability `global`).
pub fn big_requirements(
    names: Vec<String>,
    global: f64,
) -> impl Strategy<Value = Requirements> + Clone {
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
        prop::bool::weighted(global),
    )
        .prop_map(|(metadata, conflicts, replaces, machine_of, global)| {
            let r = Requirements {
                metadata,
                conflicts,
                replaces,
                machine_of,
                global,
                ..Requirements::default()
            };
            made_valid(
                r,
                &[
                    |r| r.global = false,
                    |r| r.replaces.clear(),
                    |r| r.machine_of.clear(),
                ],
            )
        })
}
