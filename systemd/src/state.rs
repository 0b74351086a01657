//! What systemd reports about one unit. The states themselves are fleet's one vocabulary for them,
//! defined in `fleet_sched::systemd_state` and re-exported here.

use serde::{Deserialize, Serialize};

pub use fleet_sched::systemd_state::{ActiveState, JobResult, LoadState, SubState};

/// What systemd reports about one unit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnitState {
    /// `LoadState`.
    pub load_state: LoadState,
    /// `ActiveState`.
    pub active_state: ActiveState,
    /// `SubState` (type specific: `running`, `dead`, `exited`, `listening`, ...).
    pub sub_state: SubState,
    /// `MainPID` of a service, when it has one.
    pub main_pid: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_serialize_as_strings() {
        let st = UnitState {
            load_state: LoadState::Loaded,
            active_state: ActiveState::Other("x".into()),
            sub_state: SubState::Running,
            main_pid: Some(7),
        };
        let json = serde_json::to_string(&st).unwrap();
        assert_eq!(
            json,
            r#"{"load_state":"loaded","active_state":"x","sub_state":"running","main_pid":7}"#
        );
        assert_eq!(serde_json::from_str::<UnitState>(&json).unwrap(), st);
    }
}
