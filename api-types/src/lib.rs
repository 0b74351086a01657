//! The JSON documents of fleet's HTTP API v1 and of this project's extensions: the one definition
//! fleetd serves and fleetctl reads (`tests/api.rs` checks that what fleetd serves parses into these and
//! back to the same JSON; `tests/lab_interop.rs` that the original fleetctl v1.0.0 reads it too).
//!
//! Field names are fleet's; empty fields are omitted when writing and default when reading (`null`
//! too), so either side accepts what fleet v1 wrote.
//!
//! Machine IDs are [`MachineId`]s, validated as a document is read (a bad one is an error naming it)
//! and written as the same JSON string. An ID fleet v1 may leave out (`machineID` of a unit not
//! placed, or of a unit state) is an `Option`, `""` and `null` reading as `None`; a machine's `id` and
//! the extensions' `machineID` are required.
//!
//! States are typed the same way: `desiredState` and `currentState` are [`DesiredState`]s (fleet v1's
//! three target states, `inactive`, `loaded`, `launched`: any other word is an error naming it), and a
//! unit state's `systemd*State`s are systemd's [`LoadState`], [`ActiveState`] and [`SubState`], which
//! keep a word they do not know in `Other` (a newer systemd never breaks parsing). Each is written as
//! the same JSON string fleet v1 writes; absent, `null` and `""` read as `None`, which writes no field.

use std::collections::BTreeMap;

pub use fleet_sched::systemd_state::{ActiveState, LoadState, SubState};
pub use fleet_sched::{DesiredState, MachineId, UnitOption};
use serde::{Deserialize, Serialize};

/// Where API v1 is served (`/v1-alpha` is the same API).
pub const API_PREFIX: &str = "/fleet/v1";

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
    /// `inactive`, `loaded` or `launched` (`None`: not given, e.g. a PUT that only replaces options).
    #[serde(
        rename = "desiredState",
        default,
        with = "optional_state",
        skip_serializing_if = "Option::is_none"
    )]
    pub desired_state: Option<DesiredState>,
    /// The same three words, derived from the claim and the state its machine reports.
    #[serde(
        rename = "currentState",
        default,
        with = "optional_state",
        skip_serializing_if = "Option::is_none"
    )]
    pub current_state: Option<DesiredState>,
    /// The machine the unit is placed on (`None`: not placed).
    #[serde(
        rename = "machineID",
        default,
        with = "optional_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_id: Option<MachineId>,
    /// Extension (fleet v1 has no such field; its fleetctl ignores it): set when what etcd stores for the
    /// unit (its record, its unit file or its claim) does not parse. The unit is shown, and run, as its
    /// last good value; this says what is wrong. Read-only: ignored in a PUT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

/// `GET /units` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitPage {
    /// The units of this page.
    #[serde(default, deserialize_with = "null_as_empty")]
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
    /// Reporting machine (fleet v1 may leave it out).
    #[serde(
        rename = "machineID",
        default,
        with = "optional_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_id: Option<MachineId>,
    /// systemd LoadState.
    #[serde(
        rename = "systemdLoadState",
        default,
        with = "optional_state",
        skip_serializing_if = "Option::is_none"
    )]
    pub systemd_load_state: Option<LoadState>,
    /// systemd ActiveState.
    #[serde(
        rename = "systemdActiveState",
        default,
        with = "optional_state",
        skip_serializing_if = "Option::is_none"
    )]
    pub systemd_active_state: Option<ActiveState>,
    /// systemd SubState.
    #[serde(
        rename = "systemdSubState",
        default,
        with = "optional_state",
        skip_serializing_if = "Option::is_none"
    )]
    pub systemd_sub_state: Option<SubState>,
}

/// `GET /state` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitStatePage {
    /// The states of this page.
    #[serde(default, deserialize_with = "null_as_empty")]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Machine ID.
    pub id: MachineId,
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
    /// Extension (fleet v1 has no such field; its fleetctl ignores it): unit names this machine refuses,
    /// and why (a unit fleet does not manage has that name there, or the name is reserved). Placement
    /// keeps such units off it.
    #[serde(
        rename = "refusedUnits",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub refused_units: BTreeMap<String, String>,
}

