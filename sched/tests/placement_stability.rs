//! Placement over cluster snapshots: stability (claims kept, new machines take nothing from live ones),
//! what the inputs may hold (invalid requirements, any order, repeated machines) and the plan's accessors.
//! Every plan is also checked by the brute-force [`Plan::violations`].

mod snapshots;
use snapshots::*;

#[test]
fn stability_a_new_member_takes_nothing_from_live_machines() {
    let us = vec![
        claimed("a.service", "", "m1"),
        claimed("b.service", "", "m1"),
        claimed("c.service", "", "m1"),
        claimed("d.service", "", "m2"),
    ];
    let plan = run(&machines(&["m1", "m2", "m3"]), &us);
    for u in ["a.service", "b.service", "c.service"] {
        assert_eq!(on(&plan, u), s("m1"), "{u} stays although m1 is busiest");
    }
    assert_eq!(on(&plan, "d.service"), s("m2"));
    assert_eq!(plan.units_on(&id("m3")).count(), 0);
}

#[test]
fn a_new_member_takes_a_dead_machines_units_only_if_least_loaded() {
    // m1 died with a and b. m2 is empty, m9 just joined: the tie goes to m2 (lower ID), then m9.
    let us = vec![
        claimed("a.service", "", "m1"),
        claimed("b.service", "", "m1"),
        claimed("c.service", "", "m3"),
    ];
    let plan = run(&machines(&["m2", "m3", "m9"]), &us);
    assert_eq!(on(&plan, "a.service"), s("m2"));
    assert_eq!(on(&plan, "b.service"), s("m9"));
    assert_eq!(on(&plan, "c.service"), s("m3"));
    // With m2 and m3 busy, the new member is least loaded and takes both.
    let mut us2 = us.clone();
    for (u, m) in [
        ("x", "m2"),
        ("y", "m2"),
        ("z", "m2"),
        ("v", "m3"),
        ("w", "m3"),
    ] {
        us2.push(claimed(&format!("{u}.service"), "", m));
    }
    let plan = run(&machines(&["m2", "m3", "m9"]), &us2);
    assert_eq!(on(&plan, "a.service"), s("m9"));
    assert_eq!(on(&plan, "b.service"), s("m9"));
}

#[test]
fn invalid_requirements_are_unplaceable_with_the_error() {
    let ms = machines(&["m1"]);
    let mut u = unit("a.service", "");
    u.requirements.machine_id = Some("m1".into());
    u.requirements.global = true;
    let plan = run(&ms, &[u]);
    let r = reason(&plan, "a.service");
    assert!(matches!(r, Reason::Invalid(_)), "{r:?}");
    assert_eq!(
        r.to_string(),
        "its [X-Fleet] requirements are invalid: MachineID cannot be used with Global"
    );
}

#[test]
fn input_order_and_duplicate_machines_do_not_matter() {
    let ms = vec![
        machine("m2", &[("role", "web")]),
        machine("m1", &[]),
        machine("m2", &[("role", "db")]),
    ];
    let us = vec![
        unit("b.service", "MachineMetadata=role=web\n"),
        unit("a.service", ""),
        unit("c.service", "Conflicts=a.service\n"),
    ];
    let plan = schedule(&ms, &us);
    let mut ms_rev = ms.clone();
    ms_rev.reverse();
    let mut us_rev = us.clone();
    us_rev.reverse();
    assert_eq!(schedule(&ms_rev, &us_rev), plan);
    // The greatest metadata wins for a repeated ID ("web" > "db").
    assert_eq!(on(&plan, "b.service"), s("m2"));
}

#[test]
fn a_newcomer_decided_early_still_avoids_a_claimed_units_place() {
    // a.service is new but decided early (f.service, claimed, follows it); b.service is claimed on m1 and
    // decided later. Its reservation keeps a off m1, although m1 is the least loaded machine.
    let ms = machines(&["m1", "m2"]);
    let plan = run(
        &ms,
        &[
            unit("a.service", "Conflicts=b.service\n"),
            claimed("b.service", "", "m1"),
            claimed("c.service", "", "m2"),
            claimed("d.service", "", "m2"),
            claimed("f.service", "MachineOf=a.service\n", "m2"),
        ],
    );
    assert_eq!(on(&plan, "b.service"), s("m1"));
    assert_eq!(on(&plan, "a.service"), s("m2"));
    assert_eq!(on(&plan, "f.service"), s("m2"));
}

