//! Setting up a run: machines, units, the scenario's settings and faults, and units claimed where a
//! capture found them.

use super::*;

impl Sim {
    /// Sets up a run of `sc` with `seed`: loads the units, creates the machines (all booting at 0).
    pub fn new(sc: &Scenario, seed: u64) -> Result<Sim, SimError> {
        let sc = sc.clone();
        let rng = StdRng::seed_from_u64(seed);
        // Machines.
        let mut ids = Vec::new();
        let mut metas = Vec::new();
        let per_rack = if sc.machines.racks > 0 {
            sc.machines.count.div_ceil(sc.machines.racks)
        } else {
            0
        };
        for i in 0..sc.machines.count {
            let mut meta = sc.machines.metadata.clone();
            if let Some(rack) = i.checked_div(per_rack) {
                meta.insert("rack".into(), format!("r{rack:02}"));
            }
            ids.push(format!("m{i:05}"));
            metas.push(meta);
        }
        for (k, e) in sc.machines.list.iter().enumerate() {
            let i = sc.machines.count + k;
            ids.push(e.id.clone().unwrap_or_else(|| format!("m{i:05}")));
            metas.push(e.metadata.clone());
        }
        let cluster = ids.len();
        let mut by_id = HashMap::new();
        let mut machine_infos = Vec::new();
        for (i, (id, meta)) in ids.iter().zip(metas).enumerate() {
            let mid =
                MachineId::parse(id).map_err(|e| SimError::Machine(id.clone(), e.to_string()))?;
            if by_id.insert(mid.clone(), i as u32).is_some() {
                return Err(SimError::Machine(id.clone(), "listed twice".into()));
            }
            machine_infos.push(MachineInfo {
                id: mid,
                metadata: meta,
                refused: Default::default(),
            });
        }
        // Check fault selectors up front; impostor faults get machine slots of their own.
        let mut impostors = Vec::new();
        for (k, f) in sc.faults.iter().enumerate() {
            for (field, s) in [("machines", &f.machines), ("from", &f.from), ("to", &f.to)] {
                let Some(s) = s else { continue };
                let bad = |e: String| SimError::Fault(k, format!("{field} = {s:?}: {e}"));
                let sel = Selector::parse(s).map_err(bad)?;
                if field == "machines" && sel.has_etcd() {
                    return Err(bad(
                        "etcd is not a machine; it can only be a side of a partition, loss or delay"
                            .into(),
                    ));
                }
                let picked = sel
                    .resolve(&machine_infos, &mut fault_rng(seed, k), true)
                    .map_err(bad)?;
                if picked.is_empty() && !sel.has_etcd() {
                    return Err(bad("matches no machine".into()));
                }
                if f.kind == FaultKind::Impostor && Some(s) == f.machines.as_ref() {
                    impostors.extend(picked.into_iter().map(|i| (k, i)));
                }
            }
        }
        let mut machines = Vec::new();
        let slots = (0..cluster).map(|i| (i, false)).chain(
            impostors
                .iter()
                .map(|&(_, orig)| (orig, true))
                .collect::<Vec<_>>(),
        );
        for (slot, (ident, impostor)) in slots.enumerate() {
            let id = machine_infos[ident].id.clone();
            machines.push(Machine {
                id,
                addr: addr_of(slot as u32),
                ident: ident as u32,
                impostor,
                powered: false,
                frozen: false,
                boot: 0,
                clock: Clock {
                    anchor_g: 0,
                    anchor_l: 0,
                    rate: 1.0,
                },
                units: BTreeMap::new(),
                deferred: Vec::new(),
                guard: None,
                guard_check: None,
                lease: OwnLease::default(),
                retiring: None,
                witness: Witness::default(),
                seats: BTreeMap::new(),
                incarnation: 0,
                agent: None,
                gen: 0,
                agent_frozen: false,
            });
        }
        let n = machines.len();
        let (units, base_infos, files) = load_units(&sc)?;
        let c = &sc.config;
        let gossip_cfg = GossipConfig {
            probe_period: c.probe_period.std(),
            probe_rtt: c.probe_rtt.std(),
            num_indirect_probes: c.num_indirect_probes,
            suspect_to_down_after: c.suspect_to_down_after.std(),
            remove_down_after: c.remove_down_after.std(),
            max_transmissions: c.max_transmissions,
            gossip_interval: c.gossip_interval.std(),
            gossip_fanout: c.gossip_fanout,
            anti_entropy_interval: c.anti_entropy_interval.std(),
            ..GossipConfig::default()
        };
        let timing = sc.timing();
        // A move long after a fault ended is not caused by it: allow the slow paths (a lease that
        // expires a TTL after the fault, a claim that follows) plus some slack.
        let settle = 2 * sc.config.agent_ttl.0 + 10_000_000;
        let mut checker = Checker::new(
            &files,
            machines.iter().map(|m| m.id.to_string()).collect(),
            settle,
        );
        for (i, m) in machines.iter().enumerate() {
            if m.impostor {
                checker.impostor(i as u32);
            }
        }
        let model = (sc.config.gossip_mode == GossipMode::Model)
            .then(|| SwimModel::new(cluster, &sc.config));
        let nunits = units.len();
        let observer = Observer::new(
            units
                .iter()
                .map(|u| (u.name.as_str().to_string(), u.global))
                .collect(),
            machine_infos.iter().map(|m| m.id.to_string()).collect(),
            machines.iter().map(|m| m.ident as usize).collect(),
        );
        let unit_index = units
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.clone(), i as u32))
            .collect();
        let mut sim = Sim {
            seed,
            now: 0,
            queue: BinaryHeap::new(),
            seq: 0,
            rng,
            base: Instant::now(),
            machines,
            cluster,
            units,
            base_infos,
            machine_infos,
            by_id,
            by_ptr: HashMap::default(),
            unit_index,
            etcd: Etcd::new(nunits),
            etcd_up: true,
            etcd_extra: 0,
            net: Net::new(n),
            plans: HashMap::new(),
            planner: None,
            planner_at: None,
            planner_claims: Vec::new(),
            inputs_version: 0,
            units_by_name: Vec::new(),
            plan_computations: 0,
            watch_pending: false,
            submitted: false,
            metrics: Metrics::new(cluster, nunits),
            checker,
            observer,
            timing,
            gossip_cfg,
            gossip_shared: fleet_gossip::Shared::default(),
            model,
            failed_at: vec![None; n],
            life_ended_at: vec![None; n],
            other_faults: vec![0; cluster],
            saved_metadata: HashMap::new(),
            events_processed: 0,
            last_at: 0,
            stop_on_violation: false,
            trace: None,
            sc,
        };
        sim.by_ptr = sim
            .machine_infos
            .iter()
            .filter_map(|m| Some((m.id.as_str().as_ptr() as usize, *sim.by_id.get(&m.id)?)))
            .collect();
        let mut by_name: Vec<u32> = (0..sim.units.len() as u32).collect();
        by_name.sort_by(|&a, &b| sim.units[a as usize].name.cmp(&sim.units[b as usize].name));
        sim.units_by_name = by_name;
        if let Ok(name) = std::env::var("FLEET_SIM_TRACE") {
            sim.trace = sim
                .units
                .iter()
                .position(|u| u.name.as_str() == name)
                .map(|u| u as u32);
        }
        for i in 0..cluster as u32 {
            sim.power_on(i);
        }
        // No needless fence: the window is the witnesses' support period plus 2 s; an etcd link
        // down for half the lease TTL excuses a fence (the lease's slow bound comes before its expiry).
        let window = u64::try_from(sim.timing.support_validity().as_micros())
            .unwrap_or(u64::MAX / 2)
            + 2_000_000;
        sim.checker
            .check_fences(window, sim.sc.config.agent_ttl.0 / 2);
        sim.track_fence_truth();
        sim.push(sim.sc.config.units_at.0, Ev::SubmitUnits);
        sim.push(0, Ev::EtcdTick);
        sim.push(CHECK_EVERY, Ev::Check);
        sim.push(0, Ev::Sample);
        for k in 0..sim.sc.faults.len() {
            sim.push(sim.sc.faults[k].at.0, Ev::Fault(k));
        }
        if let Some(t) = sim.converge_time() {
            sim.push(t, Ev::Converge);
        }
        if let Some(mut m) = sim.model.take() {
            m.start(&mut sim);
            sim.model = Some(m);
        }
        Ok(sim)
    }

    /// A captured cluster starts where it ran: each non-global unit with one `running_on` machine
    /// (`[[units.unit]]`) is claimed there as the units are submitted (the claim etcd held), bound to
    /// that machine's lease; the agents then plan around it like fleetd around an existing claim.
    /// Skipped when the machine is not in the scenario or has no lease yet.
    pub(super) fn claim_captured(&mut self) {
        let mut claims = Vec::new();
        for u in &self.sc.units.inline {
            let [machine] = u.running_on.as_slice() else {
                continue;
            };
            let Ok(name) = UnitName::parse(&u.name) else {
                continue;
            };
            let Some(&unit) = self.unit_index.get(&name) else {
                continue;
            };
            if self.units[unit as usize].global {
                continue;
            }
            let Some(&m) = MachineId::parse(machine)
                .ok()
                .and_then(|id| self.by_id.get(&id))
            else {
                continue;
            };
            let lease = self.machines[m as usize].lease.id;
            if lease != 0 {
                claims.push((unit, m, lease));
            }
        }
        for (unit, m, lease) in claims {
            self.etcd.txn(unit, m, lease, crate::etcd::Txn::Claim);
        }
    }
}
