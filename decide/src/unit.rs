//! What this machine does about one unit: run it, claim it, take it over, wait, release it, hand it over.
//!
//! The rules, for a non-global unit (global units need no claim: every machine the plan names runs
//! them, fenced or not):
//! - **Run** a unit only while holding its claim under the current lease, not fenced, and (to *start* it,
//!   as opposed to keeping it running) with a fresh lease confirmation the mirror has caught up with.
//!   A claim this machine won by superseding another holder runs only once that holder is proven
//!   stopped ([`crate::holder`]), its lease is gone, or it acknowledged the handover.
//! - **Claim** a unit the plan puts here when nobody holds it (etcd creates the claim only if absent).
//! - **Take over** (supersede at the seen revision) a unit the plan puts here from a holder this machine's
//!   gossip view shows down, only once a majority of the witness committee voted that the holder's lease
//!   may be taken over ([`crate::committee`], [`crate::witness`]) and the holder is proven stopped by the
//!   observations so far; the claim then records the holder (a *handover*), and the unit starts after a
//!   fresh proof (see above).
//! - **Wait** for a holder that is alive, restarting (its `restarting` mark), suspected, or not proven
//!   stopped; a live holder whose unit moved releases it itself.
//! - **Release** a claim of this machine for a unit the plan puts elsewhere (or nowhere) once the unit
//!   is no longer loaded here, and never while a handover it started is unresolved (a released claim
//!   may be claimed and started at once by anyone).
//! - **Acknowledge** a handover away from this machine once the unit is no longer loaded here.
//! - **Prepare** a unit this machine took over (or takes over in this pass) while it waits for the proof:
//!   its file is written and linked, nothing started, so that only the start is left once the proof
//!   holds. A prepared unit is not `run`; a verdict that no longer prepares it (the plan moved it, the
//!   claim was taken from this machine, fenced) unloads it.
//! - **Re-bind** a claim of this machine under an older lease (a previous life of this fleetd, or a lease
//!   it replaced because it may have been voted away: [`crate::lease`]).

use fleet_sched::MachineId;

use crate::committee::Committee;
use crate::fence::Guard;
use crate::holder::{holder_state, HolderState, LeasePoll};
use crate::time::Time;
use crate::timing::Timing;

/// A claim as the registry mirror shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The holder.
    pub machine: MachineId,
    /// The holder's lease the claim is bound to.
    pub lease: i64,
    /// The claim key's revision (every write compares it).
    pub mod_revision: i64,
    /// Set when the claim was taken over: the previous holder, until it acknowledges or is proven stopped.
    pub handoff: Option<Handoff>,
}

/// The previous holder of a claim that was taken over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handoff {
    /// The machine.
    pub machine: MachineId,
    /// The lease its claim was bound to.
    pub lease: i64,
}

/// Where the plan puts the unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// A non-global unit placed on this machine.
    Here,
    /// A global unit that runs on this machine.
    GlobalHere,
    /// On another machine, nowhere (unplaceable, inactive, deleted), or a global unit not for here.
    NotHere,
}

/// How this machine sees another machine (a claim's holder or a handover's previous holder).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer<'a> {
    /// Gossip shows it alive (possibly suspected).
    pub alive: bool,
    /// Gossip suspects it (alive, failed a probe).
    pub suspect: bool,
    /// This machine's gossip view declares it down (what starts a takeover; the proof is elsewhere).
    pub down: bool,
    /// Witnesses (other than it) that voted that the lease in question may be taken over.
    pub votes: usize,
    /// Its fleetd is restarting (its `restarting` mark is in etcd): its claims stand.
    pub restarting: bool,
    /// Recent `LeaseTimeToLive` answers about the lease in question, oldest first.
    pub polls: &'a [LeasePoll],
}

