//! What QUIC adds to gossip's payload, measured with the transport's own TLS configuration (mutual
//! TLS 1.3, certificates minted as `fleetctl gen-certs` mints them) on loopback: the bytes of one
//! connection set-up each way (twice: a second connection between the same endpoints is no shorter),
//! and the bytes on the wire of one datagram of a given payload (QUIC short header, frame, AEAD tag,
//! plus the ACKs it causes), with the transport's QUIC parameters (`quic_transport_config`).
//! `gossip/benches/scale.rs` takes these as `HANDSHAKE_BYTES` and `QUIC_OVERHEAD`.
//!
//!     cargo run -p fleet-gossip-quic --example quic_cost
//!     MTU_DISCOVERY=1 cargo run -p fleet-gossip-quic --example quic_cost   # with quinn's default

use std::net::SocketAddr;
use std::time::Duration;

use fleet_gossip_quic::tls::{mint_ca, quic_configs, SERVER_NAME};
use fleet_gossip_quic::transport::quic_transport_config;

mod support;

/// CPU time of this process (all threads).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let fields: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    // Clock ticks of 10 ms (USER_HZ is 100 on Linux).
    Duration::from_millis(10 * fields.iter().sum::<u64>())
}

fn udp(c: &quinn::Connection) -> (u64, u64, u64, u64) {
    let s = c.stats();
    (
        s.udp_tx.bytes,
        s.udp_rx.bytes,
        s.udp_tx.datagrams,
        s.udp_rx.datagrams,
    )
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    mint_ca(&d.join("ca.pem"), &d.join("ca.key")).expect("mint CA");
    let tls = |name: &str| support::machine_tls(d, name, &format!("{:0>32}", name));
    let (mut server_config, _) = quic_configs(&tls("a")).expect("configs");
    // The transport's own parameters (set `MTU_DISCOVERY=1` for quinn's default discovery).
    let transport = || {
        let mut t = quic_transport_config(Duration::from_secs(60));
        if std::env::var("MTU_DISCOVERY").is_ok() {
            t.mtu_discovery_config(Some(Default::default()));
        }
        std::sync::Arc::new(t)
    };
    server_config.transport_config(transport());
    let (_, client_config) = quic_configs(&tls("b")).expect("configs");
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr: SocketAddr = server.local_addr().unwrap();
    let accept = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Some(incoming) = server.accept().await {
                if let Ok(c) = incoming.await {
                    let c2 = c.clone();
                    tokio::spawn(async move {
                        while let Ok(d) = c2.read_datagram().await {
                            drop(d);
                        }
                    });
                    conns.push(c);
                }
            }
        })
    };
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut client_config = client_config;
    client_config.transport_config(transport());
    client.set_default_client_config(client_config);

    println!("connection set-up (mutual TLS 1.3, one certificate each way, P-256 keys):");
    for what in ["first connection", "second connection"] {
        let conn = client.connect(addr, SERVER_NAME).unwrap().await.unwrap();
        // Let the last handshake packets and their ACKs (and session tickets) arrive.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (tx, rx, dtx, drx) = udp(&conn);

        println!(
            "  {what:<18} client sends {tx:>5} B in {dtx} datagrams, receives {rx:>5} B in {drx}"
        );
        conn.close(0u32.into(), b"");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // CPU of set-ups: both ends run in this process (so the figure is one client's plus one
    // server's work: ECDHE, a certificate chain verified and a signature made on each side).
    let rounds = 50;
    let cpu0 = process_cpu();
    for _ in 0..rounds {
        let conn = client.connect(addr, SERVER_NAME).unwrap().await.unwrap();
        conn.close(0u32.into(), b"");
    }
    let per = (process_cpu() - cpu0) / rounds;
    println!("  CPU of one set-up, both ends together: {per:?} (this build's profile)");

    let conn = client.connect(addr, SERVER_NAME).unwrap().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("one datagram on an open connection (its UDP bytes, and the ACKs that come back):");
    for payload in [88usize, 300, 1000] {
        let rounds = 200u64;
        let before = udp(&conn);
        for _ in 0..rounds {
            conn.send_datagram(vec![0u8; payload].into()).unwrap();
            // Spaced like probes, so that ACKs are not batched over many datagrams.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = udp(&conn);
        let sent = (after.0 - before.0) as f64 / rounds as f64;
        let acks = (after.1 - before.1) as f64 / rounds as f64;
        println!(
            "  payload {payload:>4} B: {sent:.1} B on the wire ({:.1} B overhead), {acks:.1} B of \
             ACKs back per datagram",
            sent - payload as f64
        );
    }
    conn.close(0u32.into(), b"");
    server.close(0u32.into(), b"");
    accept.abort();
}
