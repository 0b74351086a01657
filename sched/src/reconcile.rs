//! Reconcile: what one machine should run against what its systemd reports, as ordered tasks.
//!
//! The agent gathers the desired side (units placed on this machine, with the hash of their content and
//! their desired state) and the current side (units whose files it has written, their hash, systemd's
//! ActiveState, and whether the agent already started them), calls [`reconcile`], and carries the tasks out
//! in order. Units change only when they must: a unit whose file and state already match gets no task, so
//! restarting the agent never touches a healthy unit.
//!
//! Task order is fixed: stops, unloads, loads, one daemon reload (only after loads or unloads), starts.

use std::collections::BTreeMap;
use std::fmt;

use crate::{DesiredState, UnitHash, UnitName};

/// systemd's ActiveState of a unit (fleet's one type for it).
pub use crate::systemd_state::ActiveState;

/// A unit this machine should have: its content hash and the state the user asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUnit {
    /// Hash of the content that should be on disk.
    pub hash: UnitHash,
    /// `Loaded` or `Launched`; an `Inactive` unit is simply not a target.
    pub state: DesiredState,
}

/// A unit this machine has loaded (its file is in the units directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentUnit {
    /// Hash of the content on disk.
    pub hash: UnitHash,
    /// systemd's ActiveState.
    pub active: ActiveState,
    /// The agent already started this content (so a unit that since exited, a oneshot say, is not
    /// started again: systemd's own `Restart=` decides that).
    pub started: bool,
}

impl CurrentUnit {
    /// Whether ending it needs a stop: systemd says it is up, or the agent started it and systemd has
    /// not reported the start yet (a stop of an already stopped unit is harmless; a missed stop leaves a
    /// process running without its unit file).
    pub fn needs_stop(&self) -> bool {
        self.active.is_up() || self.started
    }
}

/// Why a task is needed: shown in logs and in `SIGUSR1` dumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskReason {
    /// The unit is no longer meant to be on this machine.
    NotTargeted,
    /// The unit should be here and is not loaded yet.
    NotLoaded,
    /// The content on disk differs from the unit's current content.
    ContentChanged,
    /// The unit should be launched and is not running.
    NotStarted,
    /// The unit should be loaded only, and it is running.
    ShouldNotRun,
}

impl fmt::Display for TaskReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskReason::NotTargeted => "unit is no longer scheduled to this machine",
            TaskReason::NotLoaded => "unit is scheduled here but not loaded",
            TaskReason::ContentChanged => "unit content changed",
            TaskReason::NotStarted => "unit should be launched but is not running",
            TaskReason::ShouldNotRun => "unit should be loaded only but is running",
        })
    }
}

/// One step for the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Task {
    /// `StopUnit(name, "replace")`.
    Stop(UnitName, TaskReason),
    /// Disable, unlink and remove the unit's file.
    Unload(UnitName, TaskReason),
    /// Write the file with this content, link it (and enable it when it has `[Install]`).
    Load(UnitName, UnitHash, TaskReason),
    /// `StartUnit(name, "replace")`.
    Start(UnitName, TaskReason),
}

impl Task {
    /// The unit this task acts on, if any.
    pub fn unit(&self) -> Option<&UnitName> {
        match self {
            Task::Stop(n, _) | Task::Unload(n, _) | Task::Load(n, _, _) | Task::Start(n, _) => {
                Some(n)
            }
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Task::Stop(n, r) => write!(f, "stop {n}: {r}"),
            Task::Unload(n, r) => write!(f, "unload {n}: {r}"),
            Task::Load(n, h, r) => write!(f, "load {n} ({}): {r}", h.short()),
            Task::Start(n, r) => write!(f, "start {n}: {r}"),
        }
    }
}

