//! Tests of the subscription: the queue, the decoder and their order.

use super::*;

fn unit(name: &str, active: &str, sub: &str) -> Signal {
    Signal::Unit {
        name: name.into(),
        load: None,
        active: Some(ActiveState::from(active.to_string())),
        sub: Some(sub.into()),
    }
}

fn state(active: &str, sub: &str, pid: Option<u32>) -> UnitState {
    UnitState {
        load_state: LoadState::Loaded,
        active_state: ActiveState::from(active.to_string()),
        sub_state: sub.into(),
        main_pid: pid,
    }
}

fn drain(b: &mut Backlog) -> Vec<Event> {
    std::iter::from_fn(|| b.pop()).collect()
}

#[test]
fn load_states_are_read_once_per_unit_for_many_units_at_once() {
    let (mut d, mut out) = (Decoder::default(), Backlog::new(100));
    for i in 0..3 {
        d.apply(
            unit(&format!("u{i}.service"), "activating", "start"),
            &mut out,
        );
    }
    assert_eq!(
        out.pop(),
        None,
        "nothing reported before the load state is known"
    );
    let (names, epoch) = d.take_unresolved();
    assert_eq!(names.len(), 3);
    // More changes while the read is in flight: no second read is asked for.
    d.apply(
        Signal::Service {
            name: "u0.service".into(),
            main_pid: Some(42),
        },
        &mut out,
    );
    d.apply(unit("u0.service", "active", "running"), &mut out);
    assert!(!d.has_unresolved());
    let read = names
        .iter()
        .map(|n| (n.clone(), LoadState::Loaded))
        .collect();
    d.resolved(epoch, &names, read, &mut out);
    let got = drain(&mut out);
    assert_eq!(got.len(), 3);
    assert!(got.contains(&Event::UnitChanged {
        name: "u0.service".into(),
        state: state("active", "running", Some(42)),
    }));
    // Known now: the next change is reported at once, a repeat is not.
    d.apply(unit("u1.service", "active", "running"), &mut out);
    d.apply(unit("u1.service", "active", "running"), &mut out);
    assert_eq!(
        drain(&mut out),
        vec![Event::UnitChanged {
            name: "u1.service".into(),
            state: state("active", "running", None),
        }]
    );
    assert!(!d.has_unresolved());
}

#[test]
fn a_read_a_reload_overtook_is_used_once_and_the_next_change_reads_again() {
    let (mut d, mut out) = (Decoder::default(), Backlog::new(100));
    d.apply(unit("a.service", "active", "running"), &mut out);
    let (names, epoch) = d.take_unresolved();
    d.apply(Signal::Reloaded, &mut out);
    assert_eq!(drain(&mut out), vec![], "a's place holds the reload back");
    let read = vec![("a.service".to_string(), LoadState::Loaded)];
    d.resolved(epoch, &names, read, &mut out);
    assert_eq!(
        drain(&mut out),
        vec![
            Event::UnitChanged {
                name: "a.service".into(),
                state: state("active", "running", None),
            },
            Event::Reloaded
        ]
    );
    assert!(!d.has_unresolved());
    d.apply(unit("a.service", "deactivating", "stop"), &mut out);
    let (again, epoch) = d.take_unresolved();
    assert_eq!(again, vec!["a.service".to_string()]);
    let read = vec![("a.service".to_string(), LoadState::Masked)];
    d.resolved(epoch, &again, read, &mut out);
    assert_eq!(
        drain(&mut out),
        vec![Event::UnitChanged {
            name: "a.service".into(),
            state: UnitState {
                load_state: LoadState::Masked,
                ..state("deactivating", "stop", None)
            },
        }]
    );
    // Fresh: kept.
    d.apply(unit("a.service", "inactive", "dead"), &mut out);
    assert!(!d.has_unresolved());
    assert_eq!(drain(&mut out).len(), 1);
}

