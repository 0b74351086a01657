//! The fence deadline on this machine's side (docs/safety.md): the committee's support shared between
//! the agent's passes and the guard writer, the loop that writes the deadline for the fence guard and
//! asks the witnesses for support, and the agent's own fencing when the deadline passes.

use super::*;

/// The committee and its support of this machine, shared by the agent's passes and the guard writer.
#[derive(Default)]
pub(super) struct GuardShared {
    /// The committee of the last pass (`None` before the first pass with the registry).
    pub(super) committee: std::sync::Mutex<Option<Committee>>,
    /// The lease `granted` is about, and for each witness, when this machine sent the latest support
    /// request for it that the witness granted (grants for a lease never count for another).
    pub(super) granted: std::sync::Mutex<(i64, BTreeMap<MachineId, Time>)>,
    /// A lease a witness answered it voted away (`Response::VotedAway`): the agent replaces it.
    pub(super) refused: std::sync::Mutex<Option<i64>>,
    /// Wakes the guard writer when a grant arrives (the deadline it extends must be written at once).
    pub(super) granted_now: tokio::sync::Notify,
}

impl GuardShared {
    /// The fence deadline with the committee's support (of the current lease only), and the retiring
    /// lease's own bound while there is one (`fleet_decide::guard_retiring`).
    pub(super) fn guard(
        &self,
        timing: &Timing,
        me: &MachineId,
        lease: &LeaseStatus,
        synced: i64,
        now: Time,
    ) -> Guard {
        let committee = lock(&self.committee).clone();
        let granted = {
            let g = lock(&self.granted);
            if g.0 == lease.lease.id {
                g.1.clone()
            } else {
                BTreeMap::new()
            }
        };
        let support = committee.as_ref().map(|c| Support {
            committee: c,
            me,
            granted: &granted,
        });
        fleet_decide::guard_retiring(
            timing,
            &lease.lease,
            lease.retiring.as_ref(),
            synced,
            support.as_ref(),
            now,
        )
    }
}

/// What the fence deadline is computed from.
pub(super) struct GuardInputs {
    pub(super) timing: Timing,
    pub(super) me: MachineId,
    pub(super) lease: tokio::sync::watch::Receiver<LeaseStatus>,
    pub(super) registry: Registry,
    pub(super) cluster: Arc<AgentCluster>,
    pub(super) shared: Arc<GuardShared>,
    pub(super) file: PathBuf,
    /// `(fenced, may start)`: the agent runs a pass when either changes.
    pub(super) changes: tokio::sync::watch::Sender<(bool, bool)>,
}

/// Writes the fence deadline for the guard on every lease confirmation and every `fence_after / 3`,
/// whatever the agent's pass is busy with (a pass that waits for systemd must not let the deadline
/// lapse); while the lease is unconfirmed, asks the committee's witnesses for support every
/// `support_validity / 3`.
pub(super) async fn write_guard_loop(mut g: GuardInputs) {
    let mut tick = tokio::time::interval(g.timing.keepalive_period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written: Option<Option<Time>> = None;
    let mut last_round: Option<Time> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = g.shared.granted_now.notified() => {}
            r = g.lease.changed() => { if r.is_err() { return; } }
        }
        let now = clock::now();
        let status = g.lease.borrow().clone();
        let lease = &status.lease;
        let synced = g.registry.status().synced;
        let guard = g.shared.guard(&g.timing, &g.me, &status, synced, now);
        if written != Some(guard.deadline) {
            match guard::write_deadline(&g.file, guard.deadline) {
                Ok(()) => written = Some(guard.deadline),
                Err(e) => tracing::error!("writing the fence deadline: {e}"),
            }
        }
        // One keep-alive answer late: ask for support, every support_validity/3, or every keep-alive
        // period while the support falls short.
        let unconfirmed = lease
            .confirmed_at(synced)
            .is_none_or(|t| now.since(t) > g.timing.keepalive_period() * 3 / 2);
        let short = guard.vouch != fleet_decide::Vouch::Support;
        let every = if short {
            g.timing.keepalive_period()
        } else {
            g.timing.support_validity() / 3
        };
        if lease.id != 0 && unconfirmed && last_round.is_none_or(|t| now.since(t) >= every) {
            last_round = Some(now);
            ask_support(&g, lease.id);
        }
        let state = (guard.fenced(now), guard.may_start(now));
        if *g.changes.borrow() != state {
            tracing::debug!(
                fenced = state.0,
                may_start = state.1,
                vouch = ?guard.vouch,
                synced,
                confirmed = ?lease.confirmations.last().map(|c| c.revision),
                "fence guard state"
            );
        }
        g.changes.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }
}

