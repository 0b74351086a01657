//! `/machines` (list, metadata PATCH), `/state` and `/state/{name}`.

use axum::body::Body;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;

use fleet_sched::{MachineId, UnitName};

use super::cluster::{MachineInfo, MetadataError, MetadataOp, UnitStateInfo};
use super::error::ApiError;
use super::pagination::PageToken;
use super::relay::{MetadataChange, RelayError, UnitRelay, RELAY_TIMEOUT};
use super::schema;
use super::units::filter_states;
use super::{read_body, ApiState, QueryParams};
use crate::config::valid_metadata_key;

/// `GET /machines`.
pub(super) async fn list(
    State(st): State<ApiState>,
    q: QueryParams,
) -> Result<Json<schema::MachinePage>, ApiError> {
    let token = PageToken::from_query(&q.all("nextPageToken"), st.token_limit())
        .map_err(ApiError::bad_request)?;
    let snap = st.registry.snapshot().ok();
    let machines: Vec<schema::Machine> = st
        .cluster
        .machines()
        .into_iter()
        .map(|m| schema::Machine {
            refused_units: snap
                .as_ref()
                .and_then(|s| s.machines.get(&m.id))
                .map(|a| a.record.refused.clone())
                .unwrap_or_default(),
            id: m.id,
            primary_ip: m.public_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            metadata: m.metadata,
        })
        .collect();
    let (page, next) = token.page_of(&machines);
    Ok(Json(schema::MachinePage {
        machines: page.to_vec(),
        next_page_token: next.map(|t| t.encode()),
    }))
}

/// `PATCH /machines`: every op is validated, and every machine it names must be in the cluster (else
/// 404), before any is applied. Each machine applies its own ops (this one directly, others through
/// the agents' request channel, all at once); the answer is 204 once every machine has applied them
/// and this fleetd's view of the cluster shows them (or [`RELAY_TIMEOUT`] passed: gossip carries
/// them the rest of the way). A machine that cannot be reached gets nothing applied and makes the
/// answer a 502 (504 when it did not answer in time) naming it; the other machines keep their changes.
pub(super) async fn patch(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    // fleet did not require a Content-Type here; a non-JSON one is still refused.
    if headers.contains_key(header::CONTENT_TYPE) {
        super::check_json_content_type(&headers)?;
    }
    let bytes = read_body(body, &headers, st.max_body()).await?;
    // Each operation must be a JSON object (serde would also read a struct from an array).
    let values: Vec<serde_json::Value> = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("unable to decode body: {e}")))?;
    if let Some(i) = values.iter().position(|v| !v.is_object()) {
        return Err(ApiError::bad_request(format!(
            "unable to decode body: operation {i} is not a JSON object"
        )));
    }
    let raw: Vec<schema::MachineMetadataOp> = values
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::bad_request(format!("unable to decode body: {e}")))?;
    let mut ops = Vec::with_capacity(raw.len());
    for (i, op) in raw.iter().enumerate() {
        let (machine, key) = parse_path(&op.path).map_err(|why| {
            ApiError::bad_request(format!(
                "operation {i}: machine metadata path {:?} invalid: {why}",
                op.path
            ))
        })?;
        let parsed = match op.op.as_str() {
            "add" | "replace" => {
                if op.value.value.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "operation {i}: invalid value: add and replace require a value"
                    )));
                }
                MetadataOp::Set {
                    machine,
                    key,
                    value: op.value.value.clone(),
                }
            }
            "remove" => MetadataOp::Remove { machine, key },
            other => {
                return Err(ApiError::bad_request(format!(
                    "operation {i}: invalid op {other:?}: expect add, remove, or replace"
                )))
            }
        };
        ops.push(parsed);
    }
    match st.relay.clone() {
        None => st.cluster.apply_metadata(&ops).map_err(|e| match e {
            MetadataError::UnknownMachine(_) => ApiError::not_found(e.to_string()),
        })?,
        Some(relay) => relay_metadata(&st, relay, &ops).await?,
    }
    tracing::info!(ops = ops.len(), "machine metadata changed");
    Ok(StatusCode::NO_CONTENT)
}

