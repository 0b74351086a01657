//! Unit writes merged into shared transactions.
//!
//! fleet's API v1 takes one unit per `PUT`, so a `fleetctl submit`, `load` or `start` of 1,000 units is
//! 1,000 requests (ours sends up to 16 at once, the original fleetctl one by one or concurrently), and each
//! was one etcd transaction: one raft entry, one revision, one watch event that every agent's mirror applies
//! and reacts to. Here the writes that arrive while a transaction is in flight wait, and go together in the
//! next one: each keeps its own compares and operations, and gets its own result, exactly as if it had
//! been sent alone:
//!
//! - every compare holds: all applied, at one revision;
//! - some compare fails: nothing is applied; the failure branch reads every key compared, at that
//!   revision, so the writes whose compares failed are known: each gets the reads of its own keys (what a
//!   transaction of its own would have returned), and the others go again, without them;
//! - etcd unavailable: every write of the transaction fails with that error, as each would alone;
//! - etcd refuses it for another reason (too large, too many operations, NOSPACE): each write is sent
//!   alone, so the refusal fails only the writes it concerns.
//!
//! Writes in one transaction touch disjoint keys (a key compared, deleted or put by one is not compared,
//! deleted or put by another; only puts of the same value to the same key, the content that units share,
//! go together, written once), so the merged transaction is each write applied in turn. A write that
//! conflicts waits for the next transaction, and so does every later write touching its keys, so writes
//! to one key go in the order they came. A single write waits for nothing: it is sent at once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::*;

/// At most this many compares, operations and reads each in one merged transaction (etcd 3.4 refuses
/// more than `--max-txn-ops`, 128 by default, in any of the three; the claims use the same bound).
const OPS_PER_TXN: usize = 100;

/// What a write expects of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    /// The key does not exist (`create_revision == 0`).
    Absent,
    /// The key was last written at this revision.
    ModRevision(i64),
}

/// A change of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op {
    Put(String, String),
    Delete(String),
}

/// One unit write: applied whole if every expectation holds, else not at all.
#[derive(Debug, Clone)]
pub(super) struct UnitWrite {
    pub expects: Vec<(String, Expect)>,
    pub ops: Vec<Op>,
    /// Keys read back when a compare fails (their `mod_revision`s are the caller's to interpret).
    pub reads: Vec<String>,
}

/// What became of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Applied at this revision.
    Applied(i64),
    /// A compare failed, nothing was written: the `mod_revision` of each of `reads` then (None: absent).
    Failed(Vec<Option<i64>>),
}

impl UnitWrite {
    /// Keys this write compares or deletes, and keys it puts with their values.
    fn keys(&self) -> (Vec<&str>, Vec<(&str, &str)>) {
        let mut exclusive: Vec<&str> = self.expects.iter().map(|(k, _)| k.as_str()).collect();
        let mut puts = Vec::new();
        for op in &self.ops {
            match op {
                Op::Put(k, v) => puts.push((k.as_str(), v.as_str())),
                Op::Delete(k) => exclusive.push(k.as_str()),
            }
        }
        (exclusive, puts)
    }

    /// The request bytes this write adds to a transaction (keys and values, and a generous framing).
    fn bytes(&self) -> usize {
        let ops: usize = self
            .ops
            .iter()
            .map(|o| match o {
                Op::Put(k, v) => k.len() + v.len(),
                Op::Delete(k) => k.len(),
            })
            .sum();
        let keys: usize = self.expects.iter().map(|(k, _)| k.len()).sum::<usize>()
            + self.reads.iter().map(String::len).sum::<usize>();
        ops + keys + 32 * (self.ops.len() + self.expects.len() + self.reads.len())
    }

    /// Whether every expectation holds against `read` (key → `mod_revision`, absent keys missing).
    fn holds(&self, read: &BTreeMap<String, i64>) -> bool {
        self.expects.iter().all(|(k, e)| match e {
            Expect::Absent => !read.contains_key(k),
            Expect::ModRevision(r) => read.get(k) == Some(r),
        })
    }
}

