//! Errors of the systemd driver.

use std::io;
use std::path::PathBuf;

/// What went wrong talking to systemd. None of these leave the driver in a bad state; after
/// [`Error::Disconnected`] the connection is gone and the caller must reconnect
/// ([`crate::Systemd::reconnect`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// systemd knows no such unit (no unit file, not loaded).
    #[error("no such unit {0}")]
    NoSuchUnit(String),
    /// The name is not a valid systemd unit name; nothing was sent to systemd.
    #[error("invalid unit name {0:?}")]
    InvalidUnitName(String),
    /// systemd (or the bus) refused a call.
    #[error("{method}({unit}): {name}: {message}")]
    Refused {
        /// The Manager method called.
        method: &'static str,
        /// The unit (or file) it was called for.
        unit: String,
        /// The D-Bus error name, e.g. `org.freedesktop.systemd1.UnitMasked`.
        name: String,
        /// systemd's message.
        message: String,
    },
    /// The bus connection is gone (or could not be made): reconnect.
    #[error("bus connection lost during {context}: {source}")]
    Disconnected {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: Box<zbus::Error>,
    },
    /// No reply within the method timeout ([`crate::Config::call_timeout`]): systemd or the bus
    /// hangs (e.g. a frozen machine). The connection may still be usable.
    #[error("no reply to {context} in time")]
    Timeout {
        /// What was being done.
        context: String,
    },
    /// Any other D-Bus failure (bad reply, protocol error).
    #[error("{context}: {source}")]
    Bus {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: Box<zbus::Error>,
    },
    /// The unit's file in the units directory (or its runtime link) was not written by fleet: fleet
    /// leaves it alone (see [`crate::OWNER_MARKER`]).
    #[error("{0} is not fleet's: its file in the units directory was not written by fleetd")]
    NotFleets(String),
    /// Writing or removing a unit file failed; systemd was not told.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl Error {
    /// Whether the bus connection is gone, so the caller should reconnect.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Error::Disconnected { .. })
    }

    /// Whether systemd refused a job because of the load state it holds for the unit (not found, or an
    /// error from an earlier load: "failed to load properly, please adjust/correct and reload service
    /// manager"), which a daemon reload re-reads from the unit's file.
    pub fn is_stale_load(&self) -> bool {
        match self {
            Error::NoSuchUnit(_) => true,
            Error::Refused { name, message, .. } => {
                name == "org.freedesktop.systemd1.NoSuchUnit"
                    || message.contains("failed to load properly")
            }
            _ => false,
        }
    }

    /// Maps a zbus error of `method` called for `unit`.
    pub(crate) fn from_call(method: &'static str, unit: &str, e: zbus::Error) -> Error {
        let (name, message) = match &e {
            zbus::Error::MethodError(name, message, _) => {
                (name.to_string(), message.clone().unwrap_or_default())
            }
            zbus::Error::FDO(fdo) => match fdo.as_ref() {
                zbus::fdo::Error::ZBus(_) => return Error::from_zbus(method, unit, e),
                other => {
                    let full = other.to_string();
                    let name = zbus::DBusError::name(other).to_string();
                    let message = zbus::DBusError::description(other)
                        .map(str::to_string)
                        .unwrap_or(full);
                    (name, message)
                }
            },
            _ => return Error::from_zbus(method, unit, e),
        };
        match name.as_str() {
            "org.freedesktop.systemd1.NoSuchUnit" => Error::NoSuchUnit(unit.to_string()),
            "org.freedesktop.DBus.Error.NoReply"
            | "org.freedesktop.DBus.Error.Disconnected"
            | "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner" => Error::Disconnected {
                context: format!("{method}({unit})"),
                source: Box::new(e),
            },
            _ => Error::Refused {
                method,
                unit: unit.to_string(),
                name,
                message,
            },
        }
    }

    fn from_zbus(method: &'static str, unit: &str, e: zbus::Error) -> Error {
        let context = format!("{method}({unit})");
        if is_timeout(&e) {
            Error::Timeout { context }
        } else if is_connection_error(&e) {
            Error::Disconnected {
                context,
                source: Box::new(e),
            }
        } else {
            Error::Bus {
                context,
                source: Box::new(e),
            }
        }
    }

    pub(crate) fn connect(context: String, e: zbus::Error) -> Error {
        Error::Disconnected {
            context,
            source: Box::new(e),
        }
    }
}

fn is_timeout(e: &zbus::Error) -> bool {
    match e {
        zbus::Error::InputOutput(io) => io.kind() == std::io::ErrorKind::TimedOut,
        zbus::Error::FDO(fdo) => {
            matches!(fdo.as_ref(), zbus::fdo::Error::ZBus(inner) if is_timeout(inner))
        }
        _ => false,
    }
}

/// Whether a zbus error means the connection is unusable.
pub(crate) fn is_connection_error(e: &zbus::Error) -> bool {
    match e {
        zbus::Error::InputOutput(_) | zbus::Error::Connection(..) | zbus::Error::Handshake(_) => {
            true
        }
        zbus::Error::FDO(fdo) => {
            matches!(fdo.as_ref(), zbus::fdo::Error::ZBus(inner) if is_connection_error(inner))
        }
        _ => false,
    }
}

/// Result of driver calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(name: &str, message: &str) -> Error {
        Error::Refused {
            method: "StartUnit",
            unit: "a.service".into(),
            name: name.into(),
            message: message.into(),
        }
    }

    #[test]
    fn a_stale_load_state_is_told_apart_from_other_refusals() {
        assert!(Error::NoSuchUnit("a.service".into()).is_stale_load());
        assert!(refused(
            "System.Error.EBUSY",
            "Unit a.service failed to load properly, please adjust/correct and reload service manager: Device or resource busy"
        )
        .is_stale_load());
        assert!(!refused(
            "org.freedesktop.systemd1.UnitMasked",
            "Unit a.service is masked."
        )
        .is_stale_load());
        assert!(!refused(
            "org.freedesktop.systemd1.BadUnitSetting",
            "Unit a.service has a bad unit file setting."
        )
        .is_stale_load());
        assert!(!Error::NotFleets("a.service".into()).is_stale_load());
    }
}
