//! The agent model: fleetd's event loop, carrying out the verdicts of the product's decision core.
//!
//! Every decision is `fleet_decide`'s, and none of its rules is restated here: an agent picks the witness
//! committee with [`Committee::choose`] from the announcements of its registry mirror (their
//! `create_revision`, and when it saw one vanish), computes its fence deadline with [`fleet_decide::guard`]
//! from its lease confirmations (send time and etcd revision), its mirror's revision and the witnesses'
//! support, hands the deadline to the machine's fence guard, and asks [`fleet_decide::decide`] about every
//! unit the plan puts here, every claim it holds or held, and every unit loaded here. It then carries the
//! verdicts out: it runs or stops units (through `reconcile`), sends the claim transaction the verdict
//! names (claim, supersede with the handover, rebind, release, acknowledge), polls the leases the verdict
//! names with `LeaseTimeToLive` every `Timing::lease_poll_period`, asks the witnesses for the votes the
//! verdict names, and looks again when the verdict says. Each machine is also a witness
//! ([`fleet_decide::Witness`], its promises kept across fleetd restarts, lost with a reboot) and answers
//! other machines' requests for support and votes.
//!
//! What belongs to the agent shell and not to the core, modelled here as fleetd does it: the lease
//! keeper (a keep-alive every `Timing::keepalive_period`, a new lease when etcd says the old one is gone;
//! the lease ID and confirmations are kept across fleetd restarts; a new lease when
//! [`fleet_decide::replace`] says the current one may have been voted away, the replaced one kept
//! alive and confirmed until [`fleet_decide::may_retire`] lets it go, then revoked), the guard writer (every keep-alive
//! period and on every grant: the deadline for the guard and, once a keep-alive answer is late, support
//! requests to the witnesses every `V/3`, or every keep-alive period while the support falls short), the
//! machine announcement and its identity check (a fleetd whose machine ID
//! is announced by another address under a live lease touches nothing), the registry mirror (advanced by
//! the watch), the committee's seats (kept across fleetd restarts), and the gossip view.
//!
//! etcd requests travel the simulated network: a request reaches etcd after half the round trip (plus
//! `etcd_slow`), the answer comes back after the other half if the link is up, and the agent drops an
//! answer later than its timeout (the request may still have been applied, as with a real etcd). Support
//! and vote requests travel between agents like gossip datagrams (fleetd sends them over the gossip QUIC
//! channel), with fleetd's timeouts (`V/3` for support, two lease poll periods for a vote).
//!
//! # Map
//! - `mod.rs`: the agent's state and the messages (requests to etcd and to witnesses).
//! - `requests.rs`: etcd requests: sent over the simulated network, applied, answered, timed out.
//! - `lease.rs`: the lease keeper and the guard writer (the fence deadline, support requests).
//! - `mirror.rs`: the registry mirror, the committee's seats, and the gossip membership (rejoins,
//!   suspects).
//! - `witness.rs`: support and votes, requests between agents, and each machine's witness.
//! - `pass.rs`: one pass: the decision core asked about every unit, its verdicts carried out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use fleet_decide::{Committee, LeasePoll, Time};
use fleet_gossip::core::Node;
use fleet_sched::MachineId;

use crate::etcd::Txn;
use crate::sim::{mix, Bits, Sim};

mod lease;
mod mirror;
mod pass;
mod requests;
mod witness;

/// A request from one agent to a witness.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ask {
    /// Support for the asker's lease.
    Support(i64),
    /// A vote that `holder`'s `lease` may be taken over.
    Vote { holder: u32, lease: i64 },
}

/// A witness's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Support or vote granted.
    Granted,
    /// Not granted.
    Denied,
    /// Support refused because this witness voted the lease away (`Witness::voted_away`): fleetd's
    /// relay answers so, and the asker takes a new lease.
    VotedAway,
}

/// A request to etcd.
#[derive(Clone, Debug)]
pub(crate) enum Req {
    /// Read the registry (a mirror's first sync).
    Sync,
    /// Grant a lease.
    Grant,
    /// Keep a lease alive (the current one, or the one it replaced while that one retires).
    Keepalive(i64),
    /// Revoke a lease this machine replaced (its keys go at once).
    Revoke(i64),
    /// `LeaseTimeToLive` of another machine's lease.
    TimeToLive(i64),
    /// Write `machines/<id>` under the lease.
    Announce(i64),
    /// A claim transaction.
    Txn { unit: u32, lease: i64, txn: Txn },
}

/// etcd's answer.
#[derive(Clone, Debug)]
pub(crate) enum Resp {
    /// The registry was read.
    Synced,
    /// The new lease, at this revision.
    Granted(i64, i64),
    /// Renewed; the header's revision.
    Kept(i64),
    /// The lease is gone.
    LeaseGone,
    /// Revoked (or already gone).
    Revoked,
    /// Remaining whole seconds and granted seconds, or gone.
    Ttl(Option<(i64, i64)>),
    /// Announced (or refused: another agent holds the ID).
    Announced(bool),
    /// The transaction's new revision, or failed.
    Txn(Option<i64>),
}

