//! The simulated network and gossip: waking nodes, delivering datagrams and syncs, and what each machine's
//! view learns from its gossip node (or the SWIM model).

use super::*;

impl Sim {
    pub(super) fn node_wake(&mut self, m: u32, gen: u32) {
        let now = self.now;
        let mm = &mut self.machines[m as usize];
        if mm.gen != gen || !mm.agent_runs() {
            return;
        }
        let Some(a) = mm.agent.as_mut() else { return };
        if a.wake != Some(now) {
            return;
        }
        a.wake = None;
        let at = self.instant(m);
        if let Some(node) = self.machines[m as usize]
            .agent
            .as_mut()
            .and_then(|a| a.node.as_mut())
        {
            node.handle_timeout(at);
        }
        self.flush(m);
    }

    pub(super) fn deliver(&mut self, to: u32, from: u32, data: Data) {
        if !self.machines[to as usize].agent_runs() {
            return;
        }
        let at = self.instant(to);
        let from_addr = addr_of(from);
        if let Some(node) = self.node_mut(to) {
            // Garbage is counted by the node; the network moves on.
            let _ = node.handle_datagram(at, from_addr, &data);
        }
        self.flush(to);
    }

    pub(super) fn node_mut(&mut self, m: u32) -> Option<&mut Node> {
        self.machines[m as usize]
            .agent
            .as_mut()
            .and_then(|a| a.node.as_mut())
    }

    /// [`Sim::flush`], for the agent model.
    pub(crate) fn flush_node(&mut self, m: u32) {
        self.flush(m);
    }

    /// Sends what node `m` produced, runs its syncs, handles its events, and re-arms its wake-up.
    pub(super) fn flush(&mut self, m: u32) {
        let Some(mut node) = self.machines[m as usize]
            .agent
            .as_mut()
            .and_then(|a| a.node.take())
        else {
            return;
        };
        let mut syncs = Vec::new();
        let mut events = Vec::new();
        while let Some(t) = node.poll_transmit() {
            if let Some(dst) = index_of(t.dst) {
                self.send(m, dst, t.data.to_vec());
            }
        }
        while let Some(peer) = node.poll_sync() {
            syncs.push(peer);
        }
        while let Some(e) = node.poll_event() {
            events.push(e);
        }
        let next = node.poll_timeout();
        if let Some(a) = self.machines[m as usize].agent.as_mut() {
            a.node = Some(node);
        }
        for e in events {
            self.gossip_event(m, e);
        }
        if let Some(next) = next {
            let local = next.saturating_duration_since(self.base).as_micros() as u64;
            let g = self.machines[m as usize].clock.global(local).max(self.now);
            let gen = self.machines[m as usize].gen;
            if let Some(a) = self.machines[m as usize].agent.as_mut() {
                if a.wake.is_none_or(|w| g < w) {
                    a.wake = Some(g);
                    self.push(g, Ev::NodeWake { m, gen });
                }
            }
        }
        for peer in syncs {
            if let Some(p) = index_of(peer) {
                self.sync(m, p);
            }
        }
    }

    pub(super) fn send(&mut self, from: u32, to: u32, data: Data) {
        let (a, b) = (from as usize, to as usize);
        if to as usize >= self.machines.len() || self.net.blocked(a, b) {
            self.metrics.datagrams_lost += 1;
            return;
        }
        let loss = self.net.loss(a, b, self.sc.config.loss);
        if loss > 0.0 && self.rng.random_bool(loss.min(1.0)) {
            self.metrics.datagrams_lost += 1;
            return;
        }
        let c = &self.sc.config;
        let jitter = if c.jitter.0 > 0 {
            self.rng.random_range(0..c.jitter.0)
        } else {
            0
        };
        let at = self.now + c.latency.0 + jitter + self.net.delay(a, b);
        self.push(at, Ev::Deliver { to, from, data });
    }

    /// The three-message anti-entropy exchange that node `a` asked for with `b`, through the wire
    /// encoding, if both ends can talk.
    pub(super) fn sync(&mut self, a: u32, b: u32) {
        let (ai, bi) = (a as usize, b as usize);
        if a == b
            || bi >= self.machines.len()
            || !self.machines[bi].agent_runs()
            || self.net.blocked(ai, bi)
            || self.net.blocked(bi, ai)
        {
            return;
        }
        let loss = self.net.loss(ai, bi, self.sc.config.loss);
        if loss > 0.0 && self.rng.random_bool(loss.min(1.0)) {
            return;
        }
        let (ta, tb) = (self.instant(a), self.instant(b));
        // As fleetd's driver does: the offer the node chose for this peer (a summary for the
        // periodic anti-entropy, a full offer for a join, a retry or a heal).
        let peer = addr_of(b);
        let Some(offer) = self.node_mut(a).map(|n| n.sync_offer_to(peer).encode()) else {
            return;
        };
        self.metrics.sync_bytes += offer.len() as u64;
        let answer = {
            let Some(node) = self.node_mut(b) else {
                return;
            };
            let Ok(offer) = SyncOffer::decode(&offer) else {
                return;
            };
            match node.handle_sync_offer(tb, offer) {
                Ok(x) => x.encode(),
                Err(_) => return,
            }
        };
        self.flush(b);
        self.metrics.sync_bytes += answer.len() as u64;
        let delta = {
            let Some(node) = self.node_mut(a) else {
                return;
            };
            let Ok(answer) = SyncAnswer::decode(&answer) else {
                return;
            };
            match node.handle_sync_answer(ta, answer) {
                Ok(d) => d.encode(),
                Err(_) => return,
            }
        };
        self.flush(a);
        self.metrics.sync_bytes += delta.len() as u64;
        if let Some(node) = self.node_mut(b) {
            if let Ok(d) = FullState::decode(&delta) {
                let _ = node.merge(tb, d);
            }
        }
        self.flush(b);
    }

