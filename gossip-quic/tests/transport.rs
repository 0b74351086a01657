//! Real quinn on loopback: three nodes with mutual TLS from a minted CA, plus an intruder.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fleet_gossip::{Event, Liveness, MachineId, Metadata, UnitState};
use fleet_gossip_quic::tls::{mint_ca, TlsConfig};
use fleet_gossip_quic::transport::{Gossip, GossipConfig, GossipHandle, RequestError};
use tokio::sync::mpsc::UnboundedReceiver;

mod common;
use common::{config, sees, tls_for, wait_for};

async fn start(
    machine: &str,
    tls: TlsConfig,
    seeds: Vec<SocketAddr>,
) -> (GossipHandle, UnboundedReceiver<Event>) {
    Gossip::start(config(machine, tls, seeds)).await.unwrap()
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
            let Some(m) = v.machines.get(&MachineId::parse("a").unwrap()) else {
                return false;
            };
            if m.metadata.as_deref() != Some(&meta) || *m.units != units {
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
        .request(&MachineId::parse("b").unwrap(), b"hi".to_vec())
        .await
        .unwrap();
    assert_eq!(resp, b"echo:hi");
    match a
        .request(&MachineId::parse("c").unwrap(), b"hi".to_vec())
        .await
    {
        Err(RequestError::Remote { .. }) => {}
        other => panic!("c has no handler, expected a remote error, got {other:?}"),
    }
    match a.request(&MachineId::parse("zz").unwrap(), vec![]).await {
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
        assert!(!v
            .machines
            .contains_key(&MachineId::parse("intruder").unwrap()));
        assert!(!v
            .machines
            .contains_key(&MachineId::parse("insecure").unwrap()));
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
        saw_down |= e == Event::MemberDown(MachineId::parse("b").unwrap());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_an_authenticated_peer_is_counted_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mint_ca(&d.join("ca.pem"), &d.join("ca.key")).unwrap();
    let (a, _ea) = start("a", tls_for(d, "ca", "a"), vec![]).await;
    let (b, _eb) = start("b", tls_for(d, "ca", "b"), vec![a.local_addr()]).await;
    assert!(wait_for(Duration::from_secs(5), || sees(&a, "b", Liveness::Alive)).await);

    // A raw QUIC client holding a valid cluster certificate, speaking nonsense.
    let (_server, client) =
        fleet_gossip_quic::tls::quic_configs(&tls_for(d, "ca", "junk")).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    let conn = endpoint
        .connect(a.local_addr(), fleet_gossip_quic::tls::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    for junk in [&b"\xff\xff\xff\xff"[..], b"not a swim packet", &[0u8; 3]] {
        conn.send_datagram(bytes::Bytes::copy_from_slice(junk))
            .unwrap();
    }
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0x7f, 1, 2, 3]).await.unwrap();
    send.finish().unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[
        fleet_gossip_quic::transport::STREAM_SYNC,
        0,
        0,
        0,
        3,
        9,
        9,
        9,
    ])
    .await
    .unwrap();
    send.finish().unwrap();
    let _ = recv.read_to_end(1024).await;

    let counted = wait_for(Duration::from_secs(3), || async {
        let s = a.stats().await.unwrap();
        s.core.garbage_dropped >= 3 && s.garbage_streams >= 2
    })
    .await;
    assert!(
        counted,
        "garbage not counted: {:?}",
        a.stats().await.unwrap()
    );
    // Still healthy.
    let healthy = wait_for(Duration::from_secs(5), || async {
        sees(&a, "b", Liveness::Alive).await && sees(&b, "a", Liveness::Alive).await
    })
    .await;
    assert!(healthy, "garbage disturbed the cluster");
    conn.close(0u32.into(), b"");
    a.leave().await.unwrap();
    b.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_on_the_same_address_is_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mint_ca(&d.join("ca.pem"), &d.join("ca.key")).unwrap();
    let (a, _ea) = start("a", tls_for(d, "ca", "a"), vec![]).await;
    let (c, _ec) = start("c", tls_for(d, "ca", "c"), vec![a.local_addr()]).await;
    assert!(wait_for(Duration::from_secs(5), || sees(&a, "c", Liveness::Alive)).await);
    let first = c.identity().clone();
    let addr = c.local_addr();
    c.abort().await.unwrap();
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut config = GossipConfig::new(MachineId::parse("c").unwrap(), addr);
    config.tls = tls_for(d, "ca", "c");
    config.seeds = vec![a.local_addr()];
    config.incarnation = Some(first.incarnation + 1);
    // The old endpoint's socket goes away once its connections have drained.
    let mut attempt = 0;
    let (c2, _ec2) = loop {
        match Gossip::start(config.clone()).await {
            Ok(started) => break started,
            Err(e) if attempt < 50 => {
                attempt += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot restart on {addr}: {e}"),
        }
    };
    let back = wait_for(Duration::from_secs(3), || async {
        let v = a.view().await.unwrap();
        v.machines
            .get(&MachineId::parse("c").unwrap())
            .is_some_and(|m| {
                m.identity.incarnation == first.incarnation + 1 && m.liveness == Liveness::Alive
            })
            && sees(&c2, "a", Liveness::Alive).await
    })
    .await;
    assert!(back, "the restarted node was not back within 3 s");
    // And stays up (a answers it over the new connection, not the dead one): no down verdict
    // about the new life in the next 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = a.view().await.unwrap();
    let m = &v.machines[&MachineId::parse("c").unwrap()];
    assert_eq!(m.identity.incarnation, first.incarnation + 1, "{m:?}");
    assert_ne!(m.liveness, Liveness::Down, "{m:?}");
    c2.leave().await.unwrap();
    a.leave().await.unwrap();
}

#[tokio::test]
async fn a_wildcard_listen_address_needs_an_advertise_address() {
    let config = GossipConfig::new(MachineId::parse("w").unwrap(), "0.0.0.0:0".parse().unwrap());
    match Gossip::start(config).await {
        Err(fleet_gossip_quic::transport::TransportError::NeedAdvertise(_)) => {}
        other => panic!("expected NeedAdvertise, got {:?}", other.map(|_| ())),
    }
}

/// Issue 13 case 1 over real QUIC: a node that claims machine `a` while holding `b`'s certificate.
/// `a` and `b` refuse it (counted), `a` stays as it was everywhere, and nobody rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_claiming_another_machine_with_its_own_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mint_ca(&d.join("ca.pem"), &d.join("ca.key")).unwrap();
    let (a, mut ea) = start("a", tls_for(d, "ca", "a"), vec![]).await;
    let (b, mut eb) = start("b", tls_for(d, "ca", "b"), vec![a.local_addr()]).await;
    a.set_metadata(Metadata {
        public_ip: "192.0.2.1".into(),
        ..Metadata::default()
    })
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || async {
            sees(&a, "b", Liveness::Alive).await
                && b.view().await.is_ok_and(|v| {
                    v.machines
                        .get(&MachineId::parse("a").unwrap())
                        .is_some_and(|m| m.metadata.is_some())
                })
        })
        .await
    );
    let a_before = b.view().await.unwrap().machines[&MachineId::parse("a").unwrap()].clone();

    // Not a fleetd (it would refuse to start with a certificate of another machine): a patched one.
    let mut config = GossipConfig::new(
        MachineId::parse("a").unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.tls = tls_for(d, "ca", "b");
    config.seeds = vec![a.local_addr(), b.local_addr()];
    config.incarnation = Some(u64::MAX / 2);
    config.verify_own_certificate = false;
    let (impostor, _ei) = Gossip::start(config.clone()).await.unwrap();
    impostor
        .set_metadata(Metadata {
            public_ip: "203.0.113.66".into(),
            ..Metadata::default()
        })
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || async {
            b.stats().await.unwrap().core.impersonations_refused > 0
                && a.stats().await.unwrap().core.impersonations_refused > 0
        })
        .await,
        "the impostor was not refused"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a_after = b.view().await.unwrap().machines[&MachineId::parse("a").unwrap()].clone();
    assert_eq!(a_after.identity, a_before.identity);
    assert_eq!(a_after.metadata, a_before.metadata);
    assert_eq!(a_after.liveness, Liveness::Alive);
    impostor.abort().await.unwrap();
    for events in [&mut ea, &mut eb] {
        while let Ok(e) = events.try_recv() {
            assert!(!matches!(e, Event::Rejoined(_)), "{e:?}");
        }
    }

    // fleetd's own check: a certificate of another machine is refused at start.
    config.verify_own_certificate = true;
    let err = Gossip::start(config).await.unwrap_err();
    assert!(err.to_string().contains("not of this machine a"), "{err}");
}

