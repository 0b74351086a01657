//! The agent: the event loop that makes this machine's systemd run what the cluster asks of it.
//!
//! Reconcile, as fleet did it: gather desired (the units placed on this machine), gather current (the
//! files in the units directory and systemd's states), compute ordered tasks ([`fleet_sched::reconcile`]),
//! act. It runs when the registry changes (the etcd watch), when systemd reports a change of one of our
//! units (D-Bus signals, no polling), and on a periodic safety pass (`engine_reconcile_interval`).
//!
//! Placement ([`fleet_sched::placement::schedule`]) runs in every agent over the same inputs; an agent
//! claims, with an etcd transaction bound to its lease, the units the plan puts on itself, and runs only
//! units whose claim it holds (or global units the plan puts on it).
//!
//! Safety:
//! - A unit runs here only while we hold its claim; claims are bound to our lease. When etcd has not
//!   confirmed the lease for a whole TTL (it may have expired, and another machine may take the units over),
//!   the agent stops its claimed units: fencing. A shorter etcd outage changes nothing: healthy units keep
//!   running, and nothing is scheduled until the registry is back.
//! - When the registry is unavailable the agent does not reconcile at all (no decision from stale data).
//! - SIGTERM: stop and unload this machine's units, release its claims, revoke its lease, leave.

pub mod claims;
pub mod lease;
pub mod relay;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fleet_sched::placement::{self, Decision, MachineInfo, UnitInfo};
use fleet_sched::reconcile::{reconcile, ActiveState, CurrentUnit, TargetUnit, Task};
use fleet_sched::{DesiredState, MachineId, Requirements, UnitFile, UnitHash, UnitName};
use fleet_systemd::{Bus, Event, Systemd, UnitState};
use tokio::time::Instant;

use crate::registry::{MachineRecord, Registry, Snapshot};
use lease::LeaseKeeper;
pub use view::{spawn_view_refresh, AgentCluster, LocalReport};

/// How the agent is set up (from fleetd's configuration).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// This machine.
    pub machine: MachineId,
    /// Its public IP (shown by list-machines).
    pub public_ip: Option<IpAddr>,
    /// Its configured metadata.
    pub metadata: BTreeMap<String, String>,
    /// Where unit files are written (`units_directory`).
    pub units_directory: PathBuf,
    /// Use the session bus (`systemd_user`).
    pub systemd_user: bool,
    /// Lease TTL (`agent_ttl`).
    pub agent_ttl: Duration,
    /// Period of the safety pass (`engine_reconcile_interval`).
    pub reconcile_interval: Duration,
}

/// Handle to a running agent.
pub struct Agent {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<bool>>,
}

impl Agent {
    /// Starts the agent. `report` receives this machine's unit states after every change (the API and,
    /// later, gossip read it).
    pub fn start(opts: AgentOptions, registry: Registry, cluster: Arc<AgentCluster>) -> Agent {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let r = run(opts, registry, cluster, stop_rx).await;
            if let Err(e) = &r {
                tracing::error!("agent stopped: {e:#}");
            }
            r
        });
        Agent {
            stop: Some(stop_tx),
            task,
        }
    }

    /// Graceful shutdown: stops and unloads this machine's units, releases claims, revokes the lease;
    /// or, when systemd is restarting fleetd, leaves the units running. Returns `true` in that case
    /// (the caller then must not leave the gossip cluster either).
    pub async fn shutdown(mut self, timeout: Duration) -> bool {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(timeout, &mut self.task).await {
            Ok(Ok(Ok(restarting))) => restarting,
            Ok(Ok(Err(e))) => {
                tracing::warn!("agent: {e:#}");
                false
            }
            Ok(Err(e)) => {
                tracing::warn!("agent task: {e}");
                false
            }
            Err(_) => {
                tracing::warn!("agent did not finish its shutdown in {timeout:?}");
                self.task.abort();
                false
            }
        }
    }
}

