//! What this machine asks of others for its decisions: `LeaseTimeToLive` polls of holders' leases, the
//! witnesses' votes on taking units over, and this machine's announcement in etcd.

use super::*;

/// An early `LeaseTimeToLive` poll's lease, when it was sent and answered, and the answer.
pub(super) type EarlyPoll = (
    i64,
    Time,
    Time,
    Result<fleet_decide::LeaseAnswer, crate::registry::RegistryError>,
);

impl State {
    /// Asks etcd about the leases the last pass wanted to know about, after taking the answers of the
    /// polls sent early ([`State::poll_early`]).
    pub(super) async fn run_polls(&mut self) {
        let mut early = std::mem::take(&mut self.early_polls);
        let answered = std::mem::take(&mut self.early_leases);
        while let Some(answer) = early.join_next().await {
            if let Ok((lease, sent, received, answer)) = answer {
                self.note_poll(lease, sent, received, answer);
            }
        }
        let wanted = std::mem::take(&mut self.poll_wanted);
        self.poll_tried
            .retain(|l, _| wanted.contains(l) || answered.contains(l));
        // A lease asked about early was asked a moment ago: not again in this pass.
        for lease in wanted.into_iter().filter(|l| !answered.contains(l)) {
            let sent = clock::now();
            self.poll_tried.insert(lease, sent);
            let answer = self.registry.lease_time_to_live(lease).await;
            self.note_poll(lease, sent, clock::now(), answer);
        }
    }

    /// Asks etcd about `lease` now, without waiting for the answer: the next pass takes it (a
    /// supersede's proof needs an answer sent after it, and this pass still loads the unit meanwhile).
    /// The regular polls of `lease` are due a poll period later.
    pub(super) fn poll_early(&mut self, lease: i64, now: Time) {
        if !self.early_leases.insert(lease) {
            return; // asked already in this pass (several units of one holder)
        }
        self.poll_tried.insert(lease, now);
        let registry = self.registry.clone();
        self.early_polls.spawn(async move {
            let sent = clock::now();
            let answer = registry.lease_time_to_live(lease).await;
            (lease, sent, clock::now(), answer)
        });
    }

    fn note_poll(
        &mut self,
        lease: i64,
        sent: Time,
        received: Time,
        answer: Result<fleet_decide::LeaseAnswer, crate::registry::RegistryError>,
    ) {
        match answer {
            Ok(answer) => {
                let q = self.polls.entry(lease).or_default();
                q.push_back(LeasePoll {
                    sent,
                    received,
                    answer,
                });
                while q.len() > POLLS_KEPT {
                    q.pop_front();
                }
            }
            Err(e) => tracing::debug!(lease = format!("{lease:x}"), "LeaseTimeToLive: {e}"),
        }
    }

    /// Asks the witnesses that have not voted yet to vote on the holders the last pass wanted to take
    /// units from (this machine's own witness is asked directly, the others all at once: one round
    /// trip, not one per witness).
    pub(super) async fn run_votes(&mut self, committee: &Committee) {
        let wanted = std::mem::take(&mut self.votes_wanted);
        let now = clock::now();
        self.votes.retain(|k, _| wanted.contains(k));
        self.votes_asked.retain(|k, _| wanted.contains(k));
        let mut asked = tokio::task::JoinSet::new();
        for (holder, lease) in wanted {
            let key = (holder.clone(), lease);
            if self
                .votes_asked
                .get(&key)
                .is_some_and(|t| now.since(*t) < self.timing.lease_poll_period())
            {
                continue;
            }
            let have = self.votes.get(&key).cloned().unwrap_or_default();
            // A majority voted already: the verdicts need no more (asking the rest cost a round trip
            // to every witness that had not voted, on every pass of a takeover until the unit started).
            let voted = have
                .iter()
                .filter(|w| **w != holder && committee.contains(w))
                .count();
            if voted >= committee.majority() {
                self.votes_asked.entry(key).or_insert(now);
                continue;
            }
            self.votes_asked.insert(key.clone(), now);
            let ask: Vec<MachineId> = committee
                .witnesses
                .iter()
                .filter(|w| **w != holder && !have.contains(*w))
                .cloned()
                .collect();
            for w in ask {
                if w == self.opts.machine {
                    let (alive, suspect, _) = self.cluster.peer(&holder);
                    if self.witness.vote(&holder, lease, alive && !suspect) {
                        self.votes.entry(key.clone()).or_default().insert(w);
                    }
                    continue;
                }
                let Some(gossip) = self.cluster.gossip().cloned() else {
                    continue;
                };
                let (key, timeout) = (key.clone(), self.timing.lease_poll_period() * 2);
                asked.spawn(async move {
                    let granted = ask_vote(gossip, &w, &key.0, key.1, timeout).await;
                    (key, w, granted)
                });
            }
        }
        while let Some(answer) = asked.join_next().await {
            if let Ok((key, w, true)) = answer {
                self.votes.entry(key).or_default().insert(w);
            }
        }
    }

