//! The tokio/quinn driver: one QUIC endpoint on one UDP port runs a [`Node`].
//!
//! SWIM packets travel as QUIC datagrams; anti-entropy syncs and request/response exchanges each use
//! a bidirectional stream. Every connection is mutually authenticated ([`TlsConfig`]): a peer without a
//! certificate from the cluster CA never gets a connection, so it never reaches the node.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use fleet_gossip::{MachineId, Metadata};
//! use fleet_gossip_quic::tls::TlsConfig;
//! use fleet_gossip_quic::transport::{Gossip, GossipConfig};
//!
//! let mut config = GossipConfig::new(MachineId::parse("m1").unwrap(), "10.0.0.1:4001".parse()?);
//! config.seeds = vec!["10.0.0.2:4001".parse()?];
//! config.tls = TlsConfig::Mutual {
//!     ca_cert: "/etc/fleet/ca.pem".into(),
//!     cert: "/etc/fleet/machine.pem".into(),
//!     key: "/etc/fleet/machine.key".into(),
//! };
//! let (gossip, mut events) = Gossip::start(config).await?;
//! gossip.set_metadata(Metadata::default());
//! gossip.set_request_handler(|_from, request: Vec<u8>| async move { Ok(request) });
//! while let Some(event) = events.recv().await {
//!     println!("{event:?}: {:?}", gossip.view().await?.machines.len());
//! }
//! gossip.leave().await?;
//! # Ok(()) }
//! ```
//!
//! Stream framing: one kind byte ([`STREAM_SYNC`] or [`STREAM_REQUEST`]), then frames of a 4-byte
//! big-endian length and that many bytes. A sync stream carries offer, answer, delta (each at most
//! [`fleet_gossip::wire::MAX_SYNC_MESSAGE`]); a request stream carries the request (at most
//! [`MAX_REQUEST`]), then a status byte (0 ok, 1 error) and the response (at most
//! [`MAX_RESPONSE`]), or the error text.
//!
//! A frame's length is checked against the cap of its place before anything is read, and its
//! buffer grows as its bytes arrive: a peer that announces a large frame and sends nothing costs
//! nothing. Frames over 64 KiB also take their size from a budget shared by every stream
//! ([`FRAME_BUDGET`]); a stream that finds the budget spent is refused, so no peer can make a node
//! hold more than that in partial frames, whatever the number of streams (at most
//! [`MAX_STREAMS`] per connection).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fleet_gossip::wire::MAX_SYNC_MESSAGE;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use rand::rngs::{StdRng, SysRng};
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot, Semaphore};

use fleet_gossip::core::{self, Counters, Event, FullState, Node, SyncAnswer, SyncOffer};
use fleet_gossip::{MachineId, Metadata, NodeIdentity, UnitState, View};

use crate::credentials::CertCredentials;
use crate::frame;
use crate::tls::{self, TlsConfig, TlsError};

mod driver;
mod sealed;
mod streams;

use driver::Driver;
use sealed::{DemuxSocket, Sealer};
use streams::*;

pub use sealed::{RefusalKind, SealedMode, SealedRefusals};

pub use crate::frame::{MAX_REQUEST, MAX_RESPONSE, STREAM_REQUEST, STREAM_SYNC};
/// Bytes of large frames (over 64 KiB) all streams together may be receiving at once.
pub const FRAME_BUDGET: usize = 64 << 20;
/// Concurrent streams a peer may open on one connection.
pub const MAX_STREAMS: u32 = 32;
/// Frames up to this size need no budget.
const SMALL_FRAME: usize = 64 << 10;
/// How long a stream exchange (sync or request) may take.
const STREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Datagrams kept per peer while its connection is being set up.
const MAX_PENDING: usize = 32;