/// Sends each machine its ops (see [`patch`]).
async fn relay_metadata(
    st: &ApiState,
    relay: Arc<dyn UnitRelay>,
    ops: &[MetadataOp],
) -> Result<(), ApiError> {
    let known: BTreeSet<MachineId> = st.cluster.machines().into_iter().map(|m| m.id).collect();
    let mut per_machine: BTreeMap<MachineId, Vec<MetadataChange>> = BTreeMap::new();
    for op in ops {
        let (machine, change) = match op {
            MetadataOp::Set {
                machine,
                key,
                value,
            } => (machine, (key.clone(), Some(value.clone()))),
            MetadataOp::Remove { machine, key } => (machine, (key.clone(), None)),
        };
        if !known.contains(machine) {
            return Err(ApiError::not_found(
                MetadataError::UnknownMachine(machine.clone()).to_string(),
            ));
        }
        per_machine.entry(machine.clone()).or_default().push(change);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (machine, changes) in per_machine.clone() {
        let relay = relay.clone();
        tasks.spawn(async move {
            let sent = relay.set_metadata(&machine, changes);
            let r = match tokio::time::timeout(RELAY_TIMEOUT, sent).await {
                Err(_) => Err(RelayError::Timeout {
                    machine: machine.clone(),
                }),
                Ok(r) => r,
            };
            (machine, r)
        });
    }
    let mut failed: Vec<RelayError> = Vec::new();
    let mut applied: BTreeMap<MachineId, Vec<MetadataChange>> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (machine, r) = done.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("metadata task failed: {e}"),
            )
        })?;
        match r {
            Ok(()) => {
                let changes = per_machine.remove(&machine).unwrap_or_default();
                applied.insert(machine, changes);
            }
            Err(e) => failed.push(e),
        }
    }
    if !failed.is_empty() {
        failed.sort_by_key(|e| e.to_string());
        let status = if failed
            .iter()
            .all(|e| matches!(e, RelayError::Timeout { .. }))
        {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        };
        let done: Vec<String> = applied.keys().map(|m| m.to_string()).collect();
        let reasons: Vec<String> = failed.iter().map(|e| e.to_string()).collect();
        return Err(ApiError::new(
            status,
            format!(
                "metadata not changed: {}{}",
                reasons.join("; "),
                if done.is_empty() {
                    String::new()
                } else {
                    format!(" (applied on {})", done.join(", "))
                }
            ),
        ));
    }
    // Read-your-writes for the usual client: wait until this fleetd's view shows the changes.
    let deadline = tokio::time::Instant::now() + RELAY_TIMEOUT;
    while !shows(&st.cluster.machines(), &applied) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Whether `machines` show every change of `applied` (the last change of a key wins).
fn shows(machines: &[MachineInfo], applied: &BTreeMap<MachineId, Vec<MetadataChange>>) -> bool {
    applied.iter().all(|(id, changes)| {
        let Some(m) = machines.iter().find(|m| m.id == *id) else {
            return false;
        };
        let mut last: BTreeMap<&str, Option<&str>> = BTreeMap::new();
        for (k, v) in changes {
            last.insert(k, v.as_deref());
        }
        last.iter()
            .all(|(k, v)| m.metadata.get(*k).map(String::as_str) == *v)
    })
}

/// `/<machineID>/metadata/<key>` -> (machine, key); the error says what is wrong.
fn parse_path(path: &str) -> Result<(MachineId, String), String> {
    let shape = || "expected /<machineID>/metadata/<key> with key [A-Za-z0-9_.-]+".to_string();
    let rest = path.strip_prefix('/').ok_or_else(shape)?;
    let (machine, rest) = rest.split_once('/').ok_or_else(shape)?;
    let key = rest.strip_prefix("metadata/").ok_or_else(shape)?;
    if !valid_metadata_key(key) {
        return Err(shape());
    }
    let machine = MachineId::parse(machine).map_err(|e| e.to_string())?;
    Ok((machine, key.to_string()))
}

/// `GET /state?machineID=&unitName=`.
pub(super) async fn states(
    State(st): State<ApiState>,
    q: QueryParams,
) -> Result<Json<schema::UnitStatePage>, ApiError> {
    let token = PageToken::from_query(&q.all("nextPageToken"), st.token_limit())
        .map_err(ApiError::bad_request)?;
    let machine = q.single("machineID")?;
    let unit = q.single("unitName")?;
    let states: Vec<schema::UnitState> = filter_states(st.cluster.unit_states(), machine, unit)
        .into_iter()
        .map(state_to_schema)
        .collect();
    let (page, next) = token.page_of(&states);
    Ok(Json(schema::UnitStatePage {
        states: page.to_vec(),
        next_page_token: next.map(|t| t.encode()),
    }))
}

