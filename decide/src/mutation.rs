//! Planted rule bugs, for mutation tests only (cargo feature `mutations`, off by default: release builds of
//! fleetd do not contain this module or its hooks).
//!
//! A test (the simulator's mutation tests) turns one on for the current thread with [`with`]; every rule
//! then behaves as if written with that bug, so the test can check that its invariants catch it.

use std::cell::Cell;

/// One planted bug in the decision rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Take units over without a majority of the witnesses' votes (`decide::unit`).
    IgnoreVotes,
    /// Treat a holder as stopped once the votes are in, without the lease proof (`decide::holder`).
    IgnoreHolderProof,
    /// A lease confirmation vouches for the whole TTL instead of `fence_after` (`decide::fence`).
    FenceAfterTtl,
    /// Release a claim while a handover it started is unresolved (`decide::unit`).
    IgnoreHandoverOnRelease,
    /// Never take a new lease when the current one may have been voted away (`decide::lease`): a
    /// liveness bug (needless fencing), not a safety one.
    KeepVotedLease,
    /// Plan over machines that said they cannot take units (`decide::plan::in_plan`): a liveness bug
    /// (units planned on a machine without etcd run nowhere), not a safety one.
    PlanMachinesWithoutEtcd,
}

impl Mutation {
    /// Every mutation.
    pub const ALL: [Mutation; 6] = [
        Mutation::IgnoreVotes,
        Mutation::IgnoreHolderProof,
        Mutation::FenceAfterTtl,
        Mutation::IgnoreHandoverOnRelease,
        Mutation::KeepVotedLease,
        Mutation::PlanMachinesWithoutEtcd,
    ];

    /// Its name on the command line (`ignore-votes`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Mutation::IgnoreVotes => "ignore-votes",
            Mutation::IgnoreHolderProof => "ignore-holder-proof",
            Mutation::FenceAfterTtl => "fence-after-ttl",
            Mutation::IgnoreHandoverOnRelease => "ignore-handover-on-release",
            Mutation::KeepVotedLease => "keep-voted-lease",
            Mutation::PlanMachinesWithoutEtcd => "plan-machines-without-etcd",
        }
    }

    /// Parses a name given by [`Mutation::name`].
    pub fn parse(s: &str) -> Option<Mutation> {
        Mutation::ALL.into_iter().find(|m| m.name() == s)
    }
}

thread_local! {
    static ACTIVE: Cell<Option<Mutation>> = const { Cell::new(None) };
}

/// Turns `m` on (or every mutation off with `None`) for the current thread.
pub fn set(m: Option<Mutation>) {
    ACTIVE.with(|a| a.set(m));
}

/// Runs `f` with `m` on for the current thread, then turns it off again.
pub fn with<T>(m: Mutation, f: impl FnOnce() -> T) -> T {
    struct Off;
    impl Drop for Off {
        fn drop(&mut self) {
            set(None);
        }
    }
    set(Some(m));
    let _off = Off;
    f()
}

/// Whether `m` is on for the current thread.
pub(crate) fn on(m: Mutation) -> bool {
    ACTIVE.with(|a| a.get() == Some(m))
}
