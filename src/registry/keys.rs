//! The etcd key layout (see `docs/etcd-layout.md`) and the JSON values stored under it.

use fleet_sched::{DesiredState, MachineId, UnitHash, UnitName};
use serde::{Deserialize, Serialize};

/// What an etcd key under the prefix stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// `P unit-files/<hash40>`: the text of a unit file.
    UnitFile(UnitHash),
    /// `P units/<name>`: a unit record ([`UnitRecord`]).
    Unit(UnitName),
    /// `P claims/<name>`: the placement claim of a unit ([`ClaimRecord`]).
    Claim(UnitName),
    /// `P machines/<id>`: a live agent's announcement ([`MachineRecord`]), bound to its lease.
    Machine(MachineId),
    /// `P restarting/<id>`: the agent is restarting and keeps its units (bound to its old lease).
    Restarting(MachineId),
    /// Anything else under the prefix (future keys): ignored by the mirror.
    Other,
    /// A `machines/` or `restarting/` key whose last part is not a valid machine ID: the reason. The
    /// mirror reports it as damaged instead of dropping it unseen.
    Malformed(String),
}

/// Builds and classifies keys under one prefix (always ending with `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (a `/` is appended when missing).
    pub fn new(prefix: &str) -> Keys {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Keys { prefix }
    }

    /// The prefix, ending with `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `P units/<name>`.
    pub fn unit(&self, name: &UnitName) -> String {
        format!("{}units/{}", self.prefix, name)
    }

    /// `P unit-files/<hash>`.
    pub fn unit_file(&self, hash: &UnitHash) -> String {
        format!("{}unit-files/{}", self.prefix, hash)
    }

    /// `P claims/<name>`.
    pub fn claim(&self, name: &UnitName) -> String {
        format!("{}claims/{}", self.prefix, name)
    }

    /// `P machines/<id>`.
    pub fn machine(&self, id: &MachineId) -> String {
        format!("{}machines/{}", self.prefix, id)
    }

    /// `P restarting/<id>`.
    pub fn restarting(&self, id: &MachineId) -> String {
        format!("{}restarting/{}", self.prefix, id)
    }

    /// What `key` stands for; `None` when it is not under the prefix or its name part is invalid.
    pub fn classify(&self, key: &[u8]) -> Option<KeyKind> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.prefix)?;
        if let Some(h) = rest.strip_prefix("unit-files/") {
            return h.parse().ok().map(KeyKind::UnitFile);
        }
        if let Some(n) = rest.strip_prefix("units/") {
            return UnitName::parse(n).ok().map(KeyKind::Unit);
        }
        if let Some(n) = rest.strip_prefix("claims/") {
            return UnitName::parse(n).ok().map(KeyKind::Claim);
        }
        if let Some(id) = rest.strip_prefix("machines/") {
            return Some(MachineId::parse(id).map_or_else(
                |e| KeyKind::Malformed(format!("machine key: {e}")),
                KeyKind::Machine,
            ));
        }
        if let Some(id) = rest.strip_prefix("restarting/") {
            return Some(MachineId::parse(id).map_or_else(
                |e| KeyKind::Malformed(format!("restarting key: {e}")),
                KeyKind::Restarting,
            ));
        }
        Some(KeyKind::Other)
    }
}

/// The JSON value of `P units/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRecord {
    /// The unit name (equal to the key's last part).
    pub name: String,
    /// 40 hex characters: the key of its content under `unit-files/`.
    pub hash: String,
    /// `inactive`, `loaded` or `launched`.
    #[serde(rename = "desiredState")]
    pub desired_state: DesiredState,
}

/// The JSON value of `P claims/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// The machine that runs the unit.
    #[serde(rename = "machineID")]
    pub machine_id: String,
    /// Set when the claim was taken over from another machine, until that machine acknowledges (it no
    /// longer runs the unit) or is proven to have stopped it (docs/safety.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<HandoffRecord>,
}

/// The previous holder of a claim that was taken over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffRecord {
    /// Its machine.
    #[serde(rename = "machineID")]
    pub machine_id: String,
    /// The lease its claim was bound to.
    pub lease: i64,
}

/// The JSON value of `P machines/<id>`: how a live agent announces itself (bound to its lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    /// The machine ID (equal to the key's last part).
    pub id: MachineId,
    /// Its public IP.
    #[serde(rename = "primaryIP", default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<std::net::IpAddr>,
    /// Its metadata.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// fleetd's version.
    #[serde(default)]
    pub version: String,
    /// The agent's gossip (QUIC) address: how a new machine finds its first peers.
    #[serde(
        rename = "gossipAddr",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub gossip_addr: Option<std::net::SocketAddr>,
    /// Unit names this machine refuses, and why (a unit fleet does not manage has that name there, or
    /// the name is reserved): every agent's placement keeps such units off it.
    #[serde(
        rename = "refusedUnits",
        default,
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub refused: std::collections::BTreeMap<String, String>,
}

impl MachineRecord {
    /// [`MachineRecord::refused`] with the names that parse (others cannot name a unit anyway).
    pub fn refused_units(&self) -> std::collections::BTreeMap<UnitName, String> {
        self.refused
            .iter()
            .filter_map(|(n, why)| Some((UnitName::parse(n).ok()?, why.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_classify() {
        let k = Keys::new("/fleet");
        let name = UnitName::parse("web@1.service").unwrap();
        let hash: UnitHash = "0123456789abcdef0123456789abcdef01234567".parse().unwrap();
        assert_eq!(k.unit(&name), "/fleet/units/web@1.service");
        assert_eq!(
            k.classify(k.unit(&name).as_bytes()),
            Some(KeyKind::Unit(name.clone()))
        );
        assert_eq!(
            k.classify(k.claim(&name).as_bytes()),
            Some(KeyKind::Claim(name))
        );
        assert_eq!(
            k.classify(k.unit_file(&hash).as_bytes()),
            Some(KeyKind::UnitFile(hash))
        );
        let m = MachineId::parse("abc").unwrap();
        assert_eq!(
            k.classify(k.machine(&m).as_bytes()),
            Some(KeyKind::Machine(m.clone()))
        );
        assert_eq!(
            k.classify(k.restarting(&m).as_bytes()),
            Some(KeyKind::Restarting(m))
        );
        assert_eq!(k.classify(b"/fleet/elsewhere/abc"), Some(KeyKind::Other));
        assert!(matches!(
            k.classify(b"/fleet/machines/not-an-id"),
            Some(KeyKind::Malformed(e)) if e.contains("not-an-id")
        ));
        assert!(matches!(
            k.classify(b"/fleet/restarting/"),
            Some(KeyKind::Malformed(_))
        ));
        assert_eq!(k.classify(b"/other/units/a.service"), None);
        assert_eq!(k.classify(b"/fleet/units/not-a-unit"), None);
        assert_eq!(k.classify(b"/fleet/unit-files/xyz"), None);
    }

    #[test]
    fn records_are_the_documented_json() {
        let r = UnitRecord {
            name: "hello.service".into(),
            hash: "0123456789abcdef0123456789abcdef01234567".into(),
            desired_state: DesiredState::Launched,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"name":"hello.service","hash":"0123456789abcdef0123456789abcdef01234567","desiredState":"launched"}"#
        );
        let c: ClaimRecord = serde_json::from_str(r#"{"machineID":"abc"}"#).unwrap();
        assert_eq!(c.machine_id, "abc");
    }
}
