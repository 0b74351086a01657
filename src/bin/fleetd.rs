//! fleetd: the fleet agent: configuration, the etcd registry, gossip, the agent and the HTTP API.
//!
//! Signals: SIGTERM/SIGINT shut down gracefully (requests in flight finish), SIGHUP reloads the
//! configuration keeping the listeners, SIGUSR1 logs the state.
//!
//! As a systemd service (`dist/fleet.service`, `Type=notify`): takes its API sockets from
//! `dist/fleet.socket` when socket-activated, reports `READY=1` once the API serves and
//! `STOPPING=1` on shutdown, and logs without timestamps or colours when its stderr is the journal.

use std::io::IsTerminal;
use std::net::{IpAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use fleet::agent::relay::{self, GossipRelay, Responder};
use fleet::agent::{spawn_view_refresh, Agent, AgentCluster, AgentOptions};
use fleet::api::access::{TcpAccess, TlsSettings};
use fleet::api::{self, activation, ApiSettings, ApiState, ClusterView, Listeners, LocalCluster};
use fleet::config::{Config, FleetdArgs, Reload};
use fleet::registry::{Registry, RegistryOptions};
use fleet_gossip_quic::tls::TlsConfig;
use fleet_gossip_quic::transport::{Gossip, GossipConfig, GossipHandle};
use fleet_sched::MachineId;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry as TracingRegistry};

type FilterHandle = reload::Handle<EnvFilter, TracingRegistry>;

fn main() -> ExitCode {
    limit_malloc_arenas();
    if std::env::args().nth(1).as_deref() == Some("guard") {
        return guard_main();
    }
    let args = FleetdArgs::parse();
    // Before any thread exists: this edits the environment.
    let activated = activation::take_listen_fds();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetd: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args, activated)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("fleetd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates an arena of its own, up to 8 per core: tokio's workers and
/// every blocking-pool thread (file reads, `spawn_blocking`) kept one, each holding memory freed on
/// it. fleetd allocates little: with two arenas a release fleetd with 1,000 units launched holds about
/// 0.9 MiB less (docs/benchmarks.md). A `MALLOC_ARENA_MAX` set by the operator wins. Called before
/// any other thread exists.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: changes a tunable of glibc's allocator; no other thread runs yet.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
}

/// Arguments of `fleetd guard` (run by `fleet-guard.service`, which fleetd writes and starts).
#[derive(Parser)]
#[command(name = "fleetd guard", about = "fleet's fence guard (docs/safety.md)")]
struct GuardArgs {
    /// The fence deadline file fleetd writes.
    #[arg(long)]
    fence_file: std::path::PathBuf,
    /// fleet's units directory.
    #[arg(long)]
    units_directory: std::path::PathBuf,
    /// Drive the user's systemd instead of the system's.
    #[arg(long)]
    user: bool,
}

fn guard_main() -> ExitCode {
    let args = GuardArgs::parse_from(std::env::args().skip(1));
    let _ = init_logging(0);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetd guard: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fleet::agent::guard::run(
        args.fence_file,
        args.units_directory,
        args.user,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn filter_for(verbosity: u8) -> EnvFilter {
    EnvFilter::new(match verbosity {
        0 => "info",
        1 => "info,fleet=debug,fleetd=debug",
        _ => "debug,fleet=trace,fleetd=trace",
    })
}

/// Whether stderr is connected to the journal (`JOURNAL_STREAM` names stderr's device and inode).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let meta = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata());
    match meta {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
}

/// Prefixes each line with its syslog priority (`<3>` error ... `<7>` trace), which journald
/// turns into the entry's priority; the journal adds the timestamp itself.
struct JournalFormat(
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, ()>,
);

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let prio = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            tracing::Level::DEBUG | tracing::Level::TRACE => 7,
        };
        write!(writer, "<{prio}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Logs to stderr; `RUST_LOG` wins over `verbosity`. Returns a handle to change the level on SIGHUP
/// (None when RUST_LOG decides). In the journal: no timestamps or colours, priorities as prefixes.
fn init_logging(verbosity: u8) -> Option<FilterHandle> {
    let from_env = std::env::var("RUST_LOG").is_ok_and(|v| !v.is_empty());
    let filter = if from_env {
        EnvFilter::from_default_env()
    } else {
        filter_for(verbosity)
    };
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if stderr_is_journal() {
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_ansi(false);
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.with_ansi(false).event_format(JournalFormat(format)))
            .init();
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.with_ansi(std::io::stderr().is_terminal()))
            .init();
    }
    (!from_env).then_some(handle)
}

