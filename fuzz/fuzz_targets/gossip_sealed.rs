//! Sealed datagrams (`fleet_gossip_quic::seal`, included as it is) and the compact summary offer
//! they carry (`fleet_gossip::core::SyncOffer::decode_summary`): garbage never panics; whatever
//! opens seals again to the same bytes under the same signature, and the signed bytes are exactly
//! what precedes the signature; the freshness window takes a (boot, sequence) pair at most once
//! and never an older boot than one taken.
#![no_main]

// The whole module is included; the target uses only part of it.
#[allow(dead_code)]
#[path = "../../gossip-quic/src/seal.rs"]
mod seal;

use fleet_gossip::core::SyncOffer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(opened) = seal::open(data) {
        assert!(data.len() <= seal::MAX_SEALED);
        let envelope = seal::Envelope {
            sender: opened.sender,
            boot: opened.boot,
            seq: opened.seq,
            receiver: "m2",
            receiver_incarnation: opened.receiver_incarnation,
        };
        let signature = opened.signature.to_vec();
        let mut signed = Vec::new();
        let again = seal::seal(envelope, opened.payload, |m| {
            signed = m.to_vec();
            signature.clone()
        })
        .unwrap();
        assert_eq!(again, data);
        assert_eq!(opened.signed_message(data, "m2"), signed);
    }
    if let Some(rest) = data.strip_prefix(b"S") {
        if let Ok(offer) = SyncOffer::decode_summary(rest) {
            // A decoded offer encodes to what decodes to it again (the input may spell a varint
            // of the sender's identity differently).
            let encoded = offer.encode_summary().unwrap();
            let again = SyncOffer::decode_summary(&encoded).unwrap();
            assert_eq!(again.encode_summary().unwrap(), encoded);
            assert_eq!(again.encode(), offer.encode());
        }
    }
    // Freshness: (boot, seq) pairs from the input, each taken at most once.
    let mut fresh = seal::Freshness::default();
    let mut taken = std::collections::HashSet::new();
    let mut newest_boot = 0;
    for pair in data.chunks_exact(3) {
        let (boot, seq) = (
            u64::from(pair[0] % 4),
            u64::from(u16::from_le_bytes([pair[1], pair[2]])),
        );
        let ok = fresh.take("m1", boot, seq).is_ok();
        if ok {
            assert!(taken.insert((boot, seq)), "({boot}, {seq}) taken twice");
            assert!(boot >= newest_boot, "boot {boot} taken after {newest_boot}");
            newest_boot = boot;
        }
    }
});
