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

mod fence;
pub mod guard;
mod load;
pub mod membership;
pub mod plan;
pub mod relay;
mod tasks;
mod units;
pub mod view;
mod votes;
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
use fence::{sleep_until, write_guard_loop, GuardInputs, GuardShared};
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
    /// The lease under which we last fenced past a deadline (`fleet_decide::Signals::fenced`).
    fenced_under: Option<i64>,
    /// The fence guard's last recovery mark this agent has acted on (`guard::read_fenced_mark`).
    guard_fenced_seen: Option<Time>,
    /// What etcd said about other machines' leases, most recent last.
    polls: BTreeMap<i64, VecDeque<LeasePoll>>,
    /// Leases the last pass wanted to know about.
    poll_wanted: BTreeSet<i64>,
    /// When each wanted lease was last asked about (answered or not).
    poll_tried: BTreeMap<i64, Time>,
    /// `LeaseTimeToLive` polls sent without waiting (`votes.rs`, `poll_early`): lease, sent, received,
    /// answer; the next pass takes them.
    early_polls: tokio::task::JoinSet<votes::EarlyPoll>,
    /// The leases of `early_polls`.
    early_leases: BTreeSet<i64>,
    /// The claim writes of the current pass (for its timing log).
    pass_writes: usize,
    /// The units the last pass's verdicts prepare (`Verdict::prepare`: loaded, not started).
    prepared: BTreeSet<UnitName>,
    /// When we superseded each claim we took over (our clock).
    superseded_at: BTreeMap<UnitName, Time>,
    /// When a verdict wants another look.
    wake_at: Option<Time>,
    /// What we last told gossip about our units (to send only changes).
    gossiped_units: Option<BTreeMap<String, fleet_gossip::UnitState>>,
    unit_count: usize,
    /// Whether gossip was told this machine cannot take units (`fleet_decide::takes_units`).
    told_cannot_take: bool,
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
    /// The fence drop-ins known to be on disk as wanted (a pass reads only the others).
    fence_dropins: tasks::FenceDropins,
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
    // The guard first: whatever the previous fleetd's leases allow, and nothing more.
    let status = lease.status();
    let first = fleet_decide::guard_retiring(
        &timing,
        &status.lease,
        status.retiring.as_ref(),
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
    // A fencing the guard recovered from before this fleetd started needs nothing: nothing counts as
    // started yet.
    let guard_fenced_seen = guard::read_fenced_mark(&guard::fenced_mark_file(&opts.fence_file()));
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
        fenced_under: None,
        guard_fenced_seen,
        polls: BTreeMap::new(),
        poll_wanted: BTreeSet::new(),
        poll_tried: BTreeMap::new(),
        early_polls: tokio::task::JoinSet::new(),
        early_leases: BTreeSet::new(),
        pass_writes: 0,
        prepared: BTreeSet::new(),
        superseded_at: BTreeMap::new(),
        wake_at: None,
        gossiped_units: None,
        unit_count: usize::MAX,
        told_cannot_take: false,
        waiting: BTreeMap::new(),
        refused: BTreeMap::new(),
        host: None,
        host_checked: BTreeSet::new(),
        host_stale: true,
        announced_refused: BTreeMap::new(),
        strays: BTreeSet::new(),
        placement: plan::AgentPlanner::new(),
        fence_dropins: tasks::FenceDropins::default(),
    };
    st.read_current().await;
    let mut lease_key = st.lease.status().key();
    loop {
        let mut full = false;
        let mut changed = false;
        let wake = st.wake_at;
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => { full = true; }
            r = guard_rx.changed() => { if r.is_err() { break; } }
            r = reg_rx.changed() => { if r.is_err() { break; } }
            r = lease_rx.changed() => {
                if r.is_err() { break; }
                let k = st.lease.status().key();
                if k == lease_key { continue; }
                lease_key = k;
            }
            r = local_rx.changed() => { if r.is_err() { break; } st.announced = None; }
            r = members_rx.changed() => { if r.is_err() { break; } }
            _ = sleep_until(wake) => { st.wake_at = None; }
            ev = events.next() => match st.absorb(ev) {
                Absorbed::Nothing => continue,
                Absorbed::Changed => changed = true,
                Absorbed::Resync => full = true,
                Absorbed::Disconnected => {
                    events = st.reconnect_systemd(&ours).await?;
                    full = true;
                }
            },
        }
        // Coalesce bursts (a watch event often comes with several more).
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Take every systemd signal queued meanwhile before the pass: a batch of starts sends several
        // per unit, and one pass per signal made 1,000 starts take about 30 s instead of 6. The states
        // are published once for all of them (publishing per signal, a copy of every unit's state each
        // time, kept the agent busy for tens of seconds after 1,000 starts and queued hundreds of MB
        // for gossip: docs/benchmarks.md).
        while let Some(ev) = events.try_next() {
            match st.absorb(Some(ev)) {
                Absorbed::Nothing => {}
                Absorbed::Changed => changed = true,
                Absorbed::Resync => full = true,
                Absorbed::Disconnected => {
                    events = st.reconnect_systemd(&ours).await?;
                    full = true;
                    break;
                }
            }
        }
        if full {
            st.read_current().await;
            st.host_stale = true;
        } else if changed {
            st.publish();
        }
        st.pass().await;
    }
    Ok(st.shutdown().await)
}

