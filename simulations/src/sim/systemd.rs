//! The simulated machines' systemd and fence guard: applying the agent's tasks, unit jobs finishing,
//! active states published through gossip, the guard's deadline and its kills.

use super::*;

impl Sim {
    /// Reconciles machine `m`'s systemd with `target` (all launched), starting and stopping through
    /// jobs that take `start_delay` and `stop_delay`.
    pub(crate) fn apply(&mut self, m: u32, target: &BTreeSet<u32>) {
        // Shortcut with the same outcome as `reconcile`: every target unit is loaded with its
        // content and already started, and nothing else is loaded, so there is no task.
        let units = &self.machines[m as usize].units;
        if units.len() == target.len()
            && target.iter().all(|u| {
                units
                    .get(u)
                    .is_some_and(|s| s.started && s.hash == self.units[*u as usize].hash)
            })
        {
            return;
        }
        let target_map: BTreeMap<UnitName, TargetUnit> = target
            .iter()
            .map(|&u| {
                (
                    self.units[u as usize].name.clone(),
                    TargetUnit {
                        hash: self.units[u as usize].hash,
                        state: DesiredState::Launched,
                    },
                )
            })
            .collect();
        let mut idx: BTreeMap<UnitName, u32> = BTreeMap::new();
        let current: BTreeMap<UnitName, CurrentUnit> = self.machines[m as usize]
            .units
            .iter()
            .map(|(&u, s)| {
                idx.insert(self.units[u as usize].name.clone(), u);
                (
                    self.units[u as usize].name.clone(),
                    CurrentUnit {
                        hash: s.hash,
                        active: s.active.clone(),
                        started: s.started,
                    },
                )
            })
            .collect();
        for &u in target {
            idx.insert(self.units[u as usize].name.clone(), u);
        }
        let tasks = reconcile(&target_map, &current);
        let (start_delay, stop_delay) = (self.sc.config.start_delay.0, self.sc.config.stop_delay.0);
        let boot = self.machines[m as usize].boot;
        for task in tasks {
            let Some(&u) = task.unit().and_then(|n| idx.get(n)) else {
                continue;
            };
            match task {
                Task::Stop(..) => {
                    let Some(s) = self.machines[m as usize].units.get_mut(&u) else {
                        continue;
                    };
                    s.job += 1;
                    s.started = false;
                    let job = s.job;
                    let was = s.process();
                    self.set_active(m, u, ActiveState::Deactivating);
                    let at = if was { self.now + stop_delay } else { self.now };
                    self.push(
                        at,
                        Ev::UnitDone {
                            m,
                            boot,
                            unit: u,
                            job,
                            start: false,
                        },
                    );
                }
                Task::Unload(..) => {
                    let mm = &mut self.machines[m as usize];
                    match mm.units.get_mut(&u) {
                        Some(s) if s.active == ActiveState::Deactivating => {
                            s.unload_after_stop = true
                        }
                        Some(_) => self.remove_unit(m, u),
                        None => {}
                    }
                }
                Task::Load(_, hash, _) => {
                    self.machines[m as usize].units.insert(
                        u,
                        SysUnit {
                            hash,
                            active: ActiveState::Inactive,
                            started: false,
                            job: 0,
                            unload_after_stop: false,
                        },
                    );
                    self.publish_unit(m, u);
                }
                Task::Start(..) => {
                    let Some(s) = self.machines[m as usize].units.get_mut(&u) else {
                        continue;
                    };
                    s.job += 1;
                    s.started = true;
                    self.metrics.unit_starts += 1;
                    let job = s.job;
                    self.set_active(m, u, ActiveState::Activating);
                    self.push(
                        self.now + start_delay,
                        Ev::UnitDone {
                            m,
                            boot,
                            unit: u,
                            job,
                            start: true,
                        },
                    );
                }
            }
        }
    }

    /// SIGKILL of every non-global unit of machine `m` (and `StopUnit`, so that `Restart=` does not bring
    /// them back): the fence guard's or the fenced agent's act.
    pub(crate) fn kill_fenced(&mut self, m: u32, by_guard: bool) {
        let victims: Vec<u32> = self.machines[m as usize]
            .units
            .iter()
            .filter(|(u, s)| !self.units[**u as usize].global && (s.process() || s.started))
            .map(|(u, _)| *u)
            .collect();
        if victims.is_empty() {
            return;
        }
        if by_guard {
            self.metrics.guard_kills += victims.len() as u64;
        } else {
            self.metrics.agent_kills += victims.len() as u64;
        }
        if (m as usize) < self.cluster {
            self.checker.fenced(self.now, m, victims.len(), by_guard);
        }
        for u in victims {
            if let Some(s) = self.machines[m as usize].units.get_mut(&u) {
                s.job += 1;
                s.started = false;
                let unload = s.unload_after_stop;
                self.set_active(m, u, ActiveState::Inactive);
                if unload {
                    self.remove_unit(m, u);
                }
            }
        }
        self.request_pass(m);
    }

