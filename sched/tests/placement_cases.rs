//! Placement over cluster snapshots, one rule at a time, including fleet v1's own scheduling scenarios.
//! Every plan is also checked by the brute-force [`Plan::violations`]. Stability and input handling:
//! `placement_stability.rs`.

mod snapshots;
use snapshots::*;

#[test]
fn least_loaded_machine_wins_ties_broken_by_id() {
    let ms = machines(&["m3", "m1", "m2"]);
    let us = vec![
        claimed("a.service", "", "m1"),
        claimed("b.service", "", "m1"),
        claimed("c.service", "", "m2"),
        unit("d.service", ""),
        unit("e.service", ""),
        unit("f.service", ""),
    ];
    let plan = run(&ms, &us);
    // Loads before: m1=2, m2=1, m3=0. d -> m3 (0); e -> m2 (tie m2=1/m3=1, lower ID); f -> m3.
    assert_eq!(on(&plan, "d.service"), s("m3"));
    assert_eq!(on(&plan, "e.service"), s("m2"));
    assert_eq!(on(&plan, "f.service"), s("m3"));
    let load: Vec<usize> = plan.load().values().copied().collect();
    assert_eq!(load, vec![2, 2, 2]);
}

#[test]
fn no_machines_means_every_unit_is_unplaceable() {
    let plan = run(
        &[],
        &[unit("a.service", ""), unit("g.service", "Global=true")],
    );
    assert_eq!(reason(&plan, "a.service"), Reason::NoMachines);
    assert_eq!(reason(&plan, "g.service"), Reason::NoMachines);
    assert_eq!(
        Reason::NoMachines.to_string(),
        "no machine is available in the cluster"
    );
}

#[test]
fn inactive_units_are_ignored_and_carry_no_load() {
    let ms = machines(&["m1", "m2"]);
    let mut idle = claimed("idle.service", "", "m1");
    idle.desired = DesiredState::Inactive;
    let mut loaded = unit("loaded.service", "");
    loaded.desired = DesiredState::Loaded;
    let plan = run(&ms, &[idle, loaded]);
    assert!(plan
        .decision(&UnitName::parse("idle.service").unwrap())
        .is_none());
    // m1 is not loaded by the inactive unit: the tie goes to m1.
    assert_eq!(on(&plan, "loaded.service"), s("m1"));
}

#[test]
fn fleet_five_mutually_conflicting_units_on_three_machines() {
    // fleet v1 functional test TestScheduleMultipleConflicts: conflict.{0..4}.service with
    // Conflicts=conflict*.service on a three-machine cluster.
    let ms = machines(&["m1", "m2", "m3"]);
    let us: Vec<UnitInfo> = (0..5)
        .map(|i| {
            unit(
                &format!("conflict.{i}.service"),
                "Conflicts=conflict*.service\n",
            )
        })
        .collect();
    let plan = run(&ms, &us);
    let placed: Vec<String> = (0..5)
        .filter_map(|i| on(&plan, &format!("conflict.{i}.service")))
        .collect();
    assert_eq!(
        placed,
        vec!["m1", "m2", "m3"],
        "three placed, on distinct machines"
    );
    for i in 3..5 {
        let r = reason(&plan, &format!("conflict.{i}.service"));
        assert!(
            matches!(
                r,
                Reason::ConflictsEverywhere {
                    machines: 3,
                    replaces: false,
                    ..
                }
            ),
            "{r:?}"
        );
        let text = r.to_string();
        assert!(text.contains("conflicts with"), "{text}");
        assert!(text.contains("conflict.0.service on m1"), "{text}");
    }
}