#[test]
fn a_unit_removed_while_its_load_state_is_read_reports_its_state_then_the_removal() {
    let (mut d, mut out) = (Decoder::default(), Backlog::new(100));
    d.apply(unit("a.service", "active", "running"), &mut out);
    let (names, epoch) = d.take_unresolved();
    let removed = Event::UnitRemoved {
        name: "a.service".into(),
    };
    d.apply(
        Signal::Removed {
            name: "a.service".into(),
        },
        &mut out,
    );
    assert_eq!(out.pop(), None);
    let read = vec![("a.service".to_string(), LoadState::Loaded)];
    d.resolved(epoch, &names, read, &mut out);
    assert_eq!(
        drain(&mut out),
        vec![
            Event::UnitChanged {
                name: "a.service".into(),
                state: state("active", "running", None),
            },
            removed.clone()
        ]
    );
    assert!(d.units.is_empty(), "forgotten after the removal");
    // Removed and back before the read returns: only the new life's state, after the removal.
    d.apply(unit("b.service", "active", "running"), &mut out);
    let (names, epoch) = d.take_unresolved();
    d.apply(
        Signal::Removed {
            name: "b.service".into(),
        },
        &mut out,
    );
    d.apply(unit("b.service", "failed", "failed"), &mut out);
    let read = vec![("b.service".to_string(), LoadState::Loaded)];
    d.resolved(epoch, &names, read, &mut out);
    assert_eq!(
        drain(&mut out),
        vec![
            Event::UnitRemoved {
                name: "b.service".into()
            },
            Event::UnitChanged {
                name: "b.service".into(),
                state: state("failed", "failed", None),
            },
        ]
    );
}

#[test]
fn an_unreadable_load_state_asks_the_consumer_to_resync() {
    let (mut d, mut out) = (Decoder::default(), Backlog::new(100));
    d.apply(unit("a.service", "active", "running"), &mut out);
    d.apply(
        Signal::Job {
            id: 1,
            job: "/org/freedesktop/systemd1/job/1".into(),
            unit: "a.service".into(),
            result: JobResult::Done,
        },
        &mut out,
    );
    let (names, _) = d.take_unresolved();
    d.unreadable(&names, &mut out);
    assert_eq!(drain(&mut out), vec![Event::Resync]);
    // Its next change asks for the load state again.
    d.apply(unit("a.service", "inactive", "dead"), &mut out);
    assert_eq!(d.take_unresolved().0, vec!["a.service".to_string()]);
}

/// A reload frees every unit object and creates again those that still exist (`UnitRemoved`, then
/// `UnitNew`, between `Reloading(true)` and `Reloading(false)`; systemd 252 in the lab), with no
/// `PropertiesChanged` for a running unit whose state did not change: it is not removed.
#[test]
fn a_reload_removes_only_the_units_it_does_not_create_again() {
    let (mut d, mut out) = (Decoder::default(), Backlog::new(100));
    d.apply(unit("kept.service", "active", "running"), &mut out);
    d.apply(unit("gone.service", "inactive", "dead"), &mut out);
    let (names, epoch) = d.take_unresolved();
    let read = names
        .iter()
        .map(|n| (n.clone(), LoadState::Loaded))
        .collect();
    d.resolved(epoch, &names, read, &mut out);
    assert_eq!(drain(&mut out).len(), 2);
    let signal = |s: fn(String) -> Signal, name: &str| s(name.to_string());
    d.apply(Signal::Reloading, &mut out);
    d.apply(
        signal(|name| Signal::Removed { name }, "kept.service"),
        &mut out,
    );
    d.apply(
        signal(|name| Signal::Removed { name }, "gone.service"),
        &mut out,
    );
    d.apply(
        signal(|name| Signal::New { name }, "kept.service"),
        &mut out,
    );
    assert_eq!(out.pop(), None, "nothing is known before the reload ends");
    d.apply(Signal::Reloaded, &mut out);
    assert_eq!(
        drain(&mut out),
        vec![
            Event::UnitRemoved {
                name: "gone.service".into()
            },
            Event::Reloaded
        ]
    );
    // The kept unit's next change is reported (its load state read again after the reload).
    d.apply(
        unit("kept.service", "deactivating", "stop-sigterm"),
        &mut out,
    );
    let (names, epoch) = d.take_unresolved();
    assert_eq!(names, vec!["kept.service".to_string()]);
    let read = vec![(names[0].clone(), LoadState::Loaded)];
    d.resolved(epoch, &names, read, &mut out);
    // Outside a reload a removal is reported at once.
    d.apply(
        signal(|name| Signal::Removed { name }, "kept.service"),
        &mut out,
    );
    assert_eq!(
        drain(&mut out),
        vec![
            Event::UnitChanged {
                name: "kept.service".into(),
                state: state("deactivating", "stop-sigterm", None),
            },
            Event::UnitRemoved {
                name: "kept.service".into()
            }
        ]
    );
}
