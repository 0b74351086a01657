//! Planted placement bugs, for mutation tests only (cargo feature `mutations`, off by default: release
//! builds of fleetd do not contain this module or its hooks).
//!
//! fleet-sim's mutation tests turn one on for the current thread and check that the simulator's own
//! `[X-Fleet]` checker (written without this crate's placement code) catches it.

use std::cell::Cell;

/// One planted bug in placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// `schedule` and the `Planner` ignore every `Conflicts=` pattern.
    IgnoreConflicts,
}

impl Mutation {
    /// Every mutation.
    pub const ALL: [Mutation; 1] = [Mutation::IgnoreConflicts];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mutation::IgnoreConflicts => "ignore-conflicts",
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

/// Whether `m` is on for the current thread.
pub(crate) fn on(m: Mutation) -> bool {
    ACTIVE.with(|a| a.get() == Some(m))
}
