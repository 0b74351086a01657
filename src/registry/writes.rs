//! The registry's writes: each one etcd transaction with compares, retried on a concurrent change, then
//! read back through the mirror (read-your-writes).

use super::*;

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
        let txn = Txn::new()
            .when([Compare::create_revision(rk.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(keys.unit_file(&hash), file.serialize(), None),
                TxnOp::put(rk.clone(), record_json(name, &hash, state), None),
            ])
            .or_else([TxnOp::get(rk, None)]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            self.wait_revision(header_revision(&resp)).await;
            Ok(())
        } else {
            if let Some(rev) = else_max_mod_revision(&resp) {
                self.wait_revision(rev).await;
            }
            Err(RegistryError::AlreadyExists(name.clone()))
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
            let (txn, old_hash) = {
                let m = self.mirror()?;
                let Some(cur) = m.records.get(name) else {
                    return Err(RegistryError::NotFound(name.clone()));
                };
                let mut compares = vec![Compare::mod_revision(
                    rk.clone(),
                    CompareOp::Equal,
                    cur.mod_revision,
                )];
                let mut ops = Vec::new();
                let new_hash = match &op {
                    RecordOp::Replace(file, state) => {
                        let h = file.hash();
                        ops.push(TxnOp::put(keys.unit_file(&h), file.serialize(), None));
                        ops.push(TxnOp::put(
                            rk.clone(),
                            record_json(name, &h, state.unwrap_or(cur.desired_state)),
                            None,
                        ));
                        Some(h)
                    }
                    RecordOp::SetState(state) => {
                        ops.push(TxnOp::put(
                            rk.clone(),
                            record_json(name, &cur.hash, *state),
                            None,
                        ));
                        Some(cur.hash)
                    }
                    RecordOp::Destroy => {
                        ops.push(TxnOp::delete(rk.clone(), None));
                        None
                    }
                };
                if new_hash != Some(cur.hash) && !m.hash_referenced(&cur.hash, name) {
                    if let Some(f) = m.files.get(&cur.hash) {
                        let fk = keys.unit_file(&cur.hash);
                        compares.push(Compare::mod_revision(
                            fk.clone(),
                            CompareOp::Equal,
                            f.mod_revision,
                        ));
                        ops.push(TxnOp::delete(fk, None));
                    }
                }
                let txn = Txn::new().when(compares).and_then(ops).or_else([
                    TxnOp::get(rk.clone(), None),
                    TxnOp::get(keys.unit_file(&cur.hash), None),
                ]);
                (txn, cur.hash)
            };
            let resp = self.txn(txn).await?;
            if resp.succeeded() {
                self.wait_revision(header_revision(&resp)).await;
                return Ok(());
            }
            // A compare failed: somebody changed the record or the old content. Catch up, retry.
            let record_gone = match resp.op_responses().first() {
                Some(TxnOpResponse::Get(g)) => g.kvs().is_empty(),
                _ => false,
            };
            if record_gone {
                self.wait_mirror(|m| !m.records.contains_key(name)).await;
                return Err(RegistryError::NotFound(name.clone()));
            }
            match else_max_mod_revision(&resp) {
                Some(rev) => self.wait_revision(rev).await,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
            tracing::debug!(unit = %name, hash = %old_hash, "compare failed, retrying");
        }
        Err(RegistryError::Conflict(name.clone()))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, RegistryError> {
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

fn header_revision(resp: &TxnResponse) -> i64 {
    resp.header().map(|h| h.revision()).unwrap_or(0)
}

/// The newest `mod_revision` among the keys read by the `or_else` branch.
fn else_max_mod_revision(resp: &TxnResponse) -> Option<i64> {
    resp.op_responses()
        .iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().iter().map(|kv| kv.mod_revision()).max(),
            _ => None,
        })
        .max()
}
