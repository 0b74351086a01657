//! The relay's wire format: one postcard-encoded [`Request`] from the asking agent, one postcard-encoded
//! [`Response`] back (see the parent module). Decoding refuses trailing bytes and never panics; the
//! receiver validates the values (unit name, lines, cursor, metadata keys) before acting on them.
//! Machine IDs are typed ([`MachineId`]) and checked as the request is decoded: a request naming an
//! invalid one does not decode, and the error names it.
//!
//! Needs only serde, postcard, thiserror and fleet-sched, so that the fuzz target
//! `fuzz/fuzz_targets/relay.rs` includes this file as it is, without fleetd's dependency tree.

use fleet_sched::MachineId;
use serde::{Deserialize, Serialize};

/// What one agent asks another about a unit it runs.
///
/// `Id` is how a machine ID is held: [`MachineId`] (the default, what every caller uses), or `String`
/// only inside [`Request::decode`], which reads the IDs as strings and checks them itself (postcard
/// drops the text of a serde error, so an ID checked by serde would fail without its name). Both
/// encode to the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request<Id = MachineId> {
    /// `systemctl status` of `unit` with its last `lines` journal lines.
    Status {
        /// The unit name (validated by the receiver).
        unit: String,
        /// Journal lines to include (at most `MAX_LINES`, `crate::api::relay`).
        lines: u32,
    },
    /// The unit's journal: the last `lines` lines, or at most `lines` lines after `cursor`.
    Journal {
        /// The unit name (validated by the receiver).
        unit: String,
        /// How many lines (at most `MAX_LINES`, `crate::api::relay`).
        lines: u32,
        /// Continue after this cursor (from a previous [`Response::Journal`]).
        cursor: Option<String>,
    },
    /// A restart of `unit` (stop, then start: a new main process), waiting for systemd's job.
    Restart {
        /// The unit name (validated by the receiver; templates are refused).
        unit: String,
    },
    /// Metadata changes of the receiving machine (`PATCH /fleet/v1/machines` sent to another
    /// machine's fleetd): `(key, Some(value))` sets, `(key, None)` removes; all or nothing.
    SetMetadata {
        /// The changes, in order.
        changes: Vec<(String, Option<String>)>,
    },
    /// The sender asks this witness to support its lease while it cannot confirm it (docs/safety.md).
    Support {
        /// The sender's machine ID (checked against the connection's address).
        machine: Id,
        /// Its lease.
        lease: i64,
    },
    /// The sender asks this witness to vote that `machine`'s `lease` may be taken over.
    Vote {
        /// The holder.
        machine: Id,
        /// Its lease.
        lease: i64,
    },
}

impl<Id> Request<Id> {
    /// The unit the request is about (none for metadata changes and the witness's requests).
    pub fn unit(&self) -> Option<&str> {
        match self {
            Request::Status { unit, .. }
            | Request::Journal { unit, .. }
            | Request::Restart { unit } => Some(unit),
            Request::SetMetadata { .. } | Request::Support { .. } | Request::Vote { .. } => None,
        }
    }
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// `systemctl status` output and exit code (0 active, 3 not active, 4 no such unit).
    Status {
        /// The output (stderr when stdout is empty).
        text: String,
        /// systemctl's exit code (-1 when killed by a signal).
        exit_code: i32,
    },
    /// Journal lines (each ending in a newline) and the cursor of the last one.
    Journal {
        /// The lines, without journalctl's `-- cursor:` line.
        text: String,
        /// Where to continue; `None` when there was no entry (keep the previous cursor).
        cursor: Option<String>,
    },
    /// The restart job finished: exit code 0 when the unit was restarted, 1 when systemd's job did
    /// not succeed (`text` says how it ended).
    Restart {
        /// Empty on success; the job's result otherwise.
        text: String,
        /// 0 when restarted.
        exit_code: i32,
    },
    /// The metadata changes were applied.
    MetadataSet,
    /// The witness's answer to [`Request::Support`] or [`Request::Vote`].
    Granted(bool),
    /// The request was refused or the command failed.
    Error(String),
    /// The witness's answer to [`Request::Support`] when it voted that lease away: it will never
    /// support it again, and the machine takes a new lease (`fleet_decide::lease`). Last, so that an
    /// older fleetd, which cannot decode it, takes it for no support.
    VotedAway,
}

/// A message that is not a valid postcard encoding of the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable relay message: {0}")]
pub struct DecodeError(String);

impl Request {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a request always encodes")
    }

    /// Parses the wire form (trailing bytes are refused; a machine ID that is not one is an error
    /// naming it).
    pub fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
        decode_exact::<Request<String>>(bytes)?.checked()
    }
}

impl Request<String> {
    /// The request with its machine IDs validated.
    fn checked(self) -> Result<Request, DecodeError> {
        let id = |s: String| MachineId::parse(&s).map_err(|e| DecodeError(e.to_string()));
        Ok(match self {
            Request::Status { unit, lines } => Request::Status { unit, lines },
            Request::Journal {
                unit,
                lines,
                cursor,
            } => Request::Journal {
                unit,
                lines,
                cursor,
            },
            Request::Restart { unit } => Request::Restart { unit },
            Request::SetMetadata { changes } => Request::SetMetadata { changes },
            Request::Support { machine, lease } => Request::Support {
                machine: id(machine)?,
                lease,
            },
            Request::Vote { machine, lease } => Request::Vote {
                machine: id(machine)?,
                lease,
            },
        })
    }
}

impl Response {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a response always encodes")
    }

    /// Parses the wire form (trailing bytes are refused).
    pub fn decode(bytes: &[u8]) -> Result<Response, DecodeError> {
        decode_exact(bytes)
    }
}

fn decode_exact<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(DecodeError(format!("{} trailing bytes", rest.len()))),
        Err(e) => Err(DecodeError(e.to_string())),
    }
}