struct Pending {
    write: UnitWrite,
    /// Send in a transaction of its own (a merged one carrying it was refused).
    alone: bool,
    reply: oneshot::Sender<Result<Outcome, RegistryError>>,
}

/// The writes waiting for the next transaction.
#[derive(Default)]
pub(super) struct Merger {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Pending>,
    /// A task is sending transactions; it takes what waits when its transaction is done.
    running: bool,
}

impl Merger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Takes the next transaction's writes off `waiting`: the first, then every later one that fits and
/// touches no key of a write taken or left waiting before it.
fn take_batch(waiting: &mut VecDeque<Pending>, max_bytes: usize) -> Vec<Pending> {
    let Some(first) = waiting.pop_front() else {
        return Vec::new();
    };
    if first.alone {
        return vec![first];
    }
    let mut exclusive: BTreeSet<String> = BTreeSet::new();
    let mut puts: BTreeMap<String, String> = BTreeMap::new();
    let (mut compares, mut ops, mut reads, mut bytes) = (0, 0, 0, 0);
    let mut take = |w: &UnitWrite,
                    exclusive: &mut BTreeSet<String>,
                    puts: &mut BTreeMap<String, String>,
                    check: bool|
     -> bool {
        let (ex, ps) = w.keys();
        let new_puts = ps.iter().filter(|(k, _)| !puts.contains_key(*k)).count();
        let fits = compares + w.expects.len() <= OPS_PER_TXN
            && ops + ex.len() - w.expects.len() + new_puts <= OPS_PER_TXN
            && reads + w.reads.len() <= OPS_PER_TXN
            && bytes + w.bytes() <= max_bytes;
        let free = ex
            .iter()
            .all(|k| !exclusive.contains(*k) && !puts.contains_key(*k))
            && ps
                .iter()
                .all(|(k, v)| !exclusive.contains(*k) && puts.get(*k).is_none_or(|p| p == v));
        let ok = !check || (fits && free);
        if ok {
            compares += w.expects.len();
            ops += ex.len() - w.expects.len() + new_puts;
            reads += w.reads.len();
            bytes += w.bytes();
        }
        // Taken or left waiting, its keys are the ones later writes must not touch in this batch; a
        // taken write's puts may be shared (same value).
        for k in ex {
            exclusive.insert(k.to_string());
        }
        for (k, v) in ps {
            if ok {
                puts.insert(k.to_string(), v.to_string());
            } else {
                exclusive.insert(k.to_string());
            }
        }
        ok
    };
    take(&first.write, &mut exclusive, &mut puts, false);
    let mut batch = vec![first];
    let mut rest = VecDeque::with_capacity(waiting.len());
    while let Some(p) = waiting.pop_front() {
        if !p.alone && take(&p.write, &mut exclusive, &mut puts, true) {
            batch.push(p);
        } else {
            if p.alone {
                let (ex, ps) = p.write.keys();
                exclusive.extend(ex.into_iter().map(str::to_string));
                exclusive.extend(ps.into_iter().map(|(k, _)| k.to_string()));
            }
            rest.push_back(p);
        }
    }
    *waiting = rest;
    batch
}

/// The one transaction of `writes` (keys disjoint but for shared puts of one value).
fn merged_txn(writes: &[&UnitWrite]) -> Txn {
    let mut compares = Vec::new();
    let mut ops = Vec::new();
    let mut put: BTreeSet<&str> = BTreeSet::new();
    let mut reads: BTreeSet<&str> = BTreeSet::new();
    for w in writes {
        for (k, e) in &w.expects {
            compares.push(match e {
                Expect::Absent => Compare::create_revision(k.as_str(), CompareOp::Equal, 0),
                Expect::ModRevision(r) => Compare::mod_revision(k.as_str(), CompareOp::Equal, *r),
            });
        }
        for op in &w.ops {
            match op {
                Op::Put(k, v) => {
                    if put.insert(k) {
                        ops.push(TxnOp::put(k.as_str(), v.as_str(), None));
                    }
                }
                Op::Delete(k) => ops.push(TxnOp::delete(k.as_str(), None)),
            }
        }
        reads.extend(w.reads.iter().map(String::as_str));
        reads.extend(w.expects.iter().map(|(k, _)| k.as_str()));
    }
    let reads: Vec<TxnOp> = reads.into_iter().map(|k| TxnOp::get(k, None)).collect();
    Txn::new().when(compares).and_then(ops).or_else(reads)
}

