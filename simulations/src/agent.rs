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
//! the lease ID and confirmations are kept across fleetd restarts), the guard writer (every keep-alive
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use fleet_decide::{
    Case, Claim as DClaim, Committee, Confirmation, Ctx, Handoff, LeaseAnswer, LeasePoll, Peer,
    Placement, Seat, Support, Time, Write,
};
use fleet_gossip::core::Node;
use fleet_gossip::Liveness;
use fleet_sched::MachineId;

use crate::etcd::Txn;
use crate::sim::{mix, Bits, Ev, Sim};

/// A request from one agent to a witness.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ask {
    /// Support for the asker's lease.
    Support(i64),
    /// A vote that `holder`'s `lease` may be taken over.
    Vote { holder: u32, lease: i64 },
}

/// A request to etcd.
#[derive(Clone, Debug)]
pub(crate) enum Req {
    /// Read the registry (a mirror's first sync).
    Sync,
    /// Grant a lease.
    Grant,
    /// Keep the lease alive.
    Keepalive(i64),
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
    /// For each witness, when this machine sent the latest support request it granted.
    granted: BTreeMap<MachineId, Time>,
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
    /// The machines gossip suspects, and the gossip input count it was read at (it changes only when
    /// the node handles an input).
    suspects: BTreeSet<u32>,
    suspects_at: Option<u64>,
    /// Inputs handled by the gossip node.
    pub(crate) gossip_inputs: u64,
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
            gossip_inputs: 0,
        }
    }
}

/// Keeps the last few `LeaseTimeToLive` answers per lease.
const POLLS_KEPT: usize = 8;

impl Sim {
    // ------------------------------------------------------------------------------------------
    // etcd requests.

    /// Sends `req` from machine `m`'s fleetd.
    pub(crate) fn etcd_send(&mut self, m: u32, req: Req) {
        let mm = &self.machines[m as usize];
        if !mm.agent_runs() {
            return;
        }
        let gen = mm.gen;
        let sent = self.local(m);
        if !self.etcd_reachable(m) || !self.lossless_to_etcd(m) {
            self.etcd.ops.unavailable += 1;
            return;
        }
        let at = self.now + self.sc.config.etcd_rtt.0 / 2 + self.etcd_extra;
        let sent_g = self.now;
        self.push(
            at,
            Ev::EtcdArrive {
                m,
                gen,
                req,
                sent,
                sent_g,
            },
        );
    }

    fn lossless_to_etcd(&mut self, m: u32) -> bool {
        let e = self.net.etcd();
        let loss = self.net.loss(m as usize, e, 0.0);
        !(loss > 0.0 && self.rng.random_bool_(loss))
    }

    /// The request reaches etcd: it is applied, and the answer sent back.
    pub(crate) fn etcd_arrive(&mut self, m: u32, gen: u32, req: Req, sent: u64, sent_g: u64) {
        if !self.etcd_up {
            self.etcd.ops.unavailable += 1;
            return;
        }
        let now = self.now;
        let ident = self.machines[m as usize].ident;
        let addr = m;
        let resp = match &req {
            Req::Sync => Resp::Synced,
            Req::Grant => {
                let id = self.etcd.grant(m, self.sc.config.agent_ttl.0, now);
                Resp::Granted(id, self.etcd.revision())
            }
            Req::Keepalive(l) => {
                if self.etcd.keepalive(*l, now) {
                    Resp::Kept(self.etcd.revision())
                } else {
                    Resp::LeaseGone
                }
            }
            Req::TimeToLive(l) => Resp::Ttl(self.etcd.time_to_live(*l, now)),
            Req::Announce(l) => {
                let ok = self.etcd.announce(ident, *l, addr).is_ok();
                if ok {
                    self.notify_watchers();
                }
                Resp::Announced(ok)
            }
            Req::Txn { unit, lease, txn } => {
                let r = self.etcd.txn(*unit, ident, *lease, *txn);
                if r.is_some() {
                    if self.machines[m as usize].impostor {
                        self.checker.impostor_claim(now, m, *unit);
                    }
                    if matches!(txn, Txn::Supersede { .. }) {
                        self.metrics.takeovers += 1;
                    }
                    self.notify_watchers();
                }
                Resp::Txn(r)
            }
        };
        // The answer travels back.
        let e = self.net.etcd();
        let back_loss = self.net.loss(e, m as usize, 0.0);
        if self.net.blocked(e, m as usize) || (back_loss > 0.0 && self.rng.random_bool_(back_loss))
        {
            self.etcd.ops.unavailable += 1;
            return;
        }
        let at = self.now + self.sc.config.etcd_rtt.0 / 2;
        self.push(
            at,
            Ev::EtcdAnswer {
                m,
                gen,
                req,
                resp,
                sent,
                sent_g,
            },
        );
    }