/// Everything [`Gossip::start`] needs.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// This machine's ID.
    pub machine_id: MachineId,
    /// The UDP address to bind (datagrams and streams share it).
    pub listen: SocketAddr,
    /// The address peers should use; defaults to the bound address, and is required when `listen`
    /// is a wildcard (0.0.0.0 or ::).
    pub advertise: Option<SocketAddr>,
    /// Seed peers to join through (fleetd adds bootstrap addresses from etcd via
    /// [`GossipHandle::join`]).
    pub seeds: Vec<SocketAddr>,
    /// Peer authentication.
    pub tls: TlsConfig,
    /// Failure detection and dissemination settings.
    pub core: core::Config,
    /// The incarnation to start with; defaults to the wall clock in milliseconds since the Unix
    /// epoch, so each restart is newer than the last.
    pub incarnation: Option<u64>,
    /// Seed of the node's RNG; defaults to OS randomness.
    pub rng_seed: Option<u64>,
    /// QUIC idle timeout: a connection without traffic for this long is closed (and reopened on the
    /// next send). Default 60 s.
    pub idle_timeout: Duration,
    /// Refuse to start if the certificate names another machine than `machine_id` (peers would
    /// refuse every message anyway). Default true; only tests of the peers' defences turn it off
    /// to play an impostor.
    pub verify_own_certificate: bool,
    /// When SWIM packets, pushes and summary offers travel as sealed datagrams (signed with this
    /// machine's key, outside any connection) rather than over a connection; only with mutual
    /// TLS. Default [`SealedMode::WithoutConnection`].
    pub sealed: SealedMode,
    /// How long after start the node seals nothing (its certificate spreads meanwhile). Default
    /// 10 s.
    pub sealed_after: Duration,
}

impl GossipConfig {
    /// Defaults for everything but the machine ID and the listen address (mutual TLS is required:
    /// `tls` starts as [`TlsConfig::InsecureDevelopment`] only so that this constructor needs no
    /// files; set it).
    pub fn new(machine_id: MachineId, listen: SocketAddr) -> Self {
        GossipConfig {
            machine_id,
            listen,
            advertise: None,
            seeds: Vec::new(),
            tls: TlsConfig::InsecureDevelopment,
            core: core::Config::default(),
            incarnation: None,
            rng_seed: None,
            idle_timeout: Duration::from_secs(60),
            verify_own_certificate: true,
            sealed: SealedMode::default(),
            sealed_after: sealed::SEALED_AFTER,
        }
    }
}

/// What went wrong in the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP port could not be bound.
    #[error("cannot bind the gossip endpoint on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// `listen` is a wildcard address and no `advertise` address was given.
    #[error("listen address {0} is a wildcard: set an advertise address peers can reach")]
    NeedAdvertise(SocketAddr),
    /// The gossip task has stopped (after leave, or a crash of the task).
    #[error("gossip has stopped")]
    Stopped,
}

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The machine is not in the membership.
    #[error("unknown machine {0}")]
    UnknownMachine(MachineId),
    /// No connection could be made (unreachable, or TLS refused).
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The peer's address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The stream failed mid-exchange.
    #[error("request stream to {addr} failed: {reason}")]
    Stream {
        /// The peer's address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The peer's handler returned an error (or it has none).
    #[error("peer {addr} refused the request: {message}")]
    Remote {
        /// The peer's address.
        addr: SocketAddr,
        /// The handler's error text.
        message: String,
    },
    /// The exchange took longer than 30 s.
    #[error("request to {0} timed out")]
    Timeout(SocketAddr),
    /// Gossip has stopped.
    #[error("gossip has stopped")]
    Stopped,
}

/// The future a [`RequestHandler`] returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;

/// Serves requests that peers send with [`GossipHandle::request`]. Any
/// `Fn(SocketAddr, Vec<u8>) -> impl Future<Output = Result<Vec<u8>, String>>` is one.
pub trait RequestHandler: Send + Sync + 'static {
    /// Answers `request` from the peer at `from` (already authenticated by TLS).
    fn handle(&self, from: SocketAddr, request: Vec<u8>) -> HandlerFuture;
}

