//! The decisions for every unit that concerns this machine (placement and [`fleet_decide::decide`]) and
//! the claim writes that carry the verdicts out.

use super::*;

impl State {
    /// Runs placement and the decision core for every unit that concerns this machine, carries out the
    /// claim writes, and returns what this machine should run.
    pub(super) async fn decide_all(
        &mut self,
        snap: &Snapshot,
        g: &Guard,
        committee: &Committee,
        lease: &LeaseStatus,
        now: Time,
    ) -> BTreeMap<UnitName, TargetUnit> {
        let me = self.opts.machine.clone();
        let mut machines = self.cluster.live_machines();
        // The plan leaves suspects out (`fleet_decide::plan`): their units' taker polls their lease.
        let suspects = self.cluster.suspects();
        machines.retain(|m| fleet_decide::in_plan(m.id == me, suspects.contains(&m.id)));
        let live: BTreeSet<MachineId> = machines.iter().map(|m| m.id.clone()).collect();
        let active = || {
            snap.units
                .iter()
                .filter(|u| !u.name.is_template() && u.desired_state != DesiredState::Inactive)
        };
        let cluster = &self.cluster;
        let inputs = active().map(|u| plan::UnitInput {
            name: &u.name,
            hash: u.hash,
            file: &u.file,
            desired: u.desired_state,
            claim: match snap.claims.get(&u.name) {
                Some(c) if live.contains(&c.machine_id) => Some(c.machine_id.clone()),
                Some(_) => None,
                // No claim (its holder's lease expired, say) but running somewhere live: keep it there.
                None => cluster.runs_on(&u.name).filter(|m| live.contains(m)),
            },
        });
        let stats = self.placement.update(machines, inputs);
        tracing::trace!(?stats, "placement pass");
        let wanted: BTreeMap<UnitName, TargetUnit> = active()
            .filter(|u| self.placement.placeable(&u.name))
            .map(|u| {
                let t = TargetUnit {
                    hash: u.hash,
                    state: u.desired_state,
                };
                (u.name.clone(), t)
            })
            .collect();
        let plan = self.placement.plan();
        self.cluster.set_plan(plan);

        // Every unit that concerns us: placed here, claimed by us (or taken from us), loaded here.
        let mut names: BTreeSet<UnitName> = plan
            .decisions
            .iter()
            .filter(|(_, d)| d.machines().contains(&me))
            .map(|(n, _)| n.clone())
            .collect();
        for (n, c) in &snap.claims {
            if c.machine_id == me || c.handoff.as_ref().is_some_and(|(m, _)| *m == me) {
                names.insert(n.clone());
            }
        }
        names.extend(self.loaded.keys().cloned());
        let placements: Vec<(UnitName, Placement)> = names
            .into_iter()
            .map(|name| {
                let placement = match (plan.decision(&name), wanted.get(&name)) {
                    // A name this machine refuses is never fleet's here, whatever a plan made before
                    // the refusal was announced says.
                    _ if self.refused.contains_key(&name) => Placement::NotHere,
                    (Some(Decision::On(m)), Some(_)) if *m == me => Placement::Here,
                    (Some(Decision::Global(ms)), Some(_)) if ms.contains(&me) => {
                        Placement::GlobalHere
                    }
                    _ => Placement::NotHere,
                };
                (name, placement)
            })
            .collect();

        let ctx_lease = lease.lease.id;
        let mut target = BTreeMap::new();
        let mut wake: Option<Time> = None;
        let mut waiting = BTreeMap::new();
        for (name, placement) in placements {
            let claim = snap.claims.get(&name).map(|c| fleet_decide::Claim {
                machine: c.machine_id.clone(),
                lease: c.lease,
                mod_revision: c.mod_revision,
                handoff: c.handoff.as_ref().map(|(m, l)| fleet_decide::Handoff {
                    machine: m.clone(),
                    lease: *l,
                }),
            });
            // The machine whose stop we may need to prove: the holder, or the previous holder.
            let other = claim.as_ref().and_then(|c| {
                if c.machine != me {
                    Some((c.machine.clone(), c.lease))
                } else {
                    c.handoff.as_ref().map(|h| (h.machine.clone(), h.lease))
                }
            });
            let no_polls = VecDeque::new();
            let (alive, suspect, down, restarting, polls, votes) = match &other {
                Some((m, l)) => {
                    let (alive, suspect, down) = self.cluster.peer(m);
                    let polls = self.polls.get(l).unwrap_or(&no_polls);
                    let votes = self.votes.get(&(m.clone(), *l)).map_or(0, |v| {
                        v.iter()
                            .filter(|w| *w != m && committee.contains(w))
                            .count()
                    });
                    let restarting = snap.restarting.contains(m);
                    (alive, suspect, down.is_some(), restarting, polls, votes)
                }
                None => (false, false, false, false, &no_polls, 0),
            };
            let polls: Vec<LeasePoll> = polls.iter().copied().collect();
            let running = self.is_running(&name);
            let case = Case {
                placement,
                claim: claim.as_ref(),
                loaded: self.loaded.contains_key(&name),
                running,
                peer: Peer {
                    alive,
                    suspect,
                    down,
                    votes,
                    restarting,
                    polls: &polls,
                },
                superseded_at: self
                    .superseded_at
                    .get(&name)
                    .copied()
                    .unwrap_or(self.started_at),
            };
            let ctx = Ctx {
                timing: &self.timing,
                me: &me,
                lease: ctx_lease,
                guard: g,
                committee,
                now,
            };
            let v = fleet_decide::decide(&ctx, &case);
            let stored = Stored {
                unbound: snap.claims.get(&name).is_some_and(|c| c.unbound),
                free: snap.free_claims.get(&name).map(|f| f.mod_revision),
            };
            let run = self
                .carry_out(&name, &v, claim.as_ref(), stored, lease.lease.id)
                .await;
            if let Some(l) = v.poll {
                self.poll_wanted.insert(l);
            }
            if let Some(h) = &v.votes {
                self.votes_wanted.insert((h.machine.clone(), h.lease));
            }
            if let Some(t) = v.wake_at {
                wake = Some(wake.map_or(t, |w: Time| w.min(t)));
            }
            if placement != Placement::NotHere && !run {
                waiting.insert(name.clone(), v.why);
            }
            if run {
                if let Some(t) = wanted.get(&name) {
                    target.insert(name, t.clone());
                }
            } else if v.keeps_loaded() && self.loaded.contains_key(&name) {
                if let Some(t) = wanted.get(&name) {
                    let state = DesiredState::Loaded;
                    target.insert(name, TargetUnit { state, ..t.clone() });
                }
            }
        }
        for (n, why) in &waiting {
            if self.waiting.get(n) != Some(why) {
                tracing::info!(unit = %n, reason = ?why, "placed here, not running yet");
            }
        }
        self.waiting = waiting;
        // Polls and votes run at the start of a pass: the next one comes when the first of them is
        // due (at once for one not asked yet: a down verdict reaches etcd and the witnesses within a
        // round trip, not a poll period later), then once per poll period while they are wanted.
        let period = self.timing.lease_poll_period();
        let polls_due = votes::first_due(&self.poll_wanted, &self.poll_tried, now, period);
        let votes_due = votes::first_due(&self.votes_wanted, &self.votes_asked, now, period);
        if let Some(next) = polls_due.into_iter().chain(votes_due).min() {
            wake = Some(wake.map_or(next, |w| w.min(next)));
        }
        self.wake_at = wake;
        target
    }

