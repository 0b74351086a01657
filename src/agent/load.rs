//! The executor's loads and unloads in bulk. Reconcile orders a pass's tasks as stops, unloads, loads,
//! starts (the daemon reload is part of a load or unload batch, not a task of its own), so every `load` task goes to systemd as one batch
//! ([`fleet_systemd::Systemd::load_units`]: the files written, one `LinkUnitFiles` call, one
//! `EnableUnitFiles` call for the units with an `[Install]` section, at most one `Reload`), and every
//! `unload` task as another ([`fleet_systemd::Systemd::unload_units`]: one `DisableUnitFiles`, one
//! `Reload`); the starts are queued with pipelined `StartUnit` calls
//! ([`fleet_systemd::Systemd::start_units`]). Loading one unit at a time cost more per unit the more
//! units systemd held (docs/benchmarks.md): every call makes systemd walk its unit directories, and
//! every `Reload` re-reads every unit file; a batch pays each of those once.

use std::sync::Arc;

use fleet_sched::reconcile::Task;
use fleet_sched::{UnitFile, UnitHash, UnitName};
use fleet_systemd::LoadSpec;

use super::State;
use crate::registry::Snapshot;

/// Logs (debug, `fleet::agent::timing`) how long a batch took since `t` (the failover bench reads it).
pub(super) fn timing(what: &str, t: std::time::Instant) {
    tracing::debug!(
        target: "fleet::agent::timing",
        ms = t.elapsed().as_secs_f64() * 1000.0,
        "{what}"
    );
}

impl State {
    /// Carries out reconcile's `tasks` in order, the loads and the unloads each as one batch; logs
    /// each task (with `note` appended) and each failure.
    pub(super) async fn run_tasks(&mut self, tasks: &[Task], snap: &Snapshot, note: &str) {
        let (mut loads_done, mut unloads_done, mut starts_done) = (false, false, false);
        for task in tasks {
            match task {
                Task::Start(..) if !starts_done => {
                    starts_done = true;
                    let t = std::time::Instant::now();
                    self.start_all(tasks, note).await;
                    timing("start jobs queued", t);
                }
                Task::Start(..) => {}
                Task::Load(..) if !loads_done => {
                    loads_done = true;
                    let t = std::time::Instant::now();
                    self.load_all(tasks, snap, note).await;
                    timing("units loaded", t);
                }
                Task::Unload(..) if !unloads_done => {
                    unloads_done = true;
                    self.unload_all(tasks, note).await;
                }
                Task::Load(..) | Task::Unload(..) => {}
                _ => {
                    tracing::info!("{task}{note}");
                    if let Err(e) = self.run_task(task, snap).await {
                        tracing::warn!("{task} failed: {e:#}");
                    }
                }
            }
        }
    }

    /// Carries out every `unload` task of `tasks` at once. A unit whose file fleet did not write is
    /// left alone (and forgotten).
    pub(super) async fn unload_all(&mut self, tasks: &[Task], note: &str) {
        let mut batch: Vec<UnitName> = Vec::new();
        for task in tasks {
            let Task::Unload(n, _) = task else {
                continue;
            };
            if !self.systemd.owns(n.as_str()) {
                tracing::warn!(unit = %n, "{task}: not done, the unit is not fleet's (its file was not written by fleetd)");
                self.forget(n);
                continue;
            }
            tracing::info!("{task}{note}");
            batch.push(n.clone());
        }
        if batch.is_empty() {
            return;
        }
        let names: Vec<&str> = batch.iter().map(UnitName::as_str).collect();
        let results = match self.systemd.unload_units(&names).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("unloading {} units failed: {e}", batch.len());
                return;
            }
        };
        for (n, r) in batch.iter().zip(results) {
            match r {
                Ok(()) => {
                    let _ = self.systemd.unbind_from_guard(n.as_str()).await;
                    self.forget(n);
                }
                Err(e) => tracing::warn!("unload {n} failed: {e}"),
            }
        }
    }

    /// Queues the start jobs of every `start` task of `tasks` at once (pipelined `StartUnit` calls).
    pub(super) async fn start_all(&mut self, tasks: &[Task], note: &str) {
        let mut batch: Vec<&UnitName> = Vec::new();
        for task in tasks {
            if let Task::Start(n, _) = task {
                tracing::info!("{task}{note}");
                crate::metrics::global().start_queued(n.as_str());
                batch.push(n);
            }
        }
        let names: Vec<&str> = batch.iter().map(|n| n.as_str()).collect();
        let t = std::time::Instant::now();
        let results = self.systemd.start_units(&names).await;
        if names.len() > 1 {
            tracing::info!(
                units = names.len(),
                ms = t.elapsed().as_millis() as u64,
                "start jobs queued"
            );
        }
        for (n, r) in batch.into_iter().zip(results) {
            match r {
                Ok(_) => {
                    if let Some(h) = self.loaded.get(n).copied() {
                        self.started.insert(n.clone(), h);
                    }
                }
                Err(e) => tracing::warn!("start {n} failed: {e}"),
            }
        }
    }

    fn forget(&mut self, n: &UnitName) {
        self.loaded.remove(n);
        self.states.remove(n);
        self.started.remove(n);
    }

    /// Carries out every `load` task of `tasks` at once; logs each one, and each failure.
    pub(super) async fn load_all(&mut self, tasks: &[Task], snap: &Snapshot, note: &str) {
        let mut batch: Vec<(UnitName, UnitHash, Arc<UnitFile>)> = Vec::new();
        for task in tasks {
            let Task::Load(n, h, _) = task else {
                continue;
            };
            tracing::info!("{task}{note}");
            if let Some(why) = self.refused.get(n) {
                tracing::warn!("{task} failed: {n} is refused on this machine: {why}");
                continue;
            }
            let file = self.registry.unit_file(h).ok().flatten().or_else(|| {
                snap.units
                    .iter()
                    .find(|u| u.hash == *h)
                    .map(|u| u.file.clone())
            });
            match file {
                Some(f) => batch.push((n.clone(), *h, f)),
                None => tracing::warn!(
                    "{task} failed: content {} of {n} is not in the registry",
                    h.short()
                ),
            }
        }
        if batch.is_empty() {
            return;
        }
        let texts: Vec<String> = batch.iter().map(|(_, _, f)| f.serialize()).collect();
        let specs: Vec<LoadSpec> = batch
            .iter()
            .zip(&texts)
            .map(|((n, _, f), text)| LoadSpec {
                name: n.as_str(),
                contents: text,
                enable: f.has_install_section(),
            })
            .collect();
        let results = match self.systemd.load_units(&specs).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("loading {} units failed: {e}", batch.len());
                return;
            }
        };
        for ((n, h, _), r) in batch.into_iter().zip(results) {
            match r {
                Ok(()) => {
                    self.loaded.insert(n.clone(), h);
                    self.started.remove(&n);
                }
                Err(e) => tracing::warn!("load {n} ({}) failed: {e}", h.short()),
            }
        }
    }
}