impl<F, Fut> RequestHandler for F
where
    F: Fn(SocketAddr, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<u8>, String>> + Send + 'static,
{
    fn handle(&self, from: SocketAddr, request: Vec<u8>) -> HandlerFuture {
        Box::pin(self(from, request))
    }
}

type SharedHandler = Arc<RwLock<Option<Arc<dyn RequestHandler>>>>;

/// Transport counters and the frame budget, shared between tasks.
#[derive(Debug)]
struct Shared {
    budget: Semaphore,
    stream_bytes_in: AtomicU64,
    stream_bytes_out: AtomicU64,
    rejected_connections: AtomicU64,
    failed_connects: AtomicU64,
    datagrams_not_sent: AtomicU64,
    datagrams_overflow: AtomicU64,
    garbage_streams: AtomicU64,
    frames_over_budget: AtomicU64,
    sealed_in: AtomicU64,
    sealed_bytes_in: AtomicU64,
    sealed_out: AtomicU64,
    sealed_bytes_out: AtomicU64,
    /// Sealed datagrams dropped, by [`RefusalKind`] (in the order of [`RefusalKind::ALL`]).
    sealed_refused: [AtomicU64; 4],
    sealed_unverifiable: AtomicU64,
    /// When a peer of another protocol version was last logged.
    mismatch_logged_at: std::sync::Mutex<Option<Instant>>,
}

impl Shared {
    fn sealed_refused(&self, kind: RefusalKind) -> &AtomicU64 {
        &self.sealed_refused[kind as usize]
    }

    /// Whether a peer of another protocol version is due for a log line (at most every 10 s: it
    /// retries on every contact).
    fn mismatch_log_due(&self) -> bool {
        let now = Instant::now();
        let mut at = self
            .mismatch_logged_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if at.is_some_and(|t| now < t + Duration::from_secs(10)) {
            return false;
        }
        *at = Some(now);
        true
    }
}

/// A snapshot of a node's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// The core's counters (SWIM datagrams in/out, garbage dropped, syncs).
    pub core: Counters,
    /// Bytes read from sync and request streams.
    pub stream_bytes_in: u64,
    /// Bytes written to sync and request streams.
    pub stream_bytes_out: u64,
    /// UDP bytes received so far: on all connections (QUIC overhead and TLS included) and in
    /// sealed datagrams.
    pub udp_bytes_in: u64,
    /// UDP bytes sent so far (connections and sealed datagrams).
    pub udp_bytes_out: u64,
    /// Sealed datagrams received (taken or not).
    pub sealed_in: u64,
    /// Sealed datagrams sent.
    pub sealed_out: u64,
    /// Sealed datagrams dropped: garbage, oversized, forged, replayed, or addressed to another
    /// machine or an earlier life of this one (the sum of `sealed_refusals` but `unverifiable`).
    pub sealed_refused: u64,
    /// Sealed datagrams dropped because this node does not hold their sender's certificate (yet).
    pub sealed_unverifiable: u64,
    /// Sealed datagrams dropped, by why (`fleet_gossip_refused_total{reason="sealed_..."}`).
    pub sealed_refusals: SealedRefusals,
    /// Incoming connections refused during the handshake (e.g. no or foreign certificate).
    pub rejected_connections: u64,
    /// Outgoing connection attempts that failed.
    pub failed_connects: u64,
    /// Datagrams that could not be sent (too large for the path, connection lost, or no
    /// connection in time).
    pub datagrams_not_sent: u64,
    /// Received datagrams dropped because the node could not keep up.
    pub datagrams_overflow: u64,
    /// Streams refused as garbage (unknown kind, oversized or undecodable frames).
    pub garbage_streams: u64,
    /// Large frames refused because [`FRAME_BUDGET`] bytes of large frames were already in flight.
    pub frames_over_budget: u64,
}

enum Command {
    View(oneshot::Sender<Arc<View>>),
    Stats(oneshot::Sender<Stats>),
    SetMetadata(Metadata),
    SetUnits(BTreeMap<String, UnitState>),
    Join(Vec<SocketAddr>),
    Lookup(MachineId, oneshot::Sender<Option<SocketAddr>>),
    Connection(SocketAddr, oneshot::Sender<Result<Connection, String>>),
    Leave(oneshot::Sender<()>),
    Abort(oneshot::Sender<()>),
}

