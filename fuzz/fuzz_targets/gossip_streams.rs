//! The gossip transport's stream decoding (`fleet_gossip_quic::frame`, the checks `transport.rs`
//! makes): the kind byte, 4-byte length prefixes checked against the cap of their place before
//! anything is read, then the messages each place carries, as a node (`m1`) receives them:
//! - role 0, a stream a peer opened: sync (offer, then delta, into the node) or relay request
//!   (`src/agent/relay/wire.rs`);
//! - role 1, the answer to this node's sync offer;
//! - role 2, the answer to this node's relay request: a status byte, then the response or an error text.
//!
//! A frame longer than its cap is refused from its prefix alone; nothing panics.
#![no_main]

#[path = "../../gossip-quic/src/frame.rs"]
mod frame;
#[path = "common/gossip.rs"]
mod gossip;
#[allow(dead_code)]
#[path = "../../src/agent/relay/wire.rs"]
mod relay;

use fleet_gossip::core::{FullState, SyncAnswer, SyncOffer};
use fleet_gossip::wire::MAX_SYNC_MESSAGE;
use fleet_gossip::MachineId;
use libfuzzer_sys::fuzz_target;

/// Reads one frame (prefix, then that many bytes) of at most `cap` bytes from `data`.
fn frame<'a>(data: &mut &'a [u8], cap: usize) -> Option<&'a [u8]> {
    let prefix: [u8; 4] = data.get(..4)?.try_into().unwrap();
    let len = frame::frame_len(prefix, cap).ok()?;
    assert!(len <= cap);
    let body = data.get(4..4 + len)?;
    *data = &data[4 + len..];
    Some(body)
}

fn framed(kind: &[u8], messages: &[&[u8]]) -> Vec<u8> {
    let mut out = kind.to_vec();
    for m in messages {
        out.extend((m.len() as u32).to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

fuzz_target!(
    init: gossip::write_seeds(|| {
        let (_, sent) = gossip::exchange();
        let of = |op: u8| sent.iter().filter(move |(o, _)| *o == op).map(|(_, b)| b.as_slice());
        let mut seeds = Vec::new();
        for (offer, delta) in of(gossip::OP_OFFER).zip(of(gossip::OP_DELTA)).take(3) {
            seeds.push(framed(&[0, frame::STREAM_SYNC], &[offer, delta]));
        }
        for answer in of(gossip::OP_ANSWER).take(3) {
            seeds.push(framed(&[1], &[answer]));
        }
        let requests = [
            relay::Request::Status { unit: "web@1.service".into(), lines: 10 },
            relay::Request::Journal { unit: "a.service".into(), lines: 5, cursor: Some("s=1;i=2".into()) },
            relay::Request::Restart { unit: "a.service".into() },
            relay::Request::SetMetadata { changes: vec![("k".into(), Some("v".into())), ("x".into(), None)] },
            relay::Request::Support { machine: MachineId::parse("m2").expect("a valid ID"), lease: 7 },
        ];
        for r in requests {
            seeds.push(framed(&[0, frame::STREAM_REQUEST], &[&r.encode()]));
        }
        let response = relay::Response::Journal { text: "a\n".into(), cursor: Some("s=1".into()) };
        seeds.push(framed(&[2, 0], &[&response.encode()]));
        seeds.push(framed(&[2, 1], &[b"refused"]));
        seeds
    }),
    |data: &[u8]| {
        let m2 = MachineId::parse("m2").unwrap();
        let Some((&role, mut data)) = data.split_first() else { return };
        let mut node = gossip::node(1);
        let now = gossip::base();
        match role % 3 {
            0 => {
                let Some((&kind, rest)) = data.split_first() else { return };
                data = rest;
                match kind {
                    frame::STREAM_SYNC => {
                        let Some(offer) = frame(&mut data, MAX_SYNC_MESSAGE) else { return };
                        let Ok(offer) = SyncOffer::decode(offer) else { return };
                        if node.handle_sync_offer_from(now, Some(&m2), offer).is_err() {
                            return;
                        }
                        let Some(delta) = frame(&mut data, MAX_SYNC_MESSAGE) else { return };
                        if let Ok(delta) = FullState::decode(delta) {
                            let _ = node.merge_from(now, Some(&m2), delta);
                        }
                    }
                    frame::STREAM_REQUEST => {
                        let Some(req) = frame(&mut data, frame::MAX_REQUEST) else { return };
                        if let Ok(r) = relay::Request::decode(req) {
                            assert_eq!(relay::Request::decode(&r.encode()), Ok(r));
                        }
                    }
                    _ => return,
                }
            }
            1 => {
                let Some(answer) = frame(&mut data, MAX_SYNC_MESSAGE) else { return };
                if let Ok(answer) = SyncAnswer::decode(answer) {
                    let _ = node.handle_sync_answer_from(now, Some(&m2), answer);
                }
            }
            _ => {
                let Some((&status, rest)) = data.split_first() else { return };
                data = rest;
                let Some(body) = frame(&mut data, frame::MAX_RESPONSE) else { return };
                if status == 0 {
                    if let Ok(r) = relay::Response::decode(body) {
                        assert_eq!(relay::Response::decode(&r.encode()), Ok(r));
                    }
                } else {
                    let _ = String::from_utf8_lossy(body);
                }
            }
        }
        gossip::drain_checked(&mut node);
    }
);