    pub(super) fn is_running(&self, name: &UnitName) -> bool {
        let up = self
            .states
            .get(name)
            .is_some_and(|s| s.active_state.is_up());
        up || self.started.contains_key(name)
    }

    /// Carries out a verdict's claim write; returns whether the unit runs here.
    ///
    /// Claim keys that are not bound to a lease (written by something other than an agent; see
    /// `registry::mirror`) are repaired here, without changing who holds what: a free one is replaced
    /// (at its revision) by the claim the verdict writes, our own unbound claim is bound to our lease
    /// again, and an unbound claim whose holder's lease is gone is deleted (at its revision) by the
    /// machine the plan puts the unit on.
    pub(super) async fn carry_out(
        &mut self,
        name: &UnitName,
        v: &Verdict,
        claim: Option<&fleet_decide::Claim>,
        stored: Stored,
        lease: i64,
    ) -> bool {
        let repair = match (claim, &v.write) {
            (Some(c), None)
                if stored.unbound && c.machine == self.opts.machine && v.why == Why::Held =>
            {
                Some(Write::Rebind {
                    mod_revision: c.mod_revision,
                })
            }
            (Some(c), None) if stored.unbound && v.why == Why::HolderGone => Some(Write::Release {
                mod_revision: c.mod_revision,
            }),
            _ => None,
        };
        if let Some(r) = &repair {
            tracing::warn!(unit = %name, write = ?r, "repairing a claim bound to no lease");
        }
        let Some(w) = v.write.as_ref().or(repair.as_ref()) else {
            return v.run;
        };
        let write = match w {
            Write::Claim => match stored.free {
                Some(mod_revision) => ClaimWrite::Replace { mod_revision },
                None => ClaimWrite::Claim,
            },
            Write::Supersede { mod_revision, from } => ClaimWrite::Supersede {
                mod_revision: *mod_revision,
                from: (from.machine.clone(), from.lease),
            },
            Write::Rebind { mod_revision } => ClaimWrite::Rebind {
                mod_revision: *mod_revision,
                handoff: claim
                    .and_then(|c| c.handoff.as_ref())
                    .map(|h| (h.machine.clone(), h.lease)),
            },
            Write::Release { mod_revision } => ClaimWrite::Release {
                mod_revision: *mod_revision,
            },
            Write::Ack { mod_revision } => ClaimWrite::Ack {
                mod_revision: *mod_revision,
                holder: claim
                    .map(|c| c.machine.clone())
                    .unwrap_or_else(|| self.opts.machine.clone()),
            },
        };
        let m = crate::metrics::global();
        match self
            .registry
            .write_claim(name, &self.opts.machine, lease, &write)
            .await
        {
            Ok(Some(_)) => match w {
                Write::Claim => {
                    tracing::info!(unit = %name, "claimed");
                    m.placed();
                    true
                }
                Write::Supersede { from, .. } => {
                    tracing::info!(unit = %name, from = %from.machine, "took the claim over; starting once the previous holder is proven stopped");
                    self.superseded_at.insert(name.clone(), clock::now());
                    // Only answers after the supersede prove the handover: ask at once.
                    self.poll_wanted.insert(from.lease);
                    self.poll_tried.remove(&from.lease);
                    let verdict = self.cluster.peer(&from.machine).2;
                    m.took_over(
                        from.machine.as_str(),
                        verdict.map(clock::instant_at).map(|i| i.into_std()),
                    );
                    self.wake_at = Some(clock::now());
                    false
                }
                Write::Rebind { .. } => {
                    tracing::info!(unit = %name, "claim bound to the current lease");
                    v.run
                }
                Write::Release { .. } if repair.is_some() => {
                    tracing::info!(unit = %name, "deleted a claim bound to no lease whose holder's lease is gone");
                    false
                }
                Write::Release { .. } => {
                    tracing::info!(unit = %name, "released claim");
                    false
                }
                Write::Ack { .. } => {
                    tracing::info!(unit = %name, "acknowledged the handover");
                    false
                }
            },
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(unit = %name, "claim write: {e}");
                // A unit that runs under our claim keeps running (the fence deadline guards it).
                v.run && !matches!(w, Write::Claim | Write::Supersede { .. })
            }
        }
    }
}
