//! The JSON entities of API v1 (field names as fleet's; empty fields omitted).

use std::collections::BTreeMap;

use fleet_sched::UnitOption;
use serde::{Deserialize, Serialize};

/// `Unit {name, options, desiredState, currentState, machineID}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    /// Unit name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The unit file as options; `null` is read as empty.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub options: Vec<UnitOption>,
    /// `inactive`, `loaded` or `launched`.
    #[serde(
        rename = "desiredState",
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub desired_state: String,
    /// Derived from the claim and the state its machine reports.
    #[serde(
        rename = "currentState",
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub current_state: String,
    /// The machine the unit is placed on.
    #[serde(
        rename = "machineID",
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub machine_id: String,
}

/// `GET /units` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitPage {
    /// The units of this page.
    pub units: Vec<Unit>,
    /// Token of the next page, when there is one.
    #[serde(
        rename = "nextPageToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub next_page_token: Option<String>,
}

/// `UnitState {name, hash, machineID, systemdLoadState, systemdActiveState, systemdSubState}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitState {
    /// Unit name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Hash (40 hex) of the content the machine runs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    /// Reporting machine.
    #[serde(
        rename = "machineID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub machine_id: String,
    /// systemd LoadState.
    #[serde(
        rename = "systemdLoadState",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub systemd_load_state: String,
    /// systemd ActiveState.
    #[serde(
        rename = "systemdActiveState",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub systemd_active_state: String,
    /// systemd SubState.
    #[serde(
        rename = "systemdSubState",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub systemd_sub_state: String,
}

/// `GET /state` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitStatePage {
    /// The states of this page.
    pub states: Vec<UnitState>,
    /// Token of the next page, when there is one.
    #[serde(
        rename = "nextPageToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub next_page_token: Option<String>,
}

/// `Machine {id, primaryIP, metadata}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Machine ID.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Its public IP.
    #[serde(
        rename = "primaryIP",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub primary_ip: String,
    /// Its metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// `GET /machines` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachinePage {
    /// The machines of this page.
    pub machines: Vec<Machine>,
    /// Token of the next page, when there is one.
    #[serde(
        rename = "nextPageToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub next_page_token: Option<String>,
}

/// One operation of `PATCH /machines`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineMetadataOp {
    /// `add`, `replace` or `remove`.
    #[serde(default)]
    pub op: String,
    /// `/<machineID>/metadata/<key>`.
    #[serde(default)]
    pub path: String,
    /// `{"value":"x"}` (ignored for `remove`).
    #[serde(default)]
    pub value: MetadataValue,
}

/// The value object of a metadata op.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataValue {
    /// The new value.
    #[serde(default)]
    pub value: String,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