    /// Writes our announcement (once per lease generation, or after a metadata change); `false` while
    /// another live agent holds our machine ID.
    pub(super) async fn announce(&mut self, lease: &LeaseStatus) -> bool {
        let key = (lease.lease.id, lease.generation);
        if self.announced == Some(key) && self.announced_refused == self.refused {
            return true;
        }
        let local = self.cluster.local_machine();
        let rec = MachineRecord {
            id: self.opts.machine.clone(),
            public_ip: local.public_ip,
            metadata: local.metadata,
            version: env!("CARGO_PKG_VERSION").to_string(),
            gossip_addr: self.cluster.gossip().map(|g| g.identity().addr),
            refused: self
                .refused
                .iter()
                .map(|(n, why)| (n.to_string(), why.clone()))
                .collect(),
        };
        self.publish_metadata();
        match self.registry.announce(&rec, lease.lease.id).await {
            Ok(Announced::Ok) => {
                if self.cluster.identity_holder().is_some() {
                    tracing::info!(machine = %self.opts.machine, "machine ID free again: joining");
                    self.cluster.set_identity_conflict(None);
                }
                self.announced = Some(key);
                self.announced_refused = self.refused.clone();
                if let Err(e) = self.registry.clear_restarting(&self.opts.machine).await {
                    tracing::debug!("clearing the restarting mark: {e}");
                }
                true
            }
            Ok(Announced::InUse { by }) => {
                if self.cluster.identity_holder().as_deref() != Some(by.as_str()) {
                    tracing::error!(
                        machine = %self.opts.machine,
                        "machine ID {} is already in use by {by}: this fleetd claims nothing until \
                         the ID is changed (and fleetd restarted) or the other agent is gone",
                        self.opts.machine
                    );
                    self.cluster.set_identity_conflict(Some(by));
                }
                false
            }
            Err(e) => {
                tracing::warn!("announcing this machine: {e}");
                self.cluster.identity_holder().is_none()
            }
        }
    }
}

/// One witness's vote on `holder`'s `lease`, asked over gossip's request channel.
async fn ask_vote(
    gossip: fleet_gossip_quic::transport::GossipHandle,
    witness: &MachineId,
    holder: &MachineId,
    lease: i64,
    timeout: Duration,
) -> bool {
    let req = relay::Request::Vote {
        machine: holder.clone(),
        lease,
    }
    .encode();
    let answer = tokio::time::timeout(timeout, gossip.request(witness, req)).await;
    match answer
        .ok()
        .and_then(|r| r.ok())
        .map(|b| relay::Response::decode(&b))
    {
        Some(Ok(relay::Response::Granted(g))) => g,
        other => {
            tracing::debug!(%witness, ?other, "no vote");
            false
        }
    }
}

/// When the first of the `wanted` requests is due: at once for one never made, a `period` after the
/// last one otherwise (`last`: when each was last made); `None` when nothing is wanted.
pub(super) fn first_due<K: Ord>(
    wanted: &BTreeSet<K>,
    last: &BTreeMap<K, Time>,
    now: Time,
    period: Duration,
) -> Option<Time> {
    wanted
        .iter()
        .map(|k| last.get(k).map_or(now, |t| *t + period))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Time {
        Time::from_micros(x * 1000)
    }

    #[test]
    fn a_request_never_made_is_due_at_once_the_others_a_period_after_the_last() {
        let period = Duration::from_millis(100);
        let last = BTreeMap::from([(1, ms(950)), (2, ms(980))]);
        let due =
            |wanted: &[i64]| first_due(&wanted.iter().copied().collect(), &last, ms(1000), period);
        assert_eq!(due(&[]), None);
        assert_eq!(due(&[2]), Some(ms(1080)));
        assert_eq!(due(&[1, 2]), Some(ms(1050)));
        assert_eq!(due(&[1, 2, 3]), Some(ms(1000)));
    }
}