/// The tasks that take `current` to `target`, in the order they must run.
///
/// Idempotent: once the tasks are carried out (and systemd reports the results), calling it again
/// returns no task.
pub fn reconcile(
    target: &BTreeMap<UnitName, TargetUnit>,
    current: &BTreeMap<UnitName, CurrentUnit>,
) -> Vec<Task> {
    let mut stops = Vec::new();
    let mut unloads = Vec::new();
    let mut loads = Vec::new();
    let mut starts = Vec::new();

    for (name, cur) in current {
        if !target.contains_key(name) {
            if cur.needs_stop() {
                stops.push(Task::Stop(name.clone(), TaskReason::NotTargeted));
            }
            unloads.push(Task::Unload(name.clone(), TaskReason::NotTargeted));
        }
    }
    for (name, want) in target {
        if want.state == DesiredState::Inactive {
            // Not a target at all; an agent should not hand these in, but be safe: treat as absent.
            if let Some(cur) = current.get(name) {
                if cur.needs_stop() {
                    stops.push(Task::Stop(name.clone(), TaskReason::NotTargeted));
                }
                unloads.push(Task::Unload(name.clone(), TaskReason::NotTargeted));
            }
            continue;
        }
        let launch = want.state == DesiredState::Launched;
        match current.get(name) {
            None => {
                loads.push(Task::Load(name.clone(), want.hash, TaskReason::NotLoaded));
                if launch {
                    starts.push(Task::Start(name.clone(), TaskReason::NotStarted));
                }
            }
            Some(cur) if cur.hash != want.hash => {
                if cur.needs_stop() {
                    stops.push(Task::Stop(name.clone(), TaskReason::ContentChanged));
                }
                loads.push(Task::Load(
                    name.clone(),
                    want.hash,
                    TaskReason::ContentChanged,
                ));
                if launch {
                    starts.push(Task::Start(name.clone(), TaskReason::ContentChanged));
                }
            }
            Some(cur) => {
                if launch && !cur.started && !cur.active.is_up() {
                    starts.push(Task::Start(name.clone(), TaskReason::NotStarted));
                } else if !launch && cur.needs_stop() {
                    stops.push(Task::Stop(name.clone(), TaskReason::ShouldNotRun));
                }
            }
        }
    }

    // No daemon-reload task: reloading is part of loading and unloading, which the agent does in bulk
    // (`fleet_systemd::Systemd::load_units`/`unload_units`: at most one `Reload` per batch, only when
    // systemd needs it).
    let mut tasks = stops;
    tasks.append(&mut unloads);
    tasks.append(&mut loads);
    tasks.append(&mut starts);
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UnitFile;
    use proptest::prelude::*;

    fn name(s: &str) -> UnitName {
        UnitName::parse(s).unwrap()
    }

    fn hash(n: u8) -> UnitHash {
        UnitFile::parse(&format!("[Service]\nExecStart=/bin/sleep {n}\n"))
            .unwrap()
            .hash()
    }

    fn target(list: &[(&str, u8, DesiredState)]) -> BTreeMap<UnitName, TargetUnit> {
        list.iter()
            .map(|(n, h, s)| {
                (
                    name(n),
                    TargetUnit {
                        hash: hash(*h),
                        state: *s,
                    },
                )
            })
            .collect()
    }

    fn current(list: &[(&str, u8, ActiveState, bool)]) -> BTreeMap<UnitName, CurrentUnit> {
        list.iter()
            .map(|(n, h, a, s)| {
                (
                    name(n),
                    CurrentUnit {
                        hash: hash(*h),
                        active: a.clone(),
                        started: *s,
                    },
                )
            })
            .collect()
    }

    /// What systemd and the agent's memory look like after the tasks ran successfully.
    fn apply(tasks: &[Task], cur: &mut BTreeMap<UnitName, CurrentUnit>) {
        for t in tasks {
            match t {
                Task::Stop(n, _) => {
                    let c = cur.get_mut(n).expect("stop of a unit that is not loaded");
                    c.active = ActiveState::Inactive;
                    c.started = false;
                }
                Task::Unload(n, _) => {
                    cur.remove(n).expect("unload of a unit that is not loaded");
                }
                Task::Load(n, h, _) => {
                    let prev = cur.insert(
                        n.clone(),
                        CurrentUnit {
                            hash: *h,
                            active: ActiveState::Inactive,
                            started: false,
                        },
                    );
                    if let Some(p) = prev {
                        assert!(
                            !p.active.is_up(),
                            "loaded new content over a running unit {n}"
                        );
                    }
                }
                Task::Start(n, _) => {
                    let c = cur.get_mut(n).expect("start of a unit that is not loaded");
                    c.active = ActiveState::Active;
                    c.started = true;
                }
            }
        }
    }

    use DesiredState::{Launched, Loaded};

    #[test]
    fn a_new_launched_unit_is_loaded_then_started() {
        let tasks = reconcile(&target(&[("a.service", 1, Launched)]), &BTreeMap::new());
        assert_eq!(
            tasks,
            vec![
                Task::Load(name("a.service"), hash(1), TaskReason::NotLoaded),
                Task::Start(name("a.service"), TaskReason::NotStarted),
            ]
        );
    }

    #[test]
    fn a_healthy_unit_gets_no_task_even_when_the_agent_forgot_it_started_it() {
        // After an agent restart `started` is false, but systemd says active: nothing to do.
        let t = target(&[("a.service", 1, Launched), ("b.service", 2, Loaded)]);
        let c = current(&[
            ("a.service", 1, ActiveState::Active, false),
            ("b.service", 2, ActiveState::Inactive, false),
        ]);
        assert_eq!(reconcile(&t, &c), vec![]);
    }

    #[test]
    fn a_unit_no_longer_targeted_is_stopped_then_unloaded() {
        let c = current(&[("a.service", 1, ActiveState::Active, true)]);
        assert_eq!(
            reconcile(&BTreeMap::new(), &c),
            vec![
                Task::Stop(name("a.service"), TaskReason::NotTargeted),
                Task::Unload(name("a.service"), TaskReason::NotTargeted),
            ]
        );
    }

    #[test]
    fn changed_content_stops_loads_and_starts_again() {
        let t = target(&[("a.service", 2, Launched)]);
        let c = current(&[("a.service", 1, ActiveState::Active, true)]);
        assert_eq!(
            reconcile(&t, &c),
            vec![
                Task::Stop(name("a.service"), TaskReason::ContentChanged),
                Task::Load(name("a.service"), hash(2), TaskReason::ContentChanged),
                Task::Start(name("a.service"), TaskReason::ContentChanged),
            ]
        );
    }

    #[test]
    fn a_unit_started_moments_ago_is_stopped_before_unload_even_if_systemd_has_not_said_so() {
        // Destroyed right after StartUnit: systemd's state change has not arrived yet.
        let c = current(&[("a.service", 1, ActiveState::Inactive, true)]);
        assert_eq!(
            reconcile(&BTreeMap::new(), &c),
            vec![
                Task::Stop(name("a.service"), TaskReason::NotTargeted),
                Task::Unload(name("a.service"), TaskReason::NotTargeted),
            ]
        );
    }

    #[test]
    fn loaded_stops_a_running_unit_without_unloading_it() {
        let t = target(&[("a.service", 1, Loaded)]);
        let c = current(&[("a.service", 1, ActiveState::Activating, true)]);
        assert_eq!(
            reconcile(&t, &c),
            vec![Task::Stop(name("a.service"), TaskReason::ShouldNotRun)]
        );
    }

    #[test]
    fn a_unit_that_exited_after_the_agent_started_it_is_left_to_systemd() {
        let t = target(&[("a.service", 1, Launched)]);
        let c = current(&[("a.service", 1, ActiveState::Failed, true)]);
        assert_eq!(reconcile(&t, &c), vec![]);
        let c = current(&[("a.service", 1, ActiveState::Failed, false)]);
        assert_eq!(
            reconcile(&t, &c),
            vec![Task::Start(name("a.service"), TaskReason::NotStarted)]
        );
    }

    fn arb_active() -> impl Strategy<Value = ActiveState> {
        prop_oneof![
            Just(ActiveState::Active),
            Just(ActiveState::Inactive),
            Just(ActiveState::Failed),
            Just(ActiveState::Activating),
            Just(ActiveState::Deactivating),
        ]
    }

    proptest! {
        #[test]
        fn reconcile_reaches_the_target_and_is_then_idempotent(
            t in proptest::collection::vec((0u8..6, 0u8..3, 0u8..3), 0..6),
            c in proptest::collection::vec((0u8..6, 0u8..3, arb_active(), any::<bool>()), 0..6),
        ) {
            let states = [DesiredState::Inactive, Loaded, Launched];
            let target: BTreeMap<_, _> = t
                .iter()
                .map(|(n, h, s)| (name(&format!("u{n}.service")), TargetUnit { hash: hash(*h), state: states[*s as usize] }))
                .collect();
            let mut cur: BTreeMap<_, _> = c
                .iter()
                .map(|(n, h, a, s)| (name(&format!("u{n}.service")), CurrentUnit { hash: hash(*h), active: a.clone(), started: *s }))
                .collect();
            let tasks = reconcile(&target, &cur);
            apply(&tasks, &mut cur);
            prop_assert_eq!(reconcile(&target, &cur), vec![]);
            for (n, want) in &target {
                match want.state {
                    DesiredState::Inactive => prop_assert!(!cur.contains_key(n)),
                    _ => prop_assert_eq!(cur[n].hash, want.hash),
                }
            }
            for n in cur.keys() {
                prop_assert!(target.get(n).is_some_and(|t| t.state != DesiredState::Inactive));
            }
        }
    }
}