/// The address of the interface that routes to the internet (no packet is sent).
fn detect_public_ip() -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("198.51.100.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

async fn run(
    args: FleetdArgs,
    activated: std::io::Result<activation::Activated>,
) -> anyhow::Result<()> {
    let (config, warnings) = args.load().context("loading configuration")?;
    let log_handle = init_logging(config.verbosity);
    for w in &warnings {
        tracing::warn!("config: {w}");
    }
    let machine_id =
        MachineId::parse(&config.resolve_machine_id()?).context("invalid machine ID")?;
    let public_ip = config.public_ip.or_else(detect_public_ip);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        machine = %machine_id,
        public_ip = ?public_ip,
        etcd = ?config.etcd_servers,
        prefix = %config.etcd_key_prefix,
        "fleetd starting"
    );

    // Before anything in the runtime directory is read or written (lease, witness, fence deadline).
    let _runtime_lock = fleet::runtime_lock::lock(&config.runtime_dir).map_err(|e| {
        tracing::error!("{e}");
        e
    })?;
    // One fleetd per system manager: the fence guard and the units' fence drop-ins are the machine's.
    let _system_lock = if config.systemd_user {
        None
    } else {
        fleet::runtime_lock::lock_system_manager().map_err(|e| {
            tracing::error!("{e}");
            e
        })?
    };
    let opts = RegistryOptions::from_config(&config);
    opts.check().context("etcd TLS settings")?;
    let registry = Registry::start(opts);
    let (gossip, gossip_events) = start_gossip(&config, &machine_id, public_ip).await?;
    let cluster = Arc::new(
        AgentCluster::new(
            LocalCluster::new(machine_id.clone(), public_ip, config.metadata.clone()),
            registry.clone(),
            Some(gossip.clone()),
        )
        .with_metadata_file(config.state_dir.join("metadata.json")),
    );
    let _view_refresh = spawn_view_refresh(cluster.clone(), gossip_events);
    let _metrics_sampler = fleet::metrics::spawn_membership_sampler(gossip.clone());
    // This machine as a witness of the committee (docs/safety.md).
    let witness = Arc::new(fleet::agent::witness::WitnessService::load(
        fleet_decide::Timing::new(config.fence_after, config.agent_ttl),
        Some(config.runtime_dir.join("witness.json")),
    ));
    // Peers ask this machine for its units' status, journal and restart, to change its metadata, and
    // for its support and votes as a witness.
    let addr_view = cluster.clone();
    let alive_view = cluster.clone();
    let responder = Arc::new(
        Responder::new(
            machine_id.clone(),
            config.systemd_user,
            config.units_directory.clone(),
        )
        .with_cluster(cluster.clone() as Arc<dyn ClusterView>)
        .with_witness(
            witness.clone(),
            Arc::new(move |m: &MachineId| addr_view.gossip_addr(m)),
            Arc::new(move |m: &MachineId| {
                let (alive, suspect, _) = alive_view.peer(m);
                alive && !suspect
            }),
        ),
    );
    relay::install(&gossip, responder.clone());
    let state = ApiState::new(
        registry.clone(),
        cluster.clone() as Arc<dyn ClusterView>,
        settings_of(&config),
    )
    .with_relay(Arc::new(GossipRelay::new(
        machine_id.clone(),
        Some(gossip.clone()),
        responder,
    )));

    let activated = activated.context("taking the sockets systemd passed")?;
    let listeners = api_listeners(&config, activated).await?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(api::router(state.clone()), listeners, async {
        let _ = stop_rx.await;
    }));
    // Handlers before READY=1: a stop right after it (systemd may send SIGTERM as soon as it is ready)
    // must shut down in order, not end the process by SIGTERM's default action (CI on ab4af1d: a SIGTERM
    // sent on READY=1 ended fleetd silently, without STOPPING=1 or a leave).
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    activation::notify_or_log(&format!(
        "READY=1\nSTATUS=API serving; machine {machine_id}"
    ));

    let agent = Agent::start(
        AgentOptions {
            machine: machine_id.clone(),
            public_ip,
            metadata: config.metadata.clone(),
            units_directory: config.units_directory.clone(),
            systemd_user: config.systemd_user,
            agent_ttl: config.agent_ttl,
            reconcile_interval: config.engine_reconcile_interval,
            fence_after: config.fence_after,
            runtime_dir: config.runtime_dir.clone(),
            restart_allowance: Duration::from_secs(10),
        },
        registry.clone(),
        cluster.clone(),
        witness,
    );

    let mut current = config;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => reload(&args, &mut current, &state, &cluster, &registry, log_handle.as_ref()),
            _ = usr1.recv() => dump(&registry, &cluster, &state),
        }
    }
    activation::notify_or_log("STOPPING=1\nSTATUS=stopping this machine's units");
    if agent.shutdown(Duration::from_secs(60)).await {
        // Restarting: the next fleetd rejoins with a newer incarnation; leaving would tell peers to
        // take our units over.
        let _ = gossip.abort().await;
    } else if let Err(e) = gossip.leave().await {
        tracing::warn!("leaving the gossip cluster: {e}");
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!("API server: {e}"),
        Ok(Err(e)) => tracing::warn!("API server task: {e}"),
        Err(_) => tracing::warn!("requests still in flight after 10s; exiting anyway"),
    }
    tracing::info!("fleetd stopped");
    Ok(())
}

