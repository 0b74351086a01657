//! The agent: the event loop that makes this machine's systemd run what the cluster asks of it.
//!
//! Every decision comes from the decision core ([`fleet_decide`]); this module only gathers its inputs
//! and carries its verdicts out (docs/safety.md is the argument, ARCHITECTURE.md the map):
//! 1. gather: the registry mirror (units, claims, announcements), the gossip view (liveness, metadata),
//!    the lease's confirmations, what etcd said about other machines' leases, systemd's unit states;
//! 2. decide: the witness committee, the fence deadline ([`fleet_decide::guard`], written for the fence
//!    guard at once), the placement plan (`schedule`'s, kept up to date incrementally by [`plan`]) and a
//!    verdict per unit ([`fleet_decide::decide`]);
//! 3. act: the claim writes (each one etcd transaction, `crate::registry`), `LeaseTimeToLive` polls,
//!    and the reconcile tasks ([`fleet_sched::reconcile`]) that make systemd run exactly the units the
//!    verdicts say.
//!
//! A pass runs when the registry changes (the etcd watch), when systemd reports a change of one of our
//! units (D-Bus signals, no polling), when the gossip view changes, when a verdict asked to look again at
//! a given time, and on a periodic safety pass (`engine_reconcile_interval`). The fence deadline is also
//! refreshed on every lease confirmation and every `fence_after / 3`.
//!
//! SIGTERM: stop and unload this machine's units, release its claims (revoke its lease), leave; or, when
//! systemd restarts fleetd, mark the machine as restarting and leave everything running.

pub mod guard;
mod load;
pub mod membership;
pub mod plan;
pub mod relay;
pub mod view;
pub mod witness;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fleet_decide::{
    Case, Committee, Ctx, Guard, LeasePoll, Peer, Placement, Support, Time, Timing, Verdict, Why,
    Write,
};
use fleet_sched::placement::Decision;
use fleet_sched::reconcile::{reconcile, ActiveState, CurrentUnit, TargetUnit, Task};
use fleet_sched::{DesiredState, MachineId, UnitFile, UnitHash, UnitName};
use fleet_systemd::{Bus, Event, Systemd, UnitState};

use crate::clock;
use crate::registry::lease::{LeaseKeeper, LeaseStatus};
use crate::registry::{Announced, ClaimWrite, MachineRecord, Registry, Snapshot};
use membership::Seats;
pub use view::{spawn_view_refresh, AgentCluster, LocalReport};
use witness::WitnessService;

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
    /// `fence_after` (docs/safety.md).
    pub fence_after: Duration,
    /// Where the lease, the membership and the fence deadline are kept (`runtime_dir`).
    pub runtime_dir: PathBuf,
    /// How long `systemctl restart fleet` may take before the guard fences (the machine is marked
    /// restarting meanwhile, so nobody takes its units).
    pub restart_allowance: Duration,
}

impl AgentOptions {
    /// The decision core's timings.
    pub fn timing(&self) -> Timing {
        Timing::new(self.fence_after, self.agent_ttl)
    }

    /// The fence guard's deadline file.
    pub fn fence_file(&self) -> PathBuf {
        self.runtime_dir.join(guard::FENCE_FILE)
    }
}

/// Handle to a running agent.
pub struct Agent {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<bool>>,
}

