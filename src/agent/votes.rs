//! What this machine asks of others for its decisions: `LeaseTimeToLive` polls of holders' leases, the
//! witnesses' votes on taking units over, and this machine's announcement in etcd.

use super::*;

impl State {
    /// Asks etcd about the leases the last pass wanted to know about.
    pub(super) async fn run_polls(&mut self) {
        let wanted = std::mem::take(&mut self.poll_wanted);
        for lease in wanted {
            let sent = clock::now();
            match self.registry.lease_time_to_live(lease).await {
                Ok(answer) => {
                    let q = self.polls.entry(lease).or_default();
                    q.push_back(LeasePoll {
                        sent,
                        received: clock::now(),
                        answer,
                    });
                    while q.len() > POLLS_KEPT {
                        q.pop_front();
                    }
                }
                Err(e) => tracing::debug!(lease = format!("{lease:x}"), "LeaseTimeToLive: {e}"),
            }
        }
    }

    /// Asks the witnesses that have not voted yet to vote on the holders the last pass wanted to take
    /// units from (this machine's own witness is asked directly).
    pub(super) async fn run_votes(&mut self, committee: &Committee) {
        let wanted = std::mem::take(&mut self.votes_wanted);
        let now = clock::now();
        self.votes.retain(|k, _| wanted.contains(k));
        self.votes_asked.retain(|k, _| wanted.contains(k));
        for (holder, lease) in wanted {
            let key = (holder.clone(), lease);
            if self
                .votes_asked
                .get(&key)
                .is_some_and(|t| now.since(*t) < self.timing.lease_poll_period())
            {
                continue;
            }
            self.votes_asked.insert(key.clone(), now);
            let have = self.votes.get(&key).cloned().unwrap_or_default();
            let ask: Vec<MachineId> = committee
                .witnesses
                .iter()
                .filter(|w| **w != holder && !have.contains(*w))
                .cloned()
                .collect();
            for w in ask {
                let granted = if w == self.opts.machine {
                    let (alive, suspect, _) = self.cluster.peer(&holder);
                    self.witness.vote(&holder, lease, alive && !suspect)
                } else {
                    self.ask_vote(&w, &holder, lease).await
                };
                if granted {
                    self.votes.entry(key.clone()).or_default().insert(w);
                }
            }
        }
    }

    /// One witness's vote on `holder`'s `lease`.
    pub(super) async fn ask_vote(
        &self,
        witness: &MachineId,
        holder: &MachineId,
        lease: i64,
    ) -> bool {
        let Some(gossip) = self.cluster.gossip() else {
            return false;
        };
        let req = relay::Request::Vote {
            machine: holder.to_string(),
            lease,
        }
        .encode();
        let peer = witness.clone();
        let answer = tokio::time::timeout(
            self.timing.lease_poll_period() * 2,
            gossip.request(&peer, req),
        )
        .await;
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
