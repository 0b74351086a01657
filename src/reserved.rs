//! Unit names fleet never runs: its own (`fleet.service`, `fleet.socket`, the fence guard, and the unit
//! fleetd itself runs as). The API refuses them (400) and every agent refuses them on its machine.

use std::sync::OnceLock;

/// Names reserved on every machine.
pub const RESERVED_UNITS: &[&str] = &["fleet.service", "fleet.socket", "fleet-guard.service"];

static OWN_UNIT: OnceLock<String> = OnceLock::new();

/// Records the unit this fleetd runs as (learnt from systemd; only a `.service` counts: a fleetd started
/// by hand runs in a session scope, which is not fleetd's own).
pub fn set_own_unit(name: &str) {
    if name.ends_with(".service") {
        let _ = OWN_UNIT.set(name.to_string());
    }
}

/// Why `name` is reserved, if it is.
pub fn reserved(name: &str) -> Option<String> {
    if RESERVED_UNITS.contains(&name) {
        return Some(format!("{name} is reserved: it is fleet's own unit"));
    }
    if OWN_UNIT.get().is_some_and(|own| own == name) {
        return Some(format!("{name} is reserved: fleetd runs as this unit"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleets_own_units_are_reserved() {
        for n in RESERVED_UNITS {
            assert!(reserved(n).is_some(), "{n}");
        }
        assert!(reserved("hello.service").is_none());
        set_own_unit("session-3.scope");
        assert!(reserved("session-3.scope").is_none());
    }
}
