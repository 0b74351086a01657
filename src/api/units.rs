//! `/units` and `/units/{name}`.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_sched::systemd_state::{ActiveState, LoadState};
use fleet_sched::{DesiredState, MachineId, Requirements, UnitFile, UnitName};

use super::cluster::UnitStateInfo;
use super::error::ApiError;
use super::pagination::PageToken;
use super::schema;
use super::{check_json_content_type, read_body, ApiState, QueryParams};
use crate::registry::{Claim, RegistryError, Unit};

/// How often a PUT re-evaluates after losing a race with another writer.
const PUT_ATTEMPTS: usize = 8;

/// `GET /units`.
pub(super) async fn list(
    State(st): State<ApiState>,
    q: QueryParams,
) -> Result<Json<schema::UnitPage>, ApiError> {
    let token = PageToken::from_query(&q.all("nextPageToken"), st.token_limit())
        .map_err(ApiError::bad_request)?;
    let snap = st.registry.snapshot()?;
    let states = st.cluster.unit_states();
    let (page, next) = token.page_of(&snap.units);
    let units = page
        .iter()
        .map(|u| to_schema(u, snap.claims.get(&u.name), &states))
        .collect();
    Ok(Json(schema::UnitPage {
        units,
        next_page_token: next.map(|t| t.encode()),
    }))
}

/// `GET /units/{name}`.
pub(super) async fn get(
    State(st): State<ApiState>,
    Path(item): Path<String>,
) -> Result<Json<schema::Unit>, ApiError> {
    let Ok(name) = UnitName::parse(&item) else {
        st.registry.check_available()?;
        return Err(ApiError::not_found("unit does not exist"));
    };
    let unit = st
        .registry
        .unit(&name)?
        .ok_or_else(|| ApiError::not_found("unit does not exist"))?;
    let claim = st.registry.claim(&name)?;
    Ok(Json(to_schema(
        &unit,
        claim.as_ref(),
        &st.cluster.unit_states(),
    )))
}

