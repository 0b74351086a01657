//! Fleet extensions: a unit's `systemctl status` and journal, answered by the machine that runs it,
//! and a real restart of a unit on the machines that run it.
//!
//! fleet v1 had no API for these: `fleetctl status` and `fleetctl journal` ran `systemctl` and
//! `journalctl` over SSH on the unit's machine. Here the local fleetd finds the unit's machine and
//! asks that machine's agent through a [`UnitRelay`] (fleetd: the gossip request channel, see
//! `crate::agent::relay`), so no SSH access is needed.
//!
//! - `GET /fleet/v1/units/{name}/status?lines=N&machineID=M` → `{"machineID", "text", "exitCode"}`
//!   (`systemctl status` with the last `lines` journal lines, default 10, and its exit code);
//! - `GET /fleet/v1/units/{name}/journal?lines=N&cursor=C&machineID=M` → `{"machineID", "text",
//!   "cursor"}`: the last `lines` journal lines (default 10), or with `cursor` at most `lines` lines
//!   logged after that cursor; `cursor` in the answer is where the next call continues (absent when
//!   the journal has no entry for the unit yet).
//! - `POST /fleet/v1/units/{name}/restart?machineID=M` → `{"restarts": [{"machineID", "error"?}]}`:
//!   systemd's `RestartUnit` (a new main process) on the machine holding the unit, or on every machine
//!   running a global unit (only `M` when given), all at once. The answer is 200 once every machine
//!   was asked, with one entry per machine (sorted by ID) and `error` on those where the restart
//!   failed. Only a unit whose desired state is `launched` is restarted (else 409: restarting would
//!   start a unit the user wants stopped). fleet v1's `restart` only stopped and started the unit's
//!   desired state, which systemd could skip (the main process survived); this one always restarts.
//!
//! The machine: the one holding the unit's claim; for a global unit, the machines the placement
//! function puts it on (the same function every agent runs), of which `machineID` picks one (needed
//! when there are several). Errors: 404 `unit does not exist`; 409 `unit is not running on any
//! machine` (not placed, or not on `machineID`); 409 when a global unit runs on several machines and
//! no `machineID` picks one, its error document listing them (`"machineIDs": [...]`, an extension
//! clients read instead of the message); 400 bad `lines`/`cursor`/`machineID`; 502 (status,
//! journal) when the
//! machine cannot be reached or its agent could not answer; 504 when it did not answer within
//! [`RELAY_TIMEOUT`]; 501 when this fleetd has no relay (no agent).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use fleet_sched::placement::{self, Plan};
use fleet_sched::{DesiredState, MachineId, Requirements, UnitName};

use super::error::ApiError;
use super::schema::{RestartOutput, RestartResult, UnitOutput};
use super::{ApiState, MachineInfo, QueryParams};
use crate::registry::Snapshot;

/// Journal lines when the request does not say (fleetctl's `--lines` default).
pub const DEFAULT_LINES: u32 = 10;
/// Most journal lines one request may ask for.
pub const MAX_LINES: u32 = 10_000;
/// Longest accepted journal cursor.
pub const MAX_CURSOR: usize = 1024;
/// How long the API waits for the unit's machine (below fleetctl's default 3 s request timeout).
pub const RELAY_TIMEOUT: Duration = Duration::from_millis(2500);

/// What to ask the unit's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitQuery {
    /// `systemctl status` with the last `lines` journal lines.
    Status {
        /// The unit.
        unit: UnitName,
        /// Journal lines to include.
        lines: u32,
    },
    /// Journal lines of the unit.
    Journal {
        /// The unit.
        unit: UnitName,
        /// At most this many lines (the last ones, or the first ones after `cursor`).
        lines: u32,
        /// Only entries after this cursor (checked with [`valid_cursor`]).
        cursor: Option<String>,
    },
    /// A restart of the unit by systemd (the answer's `exit_code` is 0 when it succeeded).
    Restart {
        /// The unit.
        unit: UnitName,
    },
}

/// What the unit's machine answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitAnswer {
    /// The command's output.
    pub text: String,
    /// Where the journal continues (journal only; `None` when the unit has no entry yet).
    pub cursor: Option<String>,
    /// `systemctl`'s exit code (status: 0 active, 3 not active, 4 no such unit; restart: 0 done).
    pub exit_code: Option<i32>,
}