#[test]
fn one_way_conflict_is_checked_from_both_sides() {
    let ms = machines(&["m1", "m2"]);
    // Only a declares the conflict; b (no Conflicts) must still avoid a's machine.
    let plan = run(
        &ms,
        &[
            claimed("a.service", "Conflicts=b.service\n", "m1"),
            unit("b.service", ""),
            unit("c.service", ""),
        ],
    );
    assert_eq!(on(&plan, "a.service"), s("m1"));
    assert_eq!(on(&plan, "b.service"), s("m2"));
    // c has no conflict: least loaded, tie by ID.
    assert_eq!(on(&plan, "c.service"), s("m1"));

    // On a single machine the first decided unit wins and the other says why.
    let one = machines(&["m1"]);
    let plan = run(
        &one,
        &[
            unit("a.service", "Conflicts=b.service\n"),
            unit("b.service", ""),
        ],
    );
    assert_eq!(on(&plan, "a.service"), s("m1"));
    let r = reason(&plan, "b.service");
    assert_eq!(
        r.to_string(),
        "every one of the 1 machine(s) it may run on has a unit it conflicts with (e.g. a.service on m1)"
    );
    // A claim is kept: b claimed on m1 stays, a (the one declaring the conflict) cannot go there.
    let plan = run(
        &one,
        &[
            unit("a.service", "Conflicts=b.service\n"),
            claimed("b.service", "", "m1"),
        ],
    );
    assert_eq!(on(&plan, "b.service"), s("m1"));
    assert!(matches!(
        reason(&plan, "a.service"),
        Reason::ConflictsEverywhere { .. }
    ));
}

#[test]
fn conflicting_claims_on_one_machine_are_separated() {
    // Two units claimed on the same machine that now conflict: the first by name keeps it.
    let ms = machines(&["m1", "m2"]);
    let plan = run(
        &ms,
        &[
            claimed("a.service", "", "m1"),
            claimed("b.service", "Conflicts=a.service\n", "m1"),
        ],
    );
    assert_eq!(on(&plan, "a.service"), s("m1"));
    assert_eq!(on(&plan, "b.service"), s("m2"));
}

#[test]
fn machine_of_pair_moves_together_when_the_target_machine_dies() {
    let xfleet = "MachineOf=db.service\n";
    let before = machines(&["m1", "m2", "m3"]);
    let us = vec![
        claimed("db.service", "", "m1"),
        claimed("app.service", xfleet, "m1"),
        claimed("other.service", "", "m2"),
    ];
    let plan = run(&before, &us);
    assert_eq!(on(&plan, "db.service"), s("m1"));
    assert_eq!(on(&plan, "app.service"), s("m1"));

    // m1 dies: db goes to the least loaded live machine (m3) and app follows it.
    let after = machines(&["m2", "m3"]);
    let plan = run(&after, &us);
    assert_eq!(on(&plan, "db.service"), s("m3"));
    assert_eq!(on(&plan, "app.service"), s("m3"));
    assert_eq!(on(&plan, "other.service"), s("m2"));

    // The follower's claim on a live machine does not hold it there when its target moves.
    let us = vec![
        claimed("db.service", "", "gone"),
        claimed("app.service", xfleet, "m2"),
        claimed("other.service", "", "m2"),
    ];
    let plan = run(&after, &us);
    assert_eq!(on(&plan, "db.service"), s("m3"));
    assert_eq!(on(&plan, "app.service"), s("m3"));
}

#[test]
fn machine_of_follows_several_targets_and_reports_problems() {
    let ms = machines(&["m1", "m2"]);
    let plan = run(
        &ms,
        &[
            claimed("a.service", "", "m2"),
            claimed("b.service", "MachineOf=a.service\n", "m1"),
            unit("c.service", "MachineOf=a.service b.service\n"),
            unit("d.service", "MachineOf=missing.service\n"),
            unit("e.service", "MachineOf=d.service\n"),
        ],
    );
    assert_eq!(on(&plan, "b.service"), s("m2"));
    assert_eq!(on(&plan, "c.service"), s("m2"));
    assert_eq!(
        reason(&plan, "d.service"),
        Reason::MachineOfNotPlaced("missing.service".into())
    );
    assert_eq!(
        reason(&plan, "d.service").to_string(),
        "MachineOf=missing.service is not placed on any machine"
    );
    assert_eq!(
        reason(&plan, "e.service"),
        Reason::MachineOfNotPlaced("d.service".into())
    );

    // Targets on different machines (both pinned by MachineID).
    let plan = run(
        &ms,
        &[
            unit("x.service", "MachineID=m1\n"),
            unit("y.service", "MachineID=m2\n"),
            unit("z.service", "MachineOf=x.service y.service\n"),
        ],
    );
    assert_eq!(
        reason(&plan, "z.service"),
        Reason::MachineOfApart(vec!["x.service".into(), "y.service".into()])
    );

    // An inactive target is not placed.
    let mut t = unit("t.service", "");
    t.desired = DesiredState::Inactive;
    let plan = run(&ms, &[t, unit("f.service", "MachineOf=t.service\n")]);
    assert_eq!(
        reason(&plan, "f.service"),
        Reason::MachineOfNotPlaced("t.service".into())
    );
}