/// The machine a connection's peer certificate names (`None` in the insecure mode).
type Cert = Option<MachineId>;

enum Net {
    Datagram(SocketAddr, Cert, Bytes),
    /// A sealed datagram from this UDP address (not checked yet).
    Sealed(SocketAddr, Bytes),
    Connected(Connection),
    ConnectFailed(SocketAddr),
    /// A connection ended: its address, stable id, and final UDP bytes (in, out).
    Closed(SocketAddr, usize, (u64, u64)),
    Offer(Cert, SyncOffer, oneshot::Sender<Option<SyncAnswer>>),
    Answer(Cert, SyncAnswer, oneshot::Sender<Option<FullState>>),
    Merge(Cert, FullState),
}

/// The machine `conn`'s peer certificate names, when peers are bound to their certificates
/// (mutual TLS). A certificate that names no machine, or names an invalid machine ID, is an error:
/// such a peer may not speak.
fn peer_cert(conn: &Connection, bind: bool) -> Result<Cert, String> {
    if !bind {
        return Ok(None);
    }
    let id = tls::peer_machine_id(conn.peer_identity())
        .ok_or_else(|| "the peer's certificate names no machine".to_string())?;
    MachineId::parse(&id)
        .map(Some)
        .map_err(|e| format!("the peer's certificate names an invalid machine ID: {e}"))
}

/// Starts gossip.
pub struct Gossip;

/// The QUIC transport parameters of every gossip connection (both directions): `idle_timeout`,
/// [`MAX_STREAMS`] bidirectional streams, no unidirectional ones, and no path MTU discovery.
/// Datagrams are capped below QUIC's minimum MTU (`max_packet_size` 1100 B), so discovery gains
/// them nothing, and its probes (1,200 to 1,452 B each way, after every handshake) were 70% of a
/// connection set-up's bytes: 8.3 kB → 2.6 kB sent by the client, 7.2 kB → 1.6 kB by the server
/// (`examples/quic_cost.rs`). Most gossip contacts at 10,000 members need a new connection.
pub fn quic_transport_config(idle_timeout: Duration) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(idle_timeout)
                .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::from_u32(60_000))),
        ))
        .max_concurrent_bidi_streams(MAX_STREAMS.into())
        .max_concurrent_uni_streams(0u32.into())
        .mtu_discovery_config(None);
    transport
}