/// The API's listeners: the sockets systemd passed (socket activation), else the configured ones.
/// The TCP listener gets TLS and client credentials unless `api_tcp_insecure` says plain HTTP.
async fn api_listeners(
    config: &Config,
    activated: activation::Activated,
) -> anyhow::Result<Listeners> {
    let mut listeners = Listeners::default();
    if !activated.is_empty() {
        let mut unix = activated.unix.into_iter();
        if let Some((l, path)) = unix.next() {
            tracing::info!("API on unix://{} (socket activation)", path.display());
            let l = tokio::net::UnixListener::from_std(l).context("adopting the unix socket")?;
            listeners.unix = Some((l, path));
            listeners.keep_socket_file = true;
        }
        let mut tcp = activated.tcp.into_iter();
        if let Some(l) = tcp.next() {
            let addr = l.local_addr().context("passed TCP socket")?;
            tracing::info!("API on {addr} (socket activation)");
            listeners.tcp =
                Some(tokio::net::TcpListener::from_std(l).context("adopting the TCP socket")?);
        }
        if unix.next().is_some() || tcp.next().is_some() {
            tracing::warn!(
                "systemd passed more than one unix or TCP socket: only the first of each is served"
            );
        }
    } else {
        if let Some(path) = &config.api_socket {
            let l = api::bind_unix(path, config.api_socket_mode)
                .with_context(|| format!("binding API socket {}", path.display()))?;
            if let Some(group) = &config.api_socket_group {
                api::set_socket_group(path, group).with_context(|| {
                    format!("giving API socket {} to group {group}", path.display())
                })?;
            }
            tracing::info!("API on unix://{}", path.display());
            listeners.unix = Some((l, path.clone()));
        }
        if let Some(addr) = config.api_tcp {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding API address {addr}"))?;
            listeners.tcp = Some(l);
        }
    }
    if let Some(l) = &listeners.tcp {
        let addr = l.local_addr().context("API TCP address")?;
        match (&config.api_tls_cert_file, &config.api_tls_key_file) {
            (Some(cert), Some(key)) => {
                let access = TcpAccess::load(&TlsSettings {
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                    client_ca_file: config.api_client_ca_file.clone(),
                    token_file: config.api_token_file.clone(),
                })
                .context("TLS settings of the TCP API")?;
                tracing::info!(
                    client_certs = config.api_client_ca_file.is_some(),
                    token = config.api_token_file.is_some(),
                    "API on https://{addr}"
                );
                listeners.tcp_access = Some(Arc::new(access));
            }
            _ if config.api_tcp_insecure => tracing::warn!(
                "INSECURE: API on http://{addr} without TLS or credentials (api_tcp_insecure): \
                 anyone who reaches it controls the cluster"
            ),
            _ => bail!(
                "the TCP API on {addr} needs api_tls_cert_file, api_tls_key_file and \
                 api_client_ca_file or api_token_file (or api_tcp_insecure=true)"
            ),
        }
    }
    if listeners.unix.is_none() && listeners.tcp.is_none() {
        bail!("no API listener: set api_socket or api_tcp");
    }
    Ok(listeners)
}