/// The keys the failure branch read, with their `mod_revision`s (absent keys missing); None when a
/// read did not come back as asked (never expected).
fn failure_reads(resp: &TxnResponse) -> Option<BTreeMap<String, i64>> {
    let mut read = BTreeMap::new();
    for r in resp.op_responses() {
        let TxnOpResponse::Get(g) = r else {
            return None;
        };
        for kv in g.kvs() {
            read.insert(
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.mod_revision(),
            );
        }
    }
    Some(read)
}

impl Registry {
    /// Sends `write` with the writes that arrive meanwhile (module doc) and returns its own outcome.
    pub(super) async fn write_merged(&self, write: UnitWrite) -> Result<Outcome, RegistryError> {
        let (reply, rx) = oneshot::channel();
        self.shared.unit_writes.fetch_add(1, Ordering::Relaxed);
        let start = {
            let mut q = self.shared.merger.lock();
            q.waiting.push_back(Pending {
                write,
                alone: false,
                reply,
            });
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let r = self.clone();
            tokio::spawn(async move { r.send_merged().await });
        }
        rx.await.unwrap_or_else(|_| {
            Err(RegistryError::Unavailable(
                "the registry stopped before the write was sent".into(),
            ))
        })
    }

    /// Sends transactions until no write waits.
    async fn send_merged(&self) {
        // Should this task end early (a panic), the waiting writes fail instead of waiting forever.
        struct Running<'a>(&'a Merger);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                let mut q = self.0.lock();
                q.running = false;
                q.waiting.clear();
            }
        }
        let merger = &self.shared.merger;
        let running = Running(merger);
        loop {
            let max_bytes = self
                .shared
                .opts()
                .max_request_bytes
                .saturating_sub(TXN_OVERHEAD);
            let batch = {
                let mut q = merger.lock();
                let batch = take_batch(&mut q.waiting, max_bytes);
                if batch.is_empty() {
                    q.running = false;
                    std::mem::forget(running);
                    return;
                }
                batch
            };
            let again = self.send_batch(batch).await;
            if !again.is_empty() {
                let mut q = merger.lock();
                for p in again.into_iter().rev() {
                    q.waiting.push_front(p);
                }
            }
        }
    }

    /// Sends one transaction of `batch`, answers the writes it settles and returns the others.
    async fn send_batch(&self, batch: Vec<Pending>) -> Vec<Pending> {
        let writes: Vec<&UnitWrite> = batch.iter().map(|p| &p.write).collect();
        let txn = merged_txn(&writes);
        let n = batch.len();
        self.shared.unit_write_txns.fetch_add(1, Ordering::Relaxed);
        let resp = match self.txn(txn).await {
            Ok(r) => r,
            Err(e) if n == 1 || matches!(e, RegistryError::Unavailable(_)) => {
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
                return Vec::new();
            }
            Err(e) => {
                tracing::debug!(
                    writes = n,
                    "merged unit writes refused, sending them alone: {e}"
                );
                return batch
                    .into_iter()
                    .map(|p| Pending { alone: true, ..p })
                    .collect();
            }
        };
        if resp.succeeded() {
            let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            for p in batch {
                let _ = p.reply.send(Ok(Outcome::Applied(rev)));
            }
            return Vec::new();
        }
        let read = failure_reads(&resp);
        let mut again = Vec::new();
        for p in batch {
            let failed = match &read {
                Some(read) => n == 1 || !p.write.holds(read),
                None => n == 1,
            };
            if failed {
                let read = read.clone().unwrap_or_default();
                let revs = p.write.reads.iter().map(|k| read.get(k).copied()).collect();
                let _ = p.reply.send(Ok(Outcome::Failed(revs)));
            } else {
                again.push(p);
            }
        }
        if again.len() == n {
            // No compare was seen failing (the reads did not come back as asked): one by one.
            return again
                .into_iter()
                .map(|p| Pending { alone: true, ..p })
                .collect();
        }
        again
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(expects: &[(&str, Expect)], ops: &[Op]) -> Pending {
        let (reply, _) = oneshot::channel();
        Pending {
            write: UnitWrite {
                expects: expects.iter().map(|(k, e)| (k.to_string(), *e)).collect(),
                ops: ops.to_vec(),
                reads: expects.iter().map(|(k, _)| k.to_string()).collect(),
            },
            alone: false,
            reply,
        }
    }

    fn put(k: &str, v: &str) -> Op {
        Op::Put(k.into(), v.into())
    }

    fn create(unit: &str, content: &str) -> Pending {
        write(
            &[(unit, Expect::Absent)],
            &[put(&format!("f/{content}"), content), put(unit, content)],
        )
    }

    fn names(batch: &[Pending]) -> Vec<String> {
        batch.iter().map(|p| p.write.expects[0].0.clone()).collect()
    }

    #[test]
    fn writes_of_other_keys_go_together_and_shared_content_is_put_once() {
        let mut q: VecDeque<Pending> = ["a", "b", "c"].iter().map(|u| create(u, "same")).collect();
        let batch = take_batch(&mut q, usize::MAX);
        assert_eq!(names(&batch), ["a", "b", "c"]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_write_touching_a_key_of_an_earlier_one_waits_and_so_do_later_ones_on_its_keys() {
        let mut q: VecDeque<Pending> = VecDeque::new();
        q.push_back(create("a", "x"));
        // Sets a's state: compares a, which the create puts.
        q.push_back(write(&[("a", Expect::ModRevision(5))], &[put("a", "y")]));
        q.push_back(create("b", "y"));
        // Destroys c, deleting the content b puts (garbage collection of content c shared).
        q.push_back(write(
            &[
                ("c", Expect::ModRevision(3)),
                ("f/y", Expect::ModRevision(2)),
            ],
            &[Op::Delete("c".into()), Op::Delete("f/y".into())],
        ));
        q.push_back(create("d", "z"));
        let batch = take_batch(&mut q, usize::MAX);
        assert_eq!(names(&batch), ["a", "b", "d"]);
        assert_eq!(names(&Vec::from(q)), ["a", "c"]);
    }

    #[test]
    fn a_batch_stays_within_etcds_limits() {
        let mut q: VecDeque<Pending> = (0..120)
            .map(|i| create(&format!("u{i}"), &format!("{i}")))
            .collect();
        // Two puts each: 50 writes make 100 operations.
        assert_eq!(take_batch(&mut q, usize::MAX).len(), 50);
        let three: usize = q.iter().take(3).map(|p| p.write.bytes()).sum();
        assert_eq!(take_batch(&mut q, three).len(), 3);
        q.front_mut().unwrap().alone = true;
        assert_eq!(take_batch(&mut q, usize::MAX).len(), 1);
    }

    #[test]
    fn a_failed_write_is_told_apart_by_its_own_keys() {
        let ok = create("a", "x").write;
        let taken = create("b", "y").write;
        let stale = write(&[("c", Expect::ModRevision(4))], &[put("c", "z")]).write;
        let read: BTreeMap<String, i64> = [("b".to_string(), 7), ("c".to_string(), 9)].into();
        assert!(ok.holds(&read));
        assert!(!taken.holds(&read));
        assert!(!stale.holds(&read));
        let read: BTreeMap<String, i64> = [("c".to_string(), 4)].into();
        assert!(stale.holds(&read));
    }
}