/// Why the unit's machine gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The machine could not be reached (not a gossip member, no connection, broken stream).
    #[error("machine {machine} cannot be reached: {reason}")]
    Unreachable {
        /// The machine.
        machine: MachineId,
        /// Why.
        reason: String,
    },
    /// The machine did not answer in time.
    #[error("machine {machine} did not answer in time")]
    Timeout {
        /// The machine.
        machine: MachineId,
    },
    /// The machine's agent answered with an error (or something undecodable).
    #[error("machine {machine} could not answer: {message}")]
    Failed {
        /// The machine.
        machine: MachineId,
        /// Its error.
        message: String,
    },
}

/// The future a [`UnitRelay`] returns.
pub type RelayFuture<'a> =
    Pin<Box<dyn Future<Output = Result<UnitAnswer, RelayError>> + Send + 'a>>;

/// The future of [`UnitRelay::set_metadata`].
pub type MetadataFuture<'a> = Pin<Box<dyn Future<Output = Result<(), RelayError>> + Send + 'a>>;

/// One metadata change of a machine: `(key, Some(value))` sets the key, `(key, None)` removes it.
pub type MetadataChange = (String, Option<String>);

/// Asks a machine's agent about one of its units, or to change its metadata (answering locally when
/// it is this machine).
pub trait UnitRelay: Send + Sync + 'static {
    /// Sends `query` to `machine` and returns its answer.
    fn ask<'a>(&'a self, machine: &'a MachineId, query: UnitQuery) -> RelayFuture<'a>;

    /// Has `machine`'s agent apply `changes` to its machine, all or none; `Ok` once applied there.
    fn set_metadata<'a>(
        &'a self,
        machine: &'a MachineId,
        changes: Vec<MetadataChange>,
    ) -> MetadataFuture<'a>;
}

/// A journal cursor as journald writes them (`s=...;i=...;b=...`): 1 to [`MAX_CURSOR`] characters
/// out of letters, digits and `=;-_`. Anything else is never passed to `journalctl`.
pub fn valid_cursor(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= MAX_CURSOR
        && !c.starts_with('-')
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b';' | b'-' | b'_'))
}

fn lines_param(q: &QueryParams) -> Result<u32, ApiError> {
    match q.single("lines")? {
        None => Ok(DEFAULT_LINES),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= MAX_LINES)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid lines {v:?}: expected a number from 0 to {MAX_LINES}"
                ))
            }),
    }
}

/// `GET /units/{name}/status`.
pub(super) async fn status(
    State(st): State<ApiState>,
    Path(item): Path<String>,
    q: QueryParams,
) -> Result<Json<UnitOutput>, ApiError> {
    let lines = lines_param(&q)?;
    let (unit, machine) = locate(&st, &item, &q)?;
    relay(&st, machine, UnitQuery::Status { unit, lines }).await
}

/// `GET /units/{name}/journal`.
pub(super) async fn journal(
    State(st): State<ApiState>,
    Path(item): Path<String>,
    q: QueryParams,
) -> Result<Json<UnitOutput>, ApiError> {
    let lines = lines_param(&q)?;
    let cursor = match q.single("cursor")? {
        Some(c) if !valid_cursor(c) => {
            return Err(ApiError::bad_request(format!(
                "invalid journal cursor {c:?}"
            )))
        }
        c => c.map(str::to_string),
    };
    let (unit, machine) = locate(&st, &item, &q)?;
    relay(
        &st,
        machine,
        UnitQuery::Journal {
            unit,
            lines,
            cursor,
        },
    )
    .await
}

