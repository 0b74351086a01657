//! The state a user asks a unit to be in.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Desired state of a unit, set by the user (`fleetctl load/start/stop/unload`, API `desiredState`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// Stored in the cluster but not placed anywhere.
    #[default]
    Inactive,
    /// Placed on a machine and loaded into its systemd, not started.
    Loaded,
    /// Placed, loaded and started.
    Launched,
}

/// A string that is not a desired state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid desired state {0:?}: expected one of inactive, loaded, launched")]
pub struct StateError(pub String);

impl DesiredState {
    /// All states, in order.
    pub const ALL: [DesiredState; 3] = [
        DesiredState::Inactive,
        DesiredState::Loaded,
        DesiredState::Launched,
    ];

    /// `inactive`, `loaded` or `launched`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DesiredState::Inactive => "inactive",
            DesiredState::Loaded => "loaded",
            DesiredState::Launched => "launched",
        }
    }
}

impl fmt::Display for DesiredState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DesiredState {
    type Err = StateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DesiredState::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| StateError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_strings_and_json() {
        for s in DesiredState::ALL {
            assert_eq!(s.as_str().parse::<DesiredState>(), Ok(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<DesiredState>(&json).unwrap(), s);
        }
    }

    #[test]
    fn unknown_state_error_names_value_and_allowed_ones() {
        let err = "running".parse::<DesiredState>().unwrap_err().to_string();
        assert!(err.contains("\"running\""), "{err}");
        assert!(err.contains("inactive, loaded, launched"), "{err}");
        assert!("Launched".parse::<DesiredState>().is_err());
        assert!(serde_json::from_str::<DesiredState>("\"started\"").is_err());
    }
}