    /// The answer reaches fleetd (if it still runs, and before its timeout).
    pub(crate) fn etcd_answer(
        &mut self,
        m: u32,
        gen: u32,
        req: Req,
        resp: Resp,
        sent: u64,
        sent_g: u64,
    ) {
        let mm = &self.machines[m as usize];
        if mm.gen != gen || !mm.agent_runs() {
            return;
        }
        if self.now.saturating_sub(sent_g) > self.sc.config.etcd_timeout.0 {
            self.etcd.ops.unavailable += 1;
            self.clear_inflight(m, &req);
            return;
        }
        self.clear_inflight(m, &req);
        let local = self.local(m);
        match (req, resp) {
            (Req::Sync, Resp::Synced) if self.agent_mut(m).mirror_rev == 0 => {
                // The registry as of now (the watch continues from there).
                let rev = self.etcd.revision();
                self.advance_mirror(m, rev);
            }
            (Req::Grant, Resp::Granted(id, rev)) => {
                let mm = &mut self.machines[m as usize];
                mm.lease = fleet_decide::OwnLease {
                    id,
                    ttl: self.sc.config.agent_ttl.std(),
                    confirmations: vec![Confirmation {
                        sent: Time(sent),
                        revision: rev,
                    }],
                };
                self.agent_mut(m).announced = None;
            }
            (Req::Keepalive(l), Resp::Kept(rev)) => {
                let mm = &mut self.machines[m as usize];
                if mm.lease.id == l {
                    mm.lease.confirm(Confirmation {
                        sent: Time(sent),
                        revision: rev,
                    });
                }
            }
            (Req::Keepalive(l), Resp::LeaseGone) => {
                let mm = &mut self.machines[m as usize];
                if mm.lease.id == l {
                    // etcd expired it (and the claims with it): start over with a new one.
                    mm.lease = fleet_decide::OwnLease::default();
                    self.metrics.leases_lost += 1;
                    let gen = mm.gen;
                    self.push(self.now, Ev::Keepalive { m, gen });
                }
            }
            (Req::TimeToLive(l), Resp::Ttl(answer)) => {
                let poll = LeasePoll {
                    sent: Time(sent),
                    received: Time(local),
                    answer: match answer {
                        Some((ttl, granted)) => LeaseAnswer::Remaining { ttl, granted },
                        None => LeaseAnswer::NotFound,
                    },
                };
                let polls = self.agent_mut(m).polls.entry(l).or_default();
                polls.push(poll);
                if polls.len() > POLLS_KEPT {
                    polls.remove(0);
                }
            }
            (Req::Announce(l), Resp::Announced(ok)) => {
                let alive = self.etcd.lease_alive(l);
                let a = self.agent_mut(m);
                if ok {
                    a.announced = Some(l);
                    a.conflict = false;
                } else if alive {
                    let first = !a.conflict;
                    a.conflict = true;
                    if first {
                        self.metrics.identity_conflicts += 1;
                    }
                }
            }
            (Req::Txn { unit, txn, .. }, Resp::Txn(Some(_))) => {
                if matches!(txn, Txn::Supersede { .. }) {
                    self.agent_mut(m).superseded_at.insert(unit, local);
                }
            }
            _ => {}
        }
        self.request_pass(m);
    }

    fn clear_inflight(&mut self, m: u32, req: &Req) {
        let a = self.agent_mut(m);
        match req {
            Req::Grant => a.grant_sent = None,
            Req::Announce(_) => a.announce_sent = None,
            Req::Txn { unit, .. } => {
                a.txn_sent.remove(unit);
            }
            Req::TimeToLive(l) => {
                a.poll_sent.remove(l);
            }
            _ => {}
        }
    }

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

