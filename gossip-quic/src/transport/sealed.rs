//! Sealed datagrams on the endpoint's own UDP socket ([`crate::seal`]): the socket quinn drives is
//! wrapped so that sealed datagrams are taken off it before QUIC sees them (their first byte is no
//! QUIC packet's), and the driver sends its own through it.
//!
//! The driver seals a SWIM packet or state push (and a summary offer of the periodic
//! anti-entropy) for a member it has no open connection to, and checks each sealed datagram it
//! receives against the sender's certificate (the one the core holds, checked against the cluster
//! CA) before the core sees it. See [`Sealer`].

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV6};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleet_gossip::{Credentials, MachineId};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use super::{Net, Shared};
use crate::credentials::CertCredentials;
use crate::seal::{self, Envelope, Freshness, Stale};

/// The endpoint's UDP socket, with sealed datagrams taken off before quinn reads.
#[derive(Debug)]
pub(super) struct DemuxSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    net_tx: mpsc::Sender<Net>,
    shared: Arc<Shared>,
    ipv6: bool,
}

impl DemuxSocket {
    pub(super) fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        net_tx: mpsc::Sender<Net>,
        shared: Arc<Shared>,
    ) -> io::Result<Self> {
        let ipv6 = inner.local_addr()?.is_ipv6();
        Ok(DemuxSocket {
            inner,
            net_tx,
            shared,
            ipv6,
        })
    }

    /// Sends one sealed datagram (best effort, as UDP: a full socket buffer drops it).
    pub(super) fn send_sealed(&self, dst: SocketAddr, data: &[u8]) -> io::Result<()> {
        let destination = match dst {
            SocketAddr::V4(v4) if self.ipv6 => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            other => other,
        };
        self.inner.try_send(&Transmit {
            destination,
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: None,
        })
    }

    /// Hands a sealed datagram to the driver.
    fn deliver(&self, from: SocketAddr, data: &[u8]) {
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        self.shared.sealed_in.fetch_add(1, Ordering::Relaxed);
        self.shared
            .sealed_bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if self
            .net_tx
            .try_send(Net::Sealed(from, Bytes::copy_from_slice(data)))
            .is_err()
        {
            self.shared
                .datagrams_overflow
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes the sealed datagrams out of one received buffer (several when the OS coalesced
    /// datagrams of one sender: segments of `meta.stride` bytes) and closes the gap, so that quinn
    /// sees only the rest. Returns the bytes left.
    fn filter(&self, buf: &mut [u8], meta: &RecvMeta) -> usize {
        let len = meta.len.min(buf.len());
        let stride = if meta.stride == 0 { len } else { meta.stride };
        if stride == 0 {
            return 0;
        }
        let mut kept = 0;
        let mut at = 0;
        while at < len {
            let end = (at + stride).min(len);
            if seal::is_sealed(buf[at]) {
                self.deliver(meta.addr, &buf[at..end]);
            } else {
                if kept != at {
                    buf.copy_within(at..end, kept);
                }
                kept += end - at;
            }
            at = end;
        }
        kept
    }
}

impl AsyncUdpSocket for DemuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
            let mut out = 0;
            for i in 0..n {
                let left = self.filter(&mut bufs[i][..], &meta[i]);
                if left == 0 {
                    continue;
                }
                // A sealed datagram ended a segment run: what is left is whole segments of the
                // same stride, plus possibly one shorter last one.
                meta[i].len = left;
                if out != i {
                    let (head, tail) = bufs.split_at_mut(i);
                    head[out][..left].copy_from_slice(&tail[0][..left]);
                    meta[out] = meta[i];
                }
                out += 1;
            }
            if out > 0 {
                return Poll::Ready(Ok(out));
            }
            // Everything was sealed: read again (and register for wake-up when nothing is left).
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// When sealed datagrams replace connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SealedMode {
    /// For members without an open connection (the default): an open connection costs less per
    /// datagram (no signature), a new one far more.
    #[default]
    WithoutConnection,
    /// Always, once the node has run `SEALED_AFTER` (tests of the sealed path).
    Always,
    /// Never: every datagram goes over a connection (as before sealed datagrams existed).
    Off,
}

/// How long a node uses connections only after it starts: its certificate spreads to the cluster
/// in the meantime, so that receivers can check its sealed datagrams.
pub(super) const SEALED_AFTER: Duration = Duration::from_secs(10);
/// A receiver that cannot check a member's sealed datagram (it lacks the member's certificate)
/// connects to it, at most once per this interval per member: the member then sends over the
/// connection, and the handshake and syncs bring its certificate.
const FALLBACK_EVERY: Duration = Duration::from_secs(10);
/// How often refusals are logged at most (per kind).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What a sealed datagram's payload starts with, besides the core's datagram kinds: a summary
/// offer of the periodic anti-entropy.
pub(super) const PAYLOAD_SUMMARY: u8 = 0x80;

/// The sealing state of a node in mutual TLS mode.
pub(super) struct Sealer {
    pub(super) credentials: Arc<CertCredentials>,
    pub(super) me: MachineId,
    /// The incarnation this node started with.
    pub(super) boot: u64,
    seq: u64,
    pub(super) mode: SealedMode,
    pub(super) from: Instant,
    freshness: Freshness,
    fallback_at: HashMap<MachineId, Instant>,
    logged_at: HashMap<RefusalKind, Instant>,
}

/// Why a sealed datagram was dropped: the `reason` of `fleet_gossip_refused_total` (prefixed
/// `sealed_`) and the field of [`SealedRefusals`] it counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    /// Not a sealed datagram of this version: truncated, oversized, a field over its cap, trailing
    /// bytes, a sender that is no machine ID, an undecodable summary offer.
    Garbage,
    /// Not signed by the machine it names (or addressed to another machine), or in the receiver's
    /// own name.
    Forged,
    /// A (boot, sequence) pair of the sender already taken, too old for the window, or from an
    /// older boot of the sender than one taken.
    Replayed,
    /// Addressed to an earlier life of the receiver.
    Stale,
}