/// `POST /units/{name}/restart`.
pub(super) async fn restart(
    State(st): State<ApiState>,
    Path(item): Path<String>,
    q: QueryParams,
) -> Result<Json<RestartOutput>, ApiError> {
    let Ok(name) = UnitName::parse(&item) else {
        st.registry.check_available()?;
        return Err(ApiError::not_found("unit does not exist"));
    };
    let wanted = machine_param(&q)?;
    let snap = st.registry.snapshot()?;
    let unit = snap
        .units
        .iter()
        .find(|u| u.name == name)
        .ok_or_else(|| ApiError::not_found("unit does not exist"))?;
    if unit.desired_state != DesiredState::Launched {
        return Err(ApiError::conflict(format!(
            "unit {name} is not launched (desired state {}): start it instead",
            unit.desired_state
        )));
    }
    let placed = placed_on(&snap, &name, &st.cluster.machines())?;
    // `choose` also gives the "not running on any machine" conflict when nothing is placed.
    let targets = match wanted {
        None if !placed.is_empty() => placed,
        wanted => vec![choose(&name, &placed, wanted)?],
    };
    let Some(relay) = st.relay.clone() else {
        return Err(no_relay());
    };
    let mut tasks = tokio::task::JoinSet::new();
    for machine in targets {
        let relay = relay.clone();
        let unit = name.clone();
        tasks.spawn(async move {
            let asked = relay.ask(&machine, UnitQuery::Restart { unit });
            let error = match tokio::time::timeout(RELAY_TIMEOUT, asked).await {
                Err(_) => Some(format!(
                    "machine {machine} did not answer in time (waited {RELAY_TIMEOUT:?})"
                )),
                Ok(Err(e)) => Some(e.to_string()),
                Ok(Ok(a)) => match a.exit_code {
                    Some(0) => None,
                    _ => Some(format!("the restart failed: {}", a.text.trim())),
                },
            };
            RestartResult {
                machine_id: machine,
                error,
            }
        });
    }
    let mut restarts = Vec::new();
    while let Some(r) = tasks.join_next().await {
        restarts.push(r.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("restart task failed: {e}"),
            )
        })?);
    }
    restarts.sort_by(|a, b| a.machine_id.cmp(&b.machine_id));
    Ok(Json(RestartOutput { restarts }))
}

fn no_relay() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "this fleetd has no agent to relay unit status, journal and restart requests",
    )
}

fn machine_param(q: &QueryParams) -> Result<Option<MachineId>, ApiError> {
    q.single("machineID")?
        .map(|m| {
            MachineId::parse(m)
                .map_err(|e| ApiError::bad_request(format!("invalid machineID {m:?}: {e}")))
        })
        .transpose()
}

async fn relay(
    st: &ApiState,
    machine: MachineId,
    query: UnitQuery,
) -> Result<Json<UnitOutput>, ApiError> {
    let Some(relay) = st.relay.clone() else {
        return Err(no_relay());
    };
    let answer = match tokio::time::timeout(RELAY_TIMEOUT, relay.ask(&machine, query)).await {
        Err(_) => Err(RelayError::Timeout {
            machine: machine.clone(),
        }),
        Ok(r) => r,
    };
    match answer {
        Ok(a) => Ok(Json(UnitOutput {
            machine_id: machine,
            text: a.text,
            cursor: a.cursor,
            exit_code: a.exit_code,
        })),
        Err(e @ RelayError::Timeout { .. }) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("{e} (waited {RELAY_TIMEOUT:?})"),
        )),
        Err(e) => Err(ApiError::new(StatusCode::BAD_GATEWAY, e.to_string())),
    }
}

/// The unit and the machine to ask (see the module docs for the rules).
fn locate(st: &ApiState, item: &str, q: &QueryParams) -> Result<(UnitName, MachineId), ApiError> {
    let Ok(name) = UnitName::parse(item) else {
        st.registry.check_available()?;
        return Err(ApiError::not_found("unit does not exist"));
    };
    let wanted = machine_param(q)?;
    let snap = st.registry.snapshot()?;
    let placed = placed_on(&snap, &name, &st.cluster.machines())?;
    choose(&name, &placed, wanted).map(|m| (name, m))
}

/// The machines `name` is on: its claim's machine, or for a global unit the machines the placement
/// function puts it on over `machines` (the live ones). 404 when the unit does not exist.
pub(crate) fn placed_on(
    snap: &Snapshot,
    name: &UnitName,
    machines: &[MachineInfo],
) -> Result<Vec<MachineId>, ApiError> {
    let unit = snap
        .units
        .iter()
        .find(|u| u.name == *name)
        .ok_or_else(|| ApiError::not_found("unit does not exist"))?;
    let global = Requirements::from_unit(&unit.name, &unit.file).is_ok_and(|r| r.global);
    if !global {
        return Ok(snap
            .claims
            .get(name)
            .map(|c| vec![c.machine_id.clone()])
            .unwrap_or_default());
    }
    Ok(plan(snap, machines)
        .decision(name)
        .map(|d| d.machines().to_vec())
        .unwrap_or_default())
}

