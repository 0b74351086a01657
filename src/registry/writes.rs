//! The registry's writes: each one etcd transaction with compares (concurrent writes share one, each
//! with its own compares and result: `merge.rs`), retried on a concurrent change, then read back
//! through the mirror (read-your-writes).

use super::merge::{Expect, Op, Outcome, UnitWrite};
use super::*;

/// A record write that leaves its old content to other units that share it compares their records too
/// when there are at most this many (a write that compares many records would retry whenever any of
/// them changes): so the last of them cannot be destroyed unseen, leaving the content to nobody. With
/// more sharers, all of them destroyed at once while this write runs would leave it behind.
const KEEP_COMPARES: usize = 4;

/// The planned edit of a unit record.
enum RecordOp<'a> {
    Replace(&'a UnitFile, Option<DesiredState>),
    SetState(DesiredState),
    Destroy,
}

impl Registry {
    /// Refuses a unit write whose transaction would exceed etcd's request limit.
    fn check_size(&self, name: &UnitName, file: &UnitFile) -> Result<(), RegistryError> {
        let keys = self.shared.keys();
        let text = file.serialize().len();
        let size = text + keys.unit_file(&file.hash()).len() + 2 * keys.unit(name).len() + 512;
        let limit = self.shared.opts().max_request_bytes;
        if size + TXN_OVERHEAD > limit {
            return Err(RegistryError::TooLarge(format!(
                "unit {name}: its file is {text} bytes; with its record that exceeds etcd's request limit of {limit} bytes (etcd's --max-request-bytes)"
            )));
        }
        Ok(())
    }

    /// Creates unit `name` with `file` and `state` in one transaction (content + record).
    /// Fails with `AlreadyExists` (and writes nothing) if a unit of that name exists.
    pub async fn create_unit(
        &self,
        name: &UnitName,
        file: &UnitFile,
        state: DesiredState,
    ) -> Result<(), RegistryError> {
        self.check_available()?;
        self.check_size(name, file)?;
        let keys = &self.shared.keys();
        let rk = keys.unit(name);
        let hash = file.hash();
        let write = UnitWrite {
            expects: vec![(rk.clone(), Expect::Absent)],
            ops: vec![
                Op::Put(keys.unit_file(&hash), file.serialize()),
                Op::Put(rk.clone(), record_json(name, &hash, state)),
            ],
            reads: vec![rk],
        };
        match self.write_merged(write).await? {
            Outcome::Applied(rev) => {
                self.wait_revision(rev).await;
                Ok(())
            }
            Outcome::Failed(read) => {
                if let Some(rev) = read.into_iter().flatten().max() {
                    self.wait_revision(rev).await;
                }
                Err(RegistryError::AlreadyExists(name.clone()))
            }
        }
    }

    /// Replaces the content of unit `name` with `file`; `state` None keeps its desired state.
    /// The old content is deleted in the same transaction when no other unit uses it.
    pub async fn replace_unit(
        &self,
        name: &UnitName,
        file: &UnitFile,
        state: Option<DesiredState>,
    ) -> Result<(), RegistryError> {
        self.update_record(name, RecordOp::Replace(file, state))
            .await
    }

    /// Sets the desired state of unit `name`.
    pub async fn set_desired_state(
        &self,
        name: &UnitName,
        state: DesiredState,
    ) -> Result<(), RegistryError> {
        self.update_record(name, RecordOp::SetState(state)).await
    }

    /// Destroys unit `name`: deletes its record, and its content when no other unit uses it.
    pub async fn destroy_unit(&self, name: &UnitName) -> Result<(), RegistryError> {
        self.update_record(name, RecordOp::Destroy).await
    }

