//! The registry's session with etcd: connect, read the prefix (whole or the changes since the mirror's
//! revision), keep one watch on it and apply every event to the mirror; on any failure, back off,
//! move to another endpoint and start again.

use super::*;

/// How a session ended.
struct SessionEnd {
    /// What happened (logged, and shown as the reason of `Unavailable`).
    reason: String,
    /// The endpoint in use is suspect: the next session tries the next one.
    rotate: bool,
}

impl SessionEnd {
    /// A failure of the endpoint in use: the next session tries the next one, unless the member
    /// answered that its leader changed during the request (an election just ended: it has a leader
    /// again, or the retry says "no leader" and moves on). Moving on from a member that answers can
    /// land on one that does not (frozen: its connection opens and then nothing comes back for a
    /// request timeout).
    fn endpoint(reason: impl Into<String>) -> SessionEnd {
        let reason = reason.into();
        SessionEnd {
            rotate: !reason.contains("leader changed"),
            reason,
        }
    }
}

impl From<String> for SessionEnd {
    fn from(reason: String) -> SessionEnd {
        SessionEnd::endpoint(reason)
    }
}

impl From<&str> for SessionEnd {
    fn from(reason: &str) -> SessionEnd {
        SessionEnd::endpoint(reason)
    }
}

/// A random number (for the first endpoint: agents spread over etcd's members).
pub(super) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// How long the session's member may answer progress requests with a revision below one the cluster is
/// known to have reached before the session moves to another member.
const BEHIND_LIMIT: Duration = Duration::from_millis(300);

/// How often the same reason for not reaching etcd is logged (at WARN or ERROR).
const LOG_AGAIN: Duration = Duration::from_secs(60);

/// Whether `reason` (from [`describe`] or the TLS diagnosis) is about fleetd's etcd settings or
/// etcd's users and roles rather than about etcd being down.
fn is_settings_problem(reason: &str) -> bool {
    [
        "etcd_cafile",
        "etcd_certfile",
        "etcd_username",
        "role must grant",
        "does not speak TLS",
        "use https://",
        "certificate",
    ]
    .iter()
    .any(|w| reason.contains(w))
}

/// Why a session attempt was abandoned when the lease keeper reached etcd again.
const ETCD_BACK: &str = "etcd answers the lease keeper again";