/// `GET /state/{name}`: the state reported by the machine holding the unit's claim, else (a global
/// unit, or a unit between machines) by the lowest machine ID reporting it; 404 `unit state does not
/// exist` when no machine reports it. The original fleetctl polls this after `start` until systemd
/// says `loaded`/`active`.
pub(super) async fn state(
    State(st): State<ApiState>,
    Path(item): Path<String>,
) -> Result<Json<schema::UnitState>, ApiError> {
    let missing = || ApiError::not_found("unit state does not exist");
    let Ok(name) = UnitName::parse(&item) else {
        st.registry.check_available()?;
        return Err(missing());
    };
    let claimed = st.registry.claim(&name)?.map(|c| c.machine_id);
    state_of(st.cluster.unit_states(), &name, claimed.as_ref())
        .map(|s| Json(state_to_schema(s)))
        .ok_or_else(missing)
}

/// The state of `name` among `states`: the one reported by `claimed` if it reports it, else the one
/// of the lowest machine ID.
fn state_of(
    states: Vec<UnitStateInfo>,
    name: &UnitName,
    claimed: Option<&MachineId>,
) -> Option<UnitStateInfo> {
    states
        .into_iter()
        .filter(|s| s.name == *name)
        .min_by(|a, b| {
            let key = |s: &UnitStateInfo| (Some(&s.machine_id) != claimed, s.machine_id.clone());
            key(a).cmp(&key(b))
        })
}

fn state_to_schema(s: UnitStateInfo) -> schema::UnitState {
    schema::UnitState {
        name: s.name.to_string(),
        hash: s.hash.to_string(),
        machine_id: Some(s.machine_id),
        // As fleet v1 (omitempty): a state systemd left empty is no field.
        systemd_load_state: Some(s.load_state).filter(|w| !w.as_str().is_empty()),
        systemd_active_state: Some(s.active_state).filter(|w| !w.as_str().is_empty()),
        systemd_sub_state: Some(s.sub_state).filter(|w| !w.as_str().is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(unit: &str, machine: &str, active: &str) -> UnitStateInfo {
        UnitStateInfo {
            name: UnitName::parse(unit).unwrap(),
            hash: fleet_sched::UnitFile::parse("[Service]\nExecStart=/bin/true\n")
                .unwrap()
                .hash(),
            machine_id: MachineId::parse(machine).unwrap(),
            load_state: "loaded".into(),
            active_state: active.into(),
            sub_state: "running".into(),
        }
    }

    #[test]
    fn the_state_of_a_unit_is_its_claimed_machines_else_the_lowest_ids() {
        let states = vec![
            reported("a.service", "m1", "inactive"),
            reported("a.service", "m3", "active"),
            reported("b.service", "m2", "active"),
        ];
        let a = UnitName::parse("a.service").unwrap();
        let m3 = MachineId::parse("m3").unwrap();
        let m9 = MachineId::parse("m9").unwrap();
        let got = |claimed| state_of(states.clone(), &a, claimed).map(|s| s.machine_id);
        assert_eq!(got(Some(&m3)), Some(m3.clone()));
        assert_eq!(got(None).unwrap().as_str(), "m1");
        assert_eq!(got(Some(&m9)).unwrap().as_str(), "m1");
        let c = UnitName::parse("c.service").unwrap();
        assert!(state_of(states, &c, None).is_none());
    }

    #[test]
    fn metadata_paths() {
        assert_eq!(
            parse_path("/abc/metadata/region"),
            Ok((MachineId::parse("abc").unwrap(), "region".into()))
        );
        for bad in [
            "abc/metadata/region",
            "/abc/metadata/",
            "/abc/metadata/a/b",
            "/abc/meta/region",
        ] {
            let e = parse_path(bad).unwrap_err();
            assert!(
                e.starts_with("expected /<machineID>/metadata/<key>"),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            parse_path("//metadata/region").unwrap_err(),
            "machine ID cannot be empty"
        );
        let e = parse_path("/ab-c/metadata/region").unwrap_err();
        assert!(e.contains("\"ab-c\""), "{e}");
    }
}