#[test]
fn machine_of_follower_must_also_satisfy_its_own_rules() {
    let ms = vec![
        machine("m1", &[("role", "db")]),
        machine("m2", &[("role", "web")]),
    ];
    let plan = run(
        &ms,
        &[
            unit("db.service", "MachineMetadata=role=db\n"),
            unit(
                "web.service",
                "MachineOf=db.service\nMachineMetadata=role=web\n",
            ),
            unit(
                "x.service",
                "MachineOf=db.service\nConflicts=lock.service\n",
            ),
            unit("lock.service", "MachineMetadata=role=db\n"),
        ],
    );
    assert_eq!(on(&plan, "db.service"), s("m1"));
    assert_eq!(
        reason(&plan, "web.service"),
        Reason::MetadataUnmatched {
            requirement: "role=web".into(),
            considered: 1
        }
    );
    // lock.service is decided before x.service (by name) and sits on m1, where x must follow db: blocked.
    assert_eq!(on(&plan, "lock.service"), s("m1"));
    assert!(matches!(
        reason(&plan, "x.service"),
        Reason::ConflictsEverywhere { machines: 1, .. }
    ));
}

#[test]
fn machine_of_cycles_are_unschedulable() {
    let ms = machines(&["m1"]);
    let plan = run(
        &ms,
        &[
            unit("a.service", "MachineOf=b.service\n"),
            unit("b.service", "MachineOf=a.service\n"),
            unit("c.service", "MachineOf=a.service\n"),
            unit("s.service", "MachineOf=s.service\n"),
            unit("x.service", "MachineOf=y.service\n"),
            unit("y.service", "MachineOf=z.service\n"),
            unit("z.service", "MachineOf=x.service\n"),
        ],
    );
    let ab = Reason::MachineOfCycle(vec![
        UnitName::parse("a.service").unwrap(),
        UnitName::parse("b.service").unwrap(),
    ]);
    assert_eq!(reason(&plan, "a.service"), ab);
    assert_eq!(reason(&plan, "b.service"), ab);
    assert_eq!(
        ab.to_string(),
        "MachineOf forms a cycle: a.service, b.service"
    );
    assert_eq!(
        reason(&plan, "c.service"),
        Reason::MachineOfNotPlaced("a.service".into())
    );
    assert!(matches!(reason(&plan, "s.service"), Reason::MachineOfCycle(v) if v.len() == 1));
    assert!(matches!(reason(&plan, "y.service"), Reason::MachineOfCycle(v) if v.len() == 3));
}