    // ------------------------------------------------------------------------------------------
    // The lease keeper.

    pub(crate) fn keepalive(&mut self, m: u32, gen: u32) {
        let mm = &self.machines[m as usize];
        if mm.gen != gen || !mm.powered || mm.agent.is_none() {
            return;
        }
        if mm.frozen || mm.agent_frozen {
            return; // thaw re-arms it
        }
        let period = micros(self.timing.keepalive_period());
        let next = self.local_after(m, period);
        self.push(next, Ev::Keepalive { m, gen });
        let lease = self.machines[m as usize].lease.id;
        let grant_sent = self.agent_mut(m).grant_sent;
        if lease != 0 {
            self.etcd_send(m, Req::Keepalive(lease));
        } else if !self.in_flight(grant_sent) {
            self.agent_mut(m).grant_sent = Some(self.now);
            self.etcd_send(m, Req::Grant);
        }
        self.guard_tick(m);
    }

    // ------------------------------------------------------------------------------------------
    // The registry mirror and the membership.

    /// Advances machine `m`'s mirror to `rev`, following the announcements: the committee's seats.
    pub(crate) fn advance_mirror(&mut self, m: u32, rev: i64) {
        let local = self.local(m);
        let mm = &mut self.machines[m as usize];
        let Some(a) = mm.agent.as_mut() else {
            return;
        };
        let changed: Vec<u32> = if a.mirror_rev == 0 {
            // The first read: every current announcement; seats this machine knew of that are gone
            // now departed (a restarted fleetd keeps the seats it saved).
            a.anns = self.etcd.announcements().clone();
            a.ann_pos = self.etcd.announcements_since(0, rev).0;
            mm.seats.keys().chain(a.anns.keys()).copied().collect()
        } else {
            let (pos, log) = self.etcd.announcements_since(a.ann_pos, rev);
            let mut changed = Vec::new();
            for &(_, j, ann) in log {
                match ann {
                    Some(ann) => a.anns.insert(j, ann),
                    None => a.anns.remove(&j),
                };
                changed.push(j);
            }
            a.ann_pos = pos;
            changed
        };
        for j in changed {
            match a.anns.get(&j) {
                Some(ann) => {
                    mm.seats.insert(j, (ann.created, None));
                }
                None => {
                    if let Some(seat) = mm.seats.get_mut(&j) {
                        seat.1.get_or_insert(local);
                    }
                }
            }
            a.committee_until = Some(0);
        }
        a.mirror_rev = rev;
    }

    /// Machine `m`'s committee now (recomputed when the seats change or a departed seat expires).
    fn committee_of(&mut self, m: u32, now: u64) -> Option<Committee> {
        let ttl = self.sc.config.agent_ttl.0;
        let infos = &self.machine_infos;
        let mm = &mut self.machines[m as usize];
        let a = mm.agent.as_mut()?;
        if a.mirror_rev == 0 {
            return None;
        }
        if a.committee.is_none() || a.committee_until.is_some_and(|u| now >= u) {
            mm.seats.retain(|_, (_, d)| d.is_none_or(|d| now < d + ttl));
            let seats: Vec<Seat> = mm
                .seats
                .iter()
                .map(|(&j, &(since, departed))| Seat {
                    id: infos[j as usize].id.clone(),
                    since,
                    departed_at: departed.map(Time),
                })
                .collect();
            a.committee = Some(Committee::choose(
                &seats,
                self.sc.config.agent_ttl.std(),
                Time(now),
            ));
            a.committee_until = mm
                .seats
                .values()
                .filter_map(|(_, d)| d.map(|d| d + ttl))
                .min();
        }
        a.committee.clone()
    }

