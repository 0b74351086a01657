//! A simulated machine's life: power on, fleetd starting (and joining gossip) and stopping, crash,
//! freeze and thaw.

use super::*;

impl Sim {
    /// Boots machine `i`: systemd starts empty, fleetd starts with no saved state.
    pub(super) fn power_on(&mut self, i: u32) {
        let mm = &mut self.machines[i as usize];
        mm.powered = true;
        mm.frozen = false;
        mm.boot += 1;
        mm.guard = None;
        mm.guard_check = None;
        mm.lease = OwnLease::default();
        mm.retiring = None;
        mm.seats.clear();
        mm.deferred.clear();
        let now = Time(mm.clock.local(self.now));
        mm.witness = Witness::fresh(&self.timing, now);
        self.new_life(i);
        self.start_agent(i);
    }

    /// Machine `i` (or its fleetd) starts a new life: a failure of the previous one is over.
    fn new_life(&mut self, i: u32) {
        if let Some(t) = self.failed_at[i as usize].take() {
            self.life_ended_at[i as usize] = Some(t);
        }
    }

    /// Starts fleetd on machine `i` (at boot, or restarted by systemd after it died): it keeps the saved
    /// lease, joins gossip with a new incarnation, and reads the registry.
    pub(crate) fn start_agent(&mut self, i: u32) {
        let mm = &self.machines[i as usize];
        if !mm.powered || mm.agent.is_some() {
            return;
        }
        let seeds: Vec<SocketAddr> = self.seeds_for(i);
        let local = self.local(i);
        let n = self.machines.len();
        let mm = &mut self.machines[i as usize];
        mm.gen += 1;
        mm.incarnation += 1;
        mm.agent_frozen = false;
        let gen = mm.gen;
        mm.agent = Some(Box::new(Agent::new(local, n, i)));
        if !mm.impostor {
            self.new_life(i);
            self.join_gossip(i, &seeds);
        }
        let jitter = self.rng.random_range(0..20_000u64);
        self.push(self.now + jitter, Ev::Keepalive { m: i, gen });
        let jitter = self
            .rng
            .random_range(0..self.sc.config.reconcile_interval.0.max(1));
        self.push(self.now + jitter, Ev::Tick { m: i, gen });
        if self.model.is_none() {
            // fleetd reads its gossip view on every event and every 500 ms (the model has no
            // per-observer suspicion).
            let jitter = self
                .rng
                .random_range(0..self.sc.config.view_refresh.0.max(1));
            self.push(self.now + jitter, Ev::ViewRefresh { m: i, gen });
        }
        self.etcd_send(i, Req::Sync);
    }

    pub(super) fn join_gossip(&mut self, i: u32, seeds: &[SocketAddr]) {
        if self.model.is_none() {
            let mm = &self.machines[i as usize];
            let identity = NodeIdentity::new(mm.id.clone(), mm.addr, mm.incarnation);
            let rng = StdRng::from_rng(&mut self.rng);
            let at = self.instant(i);
            let mut node = Node::new(self.gossip_cfg.clone(), identity, rng, at);
            node.share_copies(&self.gossip_shared);
            node.join(at, seeds);
            node.set_local_metadata(at, self.gossip_metadata(i));
            if let Some(a) = self.machines[i as usize].agent.as_mut() {
                a.node = Some(node);
            }
            self.flush(i);
        } else if let Some(mut model) = self.model.take() {
            model.on_boot(self, i);
            self.model = Some(model);
        }
    }

    /// Seeds: three machines (the first ones at time 0, later three with an announcement in etcd:
    /// fleetd joins through the gossip addresses announced there).
    pub(super) fn seeds_for(&mut self, i: u32) -> Vec<SocketAddr> {
        let n = self.cluster as u32;
        let mut out = Vec::new();
        if self.now == 0 {
            for j in 0..n.min(4) {
                if j != i {
                    out.push(addr_of(j));
                }
                if out.len() == 3 {
                    break;
                }
            }
            return out;
        }
        let candidates: Vec<u32> = (0..n)
            .filter(|&j| j != i && self.etcd.announcement(j).is_some())
            .collect();
        for _ in 0..3.min(candidates.len()) {
            let j = candidates[self.rng.random_range(0..candidates.len())];
            out.push(addr_of(j));
        }
        out
    }