#[test]
fn replaces_takes_the_machine_and_the_replaced_unit_moves() {
    let ms = machines(&["m1", "m2", "m3"]);
    let us = vec![
        claimed("old.service", "", "m1"),
        claimed("busy1.service", "", "m1"),
        claimed("busy2.service", "", "m2"),
        unit("new.service", "Replaces=old.service\n"),
    ];
    let plan = run(&ms, &us);
    // m1 is the most loaded machine, yet new takes it; old moves to the least loaded other one.
    assert_eq!(on(&plan, "new.service"), s("m1"));
    assert_eq!(on(&plan, "old.service"), s("m3"));
    assert_eq!(on(&plan, "busy1.service"), s("m1"));

    // Running again with the plan as claims changes nothing.
    let again: Vec<UnitInfo> = us
        .iter()
        .map(|u| {
            let mut u = u.clone();
            u.claim = on(&plan, u.name.as_str()).map(|m| id(&m));
            u
        })
        .collect();
    assert_eq!(run(&ms, &again), plan);

    // A follower of the replaced unit moves with it.
    let mut with_follower = us.clone();
    with_follower.push(claimed("side.service", "MachineOf=old.service\n", "m1"));
    let plan = run(&ms, &with_follower);
    assert_eq!(on(&plan, "new.service"), s("m1"));
    assert_eq!(on(&plan, "side.service"), on(&plan, "old.service"));
    assert_ne!(on(&plan, "old.service"), s("m1"));

    // Globs: the first claimed match (by name) gives its machine.
    let plan = run(
        &ms,
        &[
            claimed("old-b.service", "", "m2"),
            claimed("old-a.service", "", "m3"),
            unit("new.service", "Replaces=old-*.service\n"),
        ],
    );
    assert_eq!(on(&plan, "new.service"), s("m3"));
    assert_eq!(on(&plan, "old-a.service"), s("m1"));
    assert_eq!(on(&plan, "old-b.service"), s("m2"));
}

#[test]
fn replaced_unit_with_nowhere_else_to_go_is_unplaceable() {
    let ms = machines(&["m1"]);
    let plan = run(
        &ms,
        &[
            claimed("old.service", "", "m1"),
            unit("new.service", "Replaces=old.service\n"),
        ],
    );
    assert_eq!(on(&plan, "new.service"), s("m1"));
    let r = reason(&plan, "old.service");
    assert!(
        matches!(r, Reason::ConflictsEverywhere { replaces: true, .. }),
        "{r:?}"
    );
    assert!(r.to_string().contains("replaces or is replaced by"), "{r}");
}

#[test]
fn circular_replaces_is_ignored() {
    let ms = machines(&["m1", "m2"]);
    // Mutual Replaces: neither moves the other; both may even share a machine.
    let plan = run(
        &ms,
        &[
            claimed("a.service", "Replaces=b.service\n", "m1"),
            claimed("b.service", "Replaces=a.service\n", "m1"),
        ],
    );
    assert_eq!(on(&plan, "a.service"), s("m1"));
    assert_eq!(on(&plan, "b.service"), s("m1"));
    // Unclaimed: plain least-loaded placement.
    let plan = run(
        &ms,
        &[
            claimed("a.service", "Replaces=b.service\n", "m2"),
            unit("b.service", "Replaces=a.service\n"),
        ],
    );
    assert_eq!(on(&plan, "b.service"), s("m1"));
    // A ring of three is ignored too: all three share the only machine.
    let plan = run(
        &machines(&["m1"]),
        &[
            unit("a.service", "Replaces=b.service\n"),
            unit("b.service", "Replaces=c.service\n"),
            claimed("c.service", "Replaces=a.service\n", "m1"),
        ],
    );
    for u in ["a.service", "b.service", "c.service"] {
        assert_eq!(on(&plan, u), s("m1"), "{u}");
    }
    // A unit whose Replaces matches itself ignores that.
    let plan = run(
        &ms,
        &[claimed("w@1.service", "Replaces=w@*.service\n", "m2")],
    );
    assert_eq!(on(&plan, "w@1.service"), s("m2"));
}

#[test]
fn machine_id_full_or_short() {
    let long = "113f16a7f0e74e7a8d7e1ba3b0f9a3c2";
    let ms = vec![
        machine(long, &[]),
        machine("22222222aaaa", &[]),
        machine("m3", &[]),
    ];
    let plan = run(
        &ms,
        &[
            unit("full.service", &format!("MachineID={long}\n")),
            unit("short.service", "MachineID=113f16a7\n"),
            unit("other.service", "MachineID=22222222\n"),
            unit("nowhere.service", "MachineID=deadbeef\n"),
            unit("partial.service", "MachineID=113f16a\n"),
        ],
    );
    assert_eq!(on(&plan, "full.service"), s(long));
    assert_eq!(on(&plan, "short.service"), s(long));
    assert_eq!(on(&plan, "other.service"), s("22222222aaaa"));
    assert_eq!(
        reason(&plan, "nowhere.service"),
        Reason::MachineIdNotFound("deadbeef".into())
    );
    assert_eq!(
        reason(&plan, "nowhere.service").to_string(),
        "no live machine has MachineID=deadbeef"
    );
    assert!(matches!(
        reason(&plan, "partial.service"),
        Reason::MachineIdNotFound(_)
    ));
    // A claim elsewhere is moved to the required machine.
    let plan = run(&ms, &[claimed("pinned.service", "MachineID=m3\n", long)]);
    assert_eq!(on(&plan, "pinned.service"), s("m3"));
}