/// Sends a support request to every other witness; each grant is recorded with the time it was sent.
pub(super) fn ask_support(g: &GuardInputs, lease: i64) {
    let Some(gossip) = g.cluster.gossip().cloned() else {
        return;
    };
    let Some(committee) = lock(&g.shared.committee).clone() else {
        return;
    };
    let timeout = g.timing.support_validity() / 3;
    for w in committee.witnesses.into_iter().filter(|w| *w != g.me) {
        let gossip = gossip.clone();
        let shared = g.shared.clone();
        let req = relay::Request::Support {
            machine: g.me.clone(),
            lease,
        }
        .encode();
        tokio::spawn(async move {
            let sent = clock::now();
            let peer = w.clone();
            let answer = tokio::time::timeout(timeout, gossip.request(&peer, req)).await;
            match answer
                .ok()
                .and_then(|r| r.ok())
                .map(|b| relay::Response::decode(&b))
            {
                Some(Ok(relay::Response::Granted(true))) => {
                    {
                        let mut g = lock(&shared.granted);
                        if g.0 != lease {
                            *g = (lease, BTreeMap::new());
                        }
                        g.1.insert(w, sent);
                    }
                    shared.granted_now.notify_one();
                }
                Some(Ok(relay::Response::VotedAway)) => {
                    tracing::info!(
                        witness = %w,
                        lease = format!("{lease:x}"),
                        "the witness voted this lease away: it will never support it again"
                    );
                    *lock(&shared.refused) = Some(lease);
                }
                other => tracing::debug!(witness = %w, ?other, "no support"),
            }
        });
    }
}

pub(super) async fn sleep_until(t: Option<Time>) {
    match t {
        Some(t) => tokio::time::sleep_until(clock::instant_at(t)).await,
        None => std::future::pending().await,
    }
}

impl State {
    /// Tells gossip, when it changed, whether this machine can take units (`fleet_decide::takes_units`:
    /// its lease vouches for it); the others' plans leave it out while it cannot. The guard writer
    /// runs a pass whenever `may_start` changes, so this follows it within a keep-alive period.
    pub(super) fn tell_takes_units(&mut self, g: &Guard, now: Time) {
        let cannot = !fleet_decide::takes_units(g, now);
        if cannot != self.told_cannot_take {
            tracing::info!(
                takes_units = !cannot,
                vouch = ?g.vouch,
                "told the cluster whether this machine can take units"
            );
            self.told_cannot_take = cannot;
            self.publish_metadata();
        }
    }

    pub(super) fn compute_guard(&self, now: Time) -> Guard {
        self.shared.guard(
            &self.timing,
            &self.opts.machine,
            &self.lease.status(),
            self.registry.status().synced,
            now,
        )
    }

