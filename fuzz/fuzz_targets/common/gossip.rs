//! Shared by the gossip fuzz targets: the node under test (machine `m1`), its peer (`m2`, the machine
//! the peer's certificate names), the record format of the inputs, and seed inputs recorded from a real
//! exchange between two nodes (written when `FLEET_FUZZ_SEEDS` names a directory, as `scripts/fuzz.sh`
//! does: libFuzzer sees no string comparisons without sanitizers, so it would take long to find a valid
//! postcard identity by itself).
#![allow(dead_code)] // each target uses a part

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fleet_gossip::core::{FullState, SyncAnswer, SyncOffer};
use fleet_gossip::testing::ToyCredentials;
use fleet_gossip::{Config, MachineId, Metadata, Node, NodeIdentity, UnitState};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Operations of a node input (the low 7 bits of a record's first byte, modulo 6); the high bit says
/// the input comes over a connection whose certificate names `m2` (otherwise: insecure mode, no
/// certificate).
pub const OP_DATAGRAM: u8 = 0;
pub const OP_TIME: u8 = 1;
pub const OP_OFFER: u8 = 2;
pub const OP_ANSWER: u8 = 3;
pub const OP_DELTA: u8 = 4;
pub const OP_TIMEOUT: u8 = 5;
pub const CERTIFIED: u8 = 0x80;

/// One time step of [`OP_TIME`] per unit of its first byte.
pub const STEP: Duration = Duration::from_millis(20);

/// The instant every node of an input starts at.
pub fn base() -> Instant {
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}

pub fn identity(i: u8) -> NodeIdentity {
    NodeIdentity::new(
        MachineId::parse(&format!("m{i}")).unwrap(),
        SocketAddr::from(([10, 0, 0, i], 7479)),
        1_700_000_000_000 + u64::from(i),
    )
}

/// Node `m<i>` with some metadata and unit states of its own, seeded RNG, signing its state and
/// checking its peers' (toy credentials: the signature checks run, and the recorded exchange
/// carries valid signatures and certificates for the fuzzer to start from).
pub fn node(i: u8) -> Node {
    let mut n = Node::new(
        Config::default(),
        identity(i),
        StdRng::seed_from_u64(u64::from(i)),
        base(),
    );
    n.set_credentials(
        base(),
        Arc::new(ToyCredentials::new(identity(i).machine_id)),
    );
    n.set_local_metadata(
        base(),
        Metadata {
            public_ip: format!("10.0.0.{i}"),
            metadata: BTreeMap::from([("region".to_string(), "eu".to_string())]),
            version: "0.1.0".into(),
            unit_count: 2,
        },
    );
    let states = (0..2)
        .map(|u| {
            (
                format!("u{i}-{u}.service"),
                UnitState {
                    load_state: "loaded".into(),
                    active_state: "active".into(),
                    sub_state: "running".into(),
                    unit_hash: [i; 20],
                },
            )
        })
        .collect();
    n.set_local_unit_states(base(), &states);
    n
}

/// Splits an input into records: an op byte, a little-endian `u16` length, then that many bytes (or
/// what is left).
pub fn records(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&op, rest) = data.split_first()?;
        let len = match rest {
            [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
            _ => rest.len(),
        };
        let rest = rest.get(2..).unwrap_or_default();
        let (payload, tail) = rest.split_at(len.min(rest.len()));
        data = tail;
        Some((op, payload))
    })
}

