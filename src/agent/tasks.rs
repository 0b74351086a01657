//! What this machine runs: the units it has (files and systemd's states), reconcile's tasks towards
//! the verdicts' target, carried out one by one or in bulk (`load.rs`).

use super::*;

impl State {
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

    pub(super) async fn apply(&mut self, target: BTreeMap<UnitName, TargetUnit>, snap: &Snapshot) {
        let globals = self.cluster.global_units_here();
        // Every claimed unit that runs or will run is bound to the fence guard before it starts.
        let mut rebind = false;
        for n in target.keys() {
            let r = if globals.contains(n) {
                self.systemd.unbind_from_guard(n.as_str()).await
            } else {
                self.systemd.bind_to_guard(n.as_str()).await
            };
            match r {
                Ok(changed) => rebind |= changed && self.loaded.contains_key(n),
                Err(e) => tracing::warn!(unit = %n, "fence drop-in: {e}"),
            }
        }
        if rebind {
            if let Err(e) = self.systemd.reload().await {
                tracing::warn!("reloading systemd for fence drop-ins: {e}");
            }
        }
        let tasks = reconcile(&target, &self.current());
        self.run_tasks(&tasks, snap, "").await;
        if !tasks.is_empty() {
            self.refresh_states().await;
        }
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