/// The placement every agent computes (as in the agent's reconcile pass).
fn plan(snap: &Snapshot, machines: &[MachineInfo]) -> Plan {
    let machines: Vec<placement::MachineInfo> = machines
        .iter()
        .map(|m| placement::MachineInfo {
            id: m.id.clone(),
            metadata: m.metadata.clone(),
            refused: snap
                .machines
                .get(&m.id)
                .map(|a| a.record.refused_units())
                .unwrap_or_default(),
        })
        .collect();
    let live = |id: &MachineId| machines.iter().any(|m| m.id == *id);
    let units: Vec<placement::UnitInfo> = snap
        .units
        .iter()
        .filter(|u| !u.name.is_template() && u.desired_state != DesiredState::Inactive)
        .filter_map(|u| {
            let req = Requirements::from_unit(&u.name, &u.file).ok()?;
            let mut info = placement::UnitInfo::new(u.name.clone(), req, u.desired_state);
            if let Some(c) = snap.claims.get(&u.name).filter(|c| live(&c.machine_id)) {
                info = info.claimed_by(c.machine_id.clone());
            }
            Some(info)
        })
        .collect();
    placement::schedule(&machines, &units)
}

/// Picks the machine to ask among those the unit is `placed` on.
pub(crate) fn choose(
    name: &UnitName,
    placed: &[MachineId],
    wanted: Option<MachineId>,
) -> Result<MachineId, ApiError> {
    match (wanted, placed) {
        (_, []) => Err(ApiError::conflict(format!(
            "unit is not running on any machine ({name} is not placed)"
        ))),
        (Some(m), _) if placed.contains(&m) => Ok(m),
        (Some(m), _) => Err(ApiError::conflict(format!(
            "unit is not running on machine {m} ({name} is on {})",
            list(placed)
        ))),
        (None, [one]) => Ok(one.clone()),
        (None, many) => Err(ApiError::choose_machine(
            format!(
                "global unit {name} runs on {} machines ({}); choose one with machineID=",
                many.len(),
                list(many)
            ),
            many.to_vec(),
        )),
    }
}

fn list(ms: &[MachineId]) -> String {
    ms.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> MachineId {
        MachineId::parse(s).unwrap()
    }

    #[test]
    fn cursors_are_journald_shaped_or_refused() {
        assert!(valid_cursor(
            "s=0b1c;i=1a2;b=3c4d;m=5e6f;t=60a1b2c3d4e5f;x=7a8b9c0d"
        ));
        for bad in [
            "",
            "--help",
            "s=1 i=2",
            "s=1\ni=2",
            "a/b",
            "s=ü",
            &"x".repeat(MAX_CURSOR + 1),
        ] {
            assert!(!valid_cursor(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_placed_unit_goes_to_its_machine_and_machine_id_must_match() {
        let n = UnitName::parse("a.service").unwrap();
        assert_eq!(choose(&n, &[id("m2")], None).unwrap(), id("m2"));
        assert_eq!(choose(&n, &[id("m2")], Some(id("m2"))).unwrap(), id("m2"));
        let e = choose(&n, &[id("m2")], Some(id("m1"))).unwrap_err();
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert!(e.message.contains("not running on machine m1"), "{e:?}");
    }

    #[test]
    fn an_unplaced_unit_is_a_conflict() {
        let n = UnitName::parse("a.service").unwrap();
        for wanted in [None, Some(id("m1"))] {
            let e = choose(&n, &[], wanted).unwrap_err();
            assert_eq!(e.status, StatusCode::CONFLICT);
            assert!(e.message.starts_with("unit is not running on any machine"));
        }
    }

    #[test]
    fn a_global_unit_on_several_machines_needs_a_machine_id() {
        let n = UnitName::parse("g.service").unwrap();
        let placed = [id("m1"), id("m2"), id("m3")];
        let e = choose(&n, &placed, None).unwrap_err();
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert!(e.message.contains("3 machines (m1, m2, m3)"), "{e:?}");
        assert_eq!(e.choose_from, placed);
        assert!(choose(&n, &placed[..1], None).is_ok());
        assert!(choose(&n, &[], None).unwrap_err().choose_from.is_empty());
        assert_eq!(choose(&n, &placed, Some(id("m3"))).unwrap(), id("m3"));
    }

    #[test]
    fn the_answer_is_camel_case_json_without_empty_fields() {
        let o = UnitOutput {
            machine_id: id("m1"),
            text: "x\n".into(),
            cursor: None,
            exit_code: Some(3),
        };
        assert_eq!(
            serde_json::to_value(&o).unwrap(),
            serde_json::json!({"machineID": "m1", "text": "x\n", "exitCode": 3})
        );
    }
}