    /// The fence deadline of machine `m` now.
    fn guard_of(&mut self, m: u32, now: u64) -> fleet_decide::Guard {
        let committee = self.committee_of(m, now);
        let me = self.machine_infos[self.machines[m as usize].ident as usize]
            .id
            .clone();
        let mm = &self.machines[m as usize];
        let a = mm.agent.as_ref().expect("the agent runs");
        let support = committee.as_ref().map(|c| Support {
            committee: c,
            me: &me,
            granted: &a.granted,
        });
        fleet_decide::guard(
            &self.timing,
            &mm.lease,
            a.mirror_rev,
            support.as_ref(),
            Time(now),
        )
    }

    /// fleetd's guard writer, every keep-alive period and on every grant: the deadline for the guard, and
    /// once a keep-alive answer is late, support requests to the witnesses (every `V/3`, or every
    /// keep-alive period while the support falls short).
    fn guard_tick(&mut self, m: u32) {
        let now = self.local(m);
        let g = self.guard_of(m, now);
        self.write_guard(m, g.deadline.map(|t| t.0));
        let timing = self.timing.clone();
        let lease = self.machines[m as usize].lease.clone();
        let me = self.machines[m as usize].ident;
        let a = self.machines[m as usize]
            .agent
            .as_mut()
            .expect("the agent runs");
        // As fleetd: one keep-alive answer late, ask for support, every V/3, or every keep-alive
        // period while the support falls short.
        let unconfirmed = lease
            .confirmed_at(a.mirror_rev)
            .is_none_or(|t| Time(now).since(t) > timing.keepalive_period() * 3 / 2);
        let short = g.vouch != fleet_decide::Vouch::Support;
        let round = micros(if short {
            timing.keepalive_period()
        } else {
            timing.support_validity() / 3
        });
        if lease.id != 0 && unconfirmed && a.support_round.is_none_or(|t| now >= t + round) {
            a.support_round = Some(now);
            let by_id = &self.by_id;
            let witnesses: Vec<u32> = a
                .committee
                .as_ref()
                .map(|c| {
                    c.witnesses
                        .iter()
                        .filter_map(|w| by_id.get(w).copied())
                        .filter(|&w| w != me)
                        .collect()
                })
                .unwrap_or_default();
            for w in witnesses {
                self.ask(m, w, Ask::Support(lease.id));
            }
        }
        // The agent runs a pass when fenced or may-start changes.
        let state = (g.fenced(Time(now)), g.may_start(Time(now)));
        let a = self.agent_mut(m);
        if a.guard_state != Some(state) {
            a.guard_state = Some(state);
            self.request_pass(m);
        }
    }

    // ------------------------------------------------------------------------------------------
    // Support and votes: requests between agents.

    /// Sends `ask` from machine `m`'s fleetd to witness `w`.
    fn ask(&mut self, m: u32, w: u32, ask: Ask) {
        let gen = self.machines[m as usize].gen;
        let sent = self.local(m);
        if let Some(at) = self.relay_arrival(m, w) {
            self.metrics.witness_requests += 1;
            self.push(
                at,
                Ev::Ask {
                    from: m,
                    gen,
                    to: w,
                    ask,
                    sent,
                    sent_g: self.now,
                },
            );
        }
    }

    /// When a message from `a` to `b` arrives (`None`: lost to a partition or loss).
    fn relay_arrival(&mut self, a: u32, b: u32) -> Option<u64> {
        let (ai, bi) = (a as usize, b as usize);
        if self.net.blocked(ai, bi) {
            return None;
        }
        let loss = self.net.loss(ai, bi, self.sc.config.loss);
        if loss > 0.0 && self.rng.random_bool_(loss) {
            return None;
        }
        let c = &self.sc.config;
        let jitter = if c.jitter.0 > 0 {
            rand::RngExt::random_range(&mut self.rng, 0..c.jitter.0)
        } else {
            0
        };
        Some(self.now + c.latency.0 + jitter + self.net.delay(ai, bi))
    }

    /// Witness `to` answers `ask` from machine `from` (if its fleetd runs).
    pub(crate) fn witness_answer(
        &mut self,
        from: u32,
        gen: u32,
        to: u32,
        ask: Ask,
        sent: u64,
        sent_g: u64,
    ) {
        if !self.machines[to as usize].agent_runs() {
            return;
        }
        let now = Time(self.local(to));
        let granted = self.witness_decides(to, from, ask, now);
        if let Some(at) = self.relay_arrival(to, from) {
            self.push(
                at,
                Ev::Answer {
                    m: from,
                    gen,
                    from: to,
                    ask,
                    granted,
                    sent,
                    sent_g,
                },
            );
        }
    }