struct State {
    opts: AgentOptions,
    registry: Registry,
    systemd: Systemd,
    lease: LeaseKeeper,
    cluster: Arc<AgentCluster>,
    /// Units whose current content we started (so an exited oneshot is not started again).
    started: BTreeMap<UnitName, UnitHash>,
    /// systemd's view of the units in our units directory.
    states: BTreeMap<UnitName, UnitState>,
    /// Hash of the content on disk, per loaded unit.
    loaded: BTreeMap<UnitName, UnitHash>,
    /// The lease generation our machine key was written under.
    announced: Option<(i64, u64)>,
    fenced: bool,
    /// What we last told gossip about our units (to send only changes).
    gossiped_units: Option<BTreeMap<String, fleet_gossip::UnitState>>,
    unit_count: usize,
}

async fn connect_systemd(opts: &AgentOptions) -> anyhow::Result<Systemd> {
    let bus = if opts.systemd_user {
        Bus::Session
    } else {
        Bus::System
    };
    // Units new to systemd are loaded on first use without a full daemon Reload (systemd >= 246):
    // ~30 ms instead of ~300 ms from `fleetctl start` to active.
    let cfg = fleet_systemd::Config::new(bus)
        .units_directory(&opts.units_directory)
        .reload_policy(fleet_systemd::ReloadPolicy::WhenNeeded);
    Systemd::connect(cfg)
        .await
        .context("connecting to systemd over D-Bus")
}