impl Agent {
    /// Starts the agent; `witness` is this machine's witness (shared with the relay that answers peers).
    pub fn start(
        opts: AgentOptions,
        registry: Registry,
        cluster: Arc<AgentCluster>,
        witness: Arc<WitnessService>,
    ) -> Agent {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let r = run(opts, registry, cluster, witness, stop_rx).await;
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

/// What the registry says about a claim key beyond the claim itself.
#[derive(Clone, Copy, Debug, Default)]
struct Stored {
    /// The claim shown is the last good value of a key bound to no lease.
    unbound: bool,
    /// The key binds nobody (no lease, never seen bound): its revision.
    free: Option<i64>,
}

/// Polls kept per lease.
const POLLS_KEPT: usize = 8;

struct State {
    opts: AgentOptions,
    timing: Timing,
    registry: Registry,
    systemd: Systemd,
    lease: LeaseKeeper,
    cluster: Arc<AgentCluster>,
    /// The committee's seats as this fleetd knows them.
    seats: Seats,
    /// The committee and its support, shared with the guard writer.
    shared: Arc<GuardShared>,
    /// This machine as a witness.
    witness: Arc<WitnessService>,
    /// Witnesses that voted that a holder's lease may be taken over, by (holder, lease).
    votes: BTreeMap<(MachineId, i64), BTreeSet<MachineId>>,
    /// Holders whose lease the last pass wanted votes on.
    votes_wanted: BTreeSet<(MachineId, i64)>,
    /// When votes were last asked for each (holder, lease).
    votes_asked: BTreeMap<(MachineId, i64), Time>,
    /// Keeps the fence deadline written for the guard, apart from the (sometimes slow) passes.
    writer: tokio::task::JoinHandle<()>,
    /// When this fleetd started (observations before a supersede we cannot date count from here).
    started_at: Time,
    /// Units whose current content we started (so an exited oneshot is not started again).
    started: BTreeMap<UnitName, UnitHash>,
    /// systemd's view of the units in our units directory.
    states: BTreeMap<UnitName, UnitState>,
    /// Hash of the content on disk, per loaded unit.
    loaded: BTreeMap<UnitName, UnitHash>,
    /// The lease generation our machine key was written under.
    announced: Option<(i64, u64)>,
    /// Whether we fenced (killed our claimed units) and have not been vouched for since.
    fenced: bool,
    /// What etcd said about other machines' leases, most recent last.
    polls: BTreeMap<i64, VecDeque<LeasePoll>>,
    /// Leases the last pass wanted to know about.
    poll_wanted: BTreeSet<i64>,
    /// When we superseded each claim we took over (our clock).
    superseded_at: BTreeMap<UnitName, Time>,
    /// When a verdict wants another look.
    wake_at: Option<Time>,
    /// What we last told gossip about our units (to send only changes).
    gossiped_units: Option<BTreeMap<String, fleet_gossip::UnitState>>,
    unit_count: usize,
    /// Why units placed here do not run (logged on change).
    waiting: BTreeMap<UnitName, Why>,
    /// Unit names this machine refuses, and why: the registry's units whose name a unit fleet does not
    /// manage has here, or that are reserved (announced, so that every agent's placement keeps them off
    /// this machine).
    refused: BTreeMap<UnitName, String>,
    /// The units of this machine that are not fleet's, as last looked at.
    host: Option<fleet_systemd::HostUnits>,
    /// The unit names `host` was checked for (new names in the registry make it look again).
    host_checked: BTreeSet<UnitName>,
    /// Look at the host's units again on the next pass (the safety pass, a systemd reload).
    host_stale: bool,
    /// The refusals last announced.
    announced_refused: BTreeMap<UnitName, String>,
    /// Files in the units directory that fleet did not write (logged once each).
    strays: BTreeSet<UnitName>,
    /// Placement, kept across passes and fed only what changed.
    placement: plan::AgentPlanner,
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

/// The command line of the fence guard (this very binary).
fn guard_command(opts: &AgentOptions) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("finding fleetd's own executable")?;
    let exe = exe.to_str().context("fleetd's path is not UTF-8")?;
    let mut cmd = format!(
        "{exe} guard --fence-file {} --units-directory {}",
        opts.fence_file().display(),
        opts.units_directory.display()
    );
    if opts.systemd_user {
        cmd.push_str(" --user");
    }
    Ok(cmd)
}

async fn run(
    opts: AgentOptions,
    registry: Registry,
    cluster: Arc<AgentCluster>,
    witness: Arc<WitnessService>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<bool> {
    let timing = opts.timing();
    if let Err(e) = timing.check() {
        anyhow::bail!("fence_after and agent_ttl: {e}");
    }
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
    let lease = LeaseKeeper::start(
        registry.clone(),
        opts.machine.as_str(),
        opts.agent_ttl,
        timing.keepalive_period(),
        Some(opts.runtime_dir.join("lease.json")),
    );
    // The guard first: whatever the previous fleetd's lease allows, and nothing more.
    let first = fleet_decide::guard(
        &timing,
        &lease.status().lease,
        registry.status().synced,
        None,
        clock::now(),
    );
    guard::write_deadline(&opts.fence_file(), first.deadline)
        .context("writing the fence deadline")?;
    if !opts.systemd_user {
        match guard_command(&opts) {
            Ok(cmd) => {
                if let Err(e) = systemd.install_guard(&cmd).await {
                    tracing::error!("installing the fence guard: {e}");
                } else if let Err(e) = systemd.start_unit(fleet_systemd::GUARD_UNIT).await {
                    tracing::error!("starting the fence guard: {e}");
                }
            }
            Err(e) => tracing::error!("cannot run the fence guard: {e:#}"),
        }
    }
    // Only our units' events: a unit is ours while its file in our units directory is one fleet wrote.
    let units_dir = systemd.local_unit_file_path("");
    let ours = move |name: &str| fleet_systemd::written_by_fleet(&units_dir.join(name));
    match systemd.unit_of_process(std::process::id()).await {
        Ok(own) => crate::reserved::set_own_unit(&own),
        Err(e) => tracing::debug!("cannot tell which unit fleetd runs as: {e}"),
    }
    let mut events = systemd
        .subscribe_filtered(ours.clone())
        .await
        .context("subscribing to systemd")?;
    let shared = Arc::new(GuardShared::default());
    let (guard_tx, mut guard_rx) = tokio::sync::watch::channel((false, false));
    let writer = tokio::spawn(write_guard_loop(GuardInputs {
        timing: timing.clone(),
        me: opts.machine.clone(),
        lease: lease.subscribe(),
        registry: registry.clone(),
        cluster: cluster.clone(),
        shared: shared.clone(),
        file: opts.fence_file(),
        changes: guard_tx,
    }));
    let mut lease_rx = lease.subscribe();
    let mut reg_rx = registry.subscribe();
    let mut local_rx = cluster.subscribe_local_changes();
    let mut members_rx = cluster.subscribe_membership();
    let mut tick = tokio::time::interval(opts.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut st = State {
        seats: Seats::load(Some(opts.runtime_dir.join("seats.json"))),
        shared,
        witness,
        votes: BTreeMap::new(),
        votes_wanted: BTreeSet::new(),
        votes_asked: BTreeMap::new(),
        writer,
        timing,
        opts,
        registry,
        systemd,
        lease,
        cluster,
        started_at: clock::now(),
        started: BTreeMap::new(),
        states: BTreeMap::new(),
        loaded: BTreeMap::new(),
        announced: None,
        fenced: false,
        polls: BTreeMap::new(),
        poll_wanted: BTreeSet::new(),
        superseded_at: BTreeMap::new(),
        wake_at: None,
        gossiped_units: None,
        unit_count: usize::MAX,
        waiting: BTreeMap::new(),
        refused: BTreeMap::new(),
        host: None,
        host_checked: BTreeSet::new(),
        host_stale: true,
        announced_refused: BTreeMap::new(),
        strays: BTreeSet::new(),
        placement: plan::AgentPlanner::new(),
    };
    st.read_current().await;
    let mut generation = st.lease.status().generation;
    loop {
        let mut full = false;
        let wake = st.wake_at;
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => { full = true; }
            r = guard_rx.changed() => { if r.is_err() { break; } }
            r = reg_rx.changed() => { if r.is_err() { break; } }
            r = lease_rx.changed() => {
                if r.is_err() { break; }
                let g = st.lease.status().generation;
                if g == generation { continue; }
                generation = g;
            }
            r = local_rx.changed() => { if r.is_err() { break; } st.announced = None; }
            r = members_rx.changed() => { if r.is_err() { break; } }
            _ = sleep_until(wake) => { st.wake_at = None; }
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
                Some(Event::Reloaded) => {
                    // Units of the machine may have come or gone (a package installed, say).
                    st.host_stale = true;
                    continue;
                }
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
            st.host_stale = true;
        }
        st.pass().await;
    }
    Ok(st.shutdown().await)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The committee and its support of this machine, shared by the agent's passes and the guard writer.
#[derive(Default)]
struct GuardShared {
    /// The committee of the last pass (`None` before the first pass with the registry).
    committee: std::sync::Mutex<Option<Committee>>,
    /// For each witness, when this machine sent the latest support request it granted.
    granted: std::sync::Mutex<BTreeMap<MachineId, Time>>,
    /// Wakes the guard writer when a grant arrives (the deadline it extends must be written at once).
    granted_now: tokio::sync::Notify,
}

impl GuardShared {
    /// The fence deadline with the committee's support.
    fn guard(
        &self,
        timing: &Timing,
        me: &MachineId,
        lease: &fleet_decide::OwnLease,
        synced: i64,
        now: Time,
    ) -> Guard {
        let committee = lock(&self.committee).clone();
        let granted = lock(&self.granted).clone();
        let support = committee.as_ref().map(|c| Support {
            committee: c,
            me,
            granted: &granted,
        });
        fleet_decide::guard(timing, lease, synced, support.as_ref(), now)
    }
}

/// What the fence deadline is computed from.
struct GuardInputs {
    timing: Timing,
    me: MachineId,
    lease: tokio::sync::watch::Receiver<LeaseStatus>,
    registry: Registry,
    cluster: Arc<AgentCluster>,
    shared: Arc<GuardShared>,
    file: PathBuf,
    /// `(fenced, may start)`: the agent runs a pass when either changes.
    changes: tokio::sync::watch::Sender<(bool, bool)>,
}

/// Writes the fence deadline for the guard on every lease confirmation and every `fence_after / 3`,
/// whatever the agent's pass is busy with (a pass that waits for systemd must not let the deadline
/// lapse); while the lease is unconfirmed, asks the committee's witnesses for support every
/// `support_validity / 3`.
async fn write_guard_loop(mut g: GuardInputs) {
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
        let lease = g.lease.borrow().lease.clone();
        let synced = g.registry.status().synced;
        let guard = g.shared.guard(&g.timing, &g.me, &lease, synced, now);
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
fn ask_support(g: &GuardInputs, lease: i64) {
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
            machine: g.me.to_string(),
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
                    lock(&shared.granted).insert(w, sent);
                    shared.granted_now.notify_one();
                }
                other => tracing::debug!(witness = %w, ?other, "no support"),
            }
        });
    }
}

