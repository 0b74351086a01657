//! The fault timeline: resolving a fault's machines, applying and undoing it.

use super::*;

impl Sim {
    /// The machines a selector of fault `k` picks; random selectors draw from a per-fault seed, so
    /// undoing a fault picks the same machines.
    pub(super) fn select(&self, k: usize, s: &Option<String>) -> (Vec<usize>, bool) {
        let sel = Selector::parse(s.as_deref().unwrap_or("all")).unwrap_or(Selector::All);
        let picked = sel
            .resolve(&self.machine_infos, &mut fault_rng(self.seed, k), false)
            .unwrap_or_default();
        (picked, sel.has_etcd())
    }

    /// The impostor slots of fault `k`.
    pub(super) fn impostor_slots(&self, k: usize) -> Vec<u32> {
        let (orig, _) = self.select(k, &self.sc.faults[k].machines);
        // Slots are allocated in fault order, one per picked machine.
        let mut slot = self.cluster;
        for (j, f) in self.sc.faults.iter().enumerate() {
            if f.kind != FaultKind::Impostor {
                continue;
            }
            let (picked, _) = self.select(j, &f.machines);
            if j == k {
                return (slot..slot + picked.len()).map(|s| s as u32).collect();
            }
            slot += picked.len();
        }
        let _ = orig;
        Vec::new()
    }

    pub(super) fn apply_fault(&mut self, k: usize) {
        let f: Fault = self.sc.faults[k].clone();
        self.observer.fault(self.now);
        let (ms, _) = self.select(k, &f.machines);
        let mut concerned: Vec<u32> = ms.iter().map(|&i| i as u32).collect();
        match f.kind {
            FaultKind::Crash => ms.iter().for_each(|&i| self.crash(i as u32)),
            FaultKind::Restart => ms.iter().for_each(|&i| {
                if !self.machines[i].powered {
                    self.power_on(i as u32)
                }
            }),
            FaultKind::Freeze => ms.iter().for_each(|&i| self.freeze(i as u32, f.agent_only)),
            FaultKind::Thaw => ms.iter().for_each(|&i| self.thaw(i as u32)),
            FaultKind::AgentCrash => ms.iter().for_each(|&i| self.stop_agent(i as u32)),
            FaultKind::Impostor => {
                for s in self.impostor_slots(k) {
                    let mm = &mut self.machines[s as usize];
                    mm.powered = true;
                    mm.boot += 1;
                    self.start_agent(s);
                }
            }
            FaultKind::SetMetadata => {
                let mut saved = Vec::new();
                for &i in &ms {
                    let meta = &mut self.machine_infos[i].metadata;
                    saved.push((i, meta.clone()));
                    for key in &f.unset {
                        meta.remove(key);
                    }
                    for (key, v) in &f.set {
                        meta.insert(key.clone(), v.clone());
                    }
                }
                self.saved_metadata.insert(k, saved);
                self.inputs_changed();
                for &i in &ms {
                    self.republish_metadata(i as u32);
                }
            }
            FaultKind::ClockSkew => {
                let rate = f.rate.unwrap_or(1.0);
                for &i in &ms {
                    let now = self.now;
                    self.machines[i].clock.set_rate(now, rate);
                }
            }
            FaultKind::Partition | FaultKind::Loss | FaultKind::Delay => {
                let (mut a, ea) = self.select(k, &f.from);
                let (mut b, eb) = self.select(k, &f.to);
                concerned = a.iter().map(|&i| i as u32).collect();
                if f.to.is_some() {
                    concerned.extend(b.iter().map(|&i| i as u32));
                }
                if ea {
                    a.push(self.net.etcd());
                }
                if eb {
                    b.push(self.net.etcd());
                }
                if f.to.is_none() && f.kind == FaultKind::Partition {
                    // `from` against everybody else, etcd and impostor slots included.
                    let inside: BTreeSet<usize> = a.iter().copied().collect();
                    b = (0..=self.machines.len())
                        .filter(|i| !inside.contains(i))
                        .collect();
                }
                let effect = match f.kind {
                    FaultKind::Partition => Effect::Block,
                    FaultKind::Loss => Effect::Loss(f.rate.unwrap_or(0.0)),
                    _ => Effect::Delay(f.extra.map(|d| d.0).unwrap_or(0)),
                };
                self.net.add(k, &a, &b, effect);
                if !(f.kind == FaultKind::Partition && f.oneway) {
                    self.net.add(k, &b, &a, effect);
                }
            }
            FaultKind::Heal => {
                self.net.clear();
                concerned.clear();
            }
            FaultKind::EtcdOutage => {
                self.etcd_up = false;
                concerned = (0..self.cluster as u32).collect();
            }
            FaultKind::EtcdSlow => {
                self.etcd_extra += f.extra.map(|d| d.0).unwrap_or(0);
                concerned = (0..self.cluster as u32).collect();
            }
        }
        if f.kind == FaultKind::Thaw {
            concerned.clear();
        }
        if other_fault(f.kind) && f.for_.is_some() {
            for &i in &ms {
                if let Some(c) = self.other_faults.get_mut(i) {
                    *c += 1;
                }
            }
        } else if other_fault(f.kind) {
            // Lasts to the end: those machines are never clean again.
            for &i in &ms {
                if let Some(c) = self.other_faults.get_mut(i) {
                    *c = u32::MAX / 2;
                }
            }
        }
        self.track_fence_truth();
        self.checker.fault(self.now, k, &concerned);
        if f.for_.is_none() && matches!(f.kind, FaultKind::Thaw | FaultKind::Restart) {
            self.checker.fault_end(self.now, k);
        }
        self.metrics
            .fault_marks
            .push((self.now, format!("{:?} {}", f.kind, describe(&f))));
        if let Some(d) = f.for_ {
            self.push(self.now + d.0, Ev::Undo(k));
        }
        if matches!(
            f.kind,
            FaultKind::Partition | FaultKind::Heal | FaultKind::EtcdOutage
        ) {
            // Reachability changed: agents notice at their next pass.
            self.notify_watchers();
        }
    }

