//! Real quinn on loopback: three nodes with mutual TLS from a minted CA, plus an intruder.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use fleet_gossip::tls::{mint_ca, mint_machine_cert, TlsConfig};
use fleet_gossip::transport::{Gossip, GossipConfig, GossipHandle, RequestError};
use fleet_gossip::{Event, Liveness, MachineId, Metadata, UnitState};
use tokio::sync::mpsc::UnboundedReceiver;

fn tls_for(dir: &Path, ca: &str, machine: &str) -> TlsConfig {
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
    TlsConfig::Mutual {
        ca_cert: p(format!("{ca}.pem")),
        cert,
        key,
    }
}

async fn start(
    machine: &str,
    tls: TlsConfig,
    seeds: Vec<SocketAddr>,
) -> (GossipHandle, UnboundedReceiver<Event>) {
    let mut config = GossipConfig::new(MachineId::new(machine), "127.0.0.1:0".parse().unwrap());
    config.tls = tls;
    config.seeds = seeds;
    config.rng_seed = Some(machine.len() as u64);
    Gossip::start(config).await.unwrap()
}

async fn wait_for<F, Fut>(limit: Duration, mut check: F) -> bool
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

async fn sees(observer: &GossipHandle, target: &str, want: Liveness) -> bool {
    observer.view().await.is_ok_and(|v| {
        v.machines
            .get(&MachineId::new(target))
            .is_some_and(|m| m.liveness == want)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_gossip_over_mutual_tls_and_refuse_a_foreign_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mint_ca(&d.join("ca.pem"), &d.join("ca.key")).unwrap();
    mint_ca(&d.join("other.pem"), &d.join("other.key")).unwrap();

    let (a, _ea) = start("a", tls_for(d, "ca", "a"), vec![]).await;
    let seed = vec![a.local_addr()];
    let (b, _eb) = start("b", tls_for(d, "ca", "b"), seed.clone()).await;
    let (c, mut ec) = start("c", tls_for(d, "ca", "c"), seed.clone()).await;

    let all = [&a, &b, &c];
    let names = ["a", "b", "c"];
    let joined = wait_for(Duration::from_secs(10), || async {
        for h in all {
            for n in names {
                if !sees(h, n, Liveness::Alive).await {
                    return false;
                }
            }
        }
        true
    })
    .await;
    assert!(joined, "the three nodes did not all see each other");

    // State spreads.
    let units = BTreeMap::from([(
        "web.service".to_string(),
        UnitState {
            load_state: "loaded".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            unit_hash: [1; 20],
        },
    )]);
    let meta = Metadata {
        public_ip: "192.0.2.7".into(),
        metadata: BTreeMap::from([("disk".to_string(), "ssd".to_string())]),
        version: "0.1.0".into(),
        unit_count: 1,
    };
    a.set_metadata(meta.clone()).unwrap();
    a.set_unit_states(units.clone()).unwrap();
    let spread = wait_for(Duration::from_secs(5), || async {
        for h in [&b, &c] {
            let v = h.view().await.unwrap();
            let Some(m) = v.machines.get(&MachineId::new("a")) else {
                return false;
            };
            if m.metadata.as_ref() != Some(&meta) || m.units != units {
                return false;
            }
        }
        true
    })
    .await;
    assert!(spread, "a's metadata and unit states did not reach b and c");

    // Request/response over a stream.
    b.set_request_handler(|_from, req: Vec<u8>| async move {
        let mut out = b"echo:".to_vec();
        out.extend(req);
        Ok(out)
    });
    let resp = a
        .request(&MachineId::new("b"), b"hi".to_vec())
        .await
        .unwrap();
    assert_eq!(resp, b"echo:hi");
    match a.request(&MachineId::new("c"), b"hi".to_vec()).await {
        Err(RequestError::Remote { .. }) => {}
        other => panic!("c has no handler, expected a remote error, got {other:?}"),
    }
    match a.request(&MachineId::new("zz"), vec![]).await {
        Err(RequestError::UnknownMachine(_)) => {}
        other => panic!("expected an unknown machine, got {other:?}"),
    }

    // An intruder with a certificate from another CA is refused.
    let (intruder, _ei) = start("intruder", tls_for(d, "other", "intruder"), seed.clone()).await;
    // And so is a node in insecure mode (no client certificate).
    let (insecure, _en) = start("insecure", TlsConfig::InsecureDevelopment, seed.clone()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for h in all {
        let v = h.view().await.unwrap();
        assert!(!v.machines.contains_key(&MachineId::new("intruder")));
        assert!(!v.machines.contains_key(&MachineId::new("insecure")));
    }
    assert_eq!(intruder.view().await.unwrap().machines.len(), 1);
    assert_eq!(insecure.view().await.unwrap().machines.len(), 1);
    assert!(a.stats().await.unwrap().rejected_connections >= 2);
    assert!(intruder
        .request_addr(a.local_addr(), b"x".to_vec())
        .await
        .is_err());
    intruder.abort().await.unwrap();
    insecure.abort().await.unwrap();

    // Graceful leave: b is seen down quickly, and c gets the event.
    b.leave().await.unwrap();
    let gone = wait_for(Duration::from_secs(3), || async {
        sees(&a, "b", Liveness::Down).await && sees(&c, "b", Liveness::Down).await
    })
    .await;
    assert!(gone, "b's leave was not seen");
    let mut saw_down = false;
    while let Ok(e) = ec.try_recv() {
        saw_down |= e == Event::MemberDown(MachineId::new("b"));
    }
    assert!(saw_down, "c did not get MemberDown(b)");
    assert!(b.view().await.is_err(), "b's handle is stopped after leave");

    // A crash: c aborts, a declares it down within a few seconds.
    c.abort().await.unwrap();
    let down = wait_for(Duration::from_secs(5), || sees(&a, "c", Liveness::Down)).await;
    assert!(down, "a did not declare the crashed c down");

    let stats = a.stats().await.unwrap();
    assert!(stats.core.datagrams_in > 0 && stats.core.bytes_out > 0);
    assert!(stats.stream_bytes_in > 0, "syncs ran over streams");
    assert_eq!(stats.core.garbage_dropped, 0);
    a.leave().await.unwrap();
}