impl Gossip {
    /// Binds the endpoint, starts the node and its driver task, and joins through the seeds.
    /// Returns the handle and the stream of [`Event`]s (unbounded: read it, or drop it).
    ///
    /// Must be called inside a tokio runtime.
    pub async fn start(
        config: GossipConfig,
    ) -> Result<(GossipHandle, mpsc::UnboundedReceiver<Event>), TransportError> {
        if config.verify_own_certificate {
            tls::check_own_certificate(&config.tls, config.machine_id.as_str())?;
        }
        let bind = matches!(config.tls, TlsConfig::Mutual { .. });
        let (server, mut client) = tls::quic_configs(&config.tls)?;
        let transport = Arc::new(quic_transport_config(config.idle_timeout));
        client.transport_config(transport.clone());
        let mut server = server;
        server.transport_config(transport);
        let bind_err = |source| TransportError::Bind {
            addr: config.listen,
            source,
        };
        let (net_tx, net_rx) = mpsc::channel(4096);
        let shared = Arc::new(Shared {
            budget: Semaphore::new(FRAME_BUDGET / 1024),
            stream_bytes_in: AtomicU64::new(0),
            stream_bytes_out: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            failed_connects: AtomicU64::new(0),
            datagrams_not_sent: AtomicU64::new(0),
            datagrams_overflow: AtomicU64::new(0),
            garbage_streams: AtomicU64::new(0),
            frames_over_budget: AtomicU64::new(0),
            sealed_in: AtomicU64::new(0),
            sealed_bytes_in: AtomicU64::new(0),
            sealed_out: AtomicU64::new(0),
            sealed_bytes_out: AtomicU64::new(0),
            sealed_refused: Default::default(),
            sealed_unverifiable: AtomicU64::new(0),
            mismatch_logged_at: std::sync::Mutex::new(None),
        });
        // The endpoint's socket, with sealed datagrams taken off before QUIC reads. No QUIC
        // packet starts like one: the endpoint advertises no greasing of QUIC's fixed bit, so
        // peers always set it.
        let runtime = Arc::new(quinn::TokioRuntime);
        let socket = std::net::UdpSocket::bind(config.listen).map_err(bind_err)?;
        let socket = quinn::Runtime::wrap_udp_socket(&*runtime, socket).map_err(bind_err)?;
        let socket =
            Arc::new(DemuxSocket::new(socket, net_tx.clone(), shared.clone()).map_err(bind_err)?);
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config.grease_quic_bit(false);
        let mut endpoint = Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server),
            socket.clone(),
            runtime,
        )
        .map_err(bind_err)?;
        endpoint.set_default_client_config(client);
        let bound = endpoint
            .local_addr()
            .map_err(|source| TransportError::Bind {
                addr: config.listen,
                source,
            })?;
        let advertise = match config.advertise {
            Some(a) => a,
            None if bound.ip().is_unspecified() => {
                return Err(TransportError::NeedAdvertise(bound))
            }
            None => bound,
        };
        let incarnation = config.incarnation.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(1)
        });
        let rng = match config.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::try_from_rng(&mut SysRng).unwrap_or_else(|_| {
                StdRng::seed_from_u64(incarnation ^ u64::from(std::process::id()))
            }),
        };
        let identity = NodeIdentity::new(config.machine_id.clone(), advertise, incarnation);
        let now = Instant::now();
        let mut node = Node::new(config.core.clone(), identity.clone(), rng, now);
        // Every state update is signed with the machine's key and checked against its origin's
        // certificate (none in the insecure development mode), and so is every sealed datagram.
        let mut sealer = None;
        if let Some(credentials) = CertCredentials::load(&config.tls)? {
            let credentials = Arc::new(credentials);
            node.set_credentials(now, credentials.clone());
            sealer = Some(Sealer::new(
                credentials,
                identity.machine_id.clone(),
                incarnation,
                config.sealed,
                now + config.sealed_after,
            ));
        }
        node.join(now, &config.seeds);

        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let handler: SharedHandler = Arc::new(RwLock::new(None));

        tokio::spawn(accept_loop(
            endpoint.clone(),
            net_tx.clone(),
            shared.clone(),
        ));
        let driver = Driver {
            node,
            endpoint: endpoint.clone(),
            conns: HashMap::new(),
            pending: HashMap::new(),
            net_tx,
            event_tx,
            shared: shared.clone(),
            handler: handler.clone(),
            closed_udp: (0, 0),
            bind,
            socket,
            sealer,
        };
        tokio::spawn(driver.run(cmd_rx, net_rx));
        tracing::info!(machine = %identity.machine_id, %advertise, %bound, "gossip started");
        Ok((
            GossipHandle {
                cmd: cmd_tx,
                identity,
                local_addr: bound,
                handler,
            },
            event_rx,
        ))
    }
}

/// fleetd's handle on gossip. Cheap to clone; every clone drives the same node.
///
/// Dropping every handle stops gossip abruptly (peers will declare this node down); call
/// [`GossipHandle::leave`] for a graceful exit.
#[derive(Clone)]
pub struct GossipHandle {
    cmd: mpsc::UnboundedSender<Command>,
    identity: NodeIdentity,
    local_addr: SocketAddr,
    handler: SharedHandler,
}