    /// Machine `w`'s witness decides on `ask` from machine `from` at `now` (its clock).
    fn witness_decides(&mut self, w: u32, from: u32, ask: Ask, now: Time) -> bool {
        let timing = self.timing.clone();
        let asker = self.machine_infos[self.machines[from as usize].ident as usize]
            .id
            .clone();
        match ask {
            Ask::Support(lease) => self.machines[w as usize]
                .witness
                .support(&asker, lease, now),
            Ask::Vote { holder, lease } => {
                // What this witness's gossip sees of the holder (the rule is fleet_decide's).
                let seen_alive = self.machines[w as usize]
                    .agent
                    .as_ref()
                    .is_some_and(|a| a.live.contains(holder) && !a.suspects.contains(&holder));
                let holder = self.machine_infos[holder as usize].id.clone();
                self.machines[w as usize]
                    .witness
                    .vote(&timing, &holder, lease, seen_alive, now)
            }
        }
    }

    /// The witness's answer reaches fleetd on machine `m` (if it still runs, and before its timeout).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn witness_granted(
        &mut self,
        m: u32,
        gen: u32,
        from: u32,
        ask: Ask,
        granted: bool,
        sent: u64,
        sent_g: u64,
    ) {
        let mm = &self.machines[m as usize];
        if mm.gen != gen || !mm.agent_runs() {
            return;
        }
        let timeout = match ask {
            Ask::Support(_) => self.timing.support_validity() / 3,
            Ask::Vote { .. } => self.timing.lease_poll_period() * 2,
        };
        if self.now.saturating_sub(sent_g) > micros(timeout) || !granted {
            return;
        }
        let id = self.machine_infos[from as usize].id.clone();
        let a = self.agent_mut(m);
        match ask {
            Ask::Support(lease) => {
                if self.machines[m as usize].lease.id == lease {
                    self.agent_mut(m).granted.insert(id, Time(sent));
                    // fleetd's guard writer wakes on a grant: the deadline it extends is written at once.
                    self.guard_tick(m);
                }
            }
            Ask::Vote { holder, lease } => {
                if a.votes_wanted.contains(&(holder, lease))
                    || a.votes_asked.contains_key(&(holder, lease))
                {
                    a.votes.entry((holder, lease)).or_default().insert(from);
                    self.request_pass(m);
                }
            }
        }
    }

    /// Asks the witnesses that have not voted yet to vote on the holders the last pass wanted to take
    /// units from (this machine's own witness is asked directly).
    fn run_votes(&mut self, m: u32, committee: &Committee, now: u64) {
        let period = micros(self.timing.lease_poll_period());
        let me = self.machines[m as usize].ident;
        let a = self.agent_mut(m);
        let wanted = std::mem::take(&mut a.votes_wanted);
        a.votes.retain(|k, _| wanted.contains(k));
        a.votes_asked.retain(|k, _| wanted.contains(k));
        for (holder, lease) in wanted {
            let key = (holder, lease);
            let a = self.agent_mut(m);
            if a.votes_asked.get(&key).is_some_and(|t| now < t + period) {
                continue;
            }
            a.votes_asked.insert(key, now);
            let have = a.votes.get(&key).cloned().unwrap_or_default();
            let ask: Vec<u32> = committee
                .witnesses
                .iter()
                .filter_map(|w| self.by_id.get(w).copied())
                .filter(|w| *w != holder && !have.contains(w))
                .collect();
            for w in ask {
                if w == me {
                    if self.witness_decides(m, m, Ask::Vote { holder, lease }, Time(now)) {
                        self.agent_mut(m).votes.entry(key).or_default().insert(w);
                    }
                } else {
                    self.ask(m, w, Ask::Vote { holder, lease });
                }
            }
        }
    }

    /// As fleetd does on its periodic pass: machines announced in the registry that its gossip
    /// membership does not know (forgotten after `remove_down_after`, say) are joined through the
    /// addresses in their announcements.
    pub(crate) fn rejoin_announced(&mut self, m: u32) {
        if !self.machines[m as usize].agent_runs() || self.model.is_some() {
            return;
        }
        let me = self.machines[m as usize].ident;
        let Some(a) = self.machines[m as usize].agent.as_ref() else {
            return;
        };
        // Candidates (a cheap test first): announced, not alive here, and not declared down recently
        // (gossip keeps a down member for remove_down_after); the gossip view decides.
        let now = self.local(m);
        let forget = self.sc.config.remove_down_after.0;
        let announced: Vec<u32> = a
            .anns
            .keys()
            .filter(|j| **j != me && !a.live.contains(**j))
            .filter(|j| a.down_since.get(j).is_none_or(|&d| now >= d + forget))
            .copied()
            .collect();
        if announced.is_empty() {
            return;
        }
        let Some(node) = a.node.as_ref() else { return };
        let known: BTreeSet<u32> = node
            .view()
            .machines
            .keys()
            .filter_map(|id| self.by_id.get(id).copied())
            .collect();
        let addrs: Vec<std::net::SocketAddr> = announced
            .into_iter()
            .filter(|j| !known.contains(j))
            .filter_map(|j| self.etcd.announcement(j))
            .map(|ann| crate::sim::addr_of(ann.addr))
            .collect();
        if addrs.is_empty() {
            return;
        }
        let at = self.instant(m);
        if let Some(node) = self.machines[m as usize]
            .agent
            .as_mut()
            .and_then(|a| a.node.as_mut())
        {
            node.join(at, &addrs);
        }
        self.flush_node(m);
    }

    /// Reads which machines machine `m`'s gossip core suspects, if it handled an input since the last
    /// read (the SWIM model has no per-observer suspicion).
    fn refresh_suspects(&mut self, m: u32) {
        let Some(a) = self.machines[m as usize].agent.as_ref() else {
            return;
        };
        if a.suspects_at == Some(a.gossip_inputs) {
            return;
        }
        let inputs = a.gossip_inputs;
        let Some(node) = a.node.as_ref() else {
            return;
        };
        let suspects: BTreeSet<u32> = node
            .view()
            .machines
            .values()
            .filter(|v| v.liveness == Liveness::Suspect)
            .filter_map(|v| self.by_id.get(&v.identity.machine_id).copied())
            .collect();
        if let Some(a) = self.machines[m as usize].agent.as_mut() {
            a.suspects = suspects;
            a.suspects_at = Some(inputs);
        }
    }

    // ------------------------------------------------------------------------------------------
    // The pass.

    pub(crate) fn pass(&mut self, m: u32) {
        if !self.machines[m as usize].agent_runs() {
            return;
        }
        let now = self.local(m);
        let timing = self.timing.clone();
        // Promises about leases that are gone are forgotten (as of this mirror).
        {
            let mm = &mut self.machines[m as usize];
            if let Some(a) = mm.agent.as_ref() {
                if a.mirror_rev != 0 {
                    let infos = &self.machine_infos;
                    let by_id = &self.by_id;
                    let anns = &a.anns;
                    mm.witness.retain(|id, l| {
                        by_id
                            .get(id)
                            .and_then(|j| anns.get(j))
                            .is_some_and(|ann| ann.lease == l)
                    });
                    let _ = infos;
                }
            }
        }
        let guard = self.guard_of(m, now);
        self.write_guard(m, guard.deadline.map(|t| t.0));
        let (mirror_rev, conflict, announced) = {
            let a = self.agent_mut(m);
            (a.mirror_rev, a.conflict, a.announced)
        };
        let fenced = guard.fenced(Time(now));
        let was = std::mem::replace(&mut self.agent_mut(m).fenced, fenced);
        if fenced {
            if !was {
                self.metrics.fencings += 1;
            }
            self.kill_fenced(m, false);
            return;
        }
        if let Some(d) = guard.deadline.filter(|d| d.0 > now) {
            // Look again at the deadline (to stop what it no longer covers).
            let at = self.machines[m as usize].clock.global(d.0);
            self.request_pass_at(m, at);
        }
        let lease = self.machines[m as usize].lease.id;
        if mirror_rev == 0 {
            return;
        }
        // The identity check: announce this machine under the lease (refused if another agent holds
        // the ID); until it is announced under the current lease, touch nothing (claim nothing, start
        // nothing, stop nothing).
        if lease == 0 || announced != Some(lease) {
            let sent = self.agent_mut(m).announce_sent;
            if lease != 0 && !self.in_flight(sent) {
                self.agent_mut(m).announce_sent = Some(self.now);
                self.etcd_send(m, Req::Announce(lease));
            }
            return;
        }
        if conflict || !self.submitted {
            return;
        }
        let committee = self.committee_of(m, now).unwrap_or_default();
        self.run_votes(m, &committee, now);
        // The plan over the machines this agent's gossip shows alive or suspect, and itself.
        let me = self.machines[m as usize].ident;
        let (hash, live) = {
            let a = self.agent_mut(m);
            let mut live: Vec<u32> = a.live.iter().collect();
            live.push(me);
            live.sort_unstable();
            (a.live_hash, live)
        };
        let plan = self.plan_for(&live, hash, mirror_rev);
        let mut here: BTreeMap<u32, bool> = BTreeMap::new();
        if let Some(v) = plan.on.get(&me) {
            here.extend(v.iter().copied());
        }
        let mut candidates: BTreeSet<u32> = here.keys().copied().collect();
        candidates.extend(self.machines[m as usize].units.keys().copied());
        candidates.extend(self.etcd.claims_of(me));
        candidates.extend(self.etcd.handoffs_from(me));
        // Suspicion is read (expensively) only when some claim names another machine.
        let claims: Vec<(u32, Option<crate::etcd::Claim>)> = candidates
            .iter()
            .map(|&u| (u, self.etcd.claim_at(u, mirror_rev)))
            .collect();
        if claims
            .iter()
            .any(|(_, c)| c.is_some_and(|c| c.machine != me || c.handoff.is_some()))
        {
            self.refresh_suspects(m);
        }

        let me_id = self.machine_infos[me as usize].id.clone();
        let mut target = BTreeSet::new();
        let mut wake: Option<u64> = None;
        let mut writes = Vec::new();
        let mut polls = Vec::new();
        let mut votes = Vec::new();
        {
            let a = self.machines[m as usize].agent.as_ref().expect("runs");
            let ctx = Ctx {
                timing: &timing,
                me: &me_id,
                lease,
                guard: &guard,
                committee: &committee,
                now: Time(now),
            };
            for (u, claim) in claims {
                let dclaim = claim.map(|c| DClaim {
                    machine: self.machine_infos[c.machine as usize].id.clone(),
                    lease: c.lease,
                    mod_revision: c.mod_revision,
                    handoff: c.handoff.map(|(h, l)| Handoff {
                        machine: self.machine_infos[h as usize].id.clone(),
                        lease: l,
                    }),
                });
                let placement = match here.get(&u) {
                    Some(true) => Placement::GlobalHere,
                    Some(false) => Placement::Here,
                    None => Placement::NotHere,
                };
                // The peer this unit's verdict is about: the holder, or the previous holder of a
                // handover this machine started.
                let peer_of = claim.and_then(|c| {
                    if c.machine != me {
                        Some((c.machine, c.lease))
                    } else {
                        c.handoff
                    }
                });
                let empty: &[LeasePoll] = &[];
                let peer = match peer_of {
                    Some((j, l)) => Peer {
                        alive: a.live.contains(j),
                        suspect: a.suspects.contains(&j),
                        down: a.down_since.contains_key(&j),
                        votes: a.votes.get(&(j, l)).map_or(0, |v| {
                            v.iter()
                                .filter(|w| {
                                    **w != j
                                        && committee.contains(&self.machine_infos[**w as usize].id)
                                })
                                .count()
                        }),
                        restarting: false,
                        polls: a.polls.get(&l).map_or(empty, |v| v.as_slice()),
                    },
                    None => Peer::default(),
                };
                let sys = self.machines[m as usize].units.get(&u);
                let case = Case {
                    placement,
                    claim: dclaim.as_ref(),
                    loaded: sys.is_some(),
                    running: sys.is_some_and(|s| {
                        s.started
                            || matches!(
                                s.active,
                                fleet_sched::reconcile::ActiveState::Active
                                    | fleet_sched::reconcile::ActiveState::Activating
                                    | fleet_sched::reconcile::ActiveState::Reloading
                            )
                    }),
                    peer,
                    superseded_at: Time(a.superseded_at.get(&u).copied().unwrap_or(a.started_at)),
                };
                let v = fleet_decide::decide(&ctx, &case);
                if self.trace == Some(u) {
                    eprintln!(
                        "{:>10.3}s {} {:?} claim {:?} peer alive {} down {} votes {} polls {:?} -> {:?} (guard {:?})",
                        self.now as f64 / 1e6,
                        me_id,
                        placement,
                        claim,
                        case.peer.alive,
                        case.peer.down,
                        case.peer.votes,
                        case.peer.polls.iter().map(|p| (p.sent.0 / 1000, p.answer)).collect::<Vec<_>>(),
                        v,
                        guard.deadline
                    );
                }
                if v.run {
                    target.insert(u);
                }
                if let Some(w) = v.write {
                    writes.push((u, w));
                }
                if let Some(l) = v.poll {
                    polls.push(l);
                }
                if let Some(h) = v.votes {
                    if let Some(&j) = self.by_id.get(&h.machine) {
                        votes.push((j, h.lease));
                    }
                }
                if let Some(t) = v.wake_at {
                    wake = Some(wake.map_or(t.0, |w: u64| w.min(t.0)));
                }
            }
        }
        self.apply(m, &target);
        for (u, w) in writes {
            self.send_write(m, u, w, lease);
        }
        polls.sort_unstable();
        polls.dedup();
        for l in polls {
            self.poll_lease(m, l, now);
        }
        if !votes.is_empty() {
            let a = self.agent_mut(m);
            a.votes_wanted.extend(votes);
            // The votes are asked at the next pass.
            let at = self.now + self.sc.config.pass_quantum.0;
            self.request_pass_at(m, at);
        }
        if let Some(t) = wake {
            let at = self.machines[m as usize].clock.global(t).max(self.now);
            self.request_pass_at(m, at);
        }
    }

    fn send_write(&mut self, m: u32, unit: u32, w: Write, lease: i64) {
        let sent = self.agent_mut(m).txn_sent.get(&unit).copied();
        if self.in_flight(sent) {
            return;
        }
        let idx = |s: &Sim, id: &fleet_sched::MachineId| s.by_id.get(id).copied().unwrap_or(0);
        let txn = match w {
            Write::Claim => Txn::Claim,
            Write::Supersede { mod_revision, from } => Txn::Supersede {
                seen: mod_revision,
                from: (idx(self, &from.machine), from.lease),
            },
            Write::Rebind { mod_revision } => Txn::Rebind { seen: mod_revision },
            Write::Release { mod_revision } => Txn::Release { seen: mod_revision },
            Write::Ack { mod_revision } => Txn::Ack { seen: mod_revision },
        };
        let now = self.now;
        self.agent_mut(m).txn_sent.insert(unit, now);
        self.etcd_send(m, Req::Txn { unit, lease, txn });
    }

    /// Asks etcd about `lease` unless an answer is pending or the last ask is recent; looks again at
    /// the next poll time.
    fn poll_lease(&mut self, m: u32, lease: i64, now: u64) {
        let period = micros(self.timing.lease_poll_period());
        let a = self.agent_mut(m);
        let last = a.last_poll.get(&lease).copied();
        let pending = a.poll_sent.get(&lease).copied();
        if self.in_flight(pending) {
            return;
        }
        if let Some(last) = last.filter(|&l| now < l + period) {
            let at = self.machines[m as usize].clock.global(last + period);
            self.request_pass_at(m, at);
            return;
        }
        let g = self.now;
        let a = self.agent_mut(m);
        a.last_poll.insert(lease, now);
        a.poll_sent.insert(lease, g);
        self.metrics.lease_polls += 1;
        self.etcd_send(m, Req::TimeToLive(lease));
        let at = self.local_after(m, period);
        self.request_pass_at(m, at);
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
