//! The decisions for every unit that concerns this machine (placement and [`fleet_decide::decide`]) and
//! the claim writes that carry the verdicts out.

use super::*;
use crate::registry::ClaimResult;

impl State {
    /// Runs placement and the decision core for every unit that concerns this machine, carries out the
    /// claim writes (in batches: `Registry::write_claims`), and returns what this machine should run.
    pub(super) async fn decide_all(
        &mut self,
        snap: &Snapshot,
        g: &Guard,
        committee: &Committee,
        lease: &LeaseStatus,
        now: Time,
    ) -> BTreeMap<UnitName, TargetUnit> {
        let (wanted, placements) = self.place(snap);
        let ctx = Ctx {
            timing: &self.timing,
            me: &self.opts.machine,
            lease: lease.lease.id,
            guard: g,
            committee,
            now,
        };
        // Every verdict first (the decision core reads nothing a claim write of this pass changes),
        // then their claim writes as one batch, then what each outcome means.
        let decided: Vec<Decided> = placements
            .into_iter()
            .map(|(name, placement)| self.decide_unit(&ctx, snap, name, placement))
            .collect();
        let written = self.write_claims(&decided, lease.lease.id).await;

        let mut target = BTreeMap::new();
        let mut wake: Option<Time> = None;
        let mut waiting = BTreeMap::new();
        let mut prepared = BTreeSet::new();
        for (d, w) in decided.into_iter().zip(written) {
            let Decided {
                name,
                placement,
                verdict: v,
                ..
            } = d;
            // A unit is prepared (loaded, not started) only once the claim its verdict writes is in.
            let prepare = v.prepare && w.as_ref().is_none_or(|(_, r)| matches!(r, Ok(Some(_))));
            let run = match w {
                None => v.run,
                Some((p, result)) => self.claim_written(&name, &v, p, result),
            };
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
            } else if prepare || (v.keeps_loaded() && self.loaded.contains_key(&name)) {
                if prepare {
                    prepared.insert(name.clone());
                }
                if let Some(t) = wanted.get(&name) {
                    let state = DesiredState::Loaded;
                    target.insert(name, TargetUnit { state, ..t.clone() });
                }
            }
        }
        self.prepared = prepared;
        self.finish_pass(waiting, wake, now);
        target
    }

    /// Logs the units newly waiting and sets when the next pass is due at the latest (`wake`: the
    /// verdicts' own).
    fn finish_pass(&mut self, waiting: BTreeMap<UnitName, Why>, mut wake: Option<Time>, now: Time) {
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
        // An early poll's answer is taken by the next pass, at once.
        let early = (!self.early_leases.is_empty()).then_some(now);
        if let Some(next) = polls_due.into_iter().chain(votes_due).chain(early).min() {
            wake = Some(wake.map_or(next, |w| w.min(next)));
        }
        self.wake_at = wake;
    }

    /// The claim writes of a pass's verdicts, sent as one batch (`Registry::write_claims`): for each
    /// verdict, the write it asks for with its outcome.
    async fn write_claims(
        &mut self,
        decided: &[Decided],
        lease: i64,
    ) -> Vec<Option<(Planned, ClaimResult)>> {
        let planned: Vec<Option<Planned>> = decided
            .iter()
            .map(|d| self.claim_write(&d.name, &d.verdict, d.claim.as_ref(), d.stored))
            .collect();
        let batch: Vec<(UnitName, ClaimWrite)> = decided
            .iter()
            .zip(&planned)
            .filter_map(|(d, p)| p.as_ref().map(|p| (d.name.clone(), p.write.clone())))
            .collect();
        self.pass_writes = batch.len();
        let mut results = self
            .registry
            .write_claims(&self.opts.machine, lease, &batch)
            .await
            .into_iter();
        planned
            .into_iter()
            .map(|p| p.map(|p| (p, results.next().expect("one outcome per claim write"))))
            .collect()
    }

    pub(super) fn is_running(&self, name: &UnitName) -> bool {
        let up = self
            .states
            .get(name)
            .is_some_and(|s| s.active_state.is_up());
        up || self.started.contains_key(name)
    }

    /// Runs placement for this pass: the units placed here with what they should be, and every unit
    /// that concerns this machine (placed here, claimed by us or taken from us, loaded here) with
    /// where the plan puts it.
    fn place(
        &mut self,
        snap: &Snapshot,
    ) -> (BTreeMap<UnitName, TargetUnit>, Vec<(UnitName, Placement)>) {
        let me = self.opts.machine.clone();
        let mut machines = self.cluster.live_machines();
        let mut refusing = self.cluster.cannot_take_units();
        if self.told_cannot_take {
            refusing.insert(me.clone());
        }
        plan::plan_machines(&mut machines, &me, &self.cluster.suspects(), &refusing);
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
        let placements = names
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
        (wanted, placements)
    }

    /// The decision core's verdict for one unit, with the claim it was given.
    fn decide_unit(
        &self,
        ctx: &Ctx<'_>,
        snap: &Snapshot,
        name: UnitName,
        placement: Placement,
    ) -> Decided {
        let me = ctx.me;
        let claim = snap.claims.get(&name).map(decide_claim);
        // The machine whose stop we may need to prove: the holder, or the previous holder.
        let other = claim.as_ref().and_then(|c| {
            if c.machine != *me {
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
                        .filter(|w| *w != m && ctx.committee.contains(w))
                        .count()
                });
                let restarting = snap.restarting.contains(m);
                (alive, suspect, down.is_some(), restarting, polls, votes)
            }
            None => (false, false, false, false, &no_polls, 0),
        };
        let polls: Vec<LeasePoll> = polls.iter().copied().collect();
        let case = Case {
            placement,
            claim: claim.as_ref(),
            loaded: self.loaded.contains_key(&name),
            running: self.is_running(&name),
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
        let verdict = fleet_decide::decide(ctx, &case);
        let stored = Stored {
            unbound: snap.claims.get(&name).is_some_and(|c| c.unbound),
            free: snap.free_claims.get(&name).map(|f| f.mod_revision),
        };
        Decided {
            name,
            placement,
            claim,
            verdict,
            stored,
        }
    }

    /// The claim write a verdict asks for, if any.
    ///
    /// Claim keys that are not bound to a lease (written by something other than an agent; see
    /// `registry::mirror`) are repaired here, without changing who holds what: a free one is replaced
    /// (at its revision) by the claim the verdict writes, our own unbound claim is bound to our lease
    /// again, and an unbound claim whose holder's lease is gone is deleted (at its revision) by the
    /// machine the plan puts the unit on.
    fn claim_write(
        &self,
        name: &UnitName,
        v: &Verdict,
        claim: Option<&fleet_decide::Claim>,
        stored: Stored,
    ) -> Option<Planned> {
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
        let w = v.write.clone().or(repair.clone())?;
        let write = match &w {
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
        Some(Planned {
            verdict_write: w,
            write,
            repair: repair.is_some(),
        })
    }

    /// What a claim write's outcome means for the unit; returns whether the unit runs here.
    fn claim_written(
        &mut self,
        name: &UnitName,
        v: &Verdict,
        p: Planned,
        result: ClaimResult,
    ) -> bool {
        let m = crate::metrics::global();
        match result {
            Ok(Some(_)) => match p.verdict_write {
                Write::Claim => {
                    tracing::info!(unit = %name, "claimed");
                    m.placed();
                    true
                }
                Write::Supersede { from, .. } => {
                    tracing::info!(unit = %name, from = %from.machine, "took the claim over; starting once the previous holder is proven stopped");
                    let now = clock::now();
                    self.superseded_at.insert(name.clone(), now);
                    // Only answers after the supersede prove the handover: ask at once, while this
                    // pass loads the unit (its verdict prepares it); the next pass takes the answer.
                    self.poll_early(from.lease, now);
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
                Write::Release { .. } if p.repair => {
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
                v.run && !matches!(p.verdict_write, Write::Claim | Write::Supersede { .. })
            }
        }
    }
}

/// One unit's verdict in a pass, before its claim write.
struct Decided {
    name: UnitName,
    placement: Placement,
    claim: Option<fleet_decide::Claim>,
    verdict: Verdict,
    stored: Stored,
}

/// A claim write a verdict asks for.
struct Planned {
    /// The decision core's write (or the repair's).
    verdict_write: Write,
    /// What the registry writes for it.
    write: ClaimWrite,
    /// Whether it repairs a claim bound to no lease.
    repair: bool,
}

/// A claim of the registry mirror as the decision core takes it.
pub(super) fn decide_claim(c: &crate::registry::Claim) -> fleet_decide::Claim {
    fleet_decide::Claim {
        machine: c.machine_id.clone(),
        lease: c.lease,
        mod_revision: c.mod_revision,
        handoff: c.handoff.as_ref().map(|(m, l)| fleet_decide::Handoff {
            machine: m.clone(),
            lease: *l,
        }),
    }
}