    pub(super) fn gossip_event(&mut self, m: u32, e: Event) {
        match e {
            Event::MemberUp(id) | Event::MemberRestarted(id) => {
                if let Some(j) = self.index_gid(&id) {
                    self.learn_up(m, j);
                }
            }
            Event::MemberDown(id) => {
                if let Some(j) = self.index_gid(&id) {
                    // The life the verdict is about: the identity the observer's node holds.
                    let earlier = self.machines[m as usize]
                        .agent
                        .as_ref()
                        .and_then(|a| a.node.as_ref())
                        .and_then(|n| n.member_identity(&id))
                        .is_some_and(|i| i.incarnation < self.machines[j as usize].incarnation);
                    if self.learn_down_quiet(m, j) {
                        self.record_verdict_on(m, j, self.now, earlier);
                    }
                }
            }
            _ => {}
        }
    }

    pub(super) fn index_gid(&self, id: &MachineId) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// Observer `m` now holds `j` alive.
    pub(crate) fn learn_up(&mut self, m: u32, j: u32) {
        if m == j {
            return;
        }
        let Some(a) = self.machines[m as usize].agent.as_mut() else {
            return;
        };
        a.down_since.remove(&j);
        if a.live.insert(j) {
            a.live_hash ^= mix(j as u64);
            self.request_pass(m);
        }
    }

    /// Records observer `m`'s down verdict about `j` at time `at` in the detection metrics (the
    /// model with `sync_views` applies verdicts later than it draws them).
    pub(crate) fn record_verdict(&mut self, m: u32, j: u32, at: u64) {
        self.record_verdict_on(m, j, at, false);
    }

    /// [`Self::record_verdict`], for a verdict about `j`'s current life or, with `earlier`, about a
    /// previous one (a late detection of the failure that ended it).
    fn record_verdict_on(&mut self, m: u32, j: u32, at: u64, earlier: bool) {
        let failed = if earlier {
            self.life_ended_at[j as usize]
        } else {
            self.failed_at[j as usize]
        };
        match failed {
            Some(t0) if at >= t0 => self.metrics.detection(j, at - t0),
            Some(_) => {}
            None => {
                let (a, b) = (m as usize, j as usize);
                if self.machines[b].powered && (self.net.blocked(a, b) || self.net.blocked(b, a)) {
                    self.metrics.partition_verdicts += 1;
                } else if self.machines[b].powered {
                    self.metrics.false_verdicts += 1;
                }
            }
        }
    }

    /// Observer `m` declared `j` down (recorded in the metrics).
    pub(crate) fn learn_down(&mut self, m: u32, j: u32) {
        if self.learn_down_quiet(m, j) {
            self.record_verdict(m, j, self.now);
        }
    }

    /// Observer `m` declared `j` down; returns whether its view changed.
    pub(crate) fn learn_down_quiet(&mut self, m: u32, j: u32) -> bool {
        if m == j {
            return false;
        }
        let local = self.local(m);
        let Some(a) = self.machines[m as usize].agent.as_mut() else {
            return false;
        };
        a.down_since.entry(j).or_insert(local);
        if !a.live.remove(j) {
            return false;
        }
        a.live_hash ^= mix(j as u64);
        self.request_pass(m);
        true
    }

    /// Whether machine `m`'s gossip layer runs (model).
    pub(crate) fn is_responsive(&self, m: u32) -> bool {
        self.machines[m as usize].agent_runs() && !self.machines[m as usize].impostor
    }

    /// Whether observer `m` holds `j` live (model mode).
    pub(crate) fn view_has(&self, m: u32, j: u32) -> bool {
        self.machines[m as usize]
            .agent
            .as_ref()
            .is_some_and(|a| a.live.contains(j))
    }

    /// How many machines observer `m` holds live, itself excluded.
    pub(crate) fn view_len(&self, m: u32) -> usize {
        self.machines[m as usize]
            .agent
            .as_ref()
            .map_or(0, |a| a.live.len())
    }

    /// Whether `a` and `b` can exchange traffic (no partition either way).
    pub(crate) fn linked(&self, a: u32, b: u32) -> bool {
        !self.net.blocked(a as usize, b as usize) && !self.net.blocked(b as usize, a as usize)
    }

    /// Loss probability from `a` to `b`.
    pub(crate) fn link_loss(&self, a: u32, b: u32) -> f64 {
        self.net.loss(a as usize, b as usize, self.sc.config.loss)
    }

    /// Model mode, time 0: every machine starts with the whole cluster in its view (formed cluster).
    pub(crate) fn preform_views(&mut self) {
        let n = self.cluster as u32;
        let all = (0..n).fold(0u64, |h, j| h ^ mix(j as u64));
        let size = self.machines.len();
        for i in 0..n {
            if let Some(a) = self.machines[i as usize].agent.as_mut() {
                a.live = Bits::new(size);
                for j in 0..n {
                    if j != i {
                        a.live.insert(j);
                    }
                }
                a.live_hash = all ^ mix(i as u64);
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Reachability of etcd, and its watch.
}