    pub(super) fn unit_done(&mut self, m: u32, boot: u32, unit: u32, job: u32, start: bool) {
        let mm = &mut self.machines[m as usize];
        if mm.boot != boot || !mm.powered {
            return;
        }
        if mm.frozen {
            mm.deferred.push((unit, job, start));
            return;
        }
        let Some(s) = mm.units.get(&unit) else { return };
        if s.job != job {
            return;
        }
        if start {
            let fail = self.sc.config.start_failure > 0.0
                && self.rng.random_bool(self.sc.config.start_failure);
            if fail {
                self.metrics.start_failures += 1;
            }
            self.set_active(
                m,
                unit,
                if fail {
                    ActiveState::Failed
                } else {
                    ActiveState::Active
                },
            );
        } else if s.unload_after_stop {
            self.set_active(m, unit, ActiveState::Inactive);
            self.remove_unit(m, unit);
        } else {
            self.set_active(m, unit, ActiveState::Inactive);
        }
        self.request_pass(m);
    }

    pub(super) fn set_active(&mut self, m: u32, u: u32, state: ActiveState) {
        let Some(s) = self.machines[m as usize].units.get_mut(&u) else {
            return;
        };
        let was = s.process();
        s.active = state;
        let is = s.process();
        if self.machines[m as usize].units_run() && was != is {
            self.ran(m, u, is);
        }
        self.publish_unit(m, u);
    }

    /// Removes unit `u` from machine `m`'s systemd (its process, if any, is gone).
    pub(super) fn remove_unit(&mut self, m: u32, u: u32) {
        let Some(s) = self.machines[m as usize].units.remove(&u) else {
            return;
        };
        if self.machines[m as usize].units_run() && s.process() {
            self.ran(m, u, false);
        }
        if self.machines[m as usize].powered {
            self.publish_unit(m, u);
        }
    }

    /// Unit `u`'s process started (`true`) or stopped on machine slot `m`: the checker, the
    /// observations and the statistics learn it.
    pub(super) fn ran(&mut self, m: u32, u: u32, running: bool) {
        self.checker
            .set_running(self.now, m, u, running, self.submitted);
        self.observer.set_running(self.now, m, u, running);
        self.metrics_running(u);
    }

    /// Feeds the availability and double-run statistics after unit `u` changed somewhere.
    pub(super) fn metrics_running(&mut self, u: u32) {
        if self.units[u as usize].global {
            return;
        }
        let n = self.checker.running_on(u).len();
        let now = self.now;
        self.metrics.running(u, n, now, self.submitted);
    }

    /// Tells gossip the unit's state (real dissemination traffic).
    pub(super) fn publish_unit(&mut self, m: u32, u: u32) {
        if let Some(model) = self.model.as_mut() {
            model.unit_update();
            return;
        }
        if !self.machines[m as usize].agent_runs() {
            return;
        }
        let at = self.instant(m);
        let state = self.machines[m as usize]
            .units
            .get(&u)
            .map(|s| GossipUnitState {
                load_state: "loaded".into(),
                active_state: s.active.clone(),
                sub_state: if s.active == ActiveState::Active {
                    fleet_sched::systemd_state::SubState::Running
                } else {
                    fleet_sched::systemd_state::SubState::Dead
                },
                unit_hash: *s.hash.as_bytes(),
            });
        let name = self.units[u as usize].name.as_str().to_string();
        if let Some(node) = self.node_mut(m) {
            node.set_local_unit_state(at, &name, state);
            self.flush(m);
        }
    }

    // ------------------------------------------------------------------------------------------
    // The fence guard.

    /// fleetd wrote a new fence deadline (local µs; `None`: nothing may run).
    pub(crate) fn write_guard(&mut self, m: u32, deadline: Option<u64>) {
        let mm = &mut self.machines[m as usize];
        mm.guard = Some(deadline);
        let due = match deadline {
            None => self.now,
            Some(d) => mm.clock.global(d),
        };
        if mm.guard_check.is_none_or(|c| due < c) {
            self.schedule_guard(m, due);
        }
    }

    pub(super) fn schedule_guard(&mut self, m: u32, due: u64) {
        let poll = self.sc.config.guard_poll.0.max(1);
        let at = due + self.rng.random_range(0..poll);
        let mm = &mut self.machines[m as usize];
        mm.guard_check = Some(at);
        let boot = mm.boot;
        self.push(at, Ev::GuardCheck { m, boot });
    }

    /// The guard reads the deadline: past it, it kills every non-global unit.
    pub(super) fn guard_check(&mut self, m: u32, boot: u32) {
        let now = self.now;
        let mm = &mut self.machines[m as usize];
        if mm.boot != boot || !mm.powered {
            return;
        }
        if mm.guard_check.is_some_and(|c| c <= now) {
            mm.guard_check = None;
        }
        if mm.frozen {
            return; // thaw checks at once
        }
        let local = mm.clock.local(now);
        match mm.guard {
            None => {}
            Some(Some(d)) if local < d => {
                let due = mm.clock.global(d);
                if mm.guard_check.is_none_or(|c| due < c) {
                    self.schedule_guard(m, due);
                }
            }
            Some(_) => self.kill_fenced(m, true),
        }
    }

    // ------------------------------------------------------------------------------------------
    // Faults.
}