async fn sleep_until(t: Option<Time>) {
    match t {
        Some(t) => tokio::time::sleep_until(clock::instant_at(t)).await,
        None => std::future::pending().await,
    }
}

impl State {
    fn compute_guard(&self, now: Time) -> Guard {
        self.shared.guard(
            &self.timing,
            &self.opts.machine,
            &self.lease.status().lease,
            self.registry.status().synced,
            now,
        )
    }

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
                    Ok(text) if !fleet_systemd::is_marked(&text) => {
                        // Not fleet's (left there by hand, say): never stopped, unloaded or relayed.
                        if self.strays.insert(name.clone()) {
                            tracing::warn!(unit = %name, file = %e.path().display(), "a unit file fleet did not write is in its units directory: left alone");
                        }
                    }
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
                            load_state: s.load_state.clone(),
                            active_state: s.active_state.clone(),
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

    /// One pass: gather, decide, act.
    async fn pass(&mut self) {
        self.run_polls().await;
        let now = clock::now();
        let snap = self.registry.snapshot().ok();
        if let Some(s) = &snap {
            self.seats.update(&s.machines, self.timing.ttl, now);
            let committee = Committee::choose(&self.seats.seats(), self.timing.ttl, now);
            *lock(&self.shared.committee) = Some(committee);
            self.witness
                .retain(|m, l| s.machines.get(m).is_some_and(|x| x.lease == l));
        }
        let g = self.compute_guard(now);
        if g.fenced(now) {
            self.fence().await;
            return;
        }
        if self.fenced {
            tracing::info!(vouch = ?g.vouch, "no longer fenced");
            self.fenced = false;
        }
        // Without a current registry, nothing is decided: what runs keeps running until the deadline.
        let Some(snap) = snap else {
            return;
        };
        let lease = self.lease.status();
        if lease.lease.id == 0 {
            return;
        }
        self.update_refusals(&snap).await;
        if !self.announce(&lease).await {
            // Another agent holds our machine ID: claim nothing, run nothing claimed.
            self.apply(BTreeMap::new(), &snap).await;
            return;
        }
        if let Some(gh) = self.cluster.gossip() {
            let unknown = self.cluster.unknown_announced();
            if !unknown.is_empty() {
                tracing::debug!(?unknown, "joining machines announced in etcd");
                let _ = gh.join(unknown);
            }
        }
        let committee = lock(&self.shared.committee).clone().unwrap_or_default();
        self.run_votes(&committee).await;
        let target = self.decide_all(&snap, &g, &committee, &lease, now).await;
        self.apply(target, &snap).await;
    }