/// The background task: sessions, each pinned to one endpoint, separated by backoff. A session that
/// fails moves to the next endpoint after `backoff_min`; only when a whole round of endpoints failed
/// does the delay grow (doubling up to `backoff_max`). When the lease keeper, which tries every
/// keep-alive period on connections of its own, is answered again after a loss
/// ([`Registry::etcd_answers_again`]), the backoff is cut short and an attempt still being set up is
/// started afresh: the watch follows within a few round trips instead of up to `backoff_max` plus a
/// connect timeout.
pub(super) async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = shared.opts().backoff_min;
    let mut failures = 0usize;
    let mut logged: std::collections::HashMap<String, std::time::Instant> = Default::default();
    loop {
        let mut reached = false;
        let Some(result) = attempt(&shared, &mut shutdown, &mut reached).await else {
            return;
        };
        let end = match result {
            Ok(()) => return,
            Err(e) if e.reason == ETCD_BACK => {
                tracing::debug!("etcd answers the lease keeper again: connecting afresh");
                continue;
            }
            Err(e) => e,
        };
        *shared.client.write().unwrap_or_else(|e| e.into_inner()) = None;
        let was_available = shared.status.borrow().available;
        shared.status.send_modify(|s| {
            s.available = false;
            s.error = Some(end.reason.clone());
        });
        let opts = shared.opts();
        let n = opts.endpoints.len().max(1);
        let from = shared.endpoint_in_use();
        if end.rotate && n > 1 {
            shared.endpoint.fetch_add(1, Ordering::Relaxed);
            shared.endpoint_switches.fetch_add(1, Ordering::Relaxed);
        }
        if reached {
            backoff = opts.backoff_min;
            failures = 0;
        }
        failures += 1;
        let delay = if failures < n {
            opts.backoff_min
        } else {
            let d = backoff;
            backoff = (backoff * 2).min(opts.backoff_max);
            d
        };
        let to = shared.endpoint_in_use();
        if was_available {
            tracing::warn!("lost etcd at {from}: {}; reconnecting to {to}", end.reason);
        } else if logged
            .get(&end.reason)
            .is_some_and(|at| at.elapsed() < LOG_AGAIN)
        {
            tracing::debug!(
                "etcd at {from} not usable: {}; trying {to} in {delay:?}",
                end.reason
            );
        } else {
            // Each distinct reason once a minute: a wrong certificate, password or role is an
            // operator's to fix, and retrying will not.
            if is_settings_problem(&end.reason) {
                tracing::error!("cannot use etcd: {}", end.reason);
            } else {
                tracing::warn!("cannot use etcd: {}; retrying", end.reason);
            }
            logged.retain(|_, at| at.elapsed() < LOG_AGAIN);
            logged.insert(end.reason.clone(), std::time::Instant::now());
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // etcd is reachable again (the backoff has grown to `backoff_max` in a long outage).
            _ = shared.etcd_back.notified() => {}
            _ = shared.reconnect.notified() => { backoff = opts.backoff_min; failures = 0; }
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// One session, raced against a reconfiguration, shutdown (`None`) and the lease keeper's news that
/// etcd answers again: an attempt not set up yet (it may have begun while the network was down, and
/// wait for its lost SYN's connect timeout) ends, to start afresh at once.
async fn attempt(
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
    reached: &mut bool,
) -> Option<Result<(), SessionEnd>> {
    let mut attempt = std::pin::pin!(session(shared, reached));
    loop {
        tokio::select! {
            r = &mut attempt => return Some(r),
            _ = shared.reconnect.notified() => return Some(Err(SessionEnd {
                reason: "reconnecting with new settings".into(),
                rotate: false,
            })),
            _ = shared.etcd_back.notified() => {
                if !shared.status.borrow().available {
                    return Some(Err(SessionEnd {
                        reason: ETCD_BACK.into(),
                        rotate: false,
                    }));
                }
            }
            _ = shutdown.wait_for(|s| *s) => return None,
        }
    }
}

async fn timed<T>(
    timeout: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, f).await {
        Err(_) => Err(format!("{what}: timed out after {timeout:?}")),
        Ok(Err(e)) => Err(format!("{what}: {}", describe(&e))),
        Ok(Ok(v)) => Ok(v),
    }
}

/// An etcd error as a sentence that says what is wrong (passwords, permissions), with the causes
/// gRPC keeps in its source chain (the TLS alert of a refused certificate, a refused connection).
fn describe(e: &etcd_client::Error) -> String {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(s) => {
            let m = s.message();
            match s.code() {
                Code::PermissionDenied => format!(
                    "{m} (the etcd user's role must grant readwrite on fleet's key prefix: see docs/etcd-layout.md)"
                ),
                Code::InvalidArgument if m.contains("authentication failed") => {
                    format!("{m} (check etcd_username and etcd_password)")
                }
                Code::Unauthenticated => format!("{m} (check etcd_username and etcd_password)"),
                Code::FailedPrecondition if m.contains("authentication is not enabled") => format!(
                    "{m} (etcd_username/etcd_password are set but etcd has no users: enable auth in etcd or remove them)"
                ),
                _ => with_sources(m.to_string(), std::error::Error::source(s)),
            }
        }
        other => with_sources(other.to_string(), std::error::Error::source(other)),
    }
}