impl RefusalKind {
    /// Every kind, in the order of [`SealedRefusals::by_reason`] (which adds `unverifiable`).
    pub const ALL: [RefusalKind; 4] = [
        RefusalKind::Garbage,
        RefusalKind::Forged,
        RefusalKind::Replayed,
        RefusalKind::Stale,
    ];

    /// The kind's name in logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            RefusalKind::Garbage => "garbage",
            RefusalKind::Forged => "forged",
            RefusalKind::Replayed => "replayed",
            RefusalKind::Stale => "stale",
        }
    }
}

/// Sealed datagrams dropped, by why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SealedRefusals {
    /// See [`RefusalKind::Garbage`].
    pub garbage: u64,
    /// See [`RefusalKind::Forged`].
    pub forged: u64,
    /// See [`RefusalKind::Replayed`].
    pub replayed: u64,
    /// See [`RefusalKind::Stale`].
    pub stale: u64,
    /// Dropped because this node does not hold the sender's certificate (yet): not an attack by
    /// itself (a new member, a restart with a new certificate), but a forged datagram naming a
    /// member's new life lands here too.
    pub unverifiable: u64,
}

impl SealedRefusals {
    /// The count of one kind.
    pub fn of(&self, kind: RefusalKind) -> u64 {
        match kind {
            RefusalKind::Garbage => self.garbage,
            RefusalKind::Forged => self.forged,
            RefusalKind::Replayed => self.replayed,
            RefusalKind::Stale => self.stale,
        }
    }

    /// Each reason of `fleet_gossip_refused_total` with its count (unverifiable included).
    pub fn by_reason(&self) -> [(&'static str, u64); 5] {
        [
            ("sealed_garbage", self.garbage),
            ("sealed_forged", self.forged),
            ("sealed_replayed", self.replayed),
            ("sealed_stale", self.stale),
            ("sealed_unverifiable", self.unverifiable),
        ]
    }
}

/// Why a sealed datagram was not taken.
pub(super) enum Refused {
    /// Garbage, forged, replayed or addressed elsewhere: dropped (counted by kind, logged at most
    /// every 10 s per kind).
    Dropped(RefusalKind, String),
    /// Its sender's certificate is not here (yet): dropped, and the sender's address is worth a
    /// connection if it is the member's.
    Unverifiable(MachineId),
}

impl Sealer {
    pub(super) fn new(
        credentials: Arc<CertCredentials>,
        me: MachineId,
        boot: u64,
        mode: SealedMode,
        from: Instant,
    ) -> Self {
        Sealer {
            credentials,
            me,
            boot,
            seq: 0,
            mode,
            from,
            freshness: Freshness::default(),
            fallback_at: HashMap::new(),
            logged_at: HashMap::new(),
        }
    }