/// Issue 13 case 6: a peer announcing huge frames. Over the cap: refused at once as garbage. Under
/// the cap but never sent: the frames hold no memory, and once the shared budget is taken by such
/// frames, the next large one is refused (counted), while the cluster keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_hoarded_frames_are_refused_before_any_allocation() {
    use fleet_gossip_quic::transport::{FRAME_BUDGET, STREAM_SYNC};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mint_ca(&d.join("ca.pem"), &d.join("ca.key")).unwrap();
    let (a, _ea) = start("a", tls_for(d, "ca", "a"), vec![]).await;
    let (b, _eb) = start("b", tls_for(d, "ca", "b"), vec![a.local_addr()]).await;
    assert!(wait_for(Duration::from_secs(5), || sees(&a, "b", Liveness::Alive)).await);
    let (_server, client) =
        fleet_gossip_quic::tls::quic_configs(&tls_for(d, "ca", "hoarder")).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    let conn = endpoint
        .connect(a.local_addr(), fleet_gossip_quic::tls::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    // 4 GiB: over any cap.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[STREAM_SYNC, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let _ = recv.read_to_end(1024).await;
    // 15 MiB frames that never come: the budget holds four, the fifth is refused.
    let frame = (15u32 << 20).to_be_bytes();
    let mut held = Vec::new();
    for _ in 0..(FRAME_BUDGET / (15 << 20) + 1) {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&[STREAM_SYNC]).await.unwrap();
        send.write_all(&frame).await.unwrap();
        held.push((send, recv));
    }
    let refused = wait_for(Duration::from_secs(5), || async {
        let s = a.stats().await.unwrap();
        s.garbage_streams >= 1 && s.frames_over_budget >= 1
    })
    .await;
    assert!(refused, "{:?}", a.stats().await.unwrap());
    assert!(
        wait_for(Duration::from_secs(5), || async {
            sees(&a, "b", Liveness::Alive).await && sees(&b, "a", Liveness::Alive).await
        })
        .await
    );
    drop(held);
    conn.close(0u32.into(), b"");
}