/// This machine's situation for one pass.
#[derive(Clone, Debug)]
pub struct Ctx<'a> {
    /// The timings.
    pub timing: &'a Timing,
    /// This machine.
    pub me: &'a MachineId,
    /// Its current lease (0: none).
    pub lease: i64,
    /// Its fence deadline ([`crate::fence::guard`]).
    pub guard: &'a Guard,
    /// The witness committee.
    pub committee: &'a Committee,
    /// Now, on this machine's clock.
    pub now: Time,
}

/// One unit as this pass sees it.
#[derive(Clone, Debug)]
pub struct Case<'a> {
    /// Where the plan puts it.
    pub placement: Placement,
    /// Its claim, if any.
    pub claim: Option<&'a Claim>,
    /// Its file is in this machine's units directory (loaded, running or not).
    pub loaded: bool,
    /// It is running here (active, activating or reloading, or started by this agent).
    pub running: bool,
    /// How this machine sees the claim's holder (for a claim of another machine) or the handover's
    /// previous holder (for a claim of this machine with a handover).
    pub peer: Peer<'a>,
    /// When this machine superseded the claim (its own record, or when this fleetd started): only
    /// observations after it prove a handover.
    pub superseded_at: Time,
}

/// A write to etcd (each is one transaction comparing `mod_revision`, or absence for a claim).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Create the claim if absent, bound to this machine's lease.
    Claim,
    /// Take the claim over from another holder (records the handover).
    Supersede {
        /// The claim's revision as seen.
        mod_revision: i64,
        /// The holder taken over from.
        from: Handoff,
    },
    /// Bind this machine's claim, made under an older lease, to the current lease.
    Rebind {
        /// The claim's revision as seen.
        mod_revision: i64,
    },
    /// Delete this machine's claim.
    Release {
        /// The claim's revision as seen.
        mod_revision: i64,
    },
    /// Clear the handover of a claim taken from this machine: it no longer runs the unit here.
    Ack {
        /// The claim's revision as seen.
        mod_revision: i64,
    },
}

/// Why a unit runs, or does not, here (logged, and shown for units that wait).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// A global unit for this machine.
    Global,
    /// This machine holds the claim.
    Held,
    /// Not placed here.
    NotHere,
    /// Fenced: neither the lease nor the view vouches for this machine.
    Fenced,
    /// The lease is not freshly confirmed: nothing new starts.
    Unconfirmed,
    /// The holder is alive (or restarting): it releases a unit that moved.
    HolderAlive,
    /// The holder is suspected, not yet down.
    HolderSuspect,
    /// The holder is down, but a majority of the witnesses has not voted yet.
    NoVotes,
    /// The holder is down but not yet proven stopped.
    HolderNotFenced,
    /// The holder's lease is gone; its claim is about to vanish.
    HolderGone,
    /// This machine took the unit over and waits for proof that the previous holder stopped it.
    HandoffPending,
    /// The claim was taken from this machine.
    TakenOver,
    /// Gossip has no opinion about the holder yet.
    HolderUnknown,
}

/// The outcome for one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Keep it (or get it) running here. A claim to write (`write`) must succeed first.
    pub run: bool,
    /// Load it here without starting it (its file written and linked, no start job), ahead of a start
    /// that waits for the proof that the previous holder stopped it. Never together with `run`; a
    /// claim to write (`write`) must succeed first.
    pub prepare: bool,
    /// The etcd write to attempt.
    pub write: Option<Write>,
    /// A lease to ask etcd about (`LeaseTimeToLive`).
    pub poll: Option<i64>,
    /// A holder whose lease the witnesses should vote on (those that have not voted yet).
    pub votes: Option<Handoff>,
    /// When to look again at the latest (a proof that will hold then).
    pub wake_at: Option<Time>,
    /// Why.
    pub why: Why,
}

impl Verdict {
    fn new(run: bool, why: Why) -> Verdict {
        Verdict {
            run,
            prepare: false,
            write: None,
            poll: None,
            votes: None,
            wake_at: None,
            why,
        }
    }