    /// Whether to seal now rather than use a connection (`connected`: one is open).
    pub(super) fn wants(&self, now: Instant, connected: bool) -> bool {
        match self.mode {
            SealedMode::Off => false,
            SealedMode::Always => now >= self.from,
            SealedMode::WithoutConnection => !connected && now >= self.from,
        }
    }

    /// Seals `payload` for `receiver` (its incarnation as the membership knows it).
    pub(super) fn seal(
        &mut self,
        receiver: &MachineId,
        receiver_incarnation: u64,
        payload: &[u8],
    ) -> Result<Vec<u8>, String> {
        self.seq += 1;
        let envelope = Envelope {
            sender: self.me.as_str(),
            boot: self.boot,
            seq: self.seq,
            receiver: receiver.as_str(),
            receiver_incarnation,
        };
        let credentials = &self.credentials;
        seal::seal(envelope, payload, |m| credentials.sign(m))
    }

    /// Opens and checks a sealed datagram: its layout, that it is addressed to this life of this
    /// node, that it is fresh, and its signature against `certificate(sender)` (the certificate
    /// and the epoch it came with). Returns the sender and the payload's range in `data`.
    pub(super) fn open<'a>(
        &mut self,
        data: &'a [u8],
        certificate: impl FnOnce(&MachineId) -> Option<(u64, Vec<u8>)>,
    ) -> Result<(MachineId, &'a [u8]), Refused> {
        let opened = seal::open(data).map_err(|e| Refused::Dropped(RefusalKind::Garbage, e))?;
        let sender = MachineId::parse(opened.sender)
            .map_err(|e| Refused::Dropped(RefusalKind::Garbage, format!("bad sender ID: {e}")))?;
        if sender == self.me {
            return Err(Refused::Dropped(
                RefusalKind::Forged,
                "a sealed datagram in this machine's own name".to_string(),
            ));
        }
        if opened.receiver_incarnation < self.boot {
            return Err(Refused::Dropped(
                RefusalKind::Stale,
                format!(
                    "from {sender}: addressed to a previous life of this node (incarnation {})",
                    opened.receiver_incarnation
                ),
            ));
        }
        let stale = |s: Stale| {
            Refused::Dropped(
                RefusalKind::Replayed,
                format!(
                    "from {sender}: {} (boot {}, sequence {})",
                    match s {
                        Stale::OldBoot => "from an older life of the sender",
                        Stale::Replayed => "already taken (a replay)",
                    },
                    opened.boot,
                    opened.seq
                ),
            )
        };
        self.freshness
            .check(opened.sender, opened.boot, opened.seq)
            .map_err(stale)?;
        let Some((epoch, cert)) = certificate(&sender) else {
            return Err(Refused::Unverifiable(sender));
        };
        let message = opened.signed_message(data, self.me.as_str());
        if !self.credentials.verify(&cert, &message, opened.signature) {
            if opened.boot > epoch {
                // A new life of the sender, whose certificate has not arrived yet.
                return Err(Refused::Unverifiable(sender));
            }
            return Err(Refused::Dropped(
                RefusalKind::Forged,
                format!(
                    "claims to come from {sender} but does not carry its signature (forged, \
                     damaged, or addressed to another machine)"
                ),
            ));
        }
        self.freshness
            .take(opened.sender, opened.boot, opened.seq)
            .map_err(stale)?;
        Ok((sender, opened.payload))
    }

    /// Whether to connect to `sender` now, so that it stops sealing for this node until its
    /// certificate is here (at most once per [`FALLBACK_EVERY`] per member).
    pub(super) fn fallback_due(&mut self, now: Instant, sender: &MachineId) -> bool {
        if self
            .fallback_at
            .get(sender)
            .is_some_and(|at| now < *at + FALLBACK_EVERY)
        {
            return false;
        }
        if self.fallback_at.len() >= 4096 {
            self.fallback_at.retain(|_, at| now < *at + FALLBACK_EVERY);
        }
        self.fallback_at.insert(sender.clone(), now);
        true
    }

    /// Whether a refusal of this kind is due for a log line.
    pub(super) fn log_due(&mut self, now: Instant, kind: RefusalKind) -> bool {
        if self
            .logged_at
            .get(&kind)
            .is_some_and(|at| now < *at + LOG_EVERY)
        {
            return false;
        }
        self.logged_at.insert(kind, now);
        true
    }
}
