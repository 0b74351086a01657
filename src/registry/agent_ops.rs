//! The agent's etcd writes, each one transaction: claims (create, take over with a handover, re-bind,
//! release, acknowledge a handover), the machine announcement (with the identity check), the
//! `restarting` mark; and the one read that is not served by the mirror, `LeaseTimeToLive`.
//!
//! `P claims/<unit>` holds [`ClaimRecord`] bound to the claiming agent's lease. A claim is created only
//! when absent, every other write compares the `mod_revision` the agent saw, so two agents with different
//! views can never both win (docs/safety.md).

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use fleet_sched::{MachineId, UnitName};

use super::keys::{ClaimRecord, HandoffRecord, MachineRecord};
use super::{Registry, RegistryError};
use crate::metrics::EtcdOp;

/// A claim write the decision core asked for (`fleet_decide::Write`, with the unit's claim as seen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimWrite {
    /// Create the claim if absent, for `machine` under `lease`.
    Claim,
    /// Claim a unit whose claim key binds nobody (bound to no lease, see `registry::mirror`): replace
    /// the key at `mod_revision` with our claim under `lease`.
    Replace {
        /// The key's revision as seen.
        mod_revision: i64,
    },
    /// Take the claim (at `mod_revision`) over from `from` (machine, lease).
    Supersede {
        /// The claim's revision as seen.
        mod_revision: i64,
        /// The previous holder and its lease.
        from: (MachineId, i64),
    },
    /// Bind our own claim (at `mod_revision`, made under an older lease) to the current lease.
    Rebind {
        /// The claim's revision as seen.
        mod_revision: i64,
        /// The handover it carries, kept as is.
        handoff: Option<(MachineId, i64)>,
    },
    /// Delete our claim at `mod_revision`.
    Release {
        /// The claim's revision as seen.
        mod_revision: i64,
    },
    /// Clear the handover of a claim taken from us (at `mod_revision`; the holder is `holder`).
    Ack {
        /// The claim's revision as seen.
        mod_revision: i64,
        /// The claim's holder (kept, with the lease the key is bound to).
        holder: MachineId,
    },
}

impl ClaimWrite {
    fn name(&self) -> &'static str {
        match self {
            ClaimWrite::Claim => "claim",
            ClaimWrite::Replace { .. } => "claim (replacing a key bound to no lease)",
            ClaimWrite::Supersede { .. } => "take over",
            ClaimWrite::Rebind { .. } => "re-bind",
            ClaimWrite::Release { .. } => "release",
            ClaimWrite::Ack { .. } => "acknowledge handover",
        }
    }
}

/// What happened to the announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announced {
    /// Written (created, refreshed, or taken from a previous life of this machine).
    Ok,
    /// Another live agent holds this machine ID: nothing was written.
    InUse {
        /// Its public IP (or gossip address) as announced, for the error message.
        by: String,
    },
}

fn claim_json(machine: &MachineId, handoff: Option<&(MachineId, i64)>) -> String {
    serde_json::to_string(&ClaimRecord {
        machine_id: machine.to_string(),
        handoff: handoff.map(|(m, l)| HandoffRecord {
            machine_id: m.to_string(),
            lease: *l,
        }),
    })
    .expect("a claim serializes")
}

impl Registry {
    /// Carries out a claim write for `unit` by `machine` under `lease`. `Ok(Some(revision))` when etcd
    /// applied it (at that revision), `Ok(None)` when its compare failed (someone else wrote first).
    pub async fn write_claim(
        &self,
        unit: &UnitName,
        machine: &MachineId,
        lease: i64,
        write: &ClaimWrite,
    ) -> Result<Option<i64>, RegistryError> {
        let key = self.keys().claim(unit);
        let with_lease = || Some(PutOptions::new().with_lease(lease));
        let at = |rev: i64| Compare::mod_revision(key.as_str(), CompareOp::Equal, rev);
        let (when, then) = match write {
            ClaimWrite::Claim => (
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                TxnOp::put(key.as_str(), claim_json(machine, None), with_lease()),
            ),
            ClaimWrite::Replace { mod_revision } => (
                at(*mod_revision),
                TxnOp::put(key.as_str(), claim_json(machine, None), with_lease()),
            ),
            ClaimWrite::Supersede { mod_revision, from } => (
                at(*mod_revision),
                TxnOp::put(key.as_str(), claim_json(machine, Some(from)), with_lease()),
            ),
            ClaimWrite::Rebind {
                mod_revision,
                handoff,
            } => (
                at(*mod_revision),
                TxnOp::put(
                    key.as_str(),
                    claim_json(machine, handoff.as_ref()),
                    with_lease(),
                ),
            ),
            ClaimWrite::Release { mod_revision } => {
                (at(*mod_revision), TxnOp::delete(key.as_str(), None))
            }
            ClaimWrite::Ack {
                mod_revision,
                holder,
            } => (
                at(*mod_revision),
                TxnOp::put(
                    key.as_str(),
                    claim_json(holder, None),
                    Some(PutOptions::new().with_ignore_lease()),
                ),
            ),
        };
        let resp = self
            .agent_txn(Txn::new().when([when]).and_then([then]))
            .await
            .map_err(|e| {
                tracing::debug!(unit = %unit, "{}: {e}", write.name());
                e
            })?;
        if resp.succeeded() {
            Ok(Some(resp.header().map(|h| h.revision()).unwrap_or(0)))
        } else {
            crate::metrics::global().claim_conflict();
            Ok(None)
        }
    }