/// Starts the gossip endpoint: mutual TLS with the cluster CA, or the insecure development mode when
/// `gossip_insecure` says so (loudly). Without either, fleetd refuses to start.
async fn start_gossip(
    config: &Config,
    machine_id: &MachineId,
    public_ip: Option<IpAddr>,
) -> anyhow::Result<(
    GossipHandle,
    tokio::sync::mpsc::UnboundedReceiver<fleet_gossip::Event>,
)> {
    let tls = match (
        &config.gossip_ca_file,
        &config.gossip_cert_file,
        &config.gossip_key_file,
    ) {
        (Some(ca), Some(cert), Some(key)) => TlsConfig::Mutual {
            ca_cert: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        },
        (None, None, None) if config.gossip_insecure => {
            tracing::warn!(
                "INSECURE: gossip_insecure is set: any host that reaches the gossip port can join \
                 this cluster and read its traffic. Use it for development only; set \
                 gossip_ca_file, gossip_cert_file and gossip_key_file in production \
                 (`fleetctl gen-certs` mints them)."
            );
            TlsConfig::InsecureDevelopment
        }
        (None, None, None) => bail!(
            "gossip needs mutual TLS: set gossip_ca_file, gossip_cert_file and gossip_key_file \
             (mint them with `fleetctl gen-certs --dir DIR --ca`, then `fleetctl gen-certs --dir \
             DIR --machine-id ID` for each machine), or gossip_insecure=true for development"
        ),
        _ => bail!("gossip_ca_file, gossip_cert_file and gossip_key_file must be given together"),
    };
    let listen = config
        .gossip_listen
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], config.gossip_port)));
    let mut gc = GossipConfig::new(machine_id.clone(), listen);
    gc.tls = tls;
    gc.seeds = config.gossip_seeds.clone();
    gc.core.remove_down_after = config.gossip_remove_down_after;
    // A machine silent for less than fence_after is never declared down (docs/safety.md, "Cost").
    gc.core = gc.core.with_blip_tolerance(config.fence_after);
    if listen.ip().is_unspecified() {
        let ip = public_ip.context(
            "gossip listens on a wildcard address and public_ip is unknown: set public_ip or gossip_listen",
        )?;
        gc.advertise = Some(std::net::SocketAddr::new(ip, listen.port()));
    }
    let (handle, events) = Gossip::start(gc)
        .await
        .context("starting the gossip endpoint")?;
    tracing::info!(addr = %handle.identity().addr, "gossip endpoint up");
    Ok((handle, events))
}

fn settings_of(c: &Config) -> ApiSettings {
    ApiSettings {
        token_limit: c.token_limit,
        max_body: c.api_max_body,
    }
}

/// SIGHUP: re-reads file and environment (flags still win), applies what can change live and logs
/// what needs a restart. A configuration that does not load is logged and ignored.
fn reload(
    args: &FleetdArgs,
    current: &mut Config,
    state: &ApiState,
    cluster: &AgentCluster,
    registry: &Registry,
    log_handle: Option<&FilterHandle>,
) {
    let (new, warnings) = match args.load() {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("SIGHUP: configuration not reloaded: {e}");
            return;
        }
    };
    for w in &warnings {
        tracing::warn!("config: {w}");
    }
    let changes = current.diff(&new);
    if changes.is_empty() {
        tracing::info!("SIGHUP: configuration unchanged");
        return;
    }
    for c in &changes {
        match c.reload {
            Reload::Live | Reload::Etcd => tracing::info!("SIGHUP: {c}"),
            Reload::Restart => tracing::warn!("SIGHUP: {c} (takes effect after a restart)"),
        }
    }
    let public_ip = new.public_ip.or_else(detect_public_ip);
    cluster
        .local_cluster()
        .reconfigure(public_ip, new.metadata.clone());
    cluster.local_changed();
    state.set_settings(settings_of(&new));
    if new.verbosity != current.verbosity {
        if let Some(h) = log_handle {
            if let Err(e) = h.reload(filter_for(new.verbosity)) {
                tracing::warn!("cannot change log level: {e}");
            }
        }
    }
    let old_etcd = RegistryOptions::from_config(current);
    let new_etcd = RegistryOptions::from_config(&new);
    let mut etcd_applied = false;
    if old_etcd != new_etcd {
        match new_etcd.check() {
            Ok(()) => {
                tracing::info!("SIGHUP: reconnecting to etcd with the new settings");
                registry.reconfigure(new_etcd);
                etcd_applied = true;
            }
            Err(e) => tracing::error!("SIGHUP: etcd settings not applied: {e}"),
        }
    }
    // What was not applied keeps its running value (Reload::Live options are applied above).
    current.adopt(&new, |r| match r {
        Reload::Live => true,
        Reload::Etcd => etcd_applied,
        Reload::Restart => false,
    });
}

fn dump(registry: &Registry, cluster: &AgentCluster, state: &ApiState) {
    let status = registry.status();
    let units = registry.units().map(|u| u.len());
    let claims = registry.claims().map(|c| c.len());
    tracing::info!(
        available = status.available,
        revision = status.revision,
        error = ?status.error,
        units = ?units,
        claims = ?claims,
        machine = ?cluster.local_machine(),
        settings = ?state.settings(),
        "SIGUSR1: state"
    );
}