#[test]
fn metadata_ors_values_of_a_key_and_ands_keys() {
    let ms = vec![
        machine("m1", &[("region", "east"), ("disk", "hdd")]),
        machine("m2", &[("region", "west"), ("disk", "ssd")]),
        machine("m3", &[("region", "north"), ("disk", "ssd")]),
    ];
    let plan = run(
        &ms,
        &[
            unit(
                "a.service",
                "MachineMetadata=region=east\nMachineMetadata=region=west\nMachineMetadata=disk=ssd\n",
            ),
            unit("b.service", "MachineMetadata=disk=ssd\n"),
            unit("c.service", "MachineMetadata=region=south\n"),
            unit("d.service", "MachineMetadata=Region=east\n"),
        ],
    );
    assert_eq!(on(&plan, "a.service"), s("m2"));
    assert_eq!(on(&plan, "b.service"), s("m3"));
    let r = reason(&plan, "c.service");
    assert_eq!(
        r,
        Reason::MetadataUnmatched {
            requirement: "region=south".into(),
            considered: 3
        }
    );
    assert_eq!(
        r.to_string(),
        "none of the 3 candidate machine(s) matches MachineMetadata region=south"
    );
    assert!(matches!(
        reason(&plan, "d.service"),
        Reason::MetadataUnmatched { .. }
    ));
}

#[test]
fn metadata_changed_at_run_time_moves_the_claim() {
    let before = vec![
        machine("m1", &[("role", "web")]),
        machine("m2", &[("role", "web")]),
    ];
    let us = vec![claimed("web.service", "MachineMetadata=role=web\n", "m1")];
    assert_eq!(on(&run(&before, &us), "web.service"), s("m1"));
    let after = vec![
        machine("m1", &[("role", "db")]),
        machine("m2", &[("role", "web")]),
    ];
    assert_eq!(on(&run(&after, &us), "web.service"), s("m2"));
}

#[test]
fn template_instances_use_their_expanded_metadata() {
    let ms = vec![
        machine("m1", &[("slot", "a")]),
        machine("m2", &[("slot", "b")]),
        machine("m3", &[("slot", "c")]),
    ];
    let xfleet = "MachineMetadata=slot=%i\nConflicts=web@*.service\n";
    let plan = run(
        &ms,
        &[
            unit("web@b.service", xfleet),
            unit("web@a.service", xfleet),
            unit("web@c.service", xfleet),
            unit("web@d.service", xfleet),
        ],
    );
    assert_eq!(on(&plan, "web@a.service"), s("m1"));
    assert_eq!(on(&plan, "web@b.service"), s("m2"));
    assert_eq!(on(&plan, "web@c.service"), s("m3"));
    assert_eq!(
        reason(&plan, "web@d.service"),
        Reason::MetadataUnmatched {
            requirement: "slot=d".into(),
            considered: 3
        }
    );
    // A template itself is never placed.
    let plan = run(&ms, &[unit("web@.service", "")]);
    assert_eq!(reason(&plan, "web@.service"), Reason::Template);
}