    /// Whether a unit that does not run here stays loaded (its file linked, nothing started): while
    /// the lease is merely not freshly confirmed nothing new may start, but nothing says the unit
    /// belongs elsewhere either, and unloading it only to load it again once the lease is confirmed
    /// costs a batch each way (it made 1,000 loaded units go out and back twice while fleetd was busy).
    pub fn keeps_loaded(&self) -> bool {
        !self.run && self.why == Why::Unconfirmed
    }

    fn prepare(mut self) -> Verdict {
        self.prepare = !self.run;
        self
    }

    fn write(mut self, w: Write) -> Verdict {
        self.write = Some(w);
        self
    }

    fn poll(mut self, lease: i64) -> Verdict {
        self.poll = Some(lease);
        self
    }

    fn ask_votes(mut self, holder: &Handoff) -> Verdict {
        self.votes = Some(holder.clone());
        self
    }

    fn wake(mut self, at: Time) -> Verdict {
        self.wake_at = Some(at);
        self
    }
}

/// Decides what this machine does about one unit.
pub fn decide(ctx: &Ctx<'_>, case: &Case<'_>) -> Verdict {
    let fenced = ctx.guard.fenced(ctx.now);
    if case.placement == Placement::GlobalHere {
        return Verdict::new(true, Why::Global);
    }
    let Some(claim) = case.claim else {
        if case.placement == Placement::NotHere {
            return Verdict::new(false, Why::NotHere);
        }
        if !ctx.guard.may_start(ctx.now) || ctx.lease == 0 {
            return Verdict::new(
                false,
                if fenced {
                    Why::Fenced
                } else {
                    Why::Unconfirmed
                },
            );
        }
        return Verdict::new(false, Why::Held).write(Write::Claim);
    };
    // A claim taken from this machine: stop, then acknowledge.
    if claim.machine != *ctx.me && claim.handoff.as_ref().is_some_and(|h| h.machine == *ctx.me) {
        let v = Verdict::new(false, Why::TakenOver);
        return if case.loaded {
            v
        } else {
            v.write(Write::Ack {
                mod_revision: claim.mod_revision,
            })
        };
    }
    if claim.machine == *ctx.me {
        return decide_own(ctx, case, claim, fenced);
    }
    if case.placement == Placement::NotHere {
        return Verdict::new(false, Why::NotHere);
    }
    decide_takeover(ctx, case, claim)
}

/// A claim of this machine.
fn decide_own(ctx: &Ctx<'_>, case: &Case<'_>, claim: &Claim, fenced: bool) -> Verdict {
    let pending = claim.handoff.as_ref().map(|h| {
        (
            h,
            holder_state(
                ctx.timing,
                case.peer.votes >= ctx.committee.majority() || mutated!(IgnoreVotes),
                case.peer.polls,
                case.superseded_at,
            ),
        )
    });
    let proven = |s: &HolderState| match s {
        HolderState::Gone => true,
        HolderState::FencedBy(t) => *t <= ctx.now,
        HolderState::Unknown => false,
    };
    if case.placement == Placement::NotHere {
        let v = Verdict::new(false, Why::NotHere);
        return match &pending {
            // A released claim may be claimed and started at once by anyone: not while the previous
            // holder may still run the unit.
            Some((h, s)) if !proven(s) && !mutated!(IgnoreHandoverOnRelease) => {
                pending_wait(v, h, s)
            }
            _ if case.loaded => v,
            _ => v.write(Write::Release {
                mod_revision: claim.mod_revision,
            }),
        };
    }
    if claim.lease != ctx.lease {
        // Ours from a previous life, an expired lease or a lease this machine replaced (crate::lease):
        // bind it to the current one. Keep a unit that runs here meanwhile; start nothing until the
        // claim is bound again.
        let v = Verdict::new(case.running && !fenced, Why::Held);
        return if ctx.lease != 0 && ctx.guard.may_start(ctx.now) {
            v.write(Write::Rebind {
                mod_revision: claim.mod_revision,
            })
        } else {
            v
        };
    }
    if fenced {
        return Verdict::new(false, Why::Fenced);
    }
    if let Some((h, s)) = &pending {
        if !proven(s) {
            // A unit already running here was started after a proof (this machine starts a unit
            // taken over only then, in this life or an earlier one: a restarted fleetd has lost the
            // observations, not the fact, and an agent drops the votes once the proof held); the
            // previous holder, once stopped, no longer holds it. Keep it; start nothing new before a
            // fresh proof.
            return pending_wait(
                Verdict::new(case.running, Why::HandoffPending).prepare(),
                h,
                s,
            );
        }
    }
    if case.running || ctx.guard.may_start(ctx.now) {
        Verdict::new(true, Why::Held)
    } else {
        Verdict::new(false, Why::Unconfirmed)
    }
}

