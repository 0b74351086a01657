//! What this machine runs: the units it has (files and systemd's states), reconcile's tasks towards
//! the verdicts' target, carried out one by one or in bulk (`load.rs`), each claimed unit bound to the
//! fence guard first (its drop-in, known in memory once written: [`FenceDropins`]).

use super::*;

/// The fence drop-ins this agent knows to be on disk as it wants them, by unit: `true`, bound to the
/// guard (the drop-in written), `false`, not bound (none). Learned by writing or removing them; a unit
/// not in it is looked at on disk. Empty when fleetd starts and after a reconnect to systemd or a
/// failed reload ([`FenceDropins::forget`]); a failed write leaves its unit out. So a pass with nothing
/// to change reads no drop-in.
#[derive(Debug, Default)]
pub(super) struct FenceDropins(BTreeMap<UnitName, bool>);

impl FenceDropins {
    /// The units of `target` whose drop-in must be looked at on disk, each with whether it is to be
    /// bound (global units are not). Units that left `target` are forgotten: if they come back, their
    /// drop-in is looked at again.
    pub(super) fn pending(
        &mut self,
        target: &BTreeMap<UnitName, TargetUnit>,
        globals: &BTreeSet<UnitName>,
    ) -> Vec<(UnitName, bool)> {
        self.0.retain(|n, _| target.contains_key(n));
        target
            .keys()
            .map(|n| (n, !globals.contains(n)))
            .filter(|(n, bind)| self.0.get(*n) != Some(bind))
            .map(|(n, bind)| (n.clone(), bind))
            .collect()
    }

    /// Unit `n`'s drop-in is now on disk as `bind` wants it.
    pub(super) fn done(&mut self, n: UnitName, bind: bool) {
        self.0.insert(n, bind);
    }

    /// Knows nothing any more: every drop-in is looked at on disk again.
    pub(super) fn forget(&mut self) {
        self.0.clear();
    }
}

impl State {
    /// Re-reads the units directory and systemd's states of those units.
    pub(super) async fn read_current(&mut self) {
        let dir = self.systemd.local_unit_file_path("");
        let mut loaded = BTreeMap::new();
        if let Ok(mut rd) = tokio::fs::read_dir(&dir).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                let Some(name) = e.file_name().to_str().and_then(|n| UnitName::parse(n).ok())
                else {
                    continue;
                };
                match tokio::fs::read_to_string(e.path()).await {
                    Ok(text) if !fleet_systemd::is_marked(&text) => {
                        // Not fleet's (left there by hand, say): never stopped, unloaded or relayed.
                        if self.strays.insert(name.clone()) {
                            tracing::warn!(unit = %name, file = %e.path().display(), "a unit file fleet did not write is in its units directory: left alone");
                        }
                    }
                    Ok(text) => match UnitFile::parse(&text) {
                        Ok(f) => {
                            loaded.insert(name, f.hash());
                        }
                        Err(err) => tracing::warn!(unit = %name, "unreadable unit file: {err}"),
                    },
                    Err(err) => tracing::warn!(unit = %name, "reading unit file: {err}"),
                }
            }
        }
        self.loaded = loaded;
        let names: Vec<&str> = self.loaded.keys().map(UnitName::as_str).collect();
        // Without MainPID (the agent does not use it): one call for all units.
        match self.systemd.list_unit_states(&names).await {
            Ok(list) => {
                self.states = list
                    .into_iter()
                    .filter_map(|(n, s)| UnitName::parse(&n).ok().map(|n| (n, s)))
                    .collect();
            }
            Err(e) => tracing::warn!("reading unit states from systemd: {e}"),
        }
        self.publish();
    }

    pub(super) fn current(&self) -> BTreeMap<UnitName, CurrentUnit> {
        self.loaded
            .iter()
            .map(|(n, h)| {
                let active = self
                    .states
                    .get(n)
                    .map(|s| s.active_state.clone())
                    .unwrap_or(ActiveState::Inactive);
                let started = self.started.get(n) == Some(h);
                (
                    n.clone(),
                    CurrentUnit {
                        hash: *h,
                        active,
                        started,
                    },
                )
            })
            .collect()
    }

    /// Carries out what `target` asks of systemd; returns how many tasks that took (fence drop-ins
    /// not counted).
    pub(super) async fn apply(
        &mut self,
        target: BTreeMap<UnitName, TargetUnit>,
        snap: &Snapshot,
    ) -> usize {
        let globals = self.cluster.global_units_here();
        // Every claimed unit that runs or will run is bound to the fence guard before it starts. Only
        // the drop-ins not known to be right already are looked at on disk.
        let mut rebind = false;
        for (n, bind) in self.fence_dropins.pending(&target, &globals) {
            let r = if bind {
                self.systemd.bind_to_guard(n.as_str()).await
            } else {
                self.systemd.unbind_from_guard(n.as_str()).await
            };
            match r {
                Ok(changed) => {
                    rebind |= changed && self.loaded.contains_key(&n);
                    self.fence_dropins.done(n, bind);
                }
                Err(e) => tracing::warn!(unit = %n, "fence drop-in: {e}"),
            }
        }
        if rebind {
            if let Err(e) = self.systemd.reload().await {
                tracing::warn!("reloading systemd for fence drop-ins: {e}");
                self.fence_dropins.forget();
            }
        }
        let tasks = reconcile(&target, &self.current());
        self.run_tasks(&tasks, snap, "").await;
        // Units only prepared (loaded for a takeover that waits for its proof) are not read back
        // now: that costs a `ListUnitsByNames` of every loaded unit and a publication on the way to
        // the start; the pass that starts them reads them.
        let prepared_only = tasks
            .iter()
            .all(|t| matches!(t, Task::Load(n, ..) if self.prepared.contains(n)));
        if !tasks.is_empty() && !prepared_only {
            let t = std::time::Instant::now();
            self.refresh_states().await;
            super::load::timing("states read back", t);
        }
        tasks.len()
    }

    pub(super) async fn run_task(&mut self, task: &Task, snap: &Snapshot) -> anyhow::Result<()> {
        match task {
            // Ownership is checked on disk right before a unit is touched: a file fleet did not write
            // (or no file) means the unit is not fleet's, and it is left alone.
            Task::Stop(n, _) | Task::Unload(n, _) if !self.systemd.owns(n.as_str()) => {
                tracing::warn!(unit = %n, "{task}: not done, the unit is not fleet's (its file was not written by fleetd)");
                self.loaded.remove(n);
                self.states.remove(n);
                self.started.remove(n);
            }
            Task::Load(n, ..) if self.refused.contains_key(n) => {
                anyhow::bail!("{n} is refused on this machine: {}", self.refused[n]);
            }
            Task::Stop(n, _) => {
                let stop = self.systemd.stop_unit_and_wait(n.as_str());
                crate::metrics::global()
                    .time_job(crate::metrics::JobKind::Stop, stop)
                    .await?;
                self.started.remove(n);
            }
            Task::Unload(..) => {
                // Carried out in bulk (`load.rs`).
                self.unload_all(std::slice::from_ref(task), "").await;
            }
            Task::Load(..) => {
                // Carried out in bulk (`load.rs`).
                self.load_all(std::slice::from_ref(task), snap, "").await;
            }
            Task::Start(n, _) => {
                let h = self.loaded.get(n).copied();
                crate::metrics::global().start_queued(n.as_str());
                self.systemd.start_unit(n.as_str()).await?;
                if let Some(h) = h {
                    self.started.insert(n.clone(), h);
                }
            }
        }
        Ok(())
    }

    pub(super) async fn refresh_states(&mut self) {
        let names: Vec<&str> = self.loaded.keys().map(UnitName::as_str).collect();
        if let Ok(list) = self.systemd.list_units(&names).await {
            for (n, s) in list {
                if let Ok(n) = UnitName::parse(&n) {
                    self.states.insert(n, s);
                }
            }
        }
        self.publish();
    }
}