    /// Recomputes the unit names this machine refuses (see [`State::refused`]): the registry's active
    /// units whose name is reserved or taken here by a unit fleet does not manage. Looks at the host's
    /// units again when asked to (safety pass, systemd reload) or when the registry names units not
    /// looked for yet.
    async fn update_refusals(&mut self, snap: &Snapshot) {
        let names: BTreeSet<UnitName> = snap
            .units
            .iter()
            .filter(|u| !u.name.is_template() && u.desired_state != DesiredState::Inactive)
            .map(|u| u.name.clone())
            .collect();
        let unchecked = names.iter().any(|n| !self.host_checked.contains(n));
        if self.host_stale || unchecked || self.host.is_none() {
            match self.systemd.host_units().await {
                Ok(h) => {
                    self.host = Some(h);
                    self.host_stale = false;
                    self.host_checked = names.clone();
                }
                Err(e) => tracing::warn!("listing this machine's own units: {e}"),
            }
        }
        let host = self.host.as_ref();
        let refused: BTreeMap<UnitName, String> = names
            .into_iter()
            .filter_map(|n| {
                let why = crate::reserved::reserved(n.as_str())
                    .or_else(|| host.and_then(|h| h.foreign(n.as_str())))?;
                Some((n, why))
            })
            .collect();
        for (n, why) in &refused {
            if self.refused.get(n) != Some(why) {
                tracing::warn!(unit = %n, "refused on this machine: {why}; fleet leaves the machine's own unit alone and runs {n} elsewhere");
            }
        }
        for n in self.refused.keys() {
            if !refused.contains_key(n) {
                tracing::info!(unit = %n, "no longer refused on this machine");
            }
        }
        self.refused = refused;
    }

