//! What the loopback tests share: machine certificates from a minted CA, a node's configuration, and
//! waiting for what a node sees.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use fleet_gossip::{Liveness, MachineId};
use fleet_gossip_quic::tls::{mint_machine_cert, TlsConfig};
use fleet_gossip_quic::transport::{GossipConfig, GossipHandle};

/// Mutual TLS for `machine`, its certificate minted by the CA `<ca>.pem`/`<ca>.key` in `dir`.
pub fn tls_for(dir: &Path, ca: &str, machine: &str) -> TlsConfig {
    let p = |n: String| dir.join(n);
    let cert = p(format!("{machine}.pem"));
    let key = p(format!("{machine}.key"));
    mint_machine_cert(
        &p(format!("{ca}.pem")),
        &p(format!("{ca}.key")),
        machine,
        &cert,
        &key,
    )
    .unwrap();
    tls_files(dir, ca, machine)
}

/// Mutual TLS for `machine` from files [`tls_for`] minted before.
#[allow(dead_code)] // not every test binary reads minted files again
pub fn tls_files(dir: &Path, ca: &str, machine: &str) -> TlsConfig {
    TlsConfig::Mutual {
        ca_cert: dir.join(format!("{ca}.pem")),
        cert: dir.join(format!("{machine}.pem")),
        key: dir.join(format!("{machine}.key")),
    }
}

/// A node on a free loopback port with `tls` and `seeds`, its RNG seeded from its name.
pub fn config(machine: &str, tls: TlsConfig, seeds: Vec<SocketAddr>) -> GossipConfig {
    let mut config = GossipConfig::new(
        MachineId::parse(machine).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.tls = tls;
    config.seeds = seeds;
    config.rng_seed = Some(machine.len() as u64);
    config
}

/// Whether `check` holds within `limit` (checked every 20 ms, and once more at the end).
pub async fn wait_for<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check().await
}

/// Whether `observer` sees `target` as `want`.
pub async fn sees(observer: &GossipHandle, target: &str, want: Liveness) -> bool {
    observer.view().await.is_ok_and(|v| {
        v.machines
            .get(&MachineId::parse(target).unwrap())
            .is_some_and(|m| m.liveness == want)
    })
}
