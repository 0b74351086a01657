//! fleet's agent decision core: whether a unit runs on this machine, and what to write to etcd for it.
//!
//! Given what the agent knows (the registry mirror's claims and announcements, the placement plan, its
//! gossip view, its own lease confirmations, the witness committee's support and votes, what etcd said
//! about other machines' leases) and `now`, it returns decisions with reasons. It does no I/O and reads no clock: fleetd's agent
//! (`src/agent`) carries the decisions out against etcd and systemd, and the simulator (`fleet-sim`)
//! calls the very same functions for every simulated machine.
//!
//! One pass of an agent:
//! 1. [`Committee::choose`]: the witnesses, from the etcd announcements;
//! 2. [`fence::guard`]: the fence deadline, from the lease confirmations and the witnesses' support
//!    (with a lease this machine replaced and still keeps, [`fence::guard_retiring`]: see [`lease`]);
//!    past it, every claimed unit is killed (the deadline is also handed to the fence guard, which kills
//!    them if fleetd itself is dead or hung);
//! 3. [`plan::in_plan`]: which machines of the gossip view the placement plan is made over (not the
//!    suspects, nor machines that said they cannot take units: [`plan::takes_units`], which every agent
//!    publishes in its gossip metadata);
//! 4. [`unit::decide`] for every unit the plan puts here, every claim this machine holds or held, and
//!    every unit loaded here: run or not, the etcd write to attempt, the lease to ask etcd about, the
//!    holder whose lease the witnesses should vote on.
//!
//! Every machine is also a witness when the committee names it: [`Witness`] answers other machines'
//! requests for support and votes.
//!
//! `docs/safety.md` gives the argument; each rule's module says which part of it it carries.

/// Whether the planted rule bug `$m` is on (mutation tests only; always `false` without the `mutations`
/// feature, so release builds carry no trace of it).
macro_rules! mutated {
    ($m:ident) => {{
        #[cfg(feature = "mutations")]
        let on = crate::mutation::on(crate::mutation::Mutation::$m);
        #[cfg(not(feature = "mutations"))]
        let on = false;
        on
    }};
}

pub mod committee;
pub mod fence;
pub mod holder;
pub mod lease;
#[cfg(feature = "mutations")]
pub mod mutation;
pub mod plan;
pub mod time;
pub mod timing;
pub mod unit;
pub mod witness;

pub use committee::{Committee, Seat};
pub use fence::{guard, guard_retiring, Confirmation, Guard, OwnLease, Support, Vouch};
pub use holder::{holder_state, HolderState, LeaseAnswer, LeasePoll};
pub use lease::{may_retire, replace, Replace, Signals};
pub use plan::{in_plan, leave_out_refusing, plan_over, takes_units, Standing};
pub use time::Time;
pub use timing::Timing;
pub use unit::{decide, Case, Claim, Ctx, Handoff, Peer, Placement, Verdict, Why, Write};
pub use witness::{Promise, Witness};