    /// Asks etcd about the leases the last pass wanted to know about.
    async fn run_polls(&mut self) {
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
    async fn run_votes(&mut self, committee: &Committee) {
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
    async fn ask_vote(&self, witness: &MachineId, holder: &MachineId, lease: i64) -> bool {
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
    async fn announce(&mut self, lease: &LeaseStatus) -> bool {
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

    /// Runs placement and the decision core for every unit that concerns this machine, carries out the
    /// claim writes, and returns what this machine should run.
    async fn decide_all(
        &mut self,
        snap: &Snapshot,
        g: &Guard,
        committee: &Committee,
        lease: &LeaseStatus,
        now: Time,
    ) -> BTreeMap<UnitName, TargetUnit> {
        let me = self.opts.machine.clone();
        let machines = self.cluster.live_machines();
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
            }
        }
        for (n, why) in &waiting {
            if self.waiting.get(n) != Some(why) {
                tracing::info!(unit = %n, reason = ?why, "placed here, not running yet");
            }
        }
        self.waiting = waiting;
        if !self.poll_wanted.is_empty() || !self.votes_wanted.is_empty() {
            let next = now + self.timing.lease_poll_period();
            wake = Some(wake.map_or(next, |w| w.min(next)));
        }
        self.wake_at = wake;
        target
    }

    fn is_running(&self, name: &UnitName) -> bool {
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
    async fn carry_out(
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
                    self.poll_wanted.insert(from.lease);
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

    fn current(&self) -> BTreeMap<UnitName, CurrentUnit> {
        self.loaded
            .iter()
            .map(|(n, h)| {
                let active = self
                    .states
                    .get(n)
                    .map(|s| s.active_state.clone())
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
        let globals = self.cluster.global_units_here();
        // Every claimed unit that runs or will run is bound to the fence guard before it starts.
        let mut rebind = false;
        for n in target.keys() {
            let r = if globals.contains(n) {
                self.systemd.unbind_from_guard(n.as_str()).await
            } else {
                self.systemd.bind_to_guard(n.as_str()).await
            };
            match r {
                Ok(changed) => rebind |= changed && self.loaded.contains_key(n),
                Err(e) => tracing::warn!(unit = %n, "fence drop-in: {e}"),
            }
        }
        if rebind {
            if let Err(e) = self.systemd.reload().await {
                tracing::warn!("reloading systemd for fence drop-ins: {e}");
            }
        }
        let tasks = reconcile(&target, &self.current());
        self.run_tasks(&tasks, snap, "").await;
        if !tasks.is_empty() {
            self.refresh_states().await;
        }
    }

    async fn run_task(&mut self, task: &Task, snap: &Snapshot) -> anyhow::Result<()> {
        match task {
            // Ownership is checked on disk right before a unit is touched: a file fleet did not write
            // (or no file) means the unit is not fleet's, and it is left alone.
            Task::Stop(n, _) | Task::Unload(n, _) if !self.systemd.owns(n.as_str()) => {
                tracing::warn!(unit = %n, "{task}: not done, the unit is not fleet's (its file was not written by fleetd)");
                self.loaded.remove(n);
                self.states.remove(n);
                self.started.remove(n);
            }
            Task::Load(n, ..) if self.refused.contains_key(n) => {
                anyhow::bail!("{n} is refused on this machine: {}", self.refused[n]);
            }
            Task::Stop(n, _) => {
                let stop = self.systemd.stop_unit_and_wait(n.as_str());
                crate::metrics::global()
                    .time_job(crate::metrics::JobKind::Stop, stop)
                    .await?;
                self.started.remove(n);
            }
            Task::Unload(..) => {
                // Carried out in bulk (`load.rs`).
                self.unload_all(std::slice::from_ref(task), "").await;
            }
            Task::Load(..) => {
                // Carried out in bulk (`load.rs`).
                self.load_all(std::slice::from_ref(task), snap, "").await;
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

    /// Past the fence deadline: kill every claimed unit at once (the guard does the same, in case we
    /// are too slow); global units keep running.
    async fn fence(&mut self) {
        if !self.fenced {
            tracing::warn!(
                "fence deadline passed (no lease confirmation, and the machines out of sight could \
                 take units over): killing claimed units"
            );
            crate::metrics::global().fenced();
        }
        self.fenced = true;
        let globals = self.cluster.global_units_here();
        let mut killed = false;
        for (n, _) in self.current() {
            if globals.contains(&n) || !self.is_running(&n) {
                continue;
            }
            match self.systemd.fence_unit(n.as_str()).await {
                Ok(()) => {
                    tracing::info!(unit = %n, "killed (fencing)");
                    killed = true;
                }
                Err(e) => tracing::warn!(unit = %n, "fencing: {e}"),
            }
            self.started.remove(&n);
        }
        if killed {
            self.refresh_states().await;
        }
    }

    /// SIGTERM. When systemd is restarting fleetd itself (a `restart` job on fleetd's own unit), the
    /// units keep running: the agent marks this machine as restarting in etcd (bound to its lease, so
    /// peers take nothing over), gives the guard a restart allowance, and exits without revoking the
    /// lease; the next fleetd resumes it. Otherwise (a stop): stop and unload everything, then revoke
    /// the lease (claims and announcement go at once).
    async fn shutdown(mut self) -> bool {
        let job = self
            .systemd
            .job_of_process_unit(std::process::id())
            .await
            .unwrap_or_else(|e| {
                tracing::debug!("cannot tell whether systemd restarts us: {e}");
                None
            });
        self.writer.abort();
        if job.as_deref() == Some("restart") {
            let lease = self.lease.status().lease;
            if lease.id != 0
                && self
                    .registry
                    .mark_restarting(&self.opts.machine, lease.id)
                    .await
                    .is_ok()
            {
                let now = clock::now();
                let slow = lease
                    .last_confirmed()
                    .map(|t| t + self.timing.slow_fence_after());
                let until = slow.map(|s| s.min(now + self.opts.restart_allowance));
                if let Err(e) = guard::write_deadline(&self.opts.fence_file(), until) {
                    tracing::warn!("writing the restart allowance: {e}");
                }
                tracing::info!("systemd restarts fleetd: leaving this machine's units running");
                self.lease.detach();
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
            free_claims: BTreeMap::new(),
            machines: BTreeMap::new(),
            restarting: BTreeSet::new(),
        };
        self.run_tasks(&tasks, &empty, " (shutdown)").await;
        self.publish();
        // Revoking the lease deletes our claims and our machine key at once.
        self.lease.revoke(Duration::from_secs(3)).await;
        let _ = std::fs::remove_file(self.opts.runtime_dir.join("lease.json"));
        false
    }
}
