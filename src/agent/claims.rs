//! Placement claims and the machine announcement: the agent's etcd writes, each one transaction.
//!
//! `P claims/<unit>` holds `{"machineID": ...}` bound to the claiming agent's lease. A claim is only ever
//! created when absent, superseded only at the exact revision the superseding agent saw (so two agents
//! with different views can never both win), and released only by its holder.

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use fleet_sched::{MachineId, UnitName};

use crate::metrics::EtcdOp;
use crate::registry::{Claim, ClaimRecord, Keys, MachineRecord};

fn claim_json(machine: &MachineId) -> String {
    serde_json::to_string(&ClaimRecord {
        machine_id: machine.to_string(),
    })
    .expect("a claim serializes")
}

async fn txn(c: &mut Client, t: Txn) -> Result<bool, etcd_client::Error> {
    let m = crate::metrics::global();
    let won = m.time_etcd(EtcdOp::ClaimTxn, c.txn(t)).await?.succeeded();
    if !won {
        m.claim_conflict();
    }
    Ok(won)
}

/// Writes our claim of `unit` under `lease` if `when` holds: one transaction.
async fn put_claim(
    c: &mut Client,
    key: &str,
    when: Compare,
    machine: &MachineId,
    lease: i64,
) -> Result<bool, etcd_client::Error> {
    let put = TxnOp::put(
        key,
        claim_json(machine),
        Some(PutOptions::new().with_lease(lease)),
    );
    txn(c, Txn::new().when([when]).and_then([put])).await
}

/// Claims `unit` for `machine` under `lease` if nobody holds it. Returns whether we won.
pub async fn claim(
    c: &mut Client,
    keys: &Keys,
    unit: &UnitName,
    machine: &MachineId,
    lease: i64,
) -> Result<bool, etcd_client::Error> {
    let key = keys.claim(unit);
    let absent = Compare::create_revision(key.as_str(), CompareOp::Equal, 0);
    put_claim(c, &key, absent, machine, lease).await
}

/// Takes over `unit` from the holder of `old` (a machine that is gone, or our own claim under a lease that
/// expired), only if the claim is still exactly the one we saw. Returns whether we won.
pub async fn supersede(
    c: &mut Client,
    keys: &Keys,
    unit: &UnitName,
    old: &Claim,
    machine: &MachineId,
    lease: i64,
) -> Result<bool, etcd_client::Error> {
    let key = keys.claim(unit);
    let unchanged = Compare::mod_revision(key.as_str(), CompareOp::Equal, old.mod_revision);
    put_claim(c, &key, unchanged, machine, lease).await
}

/// Releases our claim of `unit` (only if it is still the one we saw).
pub async fn release(
    c: &mut Client,
    keys: &Keys,
    unit: &UnitName,
    ours: &Claim,
) -> Result<bool, etcd_client::Error> {
    let key = keys.claim(unit);
    let t = Txn::new()
        .when([Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            ours.mod_revision,
        )])
        .and_then([TxnOp::delete(key.as_str(), None)]);
    txn(c, t).await
}

/// Announces this machine under `lease` (overwrites its own previous announcement).
pub async fn announce(
    c: &mut Client,
    keys: &Keys,
    rec: &MachineRecord,
    lease: i64,
) -> Result<(), etcd_client::Error> {
    let json = serde_json::to_string(rec).expect("a machine record serializes");
    c.put(
        keys.machine(&rec.id),
        json,
        Some(PutOptions::new().with_lease(lease)),
    )
    .await?;
    Ok(())
}