#[test]
fn global_units_run_on_every_machine_with_matching_metadata() {
    let ms = vec![
        machine("m1", &[("role", "web")]),
        machine("m2", &[("role", "db")]),
        machine("m3", &[("role", "web")]),
    ];
    let plan = run(
        &ms,
        &[
            unit("everywhere.service", "Global=true\n"),
            unit(
                "web-agent.service",
                "Global=yes\nMachineMetadata=role=web\n",
            ),
            unit("cache.service", "Global=1\nMachineMetadata=role=cache\n"),
            claimed("g.service", "Global=true\n", "m2"),
        ],
    );
    assert_eq!(global(&plan, "everywhere.service"), vec!["m1", "m2", "m3"]);
    assert_eq!(global(&plan, "web-agent.service"), vec!["m1", "m3"]);
    assert_eq!(global(&plan, "g.service"), vec!["m1", "m2", "m3"]);
    assert!(matches!(
        reason(&plan, "cache.service"),
        Reason::MetadataUnmatched { considered: 3, .. }
    ));
    let m1 = id("m1");
    let on_m1: Vec<&str> = plan.units_on(&m1).map(UnitName::as_str).collect();
    assert_eq!(
        on_m1,
        vec!["everywhere.service", "g.service", "web-agent.service"]
    );
    assert_eq!(
        plan.claims_of(&m1).count(),
        0,
        "global units are not claimed"
    );
}

#[test]
fn global_units_count_toward_load() {
    let ms = vec![machine("m1", &[("role", "web")]), machine("m2", &[])];
    let plan = run(
        &ms,
        &[
            unit("agent.service", "Global=true\nMachineMetadata=role=web\n"),
            unit("a.service", ""),
        ],
    );
    // m1 runs the global unit, so m2 is less loaded even though m1 has the lower ID.
    assert_eq!(on(&plan, "a.service"), s("m2"));
}

#[test]
fn global_conflicts() {
    let ms = machines(&["m1", "m2", "m3"]);
    let plan = run(
        &ms,
        &[
            // Two global units that conflict: the first by name wins on every machine.
            unit("g1.service", "Global=true\nConflicts=g2.service\n"),
            unit("g2.service", "Global=true\n"),
            // Non-global units avoid machines where a conflicting global unit runs; the claim on m1 moves.
            claimed("x.service", "Conflicts=g1.service\n", "m1"),
            unit("y.service", "Conflicts=mon.service\n"),
            unit("mon.service", "Global=true\nMachineMetadata=role=mon\n"),
        ],
    );
    assert_eq!(global(&plan, "g1.service"), vec!["m1", "m2", "m3"]);
    let r = reason(&plan, "g2.service");
    assert!(
        matches!(&r, Reason::ConflictsEverywhere { machines: 3, unit, .. } if unit.as_str() == "g1.service"),
        "{r:?}"
    );
    assert!(matches!(
        reason(&plan, "x.service"),
        Reason::ConflictsEverywhere { .. }
    ));
    assert_eq!(on(&plan, "y.service"), s("m1"));

    // A global unit with a conflict skips the machines where an earlier global unit matches it.
    let ms = vec![
        machine("m1", &[("role", "a")]),
        machine("m2", &[("role", "b")]),
    ];
    let plan = run(
        &ms,
        &[
            unit("a-agent.service", "Global=true\nMachineMetadata=role=a\n"),
            unit("b-agent.service", "Global=true\nConflicts=a-*.service\n"),
            unit("svc.service", "Conflicts=b-agent.service\n"),
        ],
    );
    assert_eq!(global(&plan, "a-agent.service"), vec!["m1"]);
    assert_eq!(global(&plan, "b-agent.service"), vec!["m2"]);
    assert_eq!(on(&plan, "svc.service"), s("m1"));
}

#[test]
fn machine_of_a_global_unit_runs_where_it_runs() {
    let ms = vec![
        machine("m1", &[]),
        machine("m2", &[("role", "web")]),
        machine("m3", &[("role", "web")]),
    ];
    let plan = run(
        &ms,
        &[
            unit("proxy.service", "Global=true\nMachineMetadata=role=web\n"),
            unit("app.service", "MachineOf=proxy.service\n"),
            unit("app2.service", "MachineOf=proxy.service\n"),
            unit(
                "odd.service",
                "MachineOf=proxy.service\nMachineMetadata=role=db\n",
            ),
        ],
    );
    assert_eq!(on(&plan, "app.service"), s("m2"));
    assert_eq!(on(&plan, "app2.service"), s("m3"));
    assert!(matches!(
        reason(&plan, "odd.service"),
        Reason::MetadataUnmatched { considered: 2, .. }
    ));
}