    pub(super) fn undo_fault(&mut self, k: usize) {
        let f: Fault = self.sc.faults[k].clone();
        let (ms, _) = self.select(k, &f.machines);
        match f.kind {
            FaultKind::Crash => ms.iter().for_each(|&i| {
                if !self.machines[i].powered {
                    self.power_on(i as u32)
                }
            }),
            FaultKind::Freeze => ms.iter().for_each(|&i| self.thaw(i as u32)),
            FaultKind::AgentCrash => ms.iter().for_each(|&i| {
                if self.machines[i].powered && self.machines[i].agent.is_none() {
                    self.start_agent(i as u32)
                }
            }),
            FaultKind::Impostor => {
                for s in self.impostor_slots(k) {
                    self.stop_agent(s);
                    self.machines[s as usize].powered = false;
                }
            }
            FaultKind::SetMetadata => {
                for (i, meta) in self.saved_metadata.remove(&k).unwrap_or_default() {
                    self.machine_infos[i].metadata = meta;
                    self.republish_metadata(i as u32);
                }
                self.inputs_changed();
            }
            FaultKind::ClockSkew => {
                for &i in &ms {
                    let now = self.now;
                    self.machines[i].clock.set_rate(now, 1.0);
                }
            }
            FaultKind::Partition | FaultKind::Loss | FaultKind::Delay => {
                self.net.remove(k);
                self.notify_watchers();
            }
            FaultKind::EtcdOutage => {
                self.etcd_up = true;
                // A new leader extends every lease by its TTL.
                self.etcd.promote(self.now);
                self.notify_watchers();
            }
            FaultKind::EtcdSlow => {
                self.etcd_extra = self
                    .etcd_extra
                    .saturating_sub(f.extra.map(|d| d.0).unwrap_or(0))
            }
            FaultKind::Restart | FaultKind::Thaw | FaultKind::Heal => {}
        }
        if other_fault(f.kind) {
            for &i in &ms {
                if let Some(c) = self.other_faults.get_mut(i) {
                    *c = c.saturating_sub(1);
                }
            }
        }
        self.track_fence_truth();
        self.checker.fault_end(self.now, k);
        self.metrics
            .fault_marks
            .push((self.now, format!("end of {:?}", f.kind)));
    }

    /// Machine `i`'s metadata changed: its gossip node publishes it, every agent replans.
    pub(super) fn republish_metadata(&mut self, i: u32) {
        let at = self.instant(i);
        let meta = self.gossip_metadata(i);
        if let Some(node) = self.node_mut(i) {
            node.set_local_metadata(at, meta);
            self.flush(i);
        }
        for j in 0..self.cluster as u32 {
            self.request_pass(j);
        }
    }

    // ------------------------------------------------------------------------------------------
    // Invariants and sampling.
}

/// Faults that concern a machine without being about etcd, its power, pauses, fleetd or network.
fn other_fault(kind: FaultKind) -> bool {
    matches!(
        kind,
        FaultKind::ClockSkew | FaultKind::SetMetadata | FaultKind::Impostor
    )
}

pub(super) fn fault_rng(seed: u64, k: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ mix(k as u64 + 1))
}

pub(super) fn describe(f: &Fault) -> String {
    let mut parts = Vec::new();
    if let Some(m) = &f.machines {
        parts.push(m.clone());
    }
    if let Some(m) = &f.from {
        parts.push(format!("from {m}"));
    }
    if let Some(m) = &f.to {
        parts.push(format!("to {m}"));
    }
    if let Some(r) = f.rate {
        parts.push(format!("rate {r}"));
    }
    if let Some(e) = f.extra {
        parts.push(format!("+{e}"));
    }
    if f.agent_only {
        parts.push("agent only".into());
    }
    for (k, v) in &f.set {
        parts.push(format!("{k}={v}"));
    }
    for k in &f.unset {
        parts.push(format!("-{k}"));
    }
    if let Some(d) = f.for_ {
        parts.push(format!("for {d}"));
    }
    parts.join(" ")
}