/// A log sink the test reads (the subscriber is this test's thread's only: the runtime is
/// current-thread).
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A peer of the previous protocol version (ALPN `fleet-gossip/3`, a valid certificate of the
/// cluster) is refused during the handshake, both ways, at once and not by a time-out, with a
/// WARN that names the version mismatch.
#[tokio::test]
async fn a_peer_of_another_protocol_version_is_refused_with_a_clear_log_line() {
    use fleet_gossip_quic::tls::{is_protocol_mismatch, quic_configs_speaking, ALPN, SERVER_NAME};
    let logs = Logs::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mint_ca(&d.join("ca.pem"), &d.join("ca.key")).unwrap();
    assert_eq!(ALPN, b"fleet-gossip/4");
    let (a, _ea) = start("a", tls_for(d, "ca", "a"), vec![]).await;
    let old_tls = tls_for(d, "ca", "old");
    let (old_server, old_client) = quic_configs_speaking(&old_tls, b"fleet-gossip/3").unwrap();

    // An old node connects to a: refused in the handshake.
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(old_client);
    let started = Instant::now();
    let connecting = endpoint.connect(a.local_addr(), SERVER_NAME).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("the handshake with a peer of another version hung")
        .expect_err("a peer of another version was accepted");
    assert!(is_protocol_mismatch(&err), "{err}");
    // Well under quinn's idle time-out (30 s by default), whatever the load.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        wait_for(Duration::from_secs(5), || async {
            a.stats().await.unwrap().rejected_connections >= 1
        })
        .await
    );
    let text = logs.text();
    assert!(
        text.contains("refused a gossip connection: the peer speaks another protocol version than fleet-gossip/4"),
        "{text}"
    );

    // A new node that joins through an old node's address: its connection fails (no hang), and
    // it says why.
    let old = quinn::Endpoint::server(old_server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let old_addr = old.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = old.accept().await {
            let _ = incoming.await;
        }
    });
    let (b, _eb) = start("b", tls_for(d, "ca", "b"), vec![old_addr]).await;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            b.stats().await.unwrap().failed_connects >= 1
        })
        .await,
        "{:?}",
        b.stats().await.unwrap()
    );
    let text = logs.text();
    assert!(
        text.contains("gossip peer speaks another protocol version than fleet-gossip/4"),
        "{text}"
    );
    a.leave().await.unwrap();
    b.leave().await.unwrap();
}