#[test]
fn a_replacing_unit_that_cannot_take_the_machine_leaves_the_old_one_in_place() {
    let ms = vec![machine("m1", &[]), machine("m2", &[("disk", "ssd")])];
    let plan = run(
        &ms,
        &[
            claimed("old.service", "", "m1"),
            unit(
                "new.service",
                "Replaces=old.service\nMachineMetadata=disk=ssd\n",
            ),
        ],
    );
    assert_eq!(on(&plan, "new.service"), s("m2"));
    assert_eq!(on(&plan, "old.service"), s("m1"));
}

#[test]
fn a_chain_of_replaces_settles_at_its_head() {
    // web replaces d, d replaces b (claimed on the only machine, in conflict with every service). d
    // would take b's place, so web takes it: the head of the chain, in the first plan and in the plan
    // fed back as claims (before, the first plan gave m1 to d and the next one to web).
    let ms = machines(&["m1"]);
    let first = vec![
        claimed("b.service", "Conflicts=*.service\n", "m1"),
        unit("d.service", "Replaces=b.service\n"),
        unit("web.service", "Replaces=d.service\n"),
    ];
    let plan = run(&ms, &first);
    assert_eq!(on(&plan, "web.service"), s("m1"));
    assert_eq!(on(&plan, "d.service"), None);
    assert_eq!(on(&plan, "b.service"), None);
    let again = vec![
        unit("b.service", "Conflicts=*.service\n"),
        unit("d.service", "Replaces=b.service\n"),
        claimed("web.service", "Replaces=d.service\n", "m1"),
    ];
    assert_eq!(run(&ms, &again), plan);
    // With room elsewhere, the replaced units move there and the head keeps the machine.
    let ms = machines(&["m1", "m2", "m3"]);
    let plan = run(&ms, &first);
    assert_eq!(on(&plan, "web.service"), s("m1"));
    assert_ne!(on(&plan, "d.service"), s("m1"));
    assert_ne!(on(&plan, "b.service"), s("m1"));
}

#[test]
fn a_metadata_change_moves_only_the_units_that_no_longer_fit() {
    let us = vec![
        claimed("web1.service", "MachineMetadata=role=web\n", "m1"),
        claimed("web2.service", "MachineMetadata=role=web\n", "m2"),
        claimed("any1.service", "", "m1"),
        claimed("any2.service", "", "m2"),
    ];
    let before = vec![
        machine("m1", &[("role", "web")]),
        machine("m2", &[("role", "web")]),
        machine("m3", &[("role", "web")]),
    ];
    let plan = run(&before, &us);
    let after = vec![
        machine("m1", &[("role", "db")]),
        machine("m2", &[("role", "web")]),
        machine("m3", &[("role", "web")]),
    ];
    let moved = run(&after, &us);
    assert_eq!(on(&moved, "web1.service"), s("m3"));
    for u in ["web2.service", "any1.service", "any2.service"] {
        assert_eq!(on(&moved, u), on(&plan, u), "{u}");
    }
}

#[test]
fn plan_accessors() {
    let ms = machines(&["m1", "m2"]);
    let plan = run(
        &ms,
        &[
            claimed("a.service", "", "m1"),
            unit("g.service", "Global=true\n"),
            unit("x.service", "MachineID=m9\n"),
        ],
    );
    let m1 = id("m1");
    let m2 = id("m2");
    let names = |it: &mut dyn Iterator<Item = &UnitName>| -> Vec<String> {
        it.map(|n| n.to_string()).collect()
    };
    assert_eq!(
        names(&mut plan.units_on(&m1)),
        vec!["a.service", "g.service"]
    );
    assert_eq!(names(&mut plan.claims_of(&m1)), vec!["a.service"]);
    assert_eq!(names(&mut plan.units_on(&m2)), vec!["g.service"]);
    assert_eq!(plan.claims_of(&m2).count(), 0);
    let load: Vec<(String, usize)> = plan
        .load()
        .into_iter()
        .map(|(m, n)| (m.to_string(), n))
        .collect();
    assert_eq!(load, vec![("m1".to_string(), 2), ("m2".to_string(), 1)]);
    let unplaceable: Vec<(String, String)> = plan
        .unplaceable()
        .map(|(n, r)| (n.to_string(), r.to_string()))
        .collect();
    assert_eq!(
        unplaceable,
        vec![(
            "x.service".to_string(),
            "no live machine has MachineID=m9".to_string()
        )]
    );
    let g = decision(&plan, "g.service");
    assert_eq!(g.machines(), &[m1.clone(), m2.clone()]);
    assert!(g.is_on(&m2) && g.reason().is_none());
    assert!(decision(&plan, "x.service").machines().is_empty());
}
