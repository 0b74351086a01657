//! The gossip core's decoders with a node behind them (`fleet_gossip`): datagrams (a kind byte, then a
//! foca SWIM packet or a state push), the three sync messages (offer, answer, delta) and time passing,
//! from a peer with or without a certificate (see `common/gossip.rs` for the record format). Garbage
//! never panics, and whatever the node then sends is what a peer accepts: datagrams within
//! `max_packet_size`, sync messages that decode to themselves.
#![no_main]

#[path = "common/gossip.rs"]
mod gossip;

use fleet_gossip::core::{FullState, StatePush, SyncAnswer, SyncOffer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: gossip::write_seeds(|| {
        let (full, sent) = gossip::exchange();
        // The whole exchange, its first records, and each message alone (certified and not).
        let mut seeds = vec![full.clone(), full[..full.len().min(2048)].to_vec()];
        for (op, bytes) in sent.iter().step_by(7).take(12) {
            let mut s = Vec::new();
            gossip::record(&mut s, *op, bytes);
            seeds.push(s);
        }
        seeds
    }),
    |data: &[u8]| {
        // The wire decoders alone: a value that decodes encodes to what decodes to it again.
        if let Ok(push) = StatePush::decode(data.get(1..).unwrap_or_default()) {
            assert_eq!(StatePush::decode(&push.encode()).unwrap().encode(), push.encode());
        }
        if let Ok(v) = SyncOffer::decode(data) {
            assert_eq!(SyncOffer::decode(&v.encode()).unwrap().encode(), v.encode());
        }
        if let Ok(v) = SyncAnswer::decode(data) {
            assert_eq!(SyncAnswer::decode(&v.encode()).unwrap().encode(), v.encode());
        }
        if let Ok(v) = FullState::decode(data) {
            assert_eq!(FullState::decode(&v.encode()).unwrap().encode(), v.encode());
        }
        // A node fed the records.
        let mut node = gossip::node(1);
        let mut now = gossip::base();
        for (op, payload) in gossip::records(data) {
            gossip::apply(&mut node, &mut now, op, payload);
        }
        let _ = node.view();
    }
);