/// `DELETE /units/{name}`.
pub(super) async fn destroy(
    State(st): State<ApiState>,
    Path(item): Path<String>,
) -> Result<StatusCode, ApiError> {
    let Ok(name) = UnitName::parse(&item) else {
        st.registry.check_available()?;
        return Err(ApiError::not_found("unit does not exist"));
    };
    st.registry.destroy_unit(&name).await?;
    tracing::info!(unit = %name, "destroyed");
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /units/{name}`: create, replace, or set the desired state.
pub(super) async fn set(
    State(st): State<ApiState>,
    Path(item): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_json_content_type(&headers)?;
    let bytes = read_body(body, &headers, st.max_body()).await?;
    // serde reads a struct from a JSON array too (`[]` was an empty unit, then a 409): only an object is
    // a unit.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::bad_request(
            "unable to decode body: expected a JSON object (a unit)",
        ));
    }
    let mut su: schema::Unit = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("unable to decode body: {e}")))?;
    if su.name.is_empty() {
        su.name = item.clone();
    }
    if su.name != item {
        return Err(ApiError::bad_request(format!(
            "name in URL {item:?} differs from unit name in request body {:?}",
            su.name
        )));
    }
    let name = UnitName::parse(&su.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(why) = crate::reserved::reserved(name.as_str()) {
        return Err(ApiError::bad_request(why));
    }
    // Read (and validated: a word that is not a state is a 400 naming it) with the body.
    let desired = su.desired_state;
    // Validate the options before looking at the registry: an invalid file is invalid either way.
    let file = if su.options.is_empty() {
        None
    } else {
        let file = UnitFile::from_options(std::mem::take(&mut su.options))
            .map_err(|e| ApiError::bad_request(format!("invalid unit options: {e}")))?;
        Requirements::from_unit(&name, &file)
            .map_err(|e| ApiError::bad_request(format!("invalid unit options: {e}")))?;
        Some(file)
    };
    let template_check = |state: DesiredState| {
        if name.is_template() && state != DesiredState::Inactive {
            Err(ApiError::bad_request(format!(
                "cannot activate template {:?}",
                name.as_str()
            )))
        } else {
            Ok(())
        }
    };

    for _ in 0..PUT_ATTEMPTS {
        let existing = st.registry.unit(&name)?;
        match (existing, &file) {
            (None, None) => {
                return Err(ApiError::conflict(
                    "unit does not exist and options field empty",
                ))
            }
            (None, Some(file)) => {
                let state = desired.unwrap_or(DesiredState::Inactive);
                template_check(state)?;
                match st.registry.create_unit(&name, file, state).await {
                    Ok(()) => {
                        tracing::info!(unit = %name, hash = %file.hash(), %state, "created");
                        return Ok(StatusCode::CREATED.into_response());
                    }
                    Err(RegistryError::AlreadyExists(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            (Some(eu), Some(file)) if file.hash() != eu.hash => {
                // As fleet: a replaced unit without a desired state starts over as inactive (the
                // original fleetctl waits for that, then sets the state it wants again).
                let state = desired.unwrap_or(DesiredState::Inactive);
                template_check(state)?;
                match st.registry.replace_unit(&name, file, Some(state)).await {
                    Ok(()) => {
                        tracing::info!(unit = %name, hash = %file.hash(), "replaced");
                        return Ok(StatusCode::CREATED.into_response());
                    }
                    Err(RegistryError::NotFound(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            (Some(_), _) => {
                let Some(state) = desired else {
                    return Err(ApiError::conflict(
                        "must provide DesiredState to update existing unit",
                    ));
                };
                template_check(state)?;
                match st.registry.set_desired_state(&name, state).await {
                    Ok(()) => {
                        tracing::info!(unit = %name, %state, "desired state set");
                        return Ok(StatusCode::NO_CONTENT.into_response());
                    }
                    Err(RegistryError::NotFound(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Err(RegistryError::Conflict(name).into())
}

/// The API view of a stored unit: currentState from its claim and what its machine reports.
pub(super) fn to_schema(u: &Unit, claim: Option<&Claim>, states: &[UnitStateInfo]) -> schema::Unit {
    let machine_id = claim.map(|c| c.machine_id.clone());
    let current = claim
        .and_then(|c| {
            states
                .iter()
                .find(|s| s.name == u.name && s.machine_id == c.machine_id)
        })
        .map(current_state)
        .unwrap_or(DesiredState::Inactive);
    // fleet v1 unscheduled an unloaded unit before its machine let it go, so an inactive unit never
    // named a machine; the original fleetctl prints "inactive on <machine>" otherwise. Our claim is
    // released after the machine unloads the unit, so a unit both meant to be and being inactive names
    // none meanwhile.
    let machine_id =
        if u.desired_state == DesiredState::Inactive && current == DesiredState::Inactive {
            None
        } else {
            machine_id
        };
    schema::Unit {
        name: u.name.to_string(),
        options: u.file.options().to_vec(),
        desired_state: Some(u.desired_state),
        current_state: Some(current),
        machine_id,
        damaged: u
            .damaged
            .clone()
            .or_else(|| claim.and_then(|c| c.damaged.clone())),
    }
}

/// `launched` when systemd has it active (or activating), `loaded` when loaded, else `inactive`.
fn current_state(s: &UnitStateInfo) -> DesiredState {
    if s.active_state.is_up() || s.active_state == ActiveState::Deactivating {
        DesiredState::Launched
    } else if s.load_state == LoadState::Loaded {
        DesiredState::Loaded
    } else {
        DesiredState::Inactive
    }
}

/// Unit states, optionally filtered, for `GET /state`.
pub(super) fn filter_states(
    states: Vec<UnitStateInfo>,
    machine: Option<&str>,
    unit: Option<&str>,
) -> Vec<UnitStateInfo> {
    let mut by_key: BTreeMap<(UnitName, MachineId), UnitStateInfo> = BTreeMap::new();
    for s in states {
        if machine.is_some_and(|m| m != s.machine_id.as_str())
            || unit.is_some_and(|n| n != s.name.as_str())
        {
            continue;
        }
        by_key.insert((s.name.clone(), s.machine_id.clone()), s);
    }
    by_key.into_values().collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fleet_sched::{DesiredState, MachineId, UnitFile, UnitName};

    use super::{to_schema, UnitStateInfo};
    use crate::registry::{Claim, Unit};

    fn unit(desired: DesiredState) -> Unit {
        let file = UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
        Unit {
            name: UnitName::parse("a.service").unwrap(),
            hash: file.hash(),
            file: Arc::new(file),
            desired_state: desired,
            mod_revision: 1,
            damaged: None,
        }
    }

    fn claim() -> Claim {
        Claim {
            machine_id: "m1".parse::<MachineId>().unwrap(),
            mod_revision: 2,
            lease: 3,
            handoff: None,
            damaged: None,
            unbound: false,
        }
    }

    fn state(load: &str, active: &str) -> UnitStateInfo {
        let u = unit(DesiredState::Launched);
        UnitStateInfo {
            name: u.name,
            hash: u.hash,
            machine_id: "m1".parse::<MachineId>().unwrap(),
            load_state: load.into(),
            active_state: active.into(),
            sub_state: "dead".into(),
        }
    }

    #[test]
    fn an_unloaded_unit_its_machine_let_go_names_no_machine() {
        let c = claim();
        // Unloading: the claim is still there, the machine no longer has the unit.
        let s = to_schema(&unit(DesiredState::Inactive), Some(&c), &[]);
        assert_eq!(
            (
                s.current_state.map(|c| c.as_str()),
                s.machine_id.as_ref().map(MachineId::as_str)
            ),
            (Some("inactive"), None)
        );
        // Still loaded there: the machine is named until it lets the unit go.
        let loaded = [state("loaded", "inactive")];
        let s = to_schema(&unit(DesiredState::Inactive), Some(&c), &loaded);
        assert_eq!(
            (
                s.current_state.map(|c| c.as_str()),
                s.machine_id.as_ref().map(MachineId::as_str)
            ),
            (Some("loaded"), Some("m1"))
        );
        // A unit meant to run that is not loaded yet keeps its machine.
        let s = to_schema(&unit(DesiredState::Launched), Some(&c), &[]);
        assert_eq!(
            (
                s.current_state.map(|c| c.as_str()),
                s.machine_id.as_ref().map(MachineId::as_str)
            ),
            (Some("inactive"), Some("m1"))
        );
        let active = [state("loaded", "active")];
        let s = to_schema(&unit(DesiredState::Loaded), Some(&c), &active);
        assert_eq!(
            (
                s.current_state.map(|c| c.as_str()),
                s.machine_id.as_ref().map(MachineId::as_str)
            ),
            (Some("launched"), Some("m1"))
        );
    }
}
