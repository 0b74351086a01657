//! systemd's vocabulary for units, typed once for all of fleet: load and active states and job results,
//! as systemd reports them over D-Bus (`fleet-systemd` reads them; the agent, reconcile and the simulator
//! decide on them). Every enum keeps unknown values in `Other` (systemd adds states over time) and
//! prints/serializes as systemd's own string.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! systemd_string_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $s:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
            /// A value this crate does not know (kept verbatim).
            Other(String),
        }

        impl $name {
            /// systemd's string for this value.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $s,)*
                    Self::Other(s) => s,
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $($s => Self::$variant,)*
                    other => Self::Other(other.to_string()),
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match Self::from(s.as_str()) {
                    Self::Other(_) => Self::Other(s),
                    known => known,
                }
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                match v {
                    $name::Other(s) => s,
                    known => known.as_str().to_string(),
                }
            }
        }

        /// As systemd's string, without allocating one (gossip encodes three per unit state).
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        /// From systemd's string, borrowed where the format allows: a known word allocates nothing.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a systemd ", stringify!($name), " string"))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        Ok($name::from(v))
                    }
                    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<$name, E> {
                        Ok($name::from(v))
                    }
                }
                deserializer.deserialize_str(Visitor)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::convert::Infallible;
            /// Never fails: an unknown word is kept in `Other`.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(Self::from(s))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

systemd_string_enum! {
    /// A unit's `LoadState`.
    LoadState {
        /// Not loaded yet.
        Stub = "stub",
        /// Unit file parsed.
        Loaded = "loaded",
        /// No unit file (e.g. after `unload_unit`).
        NotFound = "not-found",
        /// The unit file has errors.
        BadSetting = "bad-setting",
        /// Loading failed.
        Error = "error",
        /// Merged into another unit.
        Merged = "merged",
        /// Masked (linked to /dev/null).
        Masked = "masked",
    }
}

systemd_string_enum! {
    /// A unit's `ActiveState`.
    ActiveState {
        /// Running.
        Active = "active",
        /// Reloading its configuration.
        Reloading = "reloading",
        /// Not running.
        Inactive = "inactive",
        /// Stopped after a failure.
        Failed = "failed",
        /// Starting.
        Activating = "activating",
        /// Stopping.
        Deactivating = "deactivating",
        /// Cleaning up resources.
        Maintenance = "maintenance",
        /// Refreshing its extension images.
        Refreshing = "refreshing",
    }
}

systemd_string_enum! {
    /// A unit's `SubState`: its unit type's own finer state. The words fleet shows most are named
    /// (services', sockets', timers', mounts', devices' and targets'); systemd has more per type, kept in
    /// `Other`. Only shown, never decided on.
    SubState {
        /// Not running (services, sockets, timers, mounts...).
        Dead = "dead",
        /// The service's main process runs.
        Running = "running",
        /// A oneshot or forking service whose processes ended with success (`RemainAfterExit=`).
        Exited = "exited",
        /// Failed.
        Failed = "failed",
        /// Waiting to be restarted (`Restart=`).
        AutoRestart = "auto-restart",
        /// `ExecCondition=` running.
        Condition = "condition",
        /// `ExecStartPre=` running.
        StartPre = "start-pre",
        /// `ExecStart=` starting.
        Start = "start",
        /// `ExecStartPost=` running.
        StartPost = "start-post",
        /// Reloading.
        Reload = "reload",
        /// `ExecStop=` running.
        Stop = "stop",
        /// Sent SIGTERM on stop.
        StopSigterm = "stop-sigterm",
        /// Sent SIGKILL on stop.
        StopSigkill = "stop-sigkill",
        /// `ExecStopPost=` running.
        StopPost = "stop-post",
        /// A socket listening.
        Listening = "listening",
        /// A timer waiting for its next elapse.
        Waiting = "waiting",
        /// A timer that elapsed and will not again.
        Elapsed = "elapsed",
        /// A mount mounted.
        Mounted = "mounted",
        /// A device plugged.
        Plugged = "plugged",
        /// A target (or other unit without finer state) active.
        Active = "active",
    }
}

systemd_string_enum! {
    /// The result of a finished job (`JobRemoved`).
    JobResult {
        /// The job succeeded.
        Done = "done",
        /// The job was canceled before it finished.
        Canceled = "canceled",
        /// The job timed out.
        Timeout = "timeout",
        /// The job failed.
        Failed = "failed",
        /// A job this job depended on failed.
        Dependency = "dependency",
        /// The job was skipped (does not apply to the unit's state).
        Skipped = "skipped",
        /// The job type does not apply to the unit (e.g. reloading a unit that cannot reload).
        Invalid = "invalid",
        /// An `Assert*=` of the unit failed.
        Assert = "assert",
        /// The unit type is not supported here.
        Unsupported = "unsupported",
    }
}

impl JobResult {
    /// Whether the job did what was asked.
    pub fn is_success(&self) -> bool {
        matches!(self, JobResult::Done | JobResult::Skipped)
    }
}

impl ActiveState {
    /// States in which a service may have a main process.
    pub fn may_have_main_pid(&self) -> bool {
        matches!(
            self,
            ActiveState::Active
                | ActiveState::Reloading
                | ActiveState::Activating
                | ActiveState::Deactivating
                | ActiveState::Refreshing
        )
    }
}

impl ActiveState {
    /// Parses systemd's spelling; unknown words become [`ActiveState::Other`].
    pub fn parse(s: &str) -> ActiveState {
        ActiveState::from(s)
    }

    /// Whether the unit is running or on its way there (what reconcile counts as started).
    pub fn is_up(&self) -> bool {
        matches!(
            self,
            ActiveState::Active | ActiveState::Reloading | ActiveState::Activating
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_and_print_as_systemd_strings() {
        assert_eq!(LoadState::from("not-found"), LoadState::NotFound);
        assert_eq!(ActiveState::from("active").to_string(), "active");
        assert_eq!(JobResult::from("done"), JobResult::Done);
        let other = ActiveState::from("hibernating".to_string());
        assert_eq!(other, ActiveState::Other("hibernating".into()));
        assert_eq!(String::from(other), "hibernating");
        assert!(JobResult::Done.is_success() && !JobResult::Failed.is_success());
        assert!(ActiveState::parse("activating").is_up() && !ActiveState::Deactivating.is_up());
        assert_eq!(
            "auto-restart".parse::<SubState>(),
            Ok(SubState::AutoRestart)
        );
        assert_eq!(
            "stop-watchdog".parse::<SubState>().unwrap().as_str(),
            "stop-watchdog"
        );
        assert_eq!(
            serde_json::to_string(&LoadState::BadSetting).unwrap(),
            "\"bad-setting\""
        );
    }

    #[test]
    fn states_round_trip_as_their_strings_borrowed_escaped_or_owned() {
        for (text, want) in [
            ("\"running\"", SubState::Running),
            ("\"run\\u006eing\"", SubState::Running),
            ("\"hibernating\"", SubState::Other("hibernating".into())),
        ] {
            let borrowed: SubState = serde_json::from_str(text).unwrap();
            let read: SubState = serde_json::from_reader(text.as_bytes()).unwrap();
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            let owned: SubState = serde_json::from_value(value).unwrap();
            assert_eq!([&borrowed, &read, &owned], [&want; 3], "{text}");
            let back = serde_json::to_string(&want).unwrap();
            assert_eq!(serde_json::from_str::<SubState>(&back).unwrap(), want);
        }
        let err = serde_json::from_str::<LoadState>("3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("a systemd LoadState string"), "{err}");
    }
}
