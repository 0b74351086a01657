//! Sealed datagrams on loopback (real quinn, mutual TLS from a minted CA): SWIM without
//! connections, and what a receiver refuses (garbage, oversized, forged, replayed, addressed to
//! another machine or an earlier life).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fleet_gossip::{Credentials, Event, Liveness, MachineId, UnitState};
use fleet_gossip_quic::credentials::CertCredentials;
use fleet_gossip_quic::seal::{self, Envelope};
use fleet_gossip_quic::tls::{mint_ca, TlsConfig};
use fleet_gossip_quic::transport::{Gossip, GossipHandle, SealedMode, SealedRefusals, Stats};
use tokio::sync::mpsc::UnboundedReceiver;

mod common;
use common::{config, sees, wait_for};

async fn start(
    machine: &str,
    tls: TlsConfig,
    seeds: Vec<SocketAddr>,
    sealed: SealedMode,
) -> (GossipHandle, UnboundedReceiver<Event>) {
    let mut config = config(machine, tls, seeds);
    config.sealed = sealed;
    config.sealed_after = Duration::from_millis(500);
    Gossip::start(config).await.unwrap()
}

/// Mutual TLS for `machine` from the test's CA (`ca.pem`).
fn tls_for(dir: &Path, machine: &str) -> TlsConfig {
    common::tls_for(dir, "ca", machine)
}

/// Whether `a` refused `n` sealed datagrams since `s0`, and its core took exactly one.
async fn refused_since(a: &GossipHandle, s0: Stats, n: u64) -> bool {
    let s = a.stats().await.unwrap();
    s.sealed_refused == s0.sealed_refused + n
        && s.core.garbage_dropped == s0.core.garbage_dropped + 1
}

async fn all_alive(nodes: &[&GossipHandle], names: &[&str]) -> bool {
    for h in nodes {
        for n in names {
            if !sees(h, n, Liveness::Alive).await {
                return false;
            }
        }
    }
    true
}

/// Every SWIM packet, push and summary offer sealed: the cluster forms, state spreads, a crash is
/// detected, and nothing sealed is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_runs_on_sealed_datagrams() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mint_ca(&d.join("ca.pem"), &d.join("ca.key")).unwrap();
    let always = SealedMode::Always;
    let (a, _ea) = start("a", tls_for(d, "a"), vec![], always).await;
    let seed = vec![a.local_addr()];
    let (b, _eb) = start("b", tls_for(d, "b"), seed.clone(), always).await;
    let (c, _ec) = start("c", tls_for(d, "c"), seed.clone(), always).await;
    let names = ["a", "b", "c"];
    assert!(
        wait_for(Duration::from_secs(10), || async {
            all_alive(&[&a, &b, &c], &names).await
        })
        .await,
        "the three nodes did not all see each other"
    );
    // Past `sealed_after`, every node seals; a few seconds of it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before: Vec<Stats> = vec![
        a.stats().await.unwrap(),
        b.stats().await.unwrap(),
        c.stats().await.unwrap(),
    ];

    let units = BTreeMap::from([(
        "web.service".to_string(),
        UnitState {
            load_state: "loaded".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            unit_hash: [7; 20],
        },
    )]);
    c.set_unit_states(units.clone()).unwrap();
    let spread = wait_for(Duration::from_secs(5), || async {
        for h in [&a, &b] {
            let v = h.view().await.unwrap();
            if !v
                .machines
                .get(&MachineId::parse("c").unwrap())
                .is_some_and(|m| *m.units == units)
            {
                return false;
            }
        }
        true
    })
    .await;
    assert!(spread, "c's unit states did not reach a and b");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(all_alive(&[&a, &b, &c], &names).await, "a false verdict");
    for (h, s0) in [&a, &b, &c].iter().zip(&before) {
        let s = h.stats().await.unwrap();
        // Probes every 400 ms and the acks to the others' probes: well over 10 in 3 s.
        assert!(s.sealed_out - s0.sealed_out > 10, "{s:?}");
        assert!(s.sealed_in - s0.sealed_in > 10, "{s:?}");
        assert_eq!(s.sealed_refused, 0, "{s:?}");
        assert!(s.core.garbage_dropped == 0, "{s:?}");
    }

    // A crash is still detected, with probes that travel sealed.
    c.abort().await.unwrap();
    let detected = wait_for(Duration::from_secs(10), || async {
        sees(&a, "c", Liveness::Down).await && sees(&b, "c", Liveness::Down).await
    })
    .await;
    assert!(detected, "c's crash was not detected");
    assert!(all_alive(&[&a, &b], &["a", "b"]).await);
    a.leave().await.unwrap();
    b.leave().await.unwrap();
}