pub fn record(out: &mut Vec<u8>, op: u8, payload: &[u8]) {
    out.push(op);
    out.extend((payload.len() as u16).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What a node sends must be what its peers accept: datagrams within `max_packet_size`, sync messages
/// that decode to themselves. Drains every output.
pub fn drain_checked(n: &mut Node) {
    let max = n.config().max_packet_size;
    while let Some(t) = n.poll_transmit() {
        assert!(
            t.data.len() <= max,
            "{} byte datagram, max {max}",
            t.data.len()
        );
    }
    while n.poll_event().is_some() {}
    while let Some(peer) = n.poll_sync() {
        let offer = n.sync_offer_to(peer).encode();
        let back = SyncOffer::decode(&offer).expect("own offer decodes");
        assert_eq!(back.encode(), offer);
    }
}

/// Feeds one record to the node `n` at `*now` (peer address: `m2`'s).
pub fn apply(n: &mut Node, now: &mut Instant, op: u8, payload: &[u8]) {
    let m2 = MachineId::parse("m2").unwrap();
    let cert = (op & CERTIFIED != 0).then_some(&m2);
    let from = identity(2).addr;
    match (op & !CERTIFIED) % 6 {
        OP_DATAGRAM => {
            let _ = n.handle_datagram_from(*now, from, cert, payload);
        }
        OP_TIME => {
            *now += STEP * u32::from(payload.first().copied().unwrap_or(1));
            n.handle_timeout(*now);
        }
        OP_OFFER => {
            if let Ok(offer) = SyncOffer::decode(payload) {
                if let Ok(answer) = n.handle_sync_offer_from(*now, cert, offer) {
                    let bytes = answer.encode();
                    let back = SyncAnswer::decode(&bytes).expect("own answer decodes");
                    assert_eq!(back.encode(), bytes);
                }
            }
        }
        OP_ANSWER => {
            if let Ok(answer) = SyncAnswer::decode(payload) {
                if let Ok(delta) = n.handle_sync_answer_from(*now, cert, answer) {
                    let bytes = delta.encode();
                    let back = FullState::decode(&bytes).expect("own delta decodes");
                    assert_eq!(back.encode(), bytes);
                }
            }
        }
        OP_DELTA => {
            if let Ok(delta) = FullState::decode(payload) {
                let _ = n.merge_from(*now, cert, delta);
            }
        }
        _ => {
            if let Some(at) = n.poll_timeout() {
                if at <= *now + Duration::from_secs(30) {
                    *now = (*now).max(at);
                    n.handle_timeout(*now);
                }
            }
        }
    }
    drain_checked(n);
}

/// A real exchange between `m2` and the node under test `m1`, as records of what `m1` received: `m2`
/// joins (full sync), both run for 3 s of protocol periods exchanging datagrams (probes, acks, state
/// pushes as `m2` changes a unit), `m1` runs an anti-entropy sync with `m2`. Returns every message
/// `m2` sent too (offers, answers, deltas, datagrams), for the framing target.
pub fn exchange() -> (Vec<u8>, Vec<(u8, Vec<u8>)>) {
    let (mut a, mut b) = (node(1), node(2));
    let (m1, m2) = (MachineId::parse("m1").unwrap(), MachineId::parse("m2").unwrap());
    let mut now = base();
    let mut rec = Vec::new();
    let mut sent = Vec::new();
    let mut note = |rec: &mut Vec<u8>, op: u8, bytes: Vec<u8>| {
        record(rec, op | CERTIFIED, &bytes);
        sent.push((op, bytes));
    };
    b.join(now, &[identity(1).addr]);
    for step in 0..150u32 {
        if step == 40 {
            b.set_local_unit_state(
                now,
                "u2-0.service",
                Some(UnitState {
                    load_state: "loaded".into(),
                    active_state: "failed".into(),
                    sub_state: "failed".into(),
                    unit_hash: [7; 20],
                }),
            );
        }
        while let Some(peer) = b.poll_sync() {
            if peer != identity(1).addr {
                continue;
            }
            let offer = b.sync_offer_to(peer);
            note(&mut rec, OP_OFFER, offer.encode());
            let Ok(answer) = a.handle_sync_offer_from(now, Some(&m2), offer) else {
                continue;
            };
            let Ok(delta) = b.handle_sync_answer_from(now, Some(&m1), answer) else {
                continue;
            };
            note(&mut rec, OP_DELTA, delta.encode());
            let _ = a.merge_from(now, Some(&m2), delta);
        }
        while let Some(peer) = a.poll_sync() {
            if peer != identity(2).addr {
                continue;
            }
            let offer = a.sync_offer_to(peer);
            let Ok(answer) = b.handle_sync_offer_from(now, Some(&m1), offer) else {
                continue;
            };
            note(&mut rec, OP_ANSWER, answer.encode());
            if let Ok(delta) = a.handle_sync_answer_from(now, Some(&m2), answer) {
                let _ = b.merge_from(now, Some(&m1), delta);
            }
        }
        while let Some(t) = b.poll_transmit() {
            if t.dst_id == m1 {
                note(&mut rec, OP_DATAGRAM, t.data.to_vec());
                let _ = a.handle_datagram_from(now, identity(2).addr, Some(&m2), &t.data);
            }
        }
        while let Some(t) = a.poll_transmit() {
            if t.dst_id == m2 {
                let _ = b.handle_datagram_from(now, identity(1).addr, Some(&m1), &t.data);
            }
        }
        while a.poll_event().is_some() {}
        while b.poll_event().is_some() {}
        now += STEP;
        record(&mut rec, OP_TIME, &[1]);
        a.handle_timeout(now);
        b.handle_timeout(now);
    }
    (rec, sent)
}

/// Writes `seeds` as files `seed-<i>` into the directory `FLEET_FUZZ_SEEDS` names, if it is set.
pub fn write_seeds(seeds: impl FnOnce() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("FLEET_FUZZ_SEEDS") else {
        return;
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("seed directory");
    for (i, s) in seeds().into_iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), s).expect("seed written");
    }
}