fn with_sources(
    mut text: String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

/// A failure to set a session up, explained: for `https://` endpoints whose failure looks like the
/// connection's, a TLS check of our own names the certificate problem.
async fn explain_setup_failure(endpoint: &str, opts: &RegistryOptions, reason: String) -> String {
    let r = reason.to_ascii_lowercase();
    let connection_like = [
        "transport error",
        "operation was canceled",
        "tls",
        "certificate",
        "connection",
        "broken pipe",
        "timed out",
    ]
    .iter()
    .any(|w| r.contains(w));
    if !connection_like {
        return format!("{endpoint}: {reason}");
    }
    if endpoint.starts_with("https://") {
        if let Some(d) = diagnose::tls_problem(endpoint, opts).await {
            return format!("{endpoint}: {d}");
        }
    } else if !r.contains("tcp connect error")
        && (r.contains("broken pipe")
            || r.contains("connection reset")
            || r.contains("frame")
            || r.contains("http2"))
    {
        return format!(
            "{endpoint}: {reason} (if etcd serves TLS, use https:// URLs and set etcd_cafile)"
        );
    }
    format!("{endpoint}: {reason}")
}

/// One connection to one endpoint: resume the watch from the mirror's revision (or read the whole
/// prefix), then apply events until something breaks. Returns why it ended.
///
/// Long on purpose: connect, the initial read (delta or full), the watch's set-up and its event loop
/// (events, progress notifications for `synced`, the endpoint probe, compaction, shutdown) share the
/// session's state and its one `select!`; split apart they would pass that state around by hand.
async fn session(shared: &Shared, reached: &mut bool) -> Result<(), SessionEnd> {
    let (opts, keys) = shared
        .config
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let t = opts.request_timeout;
    let prefix = keys.prefix().to_string();
    let endpoint = shared.endpoint_in_use();
    let copts = opts.connect_options().map_err(|e| SessionEnd {
        reason: e.to_string(),
        rotate: false,
    })?;
    // With etcd users, connecting includes an Authenticate call, which etcd answers only after a bcrypt
    // check (slow by design, and slower on a loaded machine): it gets three request timeouts.
    let connect_t = if opts.user.is_some() { t * 3 } else { t };
    let client = match timed(
        connect_t,
        "connect",
        Client::connect([endpoint.clone()], Some(copts)),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return Err(explain_setup_failure(&endpoint, &opts, e).await.into()),
    };

    // A mirror of this prefix is brought up to date with what changed while away (a delta read);
    // otherwise (first session, new prefix, compaction) the whole prefix is read.
    let delta_from = {
        let m = shared.mirror.read().unwrap_or_else(|e| e.into_inner());
        (m.prefix == prefix && m.revision > 0).then_some(m.revision)
    };
    let read = match delta_from {
        Some(since) => delta_read(shared, &client, &keys, since, t)
            .await
            .map(|rev| (rev, None)),
        None => full_read(&client, &keys, t)
            .await
            .map(|m| (m.revision, Some(m))),
    };
    let read = match read {
        Ok(r) => r,
        Err(e) if e.rotate => {
            return Err(explain_setup_failure(&endpoint, &opts, e.reason)
                .await
                .into())
        }
        Err(e) => return Err(e),
    };
    let (revision, delta) = match read {
        (rev, None) => (rev, true),
        (_, Some(mirror)) => {
            let rev = mirror.revision;
            let mut mirror = mirror;
            let mut old = shared.mirror.write().unwrap_or_else(|e| e.into_inner());
            if old.prefix == mirror.prefix {
                // Garbage that replaced a good value while away keeps that value.
                mirror.adopt_last_good(&old);
            }
            *old = mirror;
            drop(old);
            shared.full_reads.fetch_add(1, Ordering::Relaxed);
            (rev, false)
        }
    };
    let mut wc = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
    let mut stream = timed(
        t,
        "watch",
        wc.watch(
            prefix.clone(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1)
                    .with_progress_notify(),
            ),
        ),
    )
    .await?;
    let first = timed(t, "watch", stream.message())
        .await?
        .ok_or("watch stream closed at once")?;
    if !first.created() || first.canceled() {
        if first.compact_revision() > 0 {
            return Err(compacted(shared, first.compact_revision()));
        }
        return Err(format!("watch not created: {}", first.cancel_reason()).into());
    }
    let units = shared
        .mirror
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .records
        .len();
    *shared.client.write().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
    shared.status.send_modify(|s| {
        s.available = true;
        s.revision = revision;
        s.synced = revision;
        s.error = None;
    });
    *reached = true;
    tracing::info!(%endpoint, %prefix, revision, units, delta, "connected to etcd");

    // Liveness: a member that answers nothing (frozen, its host gone) keeps the TCP connection open.
    // When the watch has been silent for `probe_interval`, ask it for a progress notification (the
    // member answers it locally, no raft round); no answer within the request timeout ends the
    // session. A member cut off from its quorum is noticed by etcd itself: with `require_leader` it
    // cancels our streams once it has no leader ("etcdserver: no leader"). A failed write
    // ([`Shared::suspect`]) triggers a linearizable check of the endpoint.
    let mut last_message = tokio::time::Instant::now();
    let mut probe_sent: Option<tokio::time::Instant> = None;
    let mut progress_seen = 0i64;
    // Since when this member's progress answers stay below a revision the cluster is known to have
    // reached (a lease confirmation's, from another connection): the member is behind, most likely
    // cut off from its quorum (it answers progress requests locally, from its own store).
    let mut behind: Option<(tokio::time::Instant, i64, u32)> = None;
    let mut tick = tokio::time::interval(opts.probe_interval.min(t).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            msg = stream.message() => msg,
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                match probe_sent {
                    Some(at) if now.duration_since(at) >= t => {
                        return Err(format!(
                            "{endpoint} did not answer a watch progress request within {t:?}"
                        ).into());
                    }
                    Some(_) => {}
                    None if now.duration_since(last_message) >= opts.probe_interval => {
                        stream.request_progress().await.map_err(|e| format!("watch: {e}"))?;
                        probe_sent = Some(now);
                    }
                    None => {}
                }
                continue;
            }
            _ = shared.suspect.notified() => {
                check_endpoint(&client, &keys, t).await.map_err(|e| format!("{endpoint}: {e}"))?;
                continue;
            }
            _ = shared.progress_wanted.notified() => {
                let want = shared.want_synced.load(Ordering::Relaxed);
                if probe_sent.is_none() && shared.status.borrow().synced < want {
                    stream.request_progress().await.map_err(|e| format!("watch: {e}"))?;
                    probe_sent = Some(tokio::time::Instant::now());
                }
                continue;
            }
        };
        last_message = tokio::time::Instant::now();
        probe_sent = None;
        let msg = msg.map_err(|e| format!("watch: {}", describe(&e)))?;
        let Some(resp) = msg else {
            return Err("watch stream ended".into());
        };
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return Err(compacted(shared, resp.compact_revision()));
            }
            return Err(format!("watch canceled: {}", resp.cancel_reason()).into());
        }
        if resp.events().is_empty() {
            // A progress notification: every change under the prefix up to its revision R has been
            // sent. Before etcd 3.4.24 a requested one may overtake the event of the write at R
            // itself (etcd bumps the revision before it notifies watchers), so it proves R − 1; a
            // second one with the same R, produced after the first reached us, proves R.
            let r = resp.header().map(|h| h.revision()).unwrap_or(0);
            let proven = if progress_seen == r { r } else { r - 1 };
            progress_seen = r;
            shared.status.send_if_modified(|s| {
                let changed = proven > s.synced;
                s.synced = s.synced.max(proven);
                changed
            });
            let want = shared.want_synced.load(Ordering::Relaxed);
            // Behind a fixed target (the revision wanted when it first fell behind: newer writes
            // must not keep a healthy member "behind").
            match &mut behind {
                Some((_, target, _)) if progress_seen >= *target => behind = None,
                Some((since, target, answers)) => {
                    *answers += 1;
                    if *answers >= 2 && since.elapsed() >= BEHIND_LIMIT {
                        return Err(format!(
                            "{endpoint} is behind the cluster (its revision {progress_seen} < {target} for {:?}): cut off from its quorum?",
                            since.elapsed()
                        )
                        .into());
                    }
                }
                None if progress_seen < want => {
                    behind = Some((tokio::time::Instant::now(), want, 1));
                }
                None => {}
            }
            if shared.status.borrow().synced < want && progress_seen >= want {
                // One more notification proves `want` itself.
                stream
                    .request_progress()
                    .await
                    .map_err(|e| format!("watch: {e}"))?;
                probe_sent = Some(tokio::time::Instant::now());
            }
            continue;
        }
        let mut newest = 0;
        {
            let mut m = shared.mirror.write().unwrap_or_else(|e| e.into_inner());
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                newest = newest.max(kv.mod_revision());
                let change = match ev.event_type() {
                    EventType::Put => Change::Put {
                        key: kv.key(),
                        value: kv.value(),
                        mod_revision: kv.mod_revision(),
                        create_revision: kv.create_revision(),
                        lease: kv.lease(),
                    },
                    EventType::Delete => Change::Delete { key: kv.key() },
                };
                m.apply(&keys, change);
            }
            if newest > m.revision {
                m.revision = newest;
            }
        }
        shared.status.send_modify(|s| {
            if newest > s.revision {
                s.revision = newest;
            }
            s.synced = s.synced.max(newest);
        });
    }
}