    /// Announces this machine under `lease`, unless another live agent holds its machine ID.
    ///
    /// One transaction creates the key when absent or refreshes it when it is bound to `lease`. Held under
    /// another lease, it is this machine's previous life when it names the same public IP (or gossip
    /// address) — then it is taken over at the revision seen — and otherwise another agent's.
    pub async fn announce(
        &self,
        rec: &MachineRecord,
        lease: i64,
    ) -> Result<Announced, RegistryError> {
        let key = self.keys().machine(&rec.id);
        let json = serde_json::to_string(rec).expect("a machine record serializes");
        let put = || {
            TxnOp::put(
                key.as_str(),
                json.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )
        };
        let free = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([put()])
            .or_else([TxnOp::get(key.as_str(), Some(GetOptions::new()))]);
        let resp = self.agent_txn(free).await?;
        if resp.succeeded() {
            return Ok(Announced::Ok);
        }
        let Some(kv) = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        }) else {
            // Deleted between the compare and the read: try again next pass.
            return Err(RegistryError::Unavailable(
                "machine key changed while announcing".into(),
            ));
        };
        let theirs: Option<MachineRecord> = serde_json::from_slice(kv.value()).ok();
        let same_machine = kv.lease() == lease
            || theirs.as_ref().is_some_and(|t| {
                (t.public_ip.is_some() && t.public_ip == rec.public_ip)
                    || (t.gossip_addr.is_some() && t.gossip_addr == rec.gossip_addr)
            });
        if !same_machine {
            let by = theirs
                .and_then(|t| {
                    t.public_ip
                        .map(|ip| ip.to_string())
                        .or(t.gossip_addr.map(|a| a.to_string()))
                })
                .unwrap_or_else(|| format!("lease {:x}", kv.lease()));
            return Ok(Announced::InUse { by });
        }
        let again = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([put()]);
        if self.agent_txn(again).await?.succeeded() {
            Ok(Announced::Ok)
        } else {
            Err(RegistryError::Unavailable(
                "machine key changed while announcing".into(),
            ))
        }
    }

    /// Writes `restarting/<id>` bound to `lease`: peers take nothing over from this machine while it
    /// lasts (`systemctl restart fleet`).
    pub async fn mark_restarting(&self, id: &MachineId, lease: i64) -> Result<(), RegistryError> {
        let key = self.keys().restarting(id);
        let txn = Txn::new().and_then([TxnOp::put(
            key.as_str(),
            "{}",
            Some(PutOptions::new().with_lease(lease)),
        )]);
        self.agent_txn(txn).await.map(|_| ())
    }

    /// Deletes `restarting/<id>` (the restarted agent is up).
    pub async fn clear_restarting(&self, id: &MachineId) -> Result<(), RegistryError> {
        let key = self.keys().restarting(id);
        self.agent_txn(Txn::new().and_then([TxnOp::delete(key.as_str(), None)]))
            .await
            .map(|_| ())
    }

    /// etcd's `LeaseTimeToLive` for another machine's lease: whole seconds remaining and granted, or
    /// gone. Timed by the caller.
    pub async fn lease_time_to_live(
        &self,
        lease: i64,
    ) -> Result<fleet_decide::LeaseAnswer, RegistryError> {
        let mut c = self.etcd_client()?;
        let timeout = self.shared.opts().request_timeout;
        let m = crate::metrics::global();
        match tokio::time::timeout(
            timeout,
            m.time_etcd(EtcdOp::LeaseTtl, c.lease_time_to_live(lease, None)),
        )
        .await
        {
            Err(_) => Err(RegistryError::Unavailable(format!(
                "etcd request timed out after {timeout:?}"
            ))),
            Ok(Err(e)) => Err(super::classify(e)),
            Ok(Ok(r)) if r.ttl() < 0 => Ok(fleet_decide::LeaseAnswer::NotFound),
            Ok(Ok(r)) => Ok(fleet_decide::LeaseAnswer::Remaining {
                ttl: r.ttl(),
                granted: r.granted_ttl(),
            }),
        }
    }

    async fn agent_txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, RegistryError> {
        let mut kv = self.etcd_client()?.kv_client();
        let timeout = self.shared.opts().request_timeout;
        let m = crate::metrics::global();
        match tokio::time::timeout(timeout, m.time_etcd(EtcdOp::ClaimTxn, kv.txn(txn))).await {
            Err(_) => {
                m.etcd_timeout(EtcdOp::ClaimTxn, timeout);
                Err(RegistryError::Unavailable(format!(
                    "etcd request timed out after {timeout:?}"
                )))
            }
            Ok(Err(e)) => Err(super::classify(e)),
            Ok(Ok(r)) => Ok(r),
        }
    }
}