/// fleetd on one machine (one life of it).
pub(crate) struct Agent {
    /// When this life started (local µs).
    started_at: u64,
    pub(crate) node: Option<Node>,
    pub(crate) wake: Option<u64>,
    /// Gossip: machines alive or suspect (itself excluded), and their hash.
    pub(crate) live: Bits,
    pub(crate) live_hash: u64,
    /// Gossip: when this machine's view declared each down machine down (local µs).
    pub(crate) down_since: HashMap<u32, u64>,
    /// The registry mirror's revision (0: not read yet).
    pub(crate) mirror_rev: i64,
    /// Position in etcd's announcement log, and the announcements as of the mirror's revision.
    ann_pos: usize,
    anns: BTreeMap<u32, crate::etcd::Announcement>,
    /// The committee of the last pass (`None` before the registry was read), and until when it holds
    /// (a departed witness's seat expires).
    committee: Option<Committee>,
    committee_until: Option<u64>,
    /// For each witness, when this machine sent the latest support request it granted (for the current
    /// lease: cleared whenever the current lease changes).
    granted: BTreeMap<MachineId, Time>,
    /// The lease under which a pass found this machine fenced past a deadline, while it was the
    /// current lease: `fleet_decide::Signals::fenced` once it is no longer fenced.
    fenced_under: Option<i64>,
    /// The lease a witness answered it voted away: `fleet_decide::Signals::refused` while it is the
    /// current lease.
    refused: Option<i64>,
    /// The lease being replaced while the grant of its successor is in flight.
    replacing: Option<i64>,
    /// When support was last asked for (local µs).
    support_round: Option<u64>,
    /// Witnesses that voted that a holder's lease may be taken over, by (holder, lease).
    votes: BTreeMap<(u32, i64), BTreeSet<u32>>,
    /// Holders whose lease the last pass wanted votes on, and when votes were last asked (local µs).
    votes_wanted: BTreeSet<(u32, i64)>,
    votes_asked: BTreeMap<(u32, i64), u64>,
    /// The lease under which this machine is announced.
    announced: Option<i64>,
    /// Another agent holds this machine ID: claim nothing.
    conflict: bool,
    /// In-flight requests, by what they are about (global µs sent).
    grant_sent: Option<u64>,
    announce_sent: Option<u64>,
    txn_sent: HashMap<u32, u64>,
    poll_sent: HashMap<i64, u64>,
    /// Last `LeaseTimeToLive` sent per lease (local µs).
    last_poll: HashMap<i64, u64>,
    /// Answers per lease, oldest first.
    polls: HashMap<i64, Vec<LeasePoll>>,
    /// When this life superseded each unit's claim (local µs of the answer).
    superseded_at: HashMap<u32, u64>,
    pub(crate) pass_at: Option<u64>,
    /// Whether the last pass found this machine fenced.
    fenced: bool,
    /// (fenced, may start) as the guard writer last saw them.
    guard_state: Option<(bool, bool)>,
    /// The machines gossip suspects, and the node's `members_generation` they were read at.
    suspects: BTreeSet<u32>,
    suspects_at: Option<u64>,
    /// The machines whose gossip metadata, as this machine's gossip core holds it, says they cannot
    /// take units (`fleet_decide::takes_units`), read with the suspects.
    refusing: BTreeSet<u32>,
    /// Whether this machine's metadata says it cannot take units (what it last told gossip).
    pub(crate) told_cannot_take: bool,
}

impl Agent {
    pub(crate) fn new(started_at: u64, machines: usize, me: u32) -> Agent {
        Agent {
            started_at,
            node: None,
            wake: None,
            live: Bits::new(machines),
            live_hash: mix(me as u64),
            down_since: HashMap::new(),
            mirror_rev: 0,
            ann_pos: 0,
            anns: BTreeMap::new(),
            committee: None,
            committee_until: None,
            granted: BTreeMap::new(),
            fenced_under: None,
            refused: None,
            replacing: None,
            support_round: None,
            votes: BTreeMap::new(),
            votes_wanted: BTreeSet::new(),
            votes_asked: BTreeMap::new(),
            announced: None,
            conflict: false,
            grant_sent: None,
            announce_sent: None,
            txn_sent: HashMap::new(),
            poll_sent: HashMap::new(),
            last_poll: HashMap::new(),
            polls: HashMap::new(),
            superseded_at: HashMap::new(),
            pass_at: None,
            // Nothing vouches for a fleetd that just started until its lease is confirmed.
            fenced: true,
            guard_state: None,
            suspects: BTreeSet::new(),
            suspects_at: None,
            refusing: BTreeSet::new(),
            told_cannot_take: false,
        }
    }
}

impl Sim {
    fn agent_mut(&mut self, m: u32) -> &mut Agent {
        self.machines[m as usize]
            .agent
            .as_mut()
            .expect("the agent runs")
    }

    /// Whether a request sent at `sent` (global µs) may still be answered.
    fn in_flight(&self, sent: Option<u64>) -> bool {
        sent.is_some_and(|s| {
            self.now < s + self.sc.config.etcd_timeout.0 + self.sc.config.etcd_rtt.0
        })
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `random_bool` on a probability that may be out of range.
trait RandomBool {
    fn random_bool_(&mut self, p: f64) -> bool;
}

impl RandomBool for rand::rngs::StdRng {
    fn random_bool_(&mut self, p: f64) -> bool {
        use rand::RngExt;
        self.random_bool(p.clamp(0.0, 1.0))
    }
}
