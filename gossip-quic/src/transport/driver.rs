//! The driver task: owns the [`Node`], its connections and its timers; turns commands, datagrams,
//! syncs and timeouts into calls of the node, and the node's outputs into sends.

use super::*;

pub(super) struct Driver {
    pub(super) node: Node,
    pub(super) endpoint: Endpoint,
    pub(super) conns: HashMap<SocketAddr, Connection>,
    pub(super) pending: HashMap<SocketAddr, Vec<Bytes>>,
    pub(super) net_tx: mpsc::Sender<Net>,
    pub(super) event_tx: mpsc::UnboundedSender<Event>,
    pub(super) shared: Arc<Shared>,
    pub(super) handler: SharedHandler,
    pub(super) closed_udp: (u64, u64),
    /// Peers are bound to the machine their certificate names (mutual TLS).
    pub(super) bind: bool,
    /// The endpoint's socket (sealed datagrams go out through it).
    pub(super) socket: Arc<DemuxSocket>,
    /// Seals and opens sealed datagrams (mutual TLS only).
    pub(super) sealer: Option<Sealer>,
}

impl Driver {
    pub(super) async fn run(
        mut self,
        mut cmd_rx: mpsc::UnboundedReceiver<Command>,
        mut net_rx: mpsc::Receiver<Net>,
    ) {
        self.flush();
        loop {
            let deadline = self.node.poll_timeout();
            tokio::select! {
                cmd = cmd_rx.recv() => match cmd {
                    None => {
                        tracing::debug!("every gossip handle dropped: stopping");
                        self.endpoint.close(0u32.into(), b"stopped");
                        return;
                    }
                    Some(Command::Leave(done)) => {
                        self.node.leave(Instant::now());
                        self.flush();
                        // Give the leave datagrams a moment to go out before closing.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        self.endpoint.close(0u32.into(), b"leave");
                        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(Command::Abort(done)) => {
                        self.endpoint.close(0u32.into(), b"abort");
                        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(cmd) => self.command(cmd),
                },
                Some(net) = net_rx.recv() => self.net(net),
                _ = sleep_until(deadline) => {
                    // Handle what already arrived (acks above all) before the timers judge the
                    // peers: a busy driver must not accuse a member whose ack sits in the queue.
                    for _ in 0..1024 {
                        match net_rx.try_recv() {
                            Ok(net) => self.net(net),
                            Err(_) => break,
                        }
                    }
                    self.node.handle_timeout(Instant::now());
                }
            }
            self.flush();
        }
    }

    fn command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::View(tx) => {
                // A pointer copy unless the node's view changed since the last request.
                let _ = tx.send(self.node.shared_view());
            }
            Command::Stats(tx) => {
                let _ = tx.send(self.stats());
            }
            Command::SetMetadata(m) => self.node.set_local_metadata(now, m),
            Command::SetUnits(u) => self.node.set_local_unit_states(now, &u),
            Command::Join(addrs) => self.node.join(now, &addrs),
            Command::Lookup(id, tx) => {
                let addr = self
                    .node
                    .shared_view()
                    .machines
                    .get(&id)
                    .map(|m| m.identity.addr);
                let _ = tx.send(addr);
            }
            Command::Connection(addr, tx) => match self.live_conn(addr) {
                Some(c) => {
                    let _ = tx.send(Ok(c));
                }
                None => {
                    let endpoint = self.endpoint.clone();
                    let net_tx = self.net_tx.clone();
                    let shared = self.shared.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(connect(&endpoint, addr, &net_tx, &shared).await);
                    });
                }
            },
            Command::Leave(_) | Command::Abort(_) => unreachable!("handled by run"),
        }
    }

    fn net(&mut self, net: Net) {
        let now = Instant::now();
        match net {
            Net::Datagram(from, cert, data) => {
                if let Err(e) = self
                    .node
                    .handle_datagram_from(now, from, cert.as_ref(), &data)
                {
                    tracing::debug!(error = %e, "gossip datagram rejected");
                }
            }
            Net::Sealed(from, data) => self.sealed(now, from, &data),
            Net::Connected(conn) => {
                let addr = conn.remote_address();
                let cert = match peer_cert(&conn, self.bind) {
                    Ok(cert) => cert,
                    Err(reason) => {
                        self.shared
                            .rejected_connections
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(remote = %addr, %reason, "refused a gossip connection");
                        conn.close(1u32.into(), b"certificate names no machine");
                        return;
                    }
                };
                // The newest connection wins: it proves the peer is there now, while an older one
                // may point at a previous life of the peer that crashed without closing it.
                self.conns.insert(addr, conn.clone());
                spawn_conn_tasks(
                    conn.clone(),
                    cert,
                    self.net_tx.clone(),
                    self.shared.clone(),
                    self.handler.clone(),
                );
                if let Some(queued) = self.pending.remove(&addr) {
                    for data in queued {
                        self.send_on(&conn, data);
                    }
                }
            }
            Net::ConnectFailed(addr) => {
                if let Some(queued) = self.pending.remove(&addr) {
                    self.shared
                        .datagrams_not_sent
                        .fetch_add(queued.len() as u64, Ordering::Relaxed);
                }
            }
            Net::Closed(addr, id, stats) => {
                self.closed_udp.0 += stats.0;
                self.closed_udp.1 += stats.1;
                if self.conns.get(&addr).is_some_and(|c| c.stable_id() == id) {
                    self.conns.remove(&addr);
                }
            }
            Net::Offer(cert, offer, reply) => {
                let answer = match self.node.handle_sync_offer_from(now, cert.as_ref(), offer) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        tracing::debug!(error = %e, "sync offer refused");
                        None
                    }
                };
                let _ = reply.send(answer);
            }
            Net::Answer(cert, answer, reply) => {
                let delta = match self
                    .node
                    .handle_sync_answer_from(now, cert.as_ref(), answer)
                {
                    Ok(d) => Some(d),
                    Err(e) => {
                        tracing::debug!(error = %e, "sync answer refused");
                        None
                    }
                };
                let _ = reply.send(delta);
            }
            Net::Merge(cert, state) => {
                if let Err(e) = self.node.merge_from(now, cert.as_ref(), state) {
                    tracing::debug!(error = %e, "sync merge failed");
                }
            }
        }
    }

    fn stats(&self) -> Stats {
        let (mut rx, mut tx) = self.closed_udp;
        for c in self.conns.values() {
            let s = c.stats();
            rx += s.udp_rx.bytes;
            tx += s.udp_tx.bytes;
        }
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            core: self.node.counters(),
            stream_bytes_in: get(&self.shared.stream_bytes_in),
            stream_bytes_out: get(&self.shared.stream_bytes_out),
            udp_bytes_in: rx + get(&self.shared.sealed_bytes_in),
            udp_bytes_out: tx + get(&self.shared.sealed_bytes_out),
            sealed_in: get(&self.shared.sealed_in),
            sealed_out: get(&self.shared.sealed_out),
            sealed_refused: self.shared.sealed_refused.iter().map(get).sum(),
            sealed_unverifiable: get(&self.shared.sealed_unverifiable),
            sealed_refusals: SealedRefusals {
                garbage: get(self.shared.sealed_refused(RefusalKind::Garbage)),
                forged: get(self.shared.sealed_refused(RefusalKind::Forged)),
                replayed: get(self.shared.sealed_refused(RefusalKind::Replayed)),
                stale: get(self.shared.sealed_refused(RefusalKind::Stale)),
                unverifiable: get(&self.shared.sealed_unverifiable),
            },
            rejected_connections: get(&self.shared.rejected_connections),
            failed_connects: get(&self.shared.failed_connects),
            datagrams_not_sent: get(&self.shared.datagrams_not_sent),
            datagrams_overflow: get(&self.shared.datagrams_overflow),
            garbage_streams: get(&self.shared.garbage_streams),
            frames_over_budget: get(&self.shared.frames_over_budget),
        }
    }

    fn live_conn(&self, addr: SocketAddr) -> Option<Connection> {
        self.conns
            .get(&addr)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    fn send_on(&self, conn: &Connection, data: Bytes) {
        if let Err(e) = conn.send_datagram(data) {
            self.shared
                .datagrams_not_sent
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %conn.remote_address(), error = %e, "datagram not sent");
        }
    }

    /// Seals `payload` for member `receiver` at `dst` if sealing is what this node does now
    /// (mutual TLS, past its first `sealed_after`, per its [`super::SealedMode`]) and the
    /// membership holds `receiver` at `dst`.
    fn seal_for(
        &mut self,
        now: Instant,
        receiver: &MachineId,
        dst: SocketAddr,
        connected: bool,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let sealer = self.sealer.as_mut()?;
        if !sealer.wants(now, connected) {
            return None;
        }
        let identity = self.node.member_identity(receiver)?;
        if identity.addr != dst {
            return None;
        }
        match sealer.seal(receiver, identity.incarnation, payload) {
            Ok(sealed) => Some(sealed),
            Err(e) => {
                tracing::debug!(%receiver, error = %e, "cannot seal a datagram: sent over a connection");
                None
            }
        }
    }

    fn send_sealed(&self, dst: SocketAddr, data: &[u8]) {
        match self.socket.send_sealed(dst, data) {
            Ok(()) => {
                self.shared.sealed_out.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .sealed_bytes_out
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.shared
                    .datagrams_not_sent
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%dst, error = %e, "sealed datagram not sent");
            }
        }
    }

    /// A sealed datagram from `from`: checked ([`Sealer::open`]), then its payload goes to the
    /// node as the sender's (a SWIM packet or push), or answers a summary offer.
    fn sealed(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Some(sealer) = self.sealer.as_mut() else {
            self.shared
                .sealed_unverifiable
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, "sealed datagram dropped: this node runs without certificates");
            return;
        };
        let node = &self.node;
        let opened = sealer.open(data, |sender| {
            node.certificate_for(sender)
                .map(|(epoch, der)| (epoch, der.to_vec()))
        });
        let (sender, payload) = match opened {
            Ok(o) => o,
            Err(sealed::Refused::Dropped(kind, why)) => {
                let refused = self
                    .shared
                    .sealed_refused(kind)
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                let kind_label = kind.label();
                if kind == RefusalKind::Stale {
                    // Normal for a moment after this node restarts: peers still address its
                    // previous life.
                    tracing::debug!(%from, refused, "dropped a sealed gossip datagram ({kind_label}): {why}");
                } else if self.sealer.as_mut().is_some_and(|s| s.log_due(now, kind)) {
                    tracing::warn!(%from, refused, "dropped a sealed gossip datagram ({kind_label}): {why}");
                }
                return;
            }
            Err(sealed::Refused::Unverifiable(sender)) => {
                self.shared
                    .sealed_unverifiable
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, %sender, "sealed datagram of a machine whose certificate this node does not hold (yet)");
                // Connect to the member, so that it sends over the connection until its
                // certificate is here. Only to the address the membership holds for it: a
                // datagram cannot make this node connect anywhere else.
                let is_member_here = self
                    .node
                    .member_identity(&sender)
                    .is_some_and(|id| id.addr == from);
                if is_member_here
                    && self.live_conn(from).is_none()
                    && self
                        .sealer
                        .as_mut()
                        .is_some_and(|s| s.fallback_due(now, &sender))
                {
                    let endpoint = self.endpoint.clone();
                    let net_tx = self.net_tx.clone();
                    let shared = self.shared.clone();
                    tokio::spawn(async move {
                        let _ = connect(&endpoint, from, &net_tx, &shared).await;
                    });
                }
                return;
            }
        };
        if payload.first() == Some(&sealed::PAYLOAD_SUMMARY) {
            self.sealed_summary(now, from, &sender, &payload[1..]);
            return;
        }
        if let Err(e) = self
            .node
            .handle_datagram_from(now, from, Some(&sender), payload)
        {
            tracing::debug!(error = %e, "sealed gossip datagram rejected");
        }
    }

    /// A summary offer of `sender`'s anti-entropy, in a sealed datagram: when the digests
    /// differ, this node runs a sync with the sender over a connection (its offer, the sender's
    /// answer, and the state the sender lacks); when they match, nothing more is sent.
    fn sealed_summary(&mut self, now: Instant, from: SocketAddr, sender: &MachineId, data: &[u8]) {
        let offer = match SyncOffer::decode_summary(data) {
            Ok(o) => o,
            Err(e) => {
                self.shared
                    .sealed_refused(RefusalKind::Garbage)
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, %sender, error = %e, "undecodable summary offer dropped");
                return;
            }
        };
        // The sync goes to the address the membership holds for the sender, whatever the offer says.
        let Some(peer) = self.node.member_identity(sender).map(|id| id.addr) else {
            tracing::debug!(%sender, "summary offer of a machine that is no member here: dropped");
            return;
        };
        match self.node.handle_sync_offer_from(now, Some(sender), offer) {
            Ok(answer) if answer.in_sync() => {}
            Ok(_) => self.start_sync(peer),
            Err(e) => tracing::debug!(%sender, error = %e, "sealed summary offer refused"),
        }
    }

    /// Runs a sync with `peer` over a connection (opened if needed).
    fn start_sync(&mut self, peer: SocketAddr) {
        let offer = self.node.sync_offer_to(peer).encode();
        self.spawn_sync(peer, offer);
    }

    /// Runs a sync with `peer` that starts with `offer` (encoded), over a connection.
    fn spawn_sync(&self, peer: SocketAddr, offer: Vec<u8>) {
        let conn = self.live_conn(peer);
        let endpoint = self.endpoint.clone();
        let net_tx = self.net_tx.clone();
        let shared = self.shared.clone();
        let bind = self.bind;
        tokio::spawn(async move {
            let run = run_sync(conn, endpoint, peer, offer, net_tx, shared, bind);
            match tokio::time::timeout(STREAM_TIMEOUT, run).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "sync failed"),
                Err(_) => tracing::debug!(%peer, "sync timed out"),
            }
        });
    }

    /// Carries out what the node asked for: datagrams, syncs, events.
    fn flush(&mut self) {
        let now = Instant::now();
        while let Some(t) = self.node.poll_transmit() {
            let conn = self.live_conn(t.dst);
            if let Some(sealed) = self.seal_for(now, &t.dst_id, t.dst, conn.is_some(), &t.data) {
                self.send_sealed(t.dst, &sealed);
                continue;
            }
            if let Some(conn) = conn {
                self.send_on(&conn, t.data);
                continue;
            }
            let queue = self.pending.entry(t.dst).or_default();
            let first = queue.is_empty();
            if queue.len() < MAX_PENDING {
                queue.push(t.data);
            } else {
                self.shared
                    .datagrams_not_sent
                    .fetch_add(1, Ordering::Relaxed);
            }
            if first {
                let endpoint = self.endpoint.clone();
                let net_tx = self.net_tx.clone();
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let _ = connect(&endpoint, t.dst, &net_tx, &shared).await;
                });
            }
        }
        while let Some(peer) = self.node.poll_sync() {
            let offer = self.node.sync_offer_to(peer);
            // A summary offer to a member travels sealed (when this node seals for it): the
            // peer answers with a sync of its own only when the digests differ, so an idle
            // cluster's anti-entropy opens no connections.
            if let Some(compact) = offer.encode_summary() {
                let receiver = self.node.member_at(peer).map(|id| id.machine_id.clone());
                if let Some(receiver) = receiver {
                    let mut payload = vec![sealed::PAYLOAD_SUMMARY];
                    payload.extend(compact);
                    let connected = self.live_conn(peer).is_some();
                    if let Some(sealed) = self.seal_for(now, &receiver, peer, connected, &payload) {
                        self.send_sealed(peer, &sealed);
                        continue;
                    }
                }
            }
            self.spawn_sync(peer, offer.encode());
        }
        while let Some(event) = self.node.poll_event() {
            let _ = self.event_tx.send(event);
        }
    }
}