/// The watch fell behind etcd's compacted history (a slow watcher): the next session reads the whole
/// prefix again. Units are not touched: the registry is only unavailable meanwhile.
fn compacted(shared: &Shared, compact_revision: i64) -> SessionEnd {
    shared.compactions.fetch_add(1, Ordering::Relaxed);
    shared
        .mirror
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .revision = 0;
    tracing::warn!(
        compact_revision,
        "etcd compacted revisions the watch still needed: reading the whole prefix again"
    );
    SessionEnd {
        reason: format!("watch canceled: revision compacted at {compact_revision}"),
        rotate: false,
    }
}

/// Reads the whole prefix into a fresh mirror: pages of [`READ_PAGE`] keys, the first one linearizable
/// (its revision R is the mirror's), the others at R, so that no single response grows with the
/// number of units.
async fn full_read(client: &Client, keys: &Keys, t: Duration) -> Result<Mirror, SessionEnd> {
    let prefix = keys.prefix().to_string();
    let end = prefix_end(&prefix);
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let mut mirror = Mirror {
        prefix: prefix.clone(),
        ..Mirror::default()
    };
    let mut from = prefix.clone().into_bytes();
    let mut revision = 0;
    loop {
        let mut o = GetOptions::new()
            .with_range(end.clone())
            .with_limit(READ_PAGE);
        if revision > 0 {
            o = o.with_revision(revision);
        }
        let resp = timed(t * 5, "read prefix", kv.get(from.clone(), Some(o))).await?;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        for kv in resp.kvs() {
            mirror.apply(
                keys,
                Change::Put {
                    key: kv.key(),
                    value: kv.value(),
                    mod_revision: kv.mod_revision(),
                    create_revision: kv.create_revision(),
                    lease: kv.lease(),
                },
            );
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    mirror.revision = revision;
    Ok(mirror)
}

/// The end of the key range of `prefix` (etcd's `--prefix`): the prefix with its last byte + 1.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Brings the mirror (at revision `since`) up to the current revision H without reading what did not
/// change, and without etcd's history (so compaction does not matter):
/// 1. the keys modified after `since` that exist now, with their values (a linearizable read; H is
///    its revision), applied as puts;
/// 2. the number of keys under the prefix at H (etcd counts from its index): if the mirror now holds
///    as many keys, no key it holds was deleted (a deleted and re-created key came with step 1);
/// 3. only otherwise, the key names at H (no values), and the mirror's keys missing there are deleted.
///
/// etcd still scans the prefix for step 1 (it filters by revision after reading), but sends, and
/// fleetd parses, only what changed. Returns H.
async fn delta_read(
    shared: &Shared,
    client: &Client,
    keys: &Keys,
    since: i64,
    t: Duration,
) -> Result<i64, SessionEnd> {
    let prefix = keys.prefix().to_string();
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let changed = timed(
        t * 5,
        "read changes",
        kv.get(
            prefix.clone(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_min_mod_revision(since + 1),
            ),
        ),
    )
    .await?;
    let h = changed.header().map(|h| h.revision()).unwrap_or(since);
    let count = timed(
        t,
        "count keys",
        kv.get(
            prefix.clone(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_count_only()
                    .with_revision(h),
            ),
        ),
    )
    .await?
    .count();
    let held = {
        let mut m = shared.mirror.write().unwrap_or_else(|e| e.into_inner());
        for kv in changed.kvs() {
            m.apply(
                keys,
                Change::Put {
                    key: kv.key(),
                    value: kv.value(),
                    mod_revision: kv.mod_revision(),
                    create_revision: kv.create_revision(),
                    lease: kv.lease(),
                },
            );
        }
        m.key_count()
    };
    if held as i64 != count {
        let listing = timed(
            t * 5,
            "list keys",
            kv.get(
                prefix,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_revision(h),
                ),
            ),
        )
        .await?;
        let present: std::collections::HashSet<&[u8]> =
            listing.kvs().iter().map(|kv| kv.key()).collect();
        let mut m = shared.mirror.write().unwrap_or_else(|e| e.into_inner());
        for key in m.keys_missing_from(&present) {
            m.apply(keys, Change::Delete { key: &key });
        }
        shared.delta_listings.fetch_add(1, Ordering::Relaxed);
    }
    {
        let mut m = shared.mirror.write().unwrap_or_else(|e| e.into_inner());
        m.revision = m.revision.max(h);
    }
    shared.delta_reads.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(
        since,
        revision = h,
        changed = changed.kvs().len(),
        listed = held as i64 != count,
        "caught up with a delta read"
    );
    Ok(h)
}

/// A linearizable read of one key: fails when the member has no quorum or answers nothing.
async fn check_endpoint(client: &Client, keys: &Keys, t: Duration) -> Result<(), String> {
    let mut kv = client.kv_client();
    timed(
        t,
        "linearizable read",
        kv.get(keys.prefix(), Some(GetOptions::new().with_count_only())),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member that answers "leader changed" (an election ended during the request) is tried again;
    /// one without a leader, or one that does not answer, is left for the next endpoint.
    #[test]
    fn only_a_member_whose_leader_just_changed_is_tried_again() {
        for (reason, rotate) in [
            (
                "http://e:2379: read changes: etcdserver: leader changed",
                false,
            ),
            ("http://e:2379: read changes: etcdserver: no leader", true),
            ("http://e:2379: read changes: timed out after 5s", true),
            ("watch stream ended", true),
        ] {
            assert_eq!(SessionEnd::from(reason).rotate, rotate, "{reason}");
        }
    }

    /// A plain `http://` connection to an etcd that serves TLS ends in one of several transport
    /// errors, depending on when the server hangs up: each gets the hint (tests/etcd_secure.rs
    /// saw "connection reset" once in CI, without the hint).
    #[tokio::test]
    async fn a_plain_connection_that_a_tls_etcd_hangs_up_on_gets_the_https_hint() {
        let opts = RegistryOptions::new(vec!["http://127.0.0.1:1".into()], "/fleet");
        for reason in [
            "connect: transport error: connection error: connection reset",
            "connect: transport error: broken pipe",
            "connect: transport error: http2 error: frame with invalid size",
        ] {
            let said = explain_setup_failure("http://127.0.0.1:1", &opts, reason.into()).await;
            assert!(said.contains("use https:// URLs"), "{reason}: {said}");
        }
        // A refused TCP connect is not a TLS server: no hint.
        let said = explain_setup_failure(
            "http://127.0.0.1:1",
            &opts,
            "connect: transport error: tcp connect error: Connection refused".into(),
        )
        .await;
        assert!(!said.contains("https://"), "{said}");
    }
}