    /// Replaces a lease that may have been voted away, and lets the replaced one go once nothing rests
    /// on it (`fleet_decide::lease`: the claims under it are re-bound by the verdicts, the announcement
    /// by [`State::announce`] when the lease changes). Returns whether it replaced the lease: the pass
    /// then writes nothing more under the old one (the next pass, under the new lease, comes at once).
    pub(super) async fn keep_leases(&mut self, snap: &Snapshot, lease: &LeaseStatus) -> bool {
        let me = &self.opts.machine;
        // Only this machine's claims and handovers from it say anything about its leases.
        let claims: Vec<fleet_decide::Claim> = snap
            .claims
            .values()
            .filter(|c| c.machine_id == *me || c.handoff.as_ref().is_some_and(|(m, _)| m == me))
            .map(units::decide_claim)
            .collect();
        if let Some(old) = lease.retiring.as_ref().map(|r| r.id) {
            let announced = snap.machines.get(me).map(|m| m.lease);
            if fleet_decide::may_retire(me, old, announced, &claims) {
                self.lease.retire();
            }
            return false;
        }
        let id = lease.lease.id;
        let signals = fleet_decide::Signals {
            fenced: self.fenced_under == Some(id),
            refused: *lock(&self.shared.refused) == Some(id),
        };
        let Some(why) = fleet_decide::replace(me, id, None, &claims, signals) else {
            return false;
        };
        tracing::warn!(
            lease = format!("{id:x}"),
            ?why,
            "this lease may have been voted away (no witness that voted would support it at the next \
             etcd outage): taking a new one, re-binding the claims to it"
        );
        let timeout = (self.timing.keepalive_period() * 3).max(Duration::from_secs(1));
        match self.lease.replace(timeout).await {
            Ok(_) => {
                self.fenced_under = None;
                true
            }
            Err(e) => {
                tracing::warn!("replacing the lease: {e}; trying again at the next pass");
                false
            }
        }
    }

    /// Past the fence deadline: kill every claimed unit at once (the guard does the same, in case we
    /// are too slow); global units keep running.
    pub(super) async fn fence(&mut self) {
        if !self.fenced {
            tracing::warn!(
                "fence deadline passed (no lease confirmation, and the machines out of sight could \
                 take units over): killing claimed units"
            );
            crate::metrics::global().fenced();
        }
        self.fenced = true;
        let globals = self.cluster.global_units_here();
        let victims: Vec<UnitName> = self
            .current()
            .into_keys()
            .filter(|n| !globals.contains(n) && self.is_running(n))
            .collect();
        if victims.is_empty() {
            return;
        }
        // All at once: the kill must come within `kill_allowance` of the deadline.
        let names: Vec<String> = victims.iter().map(|n| n.as_str().to_string()).collect();
        let failed = self.systemd.fence_units(&names).await;
        for n in &victims {
            match failed.iter().find(|(f, _)| f == n.as_str()) {
                Some((_, e)) => tracing::warn!(unit = %n, "fencing: {e}"),
                None => tracing::info!(unit = %n, "killed (fencing)"),
            }
            self.started.remove(n);
        }
        if failed.len() < victims.len() {
            self.refresh_states().await;
        }
    }

    /// The fence guard fenced on its own: the deadline it read had passed while ours had moved on
    /// (a machine frozen for less than `fence_after` wakes both; the guard may read the file before we
    /// rewrite it). Once it guards again (its mark), the units it stopped count as not started, so
    /// that they start again while the lease vouches for us: systemd's `Restart=` does not undo a
    /// stop, and a unit we started is otherwise left to it (`sched::reconcile`).
    pub(super) fn notice_guard_fencing(&mut self) {
        let mark = guard::read_fenced_mark(&guard::fenced_mark_file(&self.opts.fence_file()));
        if mark == self.guard_fenced_seen {
            return;
        }
        self.guard_fenced_seen = mark;
        let globals = self.cluster.global_units_here();
        let before = self.started.len();
        self.started.retain(|n, _| globals.contains(n));
        if before != self.started.len() {
            tracing::warn!(
                units = before - self.started.len(),
                "the fence guard killed this machine's claimed units: they start again while the \
                 lease vouches for this machine"
            );
        }
    }
}