async fn run(
    opts: AgentOptions,
    registry: Registry,
    cluster: Arc<AgentCluster>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<bool> {
    // Without systemd there is nothing to drive: keep trying (fleetd's API serves meanwhile).
    let mut delay = Duration::from_millis(200);
    let systemd = loop {
        match connect_systemd(&opts).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!("{e:#}; retrying in {delay:?}");
                tokio::select! {
                    _ = &mut stop => return Ok(false),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    // Only our units' events: a unit is ours while its file is in our units directory.
    let units_dir = systemd.local_unit_file_path("");
    let ours = move |name: &str| units_dir.join(name).exists();
    let mut events = systemd
        .subscribe_filtered(ours.clone())
        .await
        .context("subscribing to systemd")?;
    let reg = registry.clone();
    let lease = LeaseKeeper::start(opts.agent_ttl, move || reg.etcd_client().ok());
    let mut lease_rx = lease.subscribe();
    let mut reg_rx = registry.subscribe();
    let mut local_rx = cluster.subscribe_local_changes();
    let mut members_rx = cluster.subscribe_membership();
    let mut tick = tokio::time::interval(opts.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut st = State {
        opts,
        registry,
        systemd,
        lease,
        cluster,
        started: BTreeMap::new(),
        states: BTreeMap::new(),
        loaded: BTreeMap::new(),
        announced: None,
        fenced: false,
        gossiped_units: None,
        unit_count: usize::MAX,
    };
    st.read_current().await;
    loop {
        let mut full = false;
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => { full = true; }
            r = reg_rx.changed() => { if r.is_err() { break; } }
            r = lease_rx.changed() => { if r.is_err() { break; } }
            r = local_rx.changed() => { if r.is_err() { break; } st.announced = None; }
            r = members_rx.changed() => { if r.is_err() { break; } }
            _ = grace_timer(&st.cluster) => {}
            ev = events.next() => match ev {
                Some(Event::UnitChanged { name, state }) => {
                    if !st.note_state(&name, state) { continue; }
                }
                Some(Event::UnitRemoved { name }) => {
                    if !st.note_removed(&name) { continue; }
                }
                Some(Event::JobRemoved { unit, result, .. }) => {
                    crate::metrics::global().job_removed(&unit, result.is_success());
                    continue;
                }
                Some(Event::Reloaded) => continue,
                Some(Event::Disconnected) | None => {
                    tracing::warn!("lost the connection to systemd; reconnecting");
                    st.systemd = st.systemd.reconnect_with_backoff(Duration::from_secs(3600)).await
                        .context("reconnecting to systemd")?;
                    events = st.systemd.subscribe_filtered(ours.clone()).await.context("subscribing to systemd")?;
                    full = true;
                }
            },
        }
        // Coalesce bursts (a watch event often comes with several more).
        tokio::time::sleep(Duration::from_millis(5)).await;
        if full {
            st.read_current().await;
        }
        st.pass().await;
    }
    Ok(st.shutdown().await)
}

/// Fires when the takeover grace of a recently downed machine ends (never, if none).
async fn grace_timer(cluster: &AgentCluster) {
    match cluster.next_grace_deadline() {
        Some(t) => tokio::time::sleep_until(Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

impl State {
    /// Re-reads the units directory and systemd's states of those units.
    async fn read_current(&mut self) {
        let dir = self.systemd.local_unit_file_path("");
        let mut loaded = BTreeMap::new();
        if let Ok(mut rd) = tokio::fs::read_dir(&dir).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                let Some(name) = e.file_name().to_str().and_then(|n| UnitName::parse(n).ok())
                else {
                    continue;
                };
                match tokio::fs::read_to_string(e.path()).await {
                    Ok(text) => match UnitFile::parse(&text) {
                        Ok(f) => {
                            loaded.insert(name, f.hash());
                        }
                        Err(err) => tracing::warn!(unit = %name, "unreadable unit file: {err}"),
                    },
                    Err(err) => tracing::warn!(unit = %name, "reading unit file: {err}"),
                }
            }
        }
        self.loaded = loaded;
        let names: Vec<&str> = self.loaded.keys().map(UnitName::as_str).collect();
        match self.systemd.list_units(&names).await {
            Ok(list) => {
                self.states = list
                    .into_iter()
                    .filter_map(|(n, s)| UnitName::parse(&n).ok().map(|n| (n, s)))
                    .collect();
            }
            Err(e) => tracing::warn!("reading unit states from systemd: {e}"),
        }
        self.publish();
    }

    /// Records a state change; returns whether it concerns one of our units.
    fn note_state(&mut self, name: &str, state: UnitState) -> bool {
        let Ok(name) = UnitName::parse(name) else {
            return false;
        };
        if !self.loaded.contains_key(&name) {
            return false;
        }
        self.states.insert(name, state);
        self.publish();
        true
    }

    /// systemd freed the unit object. For a unit whose file we keep linked that only means it is
    /// inactive and unreferenced (systemd garbage-collects those); it would load again on demand, so it
    /// is reported as loaded/inactive/dead rather than asked about (asking would load it and start the
    /// cycle over).
    fn note_removed(&mut self, name: &str) -> bool {
        let Ok(name) = UnitName::parse(name) else {
            return false;
        };
        if !self.loaded.contains_key(&name) {
            return false;
        }
        self.states.insert(
            name,
            UnitState {
                load_state: fleet_systemd::LoadState::Loaded,
                active_state: fleet_systemd::ActiveState::Inactive,
                sub_state: "dead".to_string(),
                main_pid: None,
            },
        );
        self.publish();
        true
    }

    fn publish(&mut self) {
        let units: BTreeMap<UnitName, (UnitHash, Option<UnitState>)> = self
            .loaded
            .iter()
            .map(|(n, h)| {
                let s = self.states.get(n).cloned();
                (n.clone(), (*h, s))
            })
            .collect();
        if let Some(g) = self.cluster.gossip() {
            let states = units
                .iter()
                .filter_map(|(n, (h, s))| {
                    let s = s.as_ref()?;
                    Some((
                        n.to_string(),
                        fleet_gossip::UnitState {
                            load_state: s.load_state.to_string(),
                            active_state: s.active_state.to_string(),
                            sub_state: s.sub_state.clone(),
                            unit_hash: *h.as_bytes(),
                        },
                    ))
                })
                .collect();
            if self.gossiped_units.as_ref() != Some(&states) {
                let _ = g.set_unit_states(states.clone());
                self.gossiped_units = Some(states);
            }
        }
        let count = units.len();
        self.cluster.set_local_report(LocalReport { units });
        if self.unit_count != count {
            self.unit_count = count;
            self.publish_metadata();
        }
    }

    /// Tells gossip this machine's metadata (IP, k=v, version, number of units).
    fn publish_metadata(&self) {
        let Some(g) = self.cluster.gossip() else {
            return;
        };
        let local = self.cluster.local_machine();
        let _ = g.set_metadata(fleet_gossip::Metadata {
            public_ip: local.public_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            metadata: local.metadata,
            version: env!("CARGO_PKG_VERSION").to_string(),
            unit_count: self.unit_count as u32,
        });
    }

    /// One reconcile pass: announce, place, claim, reconcile, fence.
    async fn pass(&mut self) {
        let lease = self.lease.status();
        if self.must_fence(&lease, Instant::now()) {
            self.fence().await;
            return;
        }
        self.fenced = false;
        let snap = match self.registry.snapshot() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("registry unavailable, no reconcile: {e}");
                return;
            }
        };
        if lease.id == 0 {
            return;
        }
        self.announce(&lease).await;
        if let Some(g) = self.cluster.gossip() {
            let unknown = self.cluster.unknown_announced();
            if !unknown.is_empty() {
                tracing::debug!(?unknown, "joining machines announced in etcd");
                let _ = g.join(unknown);
            }
        }
        let machines = self.cluster.live_machines();
        let target = self.place_and_claim(&snap, &machines, lease.id).await;
        self.apply(target, &snap).await;
    }

    /// Fencing rule (see docs/safety.md): stop our claimed units when we are on the minority side of the
    /// gossip membership and etcd has not confirmed our lease for `min(TTL, 2 s)`: the majority will
    /// take our units over after its down verdict plus the takeover grace. On the majority side, an
    /// unconfirmed (even expired) lease stops nothing: peers see us alive and keep our units here.
    fn must_fence(&self, lease: &lease::LeaseStatus, now: Instant) -> bool {
        if lease.id == 0 || self.cluster.in_majority() {
            return false;
        }
        let limit = lease.ttl.min(Duration::from_secs(2));
        match lease.confirmed_at {
            Some(t) => now.duration_since(t) >= limit,
            None => true,
        }
    }

    async fn announce(&mut self, lease: &lease::LeaseStatus) {
        let key = (lease.id, lease.generation);
        if self.announced == Some(key) {
            return;
        }
        let Ok(mut c) = self.registry.etcd_client() else {
            return;
        };
        let local = self.cluster.local_machine();
        let rec = MachineRecord {
            id: self.opts.machine.clone(),
            public_ip: local.public_ip,
            metadata: local.metadata,
            version: env!("CARGO_PKG_VERSION").to_string(),
            gossip_addr: self.cluster.gossip().map(|g| g.identity().addr),
        };
        self.publish_metadata();
        match claims::announce(&mut c, &self.registry.keys(), &rec, lease.id).await {
            Ok(()) => self.announced = Some(key),
            Err(e) => tracing::warn!("announcing this machine: {e}"),
        }
    }

    /// Runs placement, claims what it puts here, and returns what this machine should run.
    async fn place_and_claim(
        &mut self,
        snap: &Snapshot,
        machines: &[MachineInfo],
        lease: i64,
    ) -> BTreeMap<UnitName, TargetUnit> {
        let me = self.opts.machine.clone();
        let live: BTreeSet<&MachineId> = machines.iter().map(|m| &m.id).collect();
        let mut infos = Vec::new();
        let mut hashes = BTreeMap::new();
        for u in &snap.units {
            if u.name.is_template() || u.desired_state == DesiredState::Inactive {
                continue;
            }
            let req = match Requirements::from_unit(&u.name, &u.file) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(unit = %u.name, "invalid requirements, not placed: {e}");
                    continue;
                }
            };
            let mut info = UnitInfo::new(u.name.clone(), req, u.desired_state);
            match snap.claims.get(&u.name) {
                Some(c) if live.contains(&c.machine_id) => {
                    info = info.claimed_by(c.machine_id.clone());
                }
                Some(_) => {}
                // No claim (its holder's lease expired, say) but running somewhere live: keep it there.
                None => {
                    if let Some(m) = self.cluster.runs_on(&u.name).filter(|m| live.contains(m)) {
                        info = info.claimed_by(m);
                    }
                }
            }
            hashes.insert(u.name.clone(), (u.hash, u.desired_state));
            infos.push(info);
        }
        let plan = placement::schedule(machines, &infos);
        self.cluster.set_plan(&plan);

        let mut target = BTreeMap::new();
        let Ok(mut client) = self.registry.etcd_client() else {
            return self.keep_current_claims(snap, &hashes);
        };
        let keys = self.registry.keys();
        let majority = self.cluster.in_majority();
        for (name, decision) in &plan.decisions {
            let Some((hash, desired)) = hashes.get(name) else {
                continue;
            };
            let want = TargetUnit {
                hash: *hash,
                state: *desired,
            };
            match decision {
                Decision::Global(ms) if ms.contains(&me) => {
                    target.insert(name.clone(), want);
                }
                Decision::On(m) if *m == me => match snap.claims.get(name) {
                    Some(c) if c.machine_id == me => {
                        if c.lease != lease {
                            match claims::supersede(&mut client, &keys, name, c, &me, lease).await {
                                Ok(true) => {
                                    target.insert(name.clone(), want);
                                }
                                Ok(false) => {}
                                Err(e) => {
                                    tracing::warn!(unit = %name, "re-binding claim: {e}");
                                    // etcd did not answer (or our lease just expired): a unit that already
                                    // runs here keeps running; the next pass claims it again.
                                    if self.loaded.contains_key(name) {
                                        target.insert(name.clone(), want.clone());
                                    }
                                }
                            }
                        } else {
                            target.insert(name.clone(), want);
                        }
                    }
                    Some(c) if live.contains(&c.machine_id) => {
                        // Moved away from a live machine (a requirement changed): it stops the unit and
                        // releases the claim itself; we claim it once it is free.
                        tracing::debug!(unit = %name, holder = %c.machine_id, "waiting for the holder to release");
                    }
                    Some(_) if !majority => {
                        tracing::debug!(unit = %name, "not taking over: this machine is in a gossip minority");
                    }
                    Some(c) => {
                        // Held by a machine that is no longer live (placement ignored it).
                        match claims::supersede(&mut client, &keys, name, c, &me, lease).await {
                            Ok(true) => {
                                tracing::info!(unit = %name, from = %c.machine_id, "took over unit from a machine that is gone");
                                let verdict = self.cluster.down_since(&c.machine_id);
                                crate::metrics::global().took_over(c.machine_id.as_str(), verdict);
                                target.insert(name.clone(), want);
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(unit = %name, "taking over claim: {e}");
                                // etcd did not answer (or our lease just expired): a unit that already
                                // runs here keeps running; the next pass claims it again.
                                if self.loaded.contains_key(name) {
                                    target.insert(name.clone(), want.clone());
                                }
                            }
                        }
                    }
                    None => match claims::claim(&mut client, &keys, name, &me, lease).await {
                        Ok(true) => {
                            tracing::info!(unit = %name, "claimed");
                            crate::metrics::global().placed();
                            target.insert(name.clone(), want);
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(unit = %name, "claiming: {e}");
                            // etcd did not answer (or our lease just expired): a unit that already
                            // runs here keeps running; the next pass claims it again.
                            if self.loaded.contains_key(name) {
                                target.insert(name.clone(), want.clone());
                            }
                        }
                    },
                },
                _ => {
                    // Placed elsewhere (or nowhere). If we still hold its claim, release it once the unit
                    // is stopped here (done after apply, see release_stale_claims).
                }
            }
        }
        target
    }

    /// When etcd is briefly unreachable mid-pass: keep exactly the units we hold claims for.
    fn keep_current_claims(
        &self,
        snap: &Snapshot,
        hashes: &BTreeMap<UnitName, (UnitHash, DesiredState)>,
    ) -> BTreeMap<UnitName, TargetUnit> {
        snap.claims
            .iter()
            .filter(|(_, c)| c.machine_id == self.opts.machine)
            .filter_map(|(n, _)| {
                hashes.get(n).map(|(h, s)| {
                    (
                        n.clone(),
                        TargetUnit {
                            hash: *h,
                            state: *s,
                        },
                    )
                })
            })
            .collect()
    }

    fn current(&self) -> BTreeMap<UnitName, CurrentUnit> {
        self.loaded
            .iter()
            .map(|(n, h)| {
                let active = self
                    .states
                    .get(n)
                    .map(|s| ActiveState::parse(s.active_state.as_str()))
                    .unwrap_or(ActiveState::Inactive);
                let started = self.started.get(n) == Some(h);
                (
                    n.clone(),
                    CurrentUnit {
                        hash: *h,
                        active,
                        started,
                    },
                )
            })
            .collect()
    }

    async fn apply(&mut self, target: BTreeMap<UnitName, TargetUnit>, snap: &Snapshot) {
        let tasks = reconcile(&target, &self.current());
        for task in &tasks {
            tracing::info!("{task}");
            if let Err(e) = self.run_task(task, snap).await {
                tracing::warn!("{task} failed: {e:#}");
            }
        }
        if !tasks.is_empty() {
            self.refresh_states().await;
        }
        self.release_stale_claims(&target, snap).await;
    }

    async fn run_task(&mut self, task: &Task, snap: &Snapshot) -> anyhow::Result<()> {
        match task {
            Task::Stop(n, _) => {
                let stop = self.systemd.stop_unit_and_wait(n.as_str());
                crate::metrics::global()
                    .time_job(crate::metrics::JobKind::Stop, stop)
                    .await?;
                self.started.remove(n);
            }
            Task::Unload(n, _) => {
                self.systemd.unload_unit(n.as_str()).await?;
                self.loaded.remove(n);
                self.states.remove(n);
                self.started.remove(n);
            }
            Task::Load(n, h, _) => {
                let file = self
                    .registry
                    .unit_file(h)
                    .ok()
                    .flatten()
                    .or_else(|| {
                        snap.units
                            .iter()
                            .find(|u| u.hash == *h)
                            .map(|u| u.file.clone())
                    })
                    .with_context(|| {
                        format!("content {} of {n} is not in the registry", h.short())
                    })?;
                self.systemd
                    .load_unit(n.as_str(), &file.serialize(), file.has_install_section())
                    .await?;
                self.loaded.insert(n.clone(), *h);
                self.started.remove(n);
            }
            Task::ReloadDaemon(_) => {
                // Already done where systemd needs it: load_unit reloads for units systemd knows
                // (ReloadPolicy::WhenNeeded; a new file is loaded on first use), unload_unit always.
            }
            Task::Start(n, _) => {
                let h = self.loaded.get(n).copied();
                crate::metrics::global().start_queued(n.as_str());
                self.systemd.start_unit(n.as_str()).await?;
                if let Some(h) = h {
                    self.started.insert(n.clone(), h);
                }
            }
        }
        Ok(())
    }

    async fn refresh_states(&mut self) {
        let names: Vec<&str> = self.loaded.keys().map(UnitName::as_str).collect();
        if let Ok(list) = self.systemd.list_units(&names).await {
            for (n, s) in list {
                if let Ok(n) = UnitName::parse(&n) {
                    self.states.insert(n, s);
                }
            }
        }
        self.publish();
    }

    /// Releases claims we hold for units we no longer run (placed elsewhere, or made inactive).
    async fn release_stale_claims(
        &mut self,
        target: &BTreeMap<UnitName, TargetUnit>,
        snap: &Snapshot,
    ) {
        let stale: Vec<_> = snap
            .claims
            .iter()
            .filter(|(n, c)| {
                c.machine_id == self.opts.machine
                    && !target.contains_key(*n)
                    && !self.loaded.contains_key(*n)
            })
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect();
        if stale.is_empty() {
            return;
        }
        let Ok(mut client) = self.registry.etcd_client() else {
            return;
        };
        let keys = self.registry.keys();
        for (n, c) in stale {
            match claims::release(&mut client, &keys, &n, &c).await {
                Ok(_) => tracing::info!(unit = %n, "released claim"),
                Err(e) => tracing::warn!(unit = %n, "releasing claim: {e}"),
            }
        }
    }

    /// We may have lost our claims: stop every non-global unit we run (another machine may take it over).
    async fn fence(&mut self) {
        if !self.fenced {
            tracing::warn!(
                "cut off from the majority and from etcd: stopping claimed units (fencing)"
            );
        }
        self.fenced = true;
        let globals: BTreeSet<UnitName> = self.cluster.global_units_here();
        let target: BTreeMap<UnitName, TargetUnit> = self
            .current()
            .into_iter()
            .filter(|(n, _)| globals.contains(n))
            .map(|(n, c)| {
                let state = if c.started || c.active.is_up() {
                    DesiredState::Launched
                } else {
                    DesiredState::Loaded
                };
                (
                    n,
                    TargetUnit {
                        hash: c.hash,
                        state,
                    },
                )
            })
            .collect();
        let tasks = reconcile(&target, &self.current());
        let empty = Snapshot {
            revision: 0,
            units: Vec::new(),
            claims: BTreeMap::new(),
            machines: BTreeMap::new(),
            restarting: BTreeSet::new(),
        };
        for task in tasks.iter().filter(|t| {
            matches!(
                t,
                Task::Stop(..) | Task::Unload(..) | Task::ReloadDaemon(..)
            )
        }) {
            tracing::info!("{task} (fencing)");
            if let Err(e) = self.run_task(task, &empty).await {
                tracing::warn!("{task} failed: {e:#}");
            }
        }
        self.refresh_states().await;
    }

    /// SIGTERM. When systemd is restarting fleetd itself (a `restart` job on fleetd's own unit), the
    /// units keep running: the agent marks this machine as restarting in etcd (bound to its current
    /// lease, so peers keep its claims even if gossip declares it down meanwhile) and exits; the next
    /// fleetd adopts the units and re-binds the claims. Otherwise (a stop): stop and unload
    /// everything, then revoke the lease (claims and announcement go at once).
    async fn shutdown(mut self) -> bool {
        let job = self
            .systemd
            .job_of_process_unit(std::process::id())
            .await
            .unwrap_or_else(|e| {
                tracing::debug!("cannot tell whether systemd restarts us: {e}");
                None
            });
        if job.as_deref() == Some("restart") {
            if self.mark_restarting().await {
                tracing::info!("systemd restarts fleetd: leaving this machine's units running");
                return true;
            }
            tracing::warn!("restarting, but etcd is unreachable: stopping units to stay safe");
        }
        tracing::info!("stopping and unloading this machine's units");
        let tasks = reconcile(&BTreeMap::new(), &self.current());
        let empty = Snapshot {
            revision: 0,
            units: Vec::new(),
            claims: BTreeMap::new(),
            machines: BTreeMap::new(),
            restarting: BTreeSet::new(),
        };
        for task in &tasks {
            tracing::info!("{task} (shutdown)");
            if let Err(e) = self.run_task(task, &empty).await {
                tracing::warn!("{task} failed: {e:#}");
            }
        }
        self.publish();
        // Revoking the lease deletes our claims and our machine key at once.
        self.lease.revoke(Duration::from_secs(3)).await;
        false
    }

    /// Writes `restarting/<id>` bound to our lease; `false` if etcd did not take it.
    async fn mark_restarting(&self) -> bool {
        let lease = self.lease.status();
        if lease.id == 0 || lease.maybe_expired(Instant::now()) {
            return false;
        }
        let Ok(mut c) = self.registry.etcd_client() else {
            return false;
        };
        let key = self.registry.keys().restarting(&self.opts.machine);
        let put = c.put(
            key,
            "{}",
            Some(etcd_client::PutOptions::new().with_lease(lease.id)),
        );
        matches!(
            tokio::time::timeout(Duration::from_secs(2), put).await,
            Ok(Ok(_))
        )
    }
}
