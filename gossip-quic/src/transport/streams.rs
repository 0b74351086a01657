//! Connections and streams: dialing and accepting peers, the per-connection tasks, and the framed
//! sync and request streams (caps checked before reading, the shared frame budget).

use super::*;

pub(super) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Connects to `addr` and reports the connection to the driver (or the failure).
pub(super) async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    net_tx: &mpsc::Sender<Net>,
    shared: &Shared,
) -> Result<Connection, String> {
    let result = match endpoint.connect(addr, tls::SERVER_NAME) {
        Ok(connecting) => connecting.await.map_err(|e| {
            if tls::is_protocol_mismatch(&e) && shared.mismatch_log_due() {
                tracing::warn!(
                    %addr,
                    error = %e,
                    "gossip peer speaks another protocol version than {}: not connected (upgrade \
                     every machine to the same fleet release)",
                    String::from_utf8_lossy(tls::ALPN)
                );
            }
            e.to_string()
        }),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(conn) => {
            let _ = net_tx.send(Net::Connected(conn.clone())).await;
            Ok(conn)
        }
        Err(reason) => {
            shared.failed_connects.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%addr, %reason, "gossip connection failed");
            let _ = net_tx.send(Net::ConnectFailed(addr)).await;
            Err(reason)
        }
    }
}

pub(super) async fn accept_loop(
    endpoint: Endpoint,
    net_tx: mpsc::Sender<Net>,
    shared: Arc<Shared>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let net_tx = net_tx.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    let _ = net_tx.send(Net::Connected(conn)).await;
                }
                Err(e) if tls::is_protocol_mismatch(&e) => {
                    shared.rejected_connections.fetch_add(1, Ordering::Relaxed);
                    if !shared.mismatch_log_due() {
                        return;
                    }
                    tracing::warn!(
                        %remote,
                        error = %e,
                        "refused a gossip connection: the peer speaks another protocol version \
                         than {} (upgrade every machine to the same fleet release)",
                        String::from_utf8_lossy(tls::ALPN)
                    );
                }
                Err(e) => {
                    shared.rejected_connections.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%remote, error = %e, "refused a gossip connection");
                }
            }
        });
    }
}

/// Per connection: a datagram reader, a stream acceptor, and a close watcher.
pub(super) fn spawn_conn_tasks(
    conn: Connection,
    cert: Cert,
    net_tx: mpsc::Sender<Net>,
    shared: Arc<Shared>,
    handler: SharedHandler,
) {
    let addr = conn.remote_address();
    {
        let conn = conn.clone();
        let net_tx = net_tx.clone();
        let shared = shared.clone();
        let cert_in = cert.clone();
        tokio::spawn(async move {
            while let Ok(data) = conn.read_datagram().await {
                if net_tx
                    .try_send(Net::Datagram(addr, cert_in.clone(), data))
                    .is_err()
                {
                    shared.datagrams_overflow.fetch_add(1, Ordering::Relaxed);
                }
            }
            let stats = conn.stats();
            let udp = (stats.udp_rx.bytes, stats.udp_tx.bytes);
            let _ = net_tx.send(Net::Closed(addr, conn.stable_id(), udp)).await;
        });
    }
    tokio::spawn(async move {
        while let Ok((send, recv)) = conn.accept_bi().await {
            let net_tx = net_tx.clone();
            let shared = shared.clone();
            let handler = handler.clone();
            let cert = cert.clone();
            tokio::spawn(async move {
                let serve = serve_stream(addr, cert, send, recv, net_tx, shared.clone(), handler);
                match tokio::time::timeout(STREAM_TIMEOUT, serve).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        if e.garbage {
                            shared.garbage_streams.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::debug!(peer = %addr, error = %e.reason, "stream failed");
                    }
                    Err(_) => tracing::debug!(peer = %addr, "stream timed out"),
                }
            });
        }
    });
}

