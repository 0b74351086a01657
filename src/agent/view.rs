//! What this fleetd knows about the cluster: machines, this machine's unit states, the last plan.
//!
//! Machines, their metadata and every machine's unit states come from gossip (a cached copy of the
//! gossip [`View`], refreshed on every gossip event). Without gossip (no endpoint could start), the
//! lease-bound `machines/<id>` keys in the registry mirror stand in for membership and only this
//! machine's unit states are known. The HTTP API reads this through [`ClusterView`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use fleet_gossip::{Liveness, View};
use fleet_gossip_quic::transport::GossipHandle;
use fleet_sched::placement::{self, Decision, Plan};
use fleet_sched::{MachineId, UnitHash, UnitName};
use fleet_systemd::UnitState;

use crate::api::cluster::{
    ClusterView, LocalCluster, MachineInfo, MetadataError, MetadataOp, UnitStateInfo,
};
use crate::registry::Registry;

/// This machine's units as its agent sees them: content hash on disk and systemd's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalReport {
    /// Per loaded unit: the hash of its file and systemd's state (None before the first read).
    pub units: BTreeMap<UnitName, (UnitHash, Option<UnitState>)>,
}

/// The cluster as this fleetd sees it.
pub struct AgentCluster {
    local: LocalCluster,
    registry: Registry,
    gossip: Option<GossipHandle>,
    inner: RwLock<Inner>,
    changed: tokio::sync::watch::Sender<u64>,
    membership: tokio::sync::watch::Sender<u64>,
    /// Where run-time metadata changes are saved (`<state_dir>/metadata.json`), if anywhere.
    metadata_file: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Inner {
    /// The gossip driver's shared view (`GossipHandle::view`): a pointer copy while it is unchanged.
    view: Option<Arc<View>>,
    /// Machines gossip declared down (or forgot), and when this node first saw them gone
    /// (`CLOCK_MONOTONIC`, the decision core's clock).
    down_since: BTreeMap<MachineId, fleet_decide::Time>,
    /// Set while another live agent holds this machine's ID: `(its address, when noticed)`.
    identity_conflict: Option<String>,
    report: LocalReport,
    globals_here: BTreeSet<UnitName>,
}

impl AgentCluster {
    /// The view of machine `local` over `registry`.
    pub fn new(
        local: LocalCluster,
        registry: Registry,
        gossip: Option<GossipHandle>,
    ) -> AgentCluster {
        AgentCluster {
            local,
            registry,
            gossip,
            metadata_file: None,
            inner: RwLock::new(Inner::default()),
            changed: tokio::sync::watch::channel(0).0,
            membership: tokio::sync::watch::channel(0).0,
        }
    }

    /// Keeps run-time metadata changes in `file` (JSON), restoring what an earlier fleetd saved there.
    pub fn with_metadata_file(mut self, file: std::path::PathBuf) -> AgentCluster {
        match std::fs::read(&file) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(changes) => {
                    self.local.restore_metadata_changes(changes);
                    tracing::info!(file = %file.display(), "restored metadata set through the API");
                }
                Err(e) => {
                    tracing::warn!(file = %file.display(), "ignoring unreadable metadata file: {e}")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %file.display(), "cannot read metadata file: {e}"),
        }
        self.metadata_file = Some(file);
        self
    }