/// What a systemd event meant for the agent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Absorbed {
    /// Nothing a pass needs to look at.
    Nothing,
    /// A unit of ours changed: a pass is due (publish the states first).
    Changed,
    /// Changes were lost (the subscription's queue overflowed): re-read every state, then a pass.
    Resync,
    /// The connection to systemd broke.
    Disconnected,
}

impl Absorbed {
    fn changed(changed: bool) -> Absorbed {
        if changed {
            Absorbed::Changed
        } else {
            Absorbed::Nothing
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Takes one systemd event into the agent's view of its units (not published: the caller
    /// publishes once per burst of events).
    fn absorb(&mut self, ev: Option<Event>) -> Absorbed {
        match ev {
            Some(Event::UnitChanged { name, state }) => {
                Absorbed::changed(self.note_state(&name, state))
            }
            Some(Event::UnitRemoved { name }) => Absorbed::changed(self.note_removed(&name)),
            Some(Event::JobRemoved { unit, result, .. }) => {
                crate::metrics::global().job_removed(&unit, result.is_success());
                Absorbed::Nothing
            }
            Some(Event::Reloaded) => {
                // Units of the machine may have come or gone (a package installed, say).
                self.host_stale = true;
                Absorbed::Nothing
            }
            Some(Event::Resync) => {
                tracing::info!("systemd's signals were dropped: re-reading every unit's state");
                Absorbed::Resync
            }
            Some(Event::Disconnected) | None => Absorbed::Disconnected,
        }
    }

    /// Reconnects to systemd after the bus connection broke and subscribes again.
    async fn reconnect_systemd(
        &mut self,
        ours: &(impl Fn(&str) -> bool + Clone + Send + 'static),
    ) -> anyhow::Result<fleet_systemd::Subscription> {
        tracing::warn!("lost the connection to systemd; reconnecting");
        self.systemd = self
            .systemd
            .reconnect_with_backoff(Duration::from_secs(3600))
            .await
            .context("reconnecting to systemd")?;
        // systemd may have restarted: look at the fence drop-ins on disk again.
        self.fence_dropins.forget();
        self.systemd
            .subscribe_filtered(ours.clone())
            .await
            .context("subscribing to systemd")
    }

    fn note_state(&mut self, name: &str, state: UnitState) -> bool {
        let Ok(name) = UnitName::parse(name) else {
            return false;
        };
        if !self.loaded.contains_key(&name) {
            return false;
        }
        self.states.insert(name, state);
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
                sub_state: fleet_systemd::SubState::Dead,
                main_pid: None,
            },
        );
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

    /// Tells gossip this machine's metadata (IP, k=v, version, number of units, whether it can take
    /// units).
    fn publish_metadata(&self) {
        let cannot_take = self.told_cannot_take;
        self.cluster
            .publish_metadata(self.unit_count as u32, cannot_take);
    }

    /// One pass: gather, decide, act.
    async fn pass(&mut self) {
        let started = clock::now();
        self.run_polls().await;
        let now = clock::now();
        if now.since(started) > Duration::from_millis(1) {
            tracing::debug!(
                target: "fleet::agent::timing",
                ms = now.since(started).as_secs_f64() * 1000.0,
                "lease polls"
            );
        }
        let snap = self.registry.snapshot().ok();
        if let Some(s) = &snap {
            self.seats.update(&s.machines, self.timing.ttl, now);
            let committee = Committee::choose(&self.seats.seats(), self.timing.ttl, now);
            *lock(&self.shared.committee) = Some(committee);
            self.witness
                .retain(|m, l| s.machines.get(m).is_some_and(|x| x.lease == l));
        }
        let g = self.compute_guard(now);
        self.tell_takes_units(&g, now);
        if g.fenced(now) {
            if g.deadline.is_some() {
                self.fenced_under = Some(self.lease.status().lease.id);
            }
            self.fence().await;
            return;
        }
        if self.fenced {
            tracing::info!(vouch = ?g.vouch, "no longer fenced");
            self.fenced = false;
        }
        self.notice_guard_fencing();
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
        if self.keep_leases(&snap, &lease).await {
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
        let polled = clock::now();
        self.run_votes(&committee).await;
        let voted = clock::now();
        let target = self.decide_all(&snap, &g, &committee, &lease, now).await;
        let decided = clock::now();
        let tasks = self.apply(target, &snap).await;
        if tasks > 0 || self.pass_writes > 0 {
            tasks::log_pass(
                [now, polled, voted, decided, clock::now()],
                self.pass_writes,
                tasks,
            );
        }
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