impl std::fmt::Debug for GossipHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipHandle")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl GossipHandle {
    /// The identity the node started with (it is renewed if the cluster ever declares it down).
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// The UDP address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn send(&self, cmd: Command) -> Result<(), TransportError> {
        self.cmd.send(cmd).map_err(|_| TransportError::Stopped)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, TransportError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| TransportError::Stopped)
    }

    /// The node's current view of the cluster (machines, liveness, metadata, unit states): the
    /// node's shared one ([`fleet_gossip::core::Node::shared_view`]), rebuilt only when something
    /// in it changed since the last request (even then, an unchanged machine's metadata and units
    /// are pointer copies), so asking often costs the driver little.
    pub async fn view(&self) -> Result<Arc<View>, TransportError> {
        self.ask(Command::View).await
    }

    /// The node's counters.
    pub async fn stats(&self) -> Result<Stats, TransportError> {
        self.ask(Command::Stats).await
    }

    /// Publishes this machine's metadata.
    pub fn set_metadata(&self, metadata: Metadata) -> Result<(), TransportError> {
        self.send(Command::SetMetadata(metadata))
    }

    /// Publishes the runtime states of all this machine's units (missing units count as removed).
    pub fn set_unit_states(
        &self,
        units: BTreeMap<String, UnitState>,
    ) -> Result<(), TransportError> {
        self.send(Command::SetUnits(units))
    }

    /// Joins through more addresses (e.g. bootstrap addresses fleetd read from etcd).
    pub fn join(&self, addrs: Vec<SocketAddr>) -> Result<(), TransportError> {
        self.send(Command::Join(addrs))
    }

    /// Installs the handler for requests from peers (replacing any previous one). Without one,
    /// requests are refused with an error.
    pub fn set_request_handler(&self, handler: impl RequestHandler) {
        let mut slot = self.handler.write().unwrap_or_else(|e| e.into_inner());
        *slot = Some(Arc::new(handler));
    }

    /// Sends `request` to machine `peer` over a new stream and returns its handler's response.
    pub async fn request(
        &self,
        peer: &MachineId,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, RequestError> {
        let addr = self
            .ask(|tx| Command::Lookup(peer.clone(), tx))
            .await
            .map_err(|_| RequestError::Stopped)?
            .ok_or_else(|| RequestError::UnknownMachine(peer.clone()))?;
        self.request_addr(addr, request).await
    }

    /// Sends `request` to the peer at `addr` (see [`GossipHandle::request`]).
    pub async fn request_addr(
        &self,
        addr: SocketAddr,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, RequestError> {
        let conn = self
            .ask(|tx| Command::Connection(addr, tx))
            .await
            .map_err(|_| RequestError::Stopped)?
            .map_err(|reason| RequestError::Connect { addr, reason })?;
        let exchange = async {
            let stream_err = |e: &dyn std::fmt::Display| RequestError::Stream {
                addr,
                reason: e.to_string(),
            };
            if request.len() > MAX_REQUEST {
                return Err(stream_err(&format!(
                    "request of {} bytes exceeds the cap of {MAX_REQUEST} bytes",
                    request.len()
                )));
            }
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| stream_err(&e))?;
            send.write_all(&[STREAM_REQUEST])
                .await
                .map_err(|e| stream_err(&e))?;
            write_frame(&mut send, &request)
                .await
                .map_err(|e| stream_err(&e))?;
            send.finish().map_err(|e| stream_err(&e))?;
            let mut status = [0u8; 1];
            recv.read_exact(&mut status)
                .await
                .map_err(|e| stream_err(&e))?;
            let body = read_frame(&mut recv, MAX_RESPONSE, None)
                .await
                .map_err(|e| stream_err(&e))?;
            match status[0] {
                0 => Ok(body),
                _ => Err(RequestError::Remote {
                    addr,
                    message: String::from_utf8_lossy(&body).into_owned(),
                }),
            }
        };
        tokio::time::timeout(STREAM_TIMEOUT, exchange)
            .await
            .map_err(|_| RequestError::Timeout(addr))?
    }

    /// Leaves the cluster gracefully: tells a few members, lets the datagrams go out, closes the
    /// endpoint and stops the driver. Other handles then get [`TransportError::Stopped`].
    pub async fn leave(&self) -> Result<(), TransportError> {
        self.ask(Command::Leave).await
    }

    /// Stops at once without telling anyone, as a crash would (for failure-detection tests and
    /// benchmarks).
    pub async fn abort(&self) -> Result<(), TransportError> {
        self.ask(Command::Abort).await
    }
}