    fn save_metadata(&self) -> std::io::Result<()> {
        let Some(file) = &self.metadata_file else {
            return Ok(());
        };
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let json =
            serde_json::to_vec_pretty(&self.local.metadata_changes()).expect("metadata serializes");
        let tmp = file.with_extension("json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, file)
    }

    /// The gossip handle, when gossip runs.
    pub fn gossip(&self) -> Option<&GossipHandle> {
        self.gossip.as_ref()
    }

    /// Notified when the set of live machines, their metadata or which of them are suspected changes.
    pub fn subscribe_membership(&self) -> tokio::sync::watch::Receiver<u64> {
        self.membership.subscribe()
    }

    /// Stores a fresh gossip view; wakes membership subscribers when live machines, their metadata or
    /// their suspicion changed (the agent's plan leaves suspects out, see `decide_all`).
    ///
    /// The same view again (the driver's shared one, unchanged) costs nothing; a view whose
    /// `members_generation` is the previous one's (unit states changed, no member nor metadata)
    /// only replaces the pointer; otherwise the live machines are compared in one walk of both
    /// views, without copying anything.
    pub fn set_view(&self, view: Arc<View>) {
        let now = crate::clock::now();
        let mut i = self.write();
        let members_moved = match &i.view {
            Some(old) if Arc::ptr_eq(old, &view) => return,
            Some(old) => {
                old.local != view.local || old.members_generation != view.members_generation
            }
            None => true,
        };
        if !members_moved {
            i.view = Some(view);
            return;
        }
        let changed = i
            .view
            .as_deref()
            .is_none_or(|old| !same_members(old, &view));
        // Remember when live machines went away (takeover grace, see `live_machines`).
        if let Some(old) = &i.view {
            let gone: Vec<MachineId> = old
                .live()
                .filter(|m| {
                    view.machines
                        .get(&m.identity.machine_id)
                        .is_none_or(|n| n.liveness == Liveness::Down)
                })
                .map(|m| m.identity.machine_id.clone())
                .collect();
            for id in gone {
                i.down_since.entry(id).or_insert(now);
            }
        }
        i.down_since.retain(|id, _| {
            view.machines
                .get(id)
                .is_none_or(|m| m.liveness == Liveness::Down)
        });
        i.view = Some(view);
        drop(i);
        if changed {
            self.membership.send_modify(|v| *v += 1);
        }
    }

    /// Machines of the gossip view that are alive or suspect: `(id, public IP, metadata)`.
    fn gossip_machines(&self) -> Option<Vec<MachineInfo>> {
        let i = self.read();
        let view = i.view.as_ref()?;
        Some(
            view.live()
                .map(|m| {
                    let md = m.metadata.clone().unwrap_or_default();
                    MachineInfo {
                        id: m.identity.machine_id.clone(),
                        public_ip: md.public_ip.parse().ok(),
                        // The operator's k=v only: fleet's own flag is for the plan (`cannot_take_units`).
                        metadata: md.user(),
                    }
                })
                .collect(),
        )
    }

    /// Whether this node has a gossip view yet (without one, nothing vouches for a quorum).
    pub fn has_view(&self) -> bool {
        self.read().view.is_some()
    }

    /// How this node's gossip view sees machine `id`: `(alive, suspect, down since)`. A machine gossip
    /// never heard of is neither alive nor down.
    pub fn peer(&self, id: &MachineId) -> (bool, bool, Option<fleet_decide::Time>) {
        if id == self.local.id() {
            return (true, false, None);
        }
        let i = self.read();
        let m = i.view.as_ref().and_then(|v| v.machines.get(id));
        match m.map(|m| m.liveness) {
            Some(Liveness::Alive) => (true, false, None),
            Some(Liveness::Suspect) => (true, true, None),
            Some(Liveness::Down) | None => (false, false, i.down_since.get(id).copied()),
        }
    }

    /// The machines of this node's gossip view that said they cannot take units now
    /// (`fleet_gossip::Metadata::CANNOT_TAKE_UNITS`, `fleet_decide::takes_units`): the plan leaves them
    /// out (`fleet_decide::in_plan`).
    pub fn cannot_take_units(&self) -> BTreeSet<MachineId> {
        let i = self.read();
        i.view.as_ref().map_or_else(BTreeSet::new, |v| {
            v.live()
                .filter(|m| m.metadata.as_ref().is_some_and(|md| md.cannot_take_units()))
                .map(|m| m.identity.machine_id.clone())
                .collect()
        })
    }

    /// The machines this node's gossip view suspects (alive, failed a probe, not refuted yet).
    pub fn suspects(&self) -> BTreeSet<MachineId> {
        let i = self.read();
        i.view.as_ref().map_or_else(BTreeSet::new, |v| {
            v.machines
                .iter()
                .filter(|(_, m)| m.liveness == Liveness::Suspect)
                .map(|(id, _)| id.clone())
                .collect()
        })
    }

    /// Where machine `id`'s gossip endpoint is (from the gossip view).
    pub fn gossip_addr(&self, id: &MachineId) -> Option<std::net::SocketAddr> {
        let i = self.read();
        i.view.as_ref()?.machines.get(id).map(|m| m.identity.addr)
    }

    /// Records that another live agent holds this machine's ID (`Some(its address)`), or no longer.
    /// The API answers 503 meanwhile.
    pub fn set_identity_conflict(&self, by: Option<String>) {
        self.write().identity_conflict = by;
    }

    /// The address of the agent that holds this machine's ID, while one does.
    pub fn identity_holder(&self) -> Option<String> {
        self.read().identity_conflict.clone()
    }

    /// Machines announced in etcd (their lease lives) that gossip has not heard of at all yet: a
    /// fleetd that just started, or a machine that just joined. They count as live (their claims stand)
    /// until gossip has an opinion; a machine gossip declared down is never in this list.
    fn announced_unheard(&self) -> Vec<MachineInfo> {
        let Ok(snap) = self.registry.snapshot() else {
            return Vec::new();
        };
        let i = self.read();
        let Some(view) = &i.view else {
            return Vec::new();
        };
        snap.machines
            .iter()
            .filter(|(id, _)| !view.machines.contains_key(*id))
            .map(announced)
            .collect()
    }

    /// The live machine that reports `unit` running (active, activating or reloading), by gossip; the
    /// lowest ID if several do. Used as the claim of a unit whose claim is gone (e.g. an expired lease),
    /// so that placement keeps it where it runs.
    pub fn runs_on(&self, unit: &UnitName) -> Option<MachineId> {
        let me = self.local.id();
        let i = self.read();
        let local = i
            .report
            .units
            .get(unit)
            .and_then(|(_, s)| s.as_ref())
            .is_some_and(|s| s.active_state.is_up());
        let mut found: Option<MachineId> = local.then(|| me.clone());
        if let Some(view) = &i.view {
            for m in view.live() {
                let Some(s) = m.units.get(unit.as_str()) else {
                    continue;
                };
                if !s.active_state.is_up() {
                    continue;
                }
                let id = &m.identity.machine_id;
                if id == me {
                    continue;
                }
                if found.as_ref().is_none_or(|f| id < f) {
                    found = Some(id.clone());
                }
            }
        }
        found
    }

    /// Machines known from etcd announcements that gossip does not know: addresses to join through.
    pub fn unknown_announced(&self) -> Vec<std::net::SocketAddr> {
        let Ok(snap) = self.registry.snapshot() else {
            return Vec::new();
        };
        let i = self.read();
        let known = |id: &MachineId| {
            i.view.as_ref().is_some_and(|v| {
                v.machines
                    .get(id)
                    .is_some_and(|m| m.liveness != Liveness::Down)
            })
        };
        snap.machines
            .iter()
            .filter(|(id, _)| **id != *self.local.id() && !known(id))
            .filter_map(|(_, m)| m.record.gossip_addr)
            .collect()
    }

    /// The etcd announcements as machines (no gossip).
    fn announced_machines(&self) -> Vec<MachineInfo> {
        match self.registry.snapshot() {
            Ok(snap) => snap.machines.iter().map(announced).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Tells gossip this machine's metadata: IP and k=v, fleetd's version, `unit_count`, and whether it
    /// `cannot_take` units (`fleet_gossip::Metadata::CANNOT_TAKE_UNITS`).
    pub fn publish_metadata(&self, unit_count: u32, cannot_take: bool) {
        let Some(g) = self.gossip() else {
            return;
        };
        let local = self.local_machine();
        let mut metadata = fleet_gossip::Metadata {
            public_ip: local.public_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            metadata: local.metadata,
            version: env!("CARGO_PKG_VERSION").to_string(),
            unit_count,
        };
        metadata.set_cannot_take_units(cannot_take);
        let _ = g.set_metadata(metadata);
    }

    /// The local machine (configuration plus run-time metadata changes).
    pub fn local_machine(&self) -> MachineInfo {
        self.local.local()
    }

    /// The local machine's view (for SIGHUP reconfiguration).
    pub fn local_cluster(&self) -> &LocalCluster {
        &self.local
    }

    /// Notified when the local machine's metadata changes (the agent announces it again).
    pub fn subscribe_local_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Marks the local machine's metadata as changed.
    pub fn local_changed(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Live machines for placement, sorted by ID. The local machine is always included, with its
    /// current metadata.
    pub fn live_machines(&self) -> Vec<placement::MachineInfo> {
        let mut machines = ClusterView::machines(self);
        // A machine gossip has not heard of yet (we just started, or it just joined) is live while etcd
        // has its announcement.
        for m in self.announced_unheard() {
            if !machines.iter().any(|x| x.id == m.id) {
                machines.push(m);
            }
        }
        // A machine whose agent is restarting keeps its units: count it live while its old lease lasts.
        let snap = self.registry.snapshot().ok();
        if let Some(snap) = &snap {
            for id in &snap.restarting {
                if machines.iter().any(|m| m.id == *id) {
                    continue;
                }
                if let Some(m) = snap.machines.get_key_value(id) {
                    machines.push(announced(m));
                }
            }
            machines.sort_by(|a, b| a.id.cmp(&b.id));
        }
        // The unit names each machine refuses: from its announcement, so that every agent (and the
        // API) plans with the same set.
        let refused = |id: &MachineId| {
            snap.as_ref()
                .and_then(|s| s.machines.get(id))
                .map(|m| m.record.refused_units())
                .unwrap_or_default()
        };
        machines
            .into_iter()
            .map(|m| placement::MachineInfo {
                refused: refused(&m.id),
                id: m.id,
                metadata: m.metadata,
            })
            .collect()
    }

    /// Stores this machine's unit states.
    pub fn set_local_report(&self, report: LocalReport) {
        self.write().report = report;
    }

    /// Stores what the last plan says about this machine.
    pub fn set_plan(&self, plan: &Plan) {
        let me = self.local.id().clone();
        let globals = plan
            .decisions
            .iter()
            .filter_map(|(name, d)| match d {
                Decision::Global(ms) if ms.contains(&me) => Some(name.clone()),
                _ => None,
            })
            .collect();
        self.write().globals_here = globals;
    }

    /// Global units the last plan put on this machine.
    pub fn global_units_here(&self) -> BTreeSet<UnitName> {
        self.read().globals_here.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClusterView for AgentCluster {
    fn machines(&self) -> Vec<MachineInfo> {
        let local = self.local.local();
        let list = self
            .gossip_machines()
            .unwrap_or_else(|| self.announced_machines());
        let mut out: BTreeMap<MachineId, MachineInfo> =
            list.into_iter().map(|m| (m.id.clone(), m)).collect();
        out.insert(local.id.clone(), local);
        out.into_values().collect()
    }

    fn unit_states(&self) -> Vec<UnitStateInfo> {
        let me = self.local.id().clone();
        let i = self.read();
        let mut out: Vec<UnitStateInfo> = i
            .report
            .units
            .iter()
            .filter_map(|(name, (hash, state))| {
                let s = state.as_ref()?;
                Some(UnitStateInfo {
                    name: name.clone(),
                    hash: *hash,
                    machine_id: me.clone(),
                    load_state: s.load_state.clone(),
                    active_state: s.active_state.clone(),
                    sub_state: s.sub_state.clone(),
                })
            })
            .collect();
        if let Some(view) = &i.view {
            for m in view.live() {
                let id = &m.identity.machine_id;
                if *id == me {
                    continue;
                }
                for (name, s) in m.units.iter() {
                    let Ok(name) = UnitName::parse(name) else {
                        continue;
                    };
                    out.push(UnitStateInfo {
                        name,
                        hash: UnitHash::from_bytes(s.unit_hash),
                        machine_id: id.clone(),
                        load_state: s.load_state.clone(),
                        active_state: s.active_state.clone(),
                        sub_state: s.sub_state.clone(),
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
        out
    }

    fn identity_conflict(&self) -> Option<String> {
        let by = self.read().identity_conflict.clone()?;
        Some(format!(
            "machine ID {} is already in use by {by}",
            self.local.id()
        ))
    }

    fn apply_metadata(&self, ops: &[MetadataOp]) -> Result<(), MetadataError> {
        self.local.apply_metadata(ops)?;
        if let Err(e) = self.save_metadata() {
            tracing::warn!("metadata changed but not saved (lost on restart): {e}");
        }
        self.local_changed();
        Ok(())
    }
}

/// Whether two views show the same live machines (alive or suspect), with the same metadata and
/// the same suspicion: what the agent's plan reads of membership. One walk of both, no copy.
fn same_members(a: &View, b: &View) -> bool {
    let mut x = a.live();
    let mut y = b.live();
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(m), Some(n)) => {
                let same_metadata = match (&m.metadata, &n.metadata) {
                    (Some(p), Some(q)) => Arc::ptr_eq(p, q) || p.metadata == q.metadata,
                    (None, None) => true,
                    _ => false,
                };
                if m.identity.machine_id != n.identity.machine_id
                    || (m.liveness == Liveness::Suspect) != (n.liveness == Liveness::Suspect)
                    || !same_metadata
                {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// A machine as its etcd announcement (`machines/<id>`) describes it.
fn announced((id, m): (&MachineId, &crate::registry::Machine)) -> MachineInfo {
    MachineInfo {
        id: id.clone(),
        public_ip: m.record.public_ip,
        metadata: m.record.metadata.clone(),
    }
}

/// Keeps `cluster`'s copy of the gossip view fresh: on every gossip event, and every 500 ms.
pub fn spawn_view_refresh(
    cluster: std::sync::Arc<AgentCluster>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<fleet_gossip::Event>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(handle) = cluster.gossip().cloned() else {
            return;
        };
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    None => return,
                    Some(ev) => tracing::debug!(?ev, "gossip"),
                },
                _ = tick.tick() => {}
            }
            while let Ok(ev) = events.try_recv() {
                tracing::debug!(?ev, "gossip");
            }
            match handle.view().await {
                Ok(v) => cluster.set_view(v),
                Err(e) => {
                    tracing::warn!("gossip stopped: {e}");
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use fleet_gossip::{MachineView, Metadata, NodeIdentity, Stamp};

    use super::*;
    use crate::registry::RegistryOptions;

    fn id(s: &str) -> MachineId {
        MachineId::parse(s).unwrap()
    }

    fn machine(m: &str, liveness: Liveness, rack: &str, unit_up: bool) -> (MachineId, MachineView) {
        let state = fleet_gossip::UnitState {
            load_state: "loaded".into(),
            active_state: if unit_up { "active" } else { "failed" }.into(),
            sub_state: "running".into(),
            unit_hash: [1; 20],
        };
        let view = MachineView {
            identity: NodeIdentity::new(id(m), SocketAddr::from(([10, 0, 0, 1], 4000)), 1),
            liveness,
            liveness_since: std::time::Instant::now(),
            metadata: Some(Arc::new(Metadata {
                metadata: BTreeMap::from([("rack".to_string(), rack.to_string())]),
                ..Metadata::default()
            })),
            units: Arc::new(BTreeMap::from([("a.service".to_string(), state)])),
            version: Stamp::default(),
        };
        (id(m), view)
    }

    fn view(
        generation: u64,
        members_generation: u64,
        machines: Vec<(MachineId, MachineView)>,
    ) -> Arc<View> {
        Arc::new(View {
            local: id("m1"),
            machines: machines.into_iter().collect(),
            generation,
            members_generation,
        })
    }

    /// `set_view` wakes membership subscribers exactly when the live machines, their metadata or
    /// their suspicion changed, records when a machine went down, and stores every new view (unit
    /// states too) even when it skips the comparison.
    #[tokio::test]
    // long: one view after another, each with the wake it must or must not cause
    async fn set_view_wakes_membership_subscribers_on_membership_changes_only() {
        let registry = Registry::start(RegistryOptions::new(
            vec!["http://127.0.0.1:9".into()],
            "/fleet/",
        ));
        let cluster = AgentCluster::new(
            LocalCluster::new(id("m1"), None, BTreeMap::new()),
            registry,
            None,
        );
        let membership = cluster.subscribe_membership();
        let wakes = || *membership.borrow();
        let unit = UnitName::parse("a.service").unwrap();
        let m = |s, l, r, up| machine(s, l, r, up);
        let first = view(
            1,
            1,
            vec![
                m("m1", Liveness::Alive, "r1", false),
                m("m2", Liveness::Alive, "r2", false),
            ],
        );
        cluster.set_view(first.clone());
        assert_eq!(wakes(), 1, "the first view");
        cluster.set_view(first);
        assert_eq!(wakes(), 1, "the same view again");
        // Unit states only: the same members generation, no wake, but the view is stored.
        cluster.set_view(view(
            2,
            1,
            vec![
                m("m1", Liveness::Alive, "r1", false),
                m("m2", Liveness::Alive, "r2", true),
            ],
        ));
        assert_eq!(wakes(), 1, "unit states changed");
        assert_eq!(
            cluster.runs_on(&unit),
            Some(id("m2")),
            "the new unit states are read"
        );
        // The members generation moved but the live machines, metadata and suspicion are the same.
        cluster.set_view(view(
            3,
            2,
            vec![
                m("m1", Liveness::Alive, "r1", false),
                m("m2", Liveness::Alive, "r2", true),
            ],
        ));
        assert_eq!(wakes(), 1, "nothing the plan reads changed");
        cluster.set_view(view(
            4,
            3,
            vec![
                m("m1", Liveness::Alive, "r1", false),
                m("m2", Liveness::Suspect, "r2", true),
            ],
        ));
        assert_eq!(wakes(), 2, "a suspicion");
        assert_eq!(cluster.suspects(), BTreeSet::from([id("m2")]));
        cluster.set_view(view(
            5,
            4,
            vec![
                m("m1", Liveness::Alive, "r1", false),
                m("m2", Liveness::Alive, "r3", true),
            ],
        ));
        assert_eq!(wakes(), 3, "a refutation and new metadata");
        assert_eq!(cluster.peer(&id("m2")), (true, false, None));
        cluster.set_view(view(
            6,
            5,
            vec![
                m("m1", Liveness::Alive, "r1", false),
                m("m2", Liveness::Down, "r3", true),
            ],
        ));
        assert_eq!(wakes(), 4, "a machine down");
        let (alive, suspect, since) = cluster.peer(&id("m2"));
        assert!(!alive && !suspect && since.is_some(), "down since recorded");
        assert_eq!(cluster.runs_on(&unit), None, "a down machine runs nothing");
        cluster.set_view(view(
            7,
            6,
            vec![
                m("m1", Liveness::Alive, "r1", false),
                m("m2", Liveness::Alive, "r3", true),
            ],
        ));
        assert_eq!(wakes(), 5, "back");
        assert_eq!(
            cluster.peer(&id("m2")),
            (true, false, None),
            "down since forgotten"
        );
    }
}