/// `GET /machines` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachinePage {
    /// The machines of this page.
    #[serde(default, deserialize_with = "null_as_empty")]
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

/// Every error answer: `{"error":{"code":N,"message":"..."}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDoc {
    /// The error.
    pub error: ErrorBody,
}

/// The body of an [`ErrorDoc`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The HTTP status code.
    #[serde(default)]
    pub code: u16,
    /// What was wrong.
    #[serde(default)]
    pub message: String,
    /// Extension (fleet v1 has no such field; its fleetctl ignores it): the machines a request about a
    /// global unit running on several must choose from with `machineID=` (a 409); absent otherwise.
    #[serde(
        rename = "machineIDs",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub machine_ids: Vec<MachineId>,
}

/// Extension `GET /units/{name}/status` and `/journal`: output of a command on the unit's machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitOutput {
    /// The machine that answered.
    #[serde(rename = "machineID")]
    pub machine_id: MachineId,
    /// The output.
    #[serde(default)]
    pub text: String,
    /// Journal: where the next request continues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Status: `systemctl status`'s exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// Extension `POST /units/{name}/restart`: how it went on every machine asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartOutput {
    /// One entry per machine asked, sorted by machine ID.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub restarts: Vec<RestartResult>,
}

/// How a restart went on one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartResult {
    /// The machine.
    #[serde(rename = "machineID")]
    pub machine_id: MachineId,
    /// Why the unit was not restarted there (absent when it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The wire form of a machine ID fleet may leave out (`machineID` of a unit or a unit state), used by
/// every such field as `#[serde(rename = "machineID", default, with = "optional_id",
/// skip_serializing_if = "Option::is_none")]`: read, absent, `null` and `""` are `None` and anything
/// else must be a valid ID (the error names it); written, the ID's string, and no field at all for
/// `None` (fleet v1's `omitempty`).
mod optional_id {
    use super::MachineId;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MachineId>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => MachineId::parse(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }

    /// `None` writes `""`, as fleet v1 does where it does not omit an empty ID.
    pub fn serialize<S: Serializer>(id: &Option<MachineId>, s: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => id.serialize(s),
            None => s.serialize_str(""),
        }
    }
}

/// The wire form of a state fleet v1 may leave out (`desiredState`, `currentState`, the
/// `systemd*State`s), used as `#[serde(default, with = "optional_state", skip_serializing_if =
/// "Option::is_none")]`: read, absent, `null` and `""` are `None` and any other string is parsed by the
/// state's `FromStr` (its error, naming the word, is the document's); written, the state's own string.
mod optional_state {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: Display,
    {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
        }
    }

    pub fn serialize<S: Serializer, T: Serialize>(
        state: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        state.serialize(s)
    }
}

fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Documents as fleet v1 wrote them (its own API's shapes) read into these types and are written
    /// back identically.
    #[test]
    fn fleet_documents_round_trip() {
        for doc in [
            json!({"units": [{"name": "a.service", "options": [{"section": "Service", "name": "ExecStart", "value": "/bin/true"}], "desiredState": "launched", "currentState": "loaded", "machineID": "m1"}], "nextPageToken": "ZAACAA=="}),
            json!({"units": [{"name": "b.service", "desiredState": "inactive", "currentState": "inactive"}]}),
        ] {
            let page: UnitPage = serde_json::from_value(doc.clone()).unwrap();
            assert_eq!(serde_json::to_value(&page).unwrap(), doc);
        }
        let doc = json!({"states": [{"name": "a.service", "hash": "e55c0ae", "machineID": "m1", "systemdLoadState": "loaded", "systemdActiveState": "active", "systemdSubState": "running"}]});
        let page: UnitStatePage = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(serde_json::to_value(&page).unwrap(), doc);
        let doc = json!({"machines": [{"id": "m1", "primaryIP": "10.0.0.1", "metadata": {"region": "eu"}}, {"id": "m2"}]});
        let page: MachinePage = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(serde_json::to_value(&page).unwrap(), doc);
        let doc = json!({"error": {"code": 404, "message": "unit does not exist"}});
        let e: ErrorDoc = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(serde_json::to_value(&e).unwrap(), doc);
        let doc = json!({"error": {"code": 409, "message": "choose", "machineIDs": ["m1", "m2"]}});
        let e: ErrorDoc = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(e.error.machine_ids.len(), 2);
        assert_eq!(serde_json::to_value(&e).unwrap(), doc);
        let doc = json!({"restarts": [{"machineID": "m1"}, {"machineID": "m2", "error": "no"}]});
        let r: RestartOutput = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(serde_json::to_value(&r).unwrap(), doc);
        let doc = json!({"machineID": "m1", "text": "x\n", "exitCode": 3});
        let o: UnitOutput = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(serde_json::to_value(&o).unwrap(), doc);
    }

    /// The bytes written for documents with and without an optional machine ID: field order, the ID
    /// as a plain string, and no `machineID` at all when there is none (fleet v1's `omitempty`).
    #[test]
    fn optional_machine_ids_are_written_byte_for_byte_as_fleet_does() {
        let m1 = || Some(MachineId::parse("m1").unwrap());
        let unit = |machine_id| Unit {
            name: "a.service".into(),
            desired_state: Some(DesiredState::Launched),
            current_state: Some(DesiredState::Launched),
            machine_id,
            ..Unit::default()
        };
        assert_eq!(
            serde_json::to_string(&unit(m1())).unwrap(),
            r#"{"name":"a.service","desiredState":"launched","currentState":"launched","machineID":"m1"}"#
        );
        assert_eq!(
            serde_json::to_string(&unit(None)).unwrap(),
            r#"{"name":"a.service","desiredState":"launched","currentState":"launched"}"#
        );
        let state = |machine_id| UnitState {
            name: "a.service".into(),
            hash: "e55c0ae".into(),
            machine_id,
            systemd_load_state: Some(LoadState::Loaded),
            systemd_active_state: Some(ActiveState::Active),
            systemd_sub_state: Some(SubState::Running),
        };
        assert_eq!(
            serde_json::to_string(&state(m1())).unwrap(),
            r#"{"name":"a.service","hash":"e55c0ae","machineID":"m1","systemdLoadState":"loaded","systemdActiveState":"active","systemdSubState":"running"}"#
        );
        assert_eq!(
            serde_json::to_string(&state(None)).unwrap(),
            r#"{"name":"a.service","hash":"e55c0ae","systemdLoadState":"loaded","systemdActiveState":"active","systemdSubState":"running"}"#
        );
        // Read back: absent, null and "" are none; an ID is that ID.
        for (doc, want) in [
            (r#"{"name":"a.service"}"#, None),
            (r#"{"name":"a.service","machineID":null}"#, None),
            (r#"{"name":"a.service","machineID":""}"#, None),
            (r#"{"name":"a.service","machineID":"m1"}"#, m1()),
        ] {
            let u: Unit = serde_json::from_str(doc).unwrap();
            assert_eq!(u.machine_id, want, "{doc}");
            let s: UnitState = serde_json::from_str(doc).unwrap();
            assert_eq!(s.machine_id, want, "{doc}");
        }
    }

    #[test]
    fn nulls_and_missing_fields_read_as_empty() {
        for id in [json!(null), json!("")] {
            let u: Unit = serde_json::from_value(
                json!({"name": "a.service", "options": null, "desiredState": null, "machineID": id}),
            )
            .unwrap();
            assert_eq!(
                u,
                Unit {
                    name: "a.service".into(),
                    ..Unit::default()
                }
            );
        }
        let p: UnitPage = serde_json::from_value(json!({"units": null})).unwrap();
        assert!(p.units.is_empty() && p.next_page_token.is_none());
        let p: MachinePage = serde_json::from_value(json!({})).unwrap();
        assert!(p.machines.is_empty());
        // Empty fields are not written.
        assert_eq!(
            serde_json::to_value(Unit {
                name: "a.service".into(),
                ..Unit::default()
            })
            .unwrap(),
            json!({"name": "a.service"})
        );
    }

    /// States read as their types and are written back as the same bytes; systemd words this crate does
    /// not know are kept (and written back) verbatim; a word that is not a target state is an error
    /// naming it; absent, `null` and `""` are no state and write no field.
    #[test]
    fn states_are_typed_and_written_as_fleet_writes_them() {
        let doc = r#"{"name":"a.service","hash":"e55c0ae","machineID":"m1","systemdLoadState":"bad-setting","systemdActiveState":"hibernating","systemdSubState":"stop-watchdog"}"#;
        let s: UnitState = serde_json::from_str(doc).unwrap();
        assert_eq!(s.systemd_load_state, Some(LoadState::BadSetting));
        assert_eq!(
            s.systemd_active_state,
            Some(ActiveState::Other("hibernating".into()))
        );
        assert_eq!(
            s.systemd_sub_state,
            Some(SubState::Other("stop-watchdog".into()))
        );
        assert_eq!(serde_json::to_string(&s).unwrap(), doc);
        let doc = r#"{"name":"a.service","desiredState":"loaded","currentState":"launched"}"#;
        let u: Unit = serde_json::from_str(doc).unwrap();
        assert_eq!(
            (u.desired_state, u.current_state),
            (Some(DesiredState::Loaded), Some(DesiredState::Launched))
        );
        assert_eq!(serde_json::to_string(&u).unwrap(), doc);
        for field in ["desiredState", "currentState"] {
            let e = serde_json::from_str::<Unit>(&format!(r#"{{"{field}":"running"}}"#))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("invalid desired state \"running\""),
                "{field}: {e}"
            );
        }
        for empty in ["null", r#""""#] {
            let u: Unit = serde_json::from_str(&format!(
                r#"{{"name":"a.service","desiredState":{empty},"currentState":{empty}}}"#
            ))
            .unwrap();
            assert_eq!((u.desired_state, u.current_state), (None, None));
            assert_eq!(
                serde_json::to_string(&u).unwrap(),
                r#"{"name":"a.service"}"#
            );
            let s: UnitState = serde_json::from_str(&format!(
                r#"{{"name":"a.service","systemdLoadState":{empty},"systemdActiveState":{empty},"systemdSubState":{empty}}}"#
            ))
            .unwrap();
            assert_eq!(
                s,
                UnitState {
                    name: "a.service".into(),
                    ..UnitState::default()
                }
            );
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                r#"{"name":"a.service"}"#
            );
        }
    }

    /// A machine ID is validated where a document is read: a bad one is an error naming it, in every
    /// document that carries one; a required one cannot be left out.
    #[test]
    fn bad_machine_ids_do_not_parse_and_are_named() {
        fn named<T: serde::de::DeserializeOwned + std::fmt::Debug>(doc: serde_json::Value) {
            let e = serde_json::from_value::<T>(doc.clone())
                .unwrap_err()
                .to_string();
            assert!(e.contains("\"bad/id\""), "{doc}: {e}");
        }
        named::<Unit>(json!({"name": "a.service", "machineID": "bad/id"}));
        named::<UnitPage>(json!({"units": [{"name": "a.service", "machineID": "bad/id"}]}));
        named::<UnitState>(json!({"name": "a.service", "machineID": "bad/id"}));
        named::<MachinePage>(json!({"machines": [{"id": "bad/id"}]}));
        named::<UnitOutput>(json!({"machineID": "bad/id", "text": ""}));
        named::<RestartOutput>(json!({"restarts": [{"machineID": "bad/id"}]}));
        for doc in [json!({}), json!({"id": ""}), json!({"id": null})] {
            assert!(
                serde_json::from_value::<Machine>(doc.clone()).is_err(),
                "{doc}"
            );
        }
        let u: Unit = serde_json::from_value(json!({"machineID": "m1"})).unwrap();
        assert_eq!(u.machine_id, Some(MachineId::parse("m1").unwrap()));
    }
}