/// Logs (debug, `fleet::agent::timing`) where a pass that changed something spent its time, from
/// its instants: start (after the lease polls), votes asked, votes answered, decided with the claim
/// writes, systemd's work done. The failover bench reads it.
pub(super) fn log_pass(at: [Time; 5], claim_writes: usize, tasks: usize) {
    let ms = |i: usize| at[i + 1].since(at[i]).as_secs_f64() * 1000.0;
    tracing::debug!(
        target: "fleet::agent::timing",
        polls_ms = ms(0),
        votes_ms = ms(1),
        decide_and_claims_ms = ms(2),
        apply_ms = ms(3),
        claim_writes,
        tasks,
        "pass"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(names: &[&str]) -> BTreeMap<UnitName, TargetUnit> {
        names
            .iter()
            .map(|n| {
                let t = TargetUnit {
                    hash: UnitHash::from_bytes([0; 20]),
                    state: DesiredState::Launched,
                };
                (UnitName::parse(n).unwrap(), t)
            })
            .collect()
    }

    fn names(v: &[(UnitName, bool)]) -> Vec<(&str, bool)> {
        v.iter().map(|(n, b)| (n.as_str(), *b)).collect()
    }

    /// A pass with nothing to change looks at no drop-in; one written with an error, a unit whose kind
    /// changed, a unit that left and came back, and everything after `forget` are looked at again.
    #[test]
    fn only_drop_ins_not_known_to_be_right_are_looked_at() {
        let mut d = FenceDropins::default();
        let t = target(&["a.service", "b.service", "g.service"]);
        let globals = BTreeSet::from([UnitName::parse("g.service").unwrap()]);
        // First pass (fleetd just started): every one, bound but the global one.
        let first = d.pending(&t, &globals);
        assert_eq!(
            names(&first),
            [
                ("a.service", true),
                ("b.service", true),
                ("g.service", false)
            ]
        );
        // b's write failed: only a and g are known.
        for (n, bind) in first {
            if n.as_str() != "b.service" {
                d.done(n, bind);
            }
        }
        assert_eq!(names(&d.pending(&t, &globals)), [("b.service", true)]);
        d.done(UnitName::parse("b.service").unwrap(), true);
        // Nothing to change: nothing looked at, pass after pass.
        assert!(d.pending(&t, &globals).is_empty());
        assert!(d.pending(&t, &globals).is_empty());
        // a becomes global: its drop-in goes.
        let globals2 = BTreeSet::from([
            UnitName::parse("a.service").unwrap(),
            UnitName::parse("g.service").unwrap(),
        ]);
        assert_eq!(names(&d.pending(&t, &globals2)), [("a.service", false)]);
        d.done(UnitName::parse("a.service").unwrap(), false);
        assert!(d.pending(&t, &globals2).is_empty());
        // b leaves the target and comes back: looked at again.
        assert!(d
            .pending(&target(&["a.service", "g.service"]), &globals2)
            .is_empty());
        assert_eq!(names(&d.pending(&t, &globals2)), [("b.service", true)]);
        d.done(UnitName::parse("b.service").unwrap(), true);
        // After forget (a reconnect to systemd, a failed reload): all of them again.
        d.forget();
        assert_eq!(d.pending(&t, &globals2).len(), 3);
    }
}