pub(super) struct StreamError {
    reason: String,
    garbage: bool,
    over_budget: bool,
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

pub(super) fn io_err(e: impl std::fmt::Display) -> StreamError {
    StreamError {
        reason: e.to_string(),
        garbage: false,
        over_budget: false,
    }
}

pub(super) fn garbage(e: impl std::fmt::Display) -> StreamError {
    StreamError {
        reason: e.to_string(),
        garbage: true,
        over_budget: false,
    }
}

pub(super) async fn serve_stream(
    from: SocketAddr,
    cert: Cert,
    mut send: SendStream,
    mut recv: RecvStream,
    net_tx: mpsc::Sender<Net>,
    shared: Arc<Shared>,
    handler: SharedHandler,
) -> Result<(), StreamError> {
    let mut kind = [0u8; 1];
    recv.read_exact(&mut kind).await.map_err(io_err)?;
    match kind[0] {
        STREAM_SYNC => {
            let offer = read_counted(&mut recv, &shared, MAX_SYNC_MESSAGE).await?;
            let offer = SyncOffer::decode(&offer).map_err(garbage)?;
            let (tx, rx) = oneshot::channel();
            net_tx
                .send(Net::Offer(cert.clone(), offer, tx))
                .await
                .map_err(io_err)?;
            let answer = rx
                .await
                .map_err(io_err)?
                .ok_or_else(|| io_err("node refused the sync"))?;
            write_sync(&mut send, &answer.encode(), &shared).await?;
            let delta = read_counted(&mut recv, &shared, MAX_SYNC_MESSAGE).await?;
            let delta = FullState::decode(&delta).map_err(garbage)?;
            net_tx.send(Net::Merge(cert, delta)).await.map_err(io_err)?;
            send.finish().map_err(io_err)?;
            Ok(())
        }
        STREAM_REQUEST => {
            let request = read_counted(&mut recv, &shared, MAX_REQUEST).await?;
            let handler = handler.read().unwrap_or_else(|e| e.into_inner()).clone();
            let result = match handler {
                Some(h) => h.handle(from, request).await,
                None => Err("no request handler installed".to_string()),
            };
            let (status, body) = match result {
                Ok(body) if body.len() > MAX_RESPONSE => (
                    1u8,
                    format!(
                        "response of {} bytes exceeds the cap of {MAX_RESPONSE} bytes",
                        body.len()
                    )
                    .into_bytes(),
                ),
                Ok(body) => (0u8, body),
                Err(message) => (1u8, message.into_bytes()),
            };
            send.write_all(&[status]).await.map_err(io_err)?;
            write_counted(&mut send, &body, &shared).await?;
            send.finish().map_err(io_err)?;
            Ok(())
        }
        other => Err(garbage(format!("unknown stream kind {other}"))),
    }
}

/// Initiator side of a sync: offer, answer, delta.
pub(super) async fn run_sync(
    conn: Option<Connection>,
    endpoint: Endpoint,
    peer: SocketAddr,
    offer: Vec<u8>,
    net_tx: mpsc::Sender<Net>,
    shared: Arc<Shared>,
    bind: bool,
) -> Result<(), StreamError> {
    let conn = match conn {
        Some(c) => c,
        None => connect(&endpoint, peer, &net_tx, &shared)
            .await
            .map_err(io_err)?,
    };
    let cert = peer_cert(&conn, bind).map_err(garbage)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(io_err)?;
    send.write_all(&[STREAM_SYNC]).await.map_err(io_err)?;
    write_sync(&mut send, &offer, &shared).await?;
    let answer = read_counted(&mut recv, &shared, MAX_SYNC_MESSAGE).await?;
    let answer = SyncAnswer::decode(&answer).map_err(garbage)?;
    let (tx, rx) = oneshot::channel();
    net_tx
        .send(Net::Answer(cert, answer, tx))
        .await
        .map_err(io_err)?;
    let delta = rx
        .await
        .map_err(io_err)?
        .ok_or_else(|| io_err("node refused the sync answer"))?;
    write_sync(&mut send, &delta.encode(), &shared).await?;
    send.finish().map_err(io_err)?;
    // Wait for the peer to read everything before the stream is dropped.
    let _ = send.stopped().await;
    Ok(())
}

pub(super) async fn read_counted(
    recv: &mut RecvStream,
    shared: &Shared,
    cap: usize,
) -> Result<Vec<u8>, StreamError> {
    let frame = read_frame(recv, cap, Some(&shared.budget))
        .await
        .inspect_err(|e| {
            if e.over_budget {
                shared.frames_over_budget.fetch_add(1, Ordering::Relaxed);
            }
        })?;
    shared
        .stream_bytes_in
        .fetch_add(frame.len() as u64 + 4, Ordering::Relaxed);
    Ok(frame)
}

/// Writes a sync message, unless it exceeds the cap every peer holds it to (a cluster larger than
/// fleet supports): then it logs why and fails the exchange.
pub(super) async fn write_sync(
    send: &mut SendStream,
    data: &[u8],
    shared: &Shared,
) -> Result<(), StreamError> {
    if data.len() > MAX_SYNC_MESSAGE {
        tracing::warn!(
            len = data.len(),
            cap = MAX_SYNC_MESSAGE,
            "a sync message exceeds the cap peers accept: not sent"
        );
        return Err(io_err(format!(
            "sync message of {} bytes exceeds the cap of {MAX_SYNC_MESSAGE} bytes",
            data.len()
        )));
    }
    write_counted(send, data, shared).await
}

pub(super) async fn write_counted(
    send: &mut SendStream,
    data: &[u8],
    shared: &Shared,
) -> Result<(), StreamError> {
    write_frame(send, data).await?;
    shared
        .stream_bytes_out
        .fetch_add(data.len() as u64 + 4, Ordering::Relaxed);
    Ok(())
}

/// Reads one frame of at most `cap` bytes. The buffer grows as bytes arrive; a frame over
/// [`SMALL_FRAME`] first takes its size (in KiB) from `budget`, and is refused if the budget is spent.
pub(super) async fn read_frame(
    recv: &mut RecvStream,
    cap: usize,
    budget: Option<&Semaphore>,
) -> Result<Vec<u8>, StreamError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(io_err)?;
    let len = frame::frame_len(len, cap).map_err(garbage)?;
    let _permit = match budget {
        Some(b) if len > SMALL_FRAME => {
            let kib = u32::try_from(len.div_ceil(1024)).unwrap_or(u32::MAX);
            Some(b.try_acquire_many(kib).map_err(|_| StreamError {
                reason: format!(
                    "frame of {len} bytes refused: {FRAME_BUDGET} bytes of large frames already \
                     in flight"
                ),
                garbage: false,
                over_budget: true,
            })?)
        }
        _ => None,
    };
    let mut buf = Vec::with_capacity(len.min(SMALL_FRAME));
    let mut chunk = [0u8; 16 << 10];
    while buf.len() < len {
        let want = (len - buf.len()).min(chunk.len());
        recv.read_exact(&mut chunk[..want]).await.map_err(io_err)?;
        buf.extend_from_slice(&chunk[..want]);
    }
    Ok(buf)
}

pub(super) async fn write_frame(send: &mut SendStream, data: &[u8]) -> Result<(), StreamError> {
    let len = u32::try_from(data.len()).map_err(|_| io_err("frame too large"))?;
    send.write_all(&len.to_be_bytes()).await.map_err(io_err)?;
    send.write_all(data).await.map_err(io_err)?;
    Ok(())
}