fn pending_wait(v: Verdict, h: &Handoff, s: &HolderState) -> Verdict {
    let v = v.poll(h.lease).ask_votes(h);
    match s {
        HolderState::FencedBy(t) => v.wake(*t),
        _ => v,
    }
}

/// A unit the plan puts here, claimed by another machine.
fn decide_takeover(ctx: &Ctx<'_>, case: &Case<'_>, claim: &Claim) -> Verdict {
    let peer = &case.peer;
    let wait = |why| Verdict::new(false, why);
    if peer.restarting || (peer.alive && !peer.suspect) {
        return wait(Why::HolderAlive);
    }
    if peer.alive {
        // Suspected: start asking etcd about its lease, so that a down verdict finds the proof ready.
        return wait(Why::HolderSuspect).poll(claim.lease);
    }
    if !peer.down {
        return wait(Why::HolderUnknown);
    }
    if claim.handoff.is_some() {
        // The holder was itself taking the unit over from a third machine, not yet proven stopped:
        // its claim vanishes with its lease, by when the third machine has stopped too.
        return wait(Why::HandoffPending);
    }
    if !ctx.guard.may_start(ctx.now) || ctx.lease == 0 {
        return wait(Why::Unconfirmed);
    }
    let holder = Handoff {
        machine: claim.machine.clone(),
        lease: claim.lease,
    };
    // The lease bound covers renewals up to the latest answer only: a takeover acts on a recent one
    // (a holder that kept renewing since an old answer is not taken from).
    let fresh = peer
        .polls
        .last()
        .is_some_and(|p| ctx.now.since(p.received) <= ctx.timing.lease_poll_period() * 2);
    if peer.votes < ctx.committee.majority() && !mutated!(IgnoreVotes) {
        // Votes are asked only once etcd shows the lease lapsing: a witness that votes never supports
        // that lease again, so votes asked on a down verdict alone (stale views after a partition, a
        // false suspicion) would leave a healthy holder fenced at its next etcd outage (fleet-sim).
        let v = wait(Why::NoVotes).poll(claim.lease);
        let lapsing = fresh && peer.polls.last().is_some_and(|p| p.lapsing());
        return if lapsing { v.ask_votes(&holder) } else { v };
    }
    match holder_state(ctx.timing, true, peer.polls, Time::ZERO) {
        HolderState::Gone => wait(Why::HolderGone),
        HolderState::FencedBy(t) if t <= ctx.now && !fresh => {
            wait(Why::HolderNotFenced).poll(claim.lease)
        }
        // The votes stay wanted: the proof after the supersede rests on them too.
        HolderState::FencedBy(t) if t <= ctx.now => wait(Why::HandoffPending)
            .ask_votes(&holder)
            .write(Write::Supersede {
                mod_revision: claim.mod_revision,
                from: holder,
            })
            .prepare(),
        HolderState::FencedBy(t) => wait(Why::HolderNotFenced).poll(claim.lease).wake(t),
        HolderState::Unknown => wait(Why::HolderNotFenced).poll(claim.lease),
    }
}