    /// fleetd dies on machine `i` (its units and guard stay).
    pub(super) fn stop_agent(&mut self, i: u32) {
        let Some(agent) = self.machines[i as usize].agent.take() else {
            return;
        };
        if let Some(node) = &agent.node {
            let c = node.counters();
            self.metrics.gossip_dead_datagrams += c.datagrams_out;
            self.metrics.gossip_dead_bytes += c.bytes_out;
        }
        let mm = &mut self.machines[i as usize];
        mm.gen += 1;
        mm.agent_frozen = false;
        if !mm.impostor {
            self.failed_at[i as usize].get_or_insert(self.now);
            self.metrics.failures += 1;
            if let Some(mut model) = self.model.take() {
                model.on_stop(self, i);
                self.model = Some(model);
            }
        }
    }

    pub(super) fn crash(&mut self, i: u32) {
        if !self.machines[i as usize].powered {
            return;
        }
        let units: Vec<u32> = self.machines[i as usize].units.keys().copied().collect();
        for u in units {
            self.remove_unit(i, u);
        }
        if self.machines[i as usize].agent.is_some() {
            self.stop_agent(i);
        } else {
            self.metrics.failures += 1;
        }
        let mm = &mut self.machines[i as usize];
        mm.powered = false;
        mm.frozen = false;
        mm.boot += 1;
        mm.guard = None;
        self.failed_at[i as usize].get_or_insert(self.now);
    }

    pub(super) fn freeze(&mut self, i: u32, agent_only: bool) {
        let mm = &self.machines[i as usize];
        if !mm.powered || mm.frozen || (agent_only && mm.agent_frozen) {
            return;
        }
        if agent_only {
            self.machines[i as usize].agent_frozen = true;
        } else {
            // Every process stops executing: units stop counting as running.
            let running: Vec<u32> = mm
                .units
                .iter()
                .filter(|(_, s)| s.process())
                .map(|(u, _)| *u)
                .collect();
            for u in running {
                self.ran(i, u, false);
            }
            self.machines[i as usize].frozen = true;
        }
        let mm = &mut self.machines[i as usize];
        if let Some(a) = mm.agent.as_mut() {
            a.wake = None;
            a.pass_at = None;
        }
        if !mm.impostor {
            self.failed_at[i as usize] = Some(self.now);
            self.metrics.failures += 1;
            if let Some(mut model) = self.model.take() {
                model.on_stop(self, i);
                self.model = Some(model);
            }
        }
    }

    pub(super) fn thaw(&mut self, i: u32) {
        let mm = &self.machines[i as usize];
        if !mm.powered || !(mm.frozen || mm.agent_frozen) {
            return;
        }
        let whole = mm.frozen;
        let mm = &mut self.machines[i as usize];
        mm.frozen = false;
        mm.agent_frozen = false;
        if whole {
            // The guard resumes with the units: a passed deadline kills them before they run again.
            let boot = mm.boot;
            self.guard_check(i, boot);
            let running: Vec<u32> = self.machines[i as usize]
                .units
                .iter()
                .filter(|(_, s)| s.process())
                .map(|(u, _)| *u)
                .collect();
            for u in running {
                self.ran(i, u, true);
            }
            let deferred = std::mem::take(&mut self.machines[i as usize].deferred);
            let boot = self.machines[i as usize].boot;
            for (unit, job, start) in deferred {
                self.unit_done(i, boot, unit, job, start);
            }
        }
        if self.machines[i as usize].agent.is_none() {
            return;
        }
        self.failed_at[i as usize] = None;
        let gen = self.machines[i as usize].gen;
        self.push(self.now, Ev::NodeWake { m: i, gen });
        self.push(self.now, Ev::Keepalive { m: i, gen });
        self.request_pass(i);
        self.notify_watchers();
        if let Some(mut model) = self.model.take() {
            model.on_resume(self, i);
            self.model = Some(model);
        }
    }

    // ------------------------------------------------------------------------------------------
    // The real gossip node.
}
