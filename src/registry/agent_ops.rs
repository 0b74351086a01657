//! The agent's etcd writes, each one transaction: claims (create, take over with a handover, re-bind,
//! release, acknowledge a handover), the machine announcement (with the identity check), the
//! `restarting` mark; and the one read that is not served by the mirror, `LeaseTimeToLive`.
//!
//! `P claims/<unit>` holds [`ClaimRecord`] bound to the claiming agent's lease. A claim is created only
//! when absent, every other write compares the `mod_revision` the agent saw, so two agents with different
//! views can never both win (docs/safety.md).

use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse,
};
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

/// Most claim writes in one transaction. etcd refuses a transaction with more than `--max-txn-ops`
/// (128 by default in etcd 3.4) compares, or success ops, or failure ops; a batch has one of each
/// per claim, so this stays well below it.
pub const CLAIMS_PER_TXN: usize = 100;

/// What one claim write asks of etcd: its key, its compare and its operation.
struct ClaimOp {
    key: String,
    when: Compare,
    then: TxnOp,
}

impl ClaimWrite {
    fn op(&self, key: String, machine: &MachineId, lease: i64) -> ClaimOp {
        let with_lease = || Some(PutOptions::new().with_lease(lease));
        let at = |rev: i64| Compare::mod_revision(key.as_str(), CompareOp::Equal, rev);
        let (when, then) = match self {
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
        ClaimOp { key, when, then }
    }

    /// Whether this write's compare holds against the key as read (`None`: absent, whose revisions
    /// etcd compares as 0): the same test etcd makes, for the read a failed batch returns.
    fn holds(&self, kv: Option<&KeyValue>) -> bool {
        match self {
            ClaimWrite::Claim => kv.map_or(0, KeyValue::create_revision) == 0,
            ClaimWrite::Replace { mod_revision }
            | ClaimWrite::Supersede { mod_revision, .. }
            | ClaimWrite::Rebind { mod_revision, .. }
            | ClaimWrite::Release { mod_revision }
            | ClaimWrite::Ack { mod_revision, .. } => {
                kv.map_or(0, KeyValue::mod_revision) == *mod_revision
            }
        }
    }
}

/// The outcome of one claim write: `Ok(Some(revision))` when etcd applied it (at that revision),
/// `Ok(None)` when its compare failed (someone else wrote first), `Err` when it is not known to have
/// been applied (etcd unavailable, or it refused the request).
pub type ClaimResult = Result<Option<i64>, RegistryError>;

impl Registry {
    /// Carries out a claim write for `unit` by `machine` under `lease`. `Ok(Some(revision))` when etcd
    /// applied it (at that revision), `Ok(None)` when its compare failed (someone else wrote first).
    pub async fn write_claim(
        &self,
        unit: &UnitName,
        machine: &MachineId,
        lease: i64,
        write: &ClaimWrite,
    ) -> ClaimResult {
        let op = write.op(self.keys().claim(unit), machine, lease);
        let resp = self
            .agent_txn(Txn::new().when([op.when]).and_then([op.then]))
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

    /// Carries out many claim writes by `machine` under `lease` (one per unit), in as few
    /// transactions as etcd takes ([`CLAIMS_PER_TXN`] writes each), and returns each write's outcome
    /// as [`Registry::write_claim`] would, in order.
    ///
    /// Every write keeps its own compare, and a transaction applies all of its writes or none:
    /// - all compares hold: all are applied, at one revision;
    /// - some fail: nothing is applied; the transaction's failure branch reads every key at that
    ///   revision, so the writes whose compare failed are known (`Ok(None)`, as alone), and the others
    ///   are sent again as a batch of their own (until one applies or a write is left alone);
    /// - etcd is unavailable: every write of the transaction fails with that error (none applied, or
    ///   not known to be, as for one write);
    /// - etcd refuses it (a lease it no longer knows, a limit lower than ours): its writes are sent
    ///   one by one, so that a refusal fails only the writes it concerns.
    pub async fn write_claims(
        &self,
        machine: &MachineId,
        lease: i64,
        writes: &[(UnitName, ClaimWrite)],
    ) -> Vec<ClaimResult> {
        let mut out: Vec<Option<ClaimResult>> = vec![None; writes.len()];
        for chunk in claim_chunks(writes) {
            self.write_chunk(machine, lease, writes, chunk, &mut out)
                .await;
        }
        out.into_iter()
            .map(|r| r.expect("every claim write has an outcome"))
            .collect()
    }

    /// One chunk of [`Registry::write_claims`]: `idx` are indices into `writes` (distinct keys).
    async fn write_chunk(
        &self,
        machine: &MachineId,
        lease: i64,
        writes: &[(UnitName, ClaimWrite)],
        mut idx: Vec<usize>,
        out: &mut [Option<ClaimResult>],
    ) {
        while idx.len() > 1 {
            let ops: Vec<ClaimOp> = idx
                .iter()
                .map(|&i| {
                    writes[i]
                        .1
                        .op(self.keys().claim(&writes[i].0), machine, lease)
                })
                .collect();
            let reads: Vec<TxnOp> = ops
                .iter()
                .map(|o| TxnOp::get(o.key.as_str(), None))
                .collect();
            let (when, then): (Vec<Compare>, Vec<TxnOp>) =
                ops.into_iter().map(|o| (o.when, o.then)).unzip();
            let txn = Txn::new().when(when).and_then(then).or_else(reads);
            let resp = match self.agent_txn(txn).await {
                Ok(r) => r,
                Err(e @ RegistryError::Unavailable(_)) => {
                    tracing::debug!(writes = idx.len(), "claim batch: {e}");
                    for &i in &idx {
                        out[i] = Some(Err(e.clone()));
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(
                        writes = idx.len(),
                        "claim batch refused, writing one by one: {e}"
                    );
                    break;
                }
            };
            if resp.succeeded() {
                let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                for &i in &idx {
                    out[i] = Some(Ok(Some(rev)));
                }
                return;
            }
            let read = resp.op_responses();
            let mut rest = Vec::with_capacity(idx.len());
            for (k, &i) in idx.iter().enumerate() {
                let kv = match read.get(k) {
                    Some(TxnOpResponse::Get(g)) => g.kvs().first(),
                    _ => None,
                };
                // A write whose read did not come back (never expected) is sent again, not taken
                // as failed.
                let known = matches!(read.get(k), Some(TxnOpResponse::Get(_)));
                if known && !writes[i].1.holds(kv) {
                    crate::metrics::global().claim_conflict();
                    out[i] = Some(Ok(None));
                } else {
                    rest.push(i);
                }
            }
            if rest.len() == idx.len() {
                // No compare was seen failing (the reads did not come back as asked): one by one.
                break;
            }
            idx = rest;
        }
        for i in idx {
            let (unit, write) = &writes[i];
            out[i] = Some(self.write_claim(unit, machine, lease, write).await);
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

/// Splits `writes` into chunks of at most [`CLAIMS_PER_TXN`] indices, never two writes of one unit in
/// a chunk (etcd refuses a transaction that writes a key twice).
fn claim_chunks(writes: &[(UnitName, ClaimWrite)]) -> Vec<Vec<usize>> {
    let mut chunks: Vec<Vec<usize>> = Vec::new();
    let mut keys: Vec<std::collections::BTreeSet<&UnitName>> = Vec::new();
    for (i, (unit, _)) in writes.iter().enumerate() {
        let at = keys
            .iter()
            .zip(&chunks)
            .position(|(k, c)| c.len() < CLAIMS_PER_TXN && !k.contains(unit));
        match at {
            Some(c) => {
                chunks[c].push(i);
                keys[c].insert(unit);
            }
            None => {
                chunks.push(vec![i]);
                keys.push([unit].into());
            }
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(i: usize) -> UnitName {
        UnitName::parse(&format!("u{i}.service")).unwrap()
    }

    #[test]
    fn chunks_stay_under_the_limit_and_never_repeat_a_unit() {
        let mut writes: Vec<(UnitName, ClaimWrite)> =
            (0..250).map(|i| (name(i), ClaimWrite::Claim)).collect();
        writes.push((name(3), ClaimWrite::Release { mod_revision: 7 }));
        let chunks = claim_chunks(&writes);
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![100, 100, 51]);
        let mut all: Vec<usize> = chunks.concat();
        all.sort_unstable();
        assert_eq!(all, (0..writes.len()).collect::<Vec<_>>());
        for c in &chunks {
            let units: std::collections::BTreeSet<&UnitName> =
                c.iter().map(|&i| &writes[i].0).collect();
            assert_eq!(units.len(), c.len(), "a unit twice in one transaction");
        }
    }
}