/// What a receiver refuses, each counted, while its peers stay alive: garbage, an oversized
/// datagram, another machine's signature, a replay, a datagram addressed to another machine or to
/// an earlier life of the receiver. A correctly sealed one is taken (once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// long: a table of bad datagrams against one receiver, each checked for its refusal, then the good one
async fn forged_replayed_and_garbage_sealed_datagrams_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mint_ca(&d.join("ca.pem"), &d.join("ca.key")).unwrap();
    let b_tls = tls_for(d, "b");
    let (a, _ea) = start("a", tls_for(d, "a"), vec![], SealedMode::Always).await;
    // b never seals: the test seals in its name, with its key, and its sequence numbers are the
    // test's alone.
    let (b, _eb) = start("b", b_tls.clone(), vec![a.local_addr()], SealedMode::Off).await;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            all_alive(&[&a, &b], &["a", "b"]).await
        })
        .await
    );

    let b_key = CertCredentials::load(&b_tls).unwrap().unwrap();
    let junk_key = CertCredentials::load(&tls_for(d, "junk")).unwrap().unwrap();
    let a_life = a.identity().incarnation;
    let b_boot = b.identity().incarnation;
    let envelope = |seq: u64, receiver: &'static str, receiver_incarnation: u64| Envelope {
        sender: "b",
        boot: b_boot,
        seq,
        receiver,
        receiver_incarnation,
    };
    // A payload the core drops as garbage (kind 9): what reaches the core shows in its counter.
    let payload = [9u8, 9, 9];
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let send = |data: &[u8]| {
        sock.send_to(data, a.local_addr()).unwrap();
    };
    let stats = || async { a.stats().await.unwrap() };

    // a verifies b's seal with b's certificate, which reaches a with b's state, possibly after a
    // already sees b alive: until then a refuses b's datagrams as unverifiable (and does not
    // record their sequence numbers). So send fresh ones (new sequence numbers, not replays) until
    // one reaches the core; any other outcome fails the test.
    let mut seq = 0;
    let (good, s0) = loop {
        seq += 1;
        let good = seal::seal(envelope(seq, "a", a_life), &payload, |m| b_key.sign(m)).unwrap();
        let s0 = stats().await;
        send(&good);
        let taken = || async { stats().await.core.garbage_dropped == s0.core.garbage_dropped + 1 };
        let unverifiable = || async { stats().await.sealed_unverifiable > s0.sealed_unverifiable };
        assert!(
            wait_for(Duration::from_secs(3), || async {
                taken().await || unverifiable().await
            })
            .await,
            "a correctly sealed datagram neither reached the core nor waited for b's certificate: {:?}",
            stats().await
        );
        if taken().await {
            break (good, s0);
        }
        assert!(
            seq < 50,
            "a never got b's certificate (49 datagrams unverifiable, one every 200 ms): {:?}",
            stats().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The same datagram again: a replay.
    send(&good);
    assert!(
        wait_for(Duration::from_secs(3), || refused_since(&a, s0, 1)).await,
        "{:?}",
        stats().await
    );
    // Garbage after the sealed byte, and an oversized datagram.
    send(&[seal::SEALED, 1, 2, 3]);
    let mut oversized = good.clone();
    oversized.resize(seal::MAX_SEALED + 100, 0);
    send(&oversized);
    assert!(
        wait_for(Duration::from_secs(3), || refused_since(&a, s0, 3)).await,
        "{:?}",
        stats().await
    );
    // Signed by another machine's key (a valid cluster certificate) in b's name.
    send(
        &seal::seal(envelope(seq + 1, "a", a_life), &payload, |m| {
            junk_key.sign(m)
        })
        .unwrap(),
    );
    // b's signature, but addressed to machine c.
    send(&seal::seal(envelope(seq + 2, "c", a_life), &payload, |m| b_key.sign(m)).unwrap());
    // b's signature, addressed to an earlier life of a.
    send(
        &seal::seal(envelope(seq + 3, "a", a_life - 1), &payload, |m| {
            b_key.sign(m)
        })
        .unwrap(),
    );
    // In a's own name.
    let mut own = envelope(seq + 4, "a", a_life);
    own.sender = "a";
    send(&seal::seal(own, &payload, |m| junk_key.sign(m)).unwrap());
    assert!(
        wait_for(Duration::from_secs(3), || refused_since(&a, s0, 7)).await,
        "{:?}",
        stats().await
    );
    // Each counted under its reason (fleet_gossip_refused_total{reason="sealed_..."}).
    let s = stats().await;
    let since = |f: fn(&SealedRefusals) -> u64| f(&s.sealed_refusals) - f(&s0.sealed_refusals);
    assert_eq!(since(|r| r.replayed), 1, "{s:?}");
    assert_eq!(since(|r| r.garbage), 2, "{s:?}");
    assert_eq!(since(|r| r.forged), 3, "{s:?}");
    assert_eq!(since(|r| r.stale), 1, "{s:?}");
    assert_eq!(since(|r| r.unverifiable), 0, "{s:?}");
    // None of it disturbed the cluster.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(all_alive(&[&a, &b], &["a", "b"]).await);
    a.leave().await.unwrap();
    b.leave().await.unwrap();
}