    async fn update_record(&self, name: &UnitName, op: RecordOp<'_>) -> Result<(), RegistryError> {
        if let RecordOp::Replace(file, _) = &op {
            self.check_size(name, file)?;
        }
        let keys = &self.shared.keys();
        let rk = keys.unit(name);
        for _ in 0..MAX_ATTEMPTS {
            let (write, old_hash, sharers) = {
                let m = self.mirror()?;
                let Some(cur) = m.records.get(name) else {
                    return Err(RegistryError::NotFound(name.clone()));
                };
                let mut expects = vec![(rk.clone(), Expect::ModRevision(cur.mod_revision))];
                let mut ops = Vec::new();
                let new_hash = match &op {
                    RecordOp::Replace(file, state) => {
                        let h = file.hash();
                        ops.push(Op::Put(keys.unit_file(&h), file.serialize()));
                        ops.push(Op::Put(
                            rk.clone(),
                            record_json(name, &h, state.unwrap_or(cur.desired_state)),
                        ));
                        Some(h)
                    }
                    RecordOp::SetState(state) => {
                        ops.push(Op::Put(rk.clone(), record_json(name, &cur.hash, *state)));
                        Some(cur.hash)
                    }
                    RecordOp::Destroy => {
                        ops.push(Op::Delete(rk.clone()));
                        None
                    }
                };
                let mut reads = vec![rk.clone(), keys.unit_file(&cur.hash)];
                let mut sharers = Vec::new();
                if new_hash != Some(cur.hash) {
                    let others = m.hash_referencers(&cur.hash, name, KEEP_COMPARES + 1);
                    if others.is_empty() {
                        if let Some(f) = m.files.get(&cur.hash) {
                            let fk = keys.unit_file(&cur.hash);
                            expects.push((fk.clone(), Expect::ModRevision(f.mod_revision)));
                            ops.push(Op::Delete(fk));
                        }
                    } else if others.len() <= KEEP_COMPARES {
                        // The content stays for the other units that share it: as long as they do
                        // (a unit destroyed meanwhile that this mirror does not show gone yet would
                        // leave the content to nobody, for good).
                        for (other, rev) in others {
                            let k = keys.unit(&other);
                            expects.push((k.clone(), Expect::ModRevision(rev)));
                            reads.push(k);
                            sharers.push(other);
                        }
                    }
                }
                let write = UnitWrite {
                    expects,
                    ops,
                    reads,
                };
                (write, cur.hash, sharers)
            };
            let read = match self.write_merged(write).await? {
                Outcome::Applied(rev) => {
                    self.wait_revision(rev).await;
                    return Ok(());
                }
                Outcome::Failed(read) => read,
            };
            // A compare failed: somebody changed the record, the old content or a unit sharing it.
            // Catch up, retry.
            if read.first() == Some(&None) {
                self.wait_mirror(|m| !m.records.contains_key(name)).await;
                return Err(RegistryError::NotFound(name.clone()));
            }
            let gone: Vec<&UnitName> = sharers
                .iter()
                .zip(read.iter().skip(2))
                .filter(|(_, r)| r.is_none())
                .map(|(n, _)| n)
                .collect();
            if !gone.is_empty() {
                self.wait_mirror(|m| gone.iter().all(|n| !m.records.contains_key(*n)))
                    .await;
            }
            match read.into_iter().flatten().max() {
                Some(rev) => self.wait_revision(rev).await,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
            tracing::debug!(unit = %name, hash = %old_hash, "compare failed, retrying");
        }
        Err(RegistryError::Conflict(name.clone()))
    }

    pub(super) async fn txn(&self, txn: Txn) -> Result<TxnResponse, RegistryError> {
        let mut kv = self.etcd_client()?.kv_client();
        let timeout = self.shared.opts().request_timeout;
        let m = crate::metrics::global();
        let op = crate::metrics::EtcdOp::RegistryTxn;
        match tokio::time::timeout(timeout, m.time_etcd(op, kv.txn(txn))).await {
            Err(_) => {
                m.etcd_timeout(op, timeout);
                self.shared.suspect.notify_one();
                Err(RegistryError::Unavailable(format!(
                    "etcd request timed out after {timeout:?}"
                )))
            }
            Ok(Err(e)) => {
                let e = classify(e);
                if let RegistryError::NoSpace(m) = &e {
                    tracing::error!("etcd refused a write: {m} (NOSPACE alarm)");
                }
                if matches!(e, RegistryError::Unavailable(_)) {
                    self.shared.suspect.notify_one();
                }
                Err(e)
            }
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Waits until the mirror has applied `revision` (read-your-writes). Gives up quietly after a
    /// few request timeouts or when the registry becomes unavailable: the write itself is done.
    async fn wait_revision(&self, revision: i64) {
        self.wait_mirror(|m| m.revision >= revision).await
    }

    async fn wait_mirror(&self, pred: impl Fn(&Mirror) -> bool) {
        let mut rx = self.subscribe();
        let deadline = tokio::time::Instant::now() + self.shared.opts().request_timeout * 5;
        loop {
            {
                let status = rx.borrow_and_update();
                if !status.available {
                    return;
                }
                let m = self.shared.mirror.read().unwrap_or_else(|e| e.into_inner());
                if pred(&m) {
                    return;
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    tracing::warn!("the etcd watch did not deliver our own write in time");
                    return;
                }
            }
        }
    }
}

fn record_json(name: &UnitName, hash: &UnitHash, state: DesiredState) -> String {
    serde_json::to_string(&UnitRecord {
        name: name.to_string(),
        hash: hash.to_string(),
        desired_state: state,
    })
    .expect("a unit record serializes")
}
