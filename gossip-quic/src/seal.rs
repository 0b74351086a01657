//! Sealed datagrams, without I/O: SWIM's small messages as plain UDP datagrams outside any QUIC
//! connection, each signed with its sender's certificate key, so that a probe of a member needs no
//! connection set-up (a TLS 1.3 handshake with a certificate each way, about 2.1 kB each way, for
//! most contacts in a cluster of 1,000 or more members).
//!
//! Layout (integers big-endian):
//!
//! ```text
//! SEALED (1 byte) | VERSION (1) | sender ID length (1) | sender ID | boot (8) | seq (8)
//!   | receiver incarnation (8) | payload length (2) | payload | signature length (2) | signature
//! ```
//!
//! - The first byte has QUIC's fixed bit (0x40) and long-header bit (0x80) clear, so no QUIC packet
//!   starts with it: the endpoints advertise no greasing of the fixed bit, so their peers always set
//!   it. The transport takes sealed datagrams off the socket before QUIC sees them.
//! - The signature covers a domain tag, the receiver's machine ID and every byte before the
//!   signature length: the sender, its boot (the incarnation it started with), a sequence number
//!   it never repeats within a boot, the receiver's incarnation it addresses and the payload. A
//!   datagram is therefore good only for the machine it was addressed to, in the life it was
//!   addressed to (a receiver refuses an incarnation older than its own start), and only once:
//!   [`Freshness`] keeps per sender the newest boot and a window of the sequence numbers seen.
//! - Every length is checked against its cap before anything is taken; trailing bytes are an error.
//!
//! Depends on nothing, so that the fuzz target `fuzz/fuzz_targets/gossip_sealed.rs` includes this
//! file as it is.

use std::collections::HashMap;

/// First byte of a sealed datagram.
pub const SEALED: u8 = 0x1c;
/// The layout's version (second byte).
pub const VERSION: u8 = 1;
/// Largest sealed datagram accepted or sent (an Ethernet MTU's UDP payload over IPv4).
pub const MAX_SEALED: usize = 1472;
/// Largest payload (a gossip datagram of the core: `max_packet_size`, 1100 by default).
pub const MAX_PAYLOAD: usize = 1280;
/// Largest signature (as `fleet_gossip::crypto::MAX_SIGNATURE`).
pub const MAX_SIGNATURE: usize = 512;
/// Longest sender ID (machine IDs are at most 64 bytes).
pub const MAX_ID: usize = 64;
/// How many sequence numbers below the newest one a receiver still accepts (once each).
pub const WINDOW: u64 = 64;
/// Senders a receiver keeps freshness state for at most (beyond it the oldest half is dropped;
/// only senders whose signature checked are kept).
pub const MAX_SENDERS: usize = 65_536;

const DOMAIN: &[u8] = b"fleet-gossip-datagram-v1\0";

/// Whether a UDP datagram starting with `first` is a sealed datagram rather than a QUIC packet.
pub fn is_sealed(first: u8) -> bool {
    first == SEALED
}

/// A sealed datagram taken apart (borrowing the datagram).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The machine ID the sender claims (checked by the signature against its certificate).
    pub sender: &'a str,
    /// The sender's boot: the incarnation it started with.
    pub boot: u64,
    /// The sender's sequence number, unique within its boot.
    pub seq: u64,
    /// The receiver's incarnation the sender addressed.
    pub receiver_incarnation: u64,
    /// The gossip datagram inside.
    pub payload: &'a [u8],
    /// The sender's signature.
    pub signature: &'a [u8],
    /// How many leading bytes of the datagram the signature covers.
    signed_len: usize,
}

fn take<'a>(data: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], String> {
    if data.len() < n {
        return Err(format!("sealed datagram ends inside its {what}"));
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Ok(head)
}

fn take_u64(data: &mut &[u8], what: &str) -> Result<u64, String> {
    let b = take(data, 8, what)?;
    Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

fn take_u16(data: &mut &[u8], what: &str) -> Result<usize, String> {
    let b = take(data, 2, what)?;
    Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
}

/// Takes a sealed datagram apart, checking every length against its cap first. Checks no
/// signature: see [`Opened::signed_message`].
pub fn open(datagram: &[u8]) -> Result<Opened<'_>, String> {
    if datagram.len() > MAX_SEALED {
        return Err(format!(
            "sealed datagram of {} bytes exceeds the cap of {MAX_SEALED} bytes",
            datagram.len()
        ));
    }
    let mut data = datagram;
    let head = take(&mut data, 2, "header")?;
    if head[0] != SEALED {
        return Err(format!(
            "not a sealed datagram (first byte {:#04x})",
            head[0]
        ));
    }
    if head[1] != VERSION {
        return Err(format!(
            "sealed datagram of version {} (this node speaks {VERSION})",
            head[1]
        ));
    }
    let id_len = take(&mut data, 1, "sender")?[0] as usize;
    if id_len == 0 || id_len > MAX_ID {
        return Err(format!("sender ID of {id_len} bytes (1 to {MAX_ID})"));
    }
    let sender = std::str::from_utf8(take(&mut data, id_len, "sender")?)
        .map_err(|_| "sender ID is not UTF-8".to_string())?;
    let boot = take_u64(&mut data, "boot")?;
    let seq = take_u64(&mut data, "sequence number")?;
    let receiver_incarnation = take_u64(&mut data, "receiver incarnation")?;
    let payload_len = take_u16(&mut data, "payload length")?;
    if payload_len == 0 || payload_len > MAX_PAYLOAD {
        return Err(format!(
            "payload of {payload_len} bytes (1 to {MAX_PAYLOAD})"
        ));
    }
    let payload = take(&mut data, payload_len, "payload")?;
    let signed_len = datagram.len() - data.len();
    let sig_len = take_u16(&mut data, "signature length")?;
    if sig_len == 0 || sig_len > MAX_SIGNATURE {
        return Err(format!(
            "signature of {sig_len} bytes (1 to {MAX_SIGNATURE})"
        ));
    }
    let signature = take(&mut data, sig_len, "signature")?;
    if !data.is_empty() {
        return Err(format!("{} trailing bytes after the signature", data.len()));
    }
    Ok(Opened {
        sender,
        boot,
        seq,
        receiver_incarnation,
        payload,
        signature,
        signed_len,
    })
}

impl Opened<'_> {
    /// The bytes the sender signed, for the receiver `receiver` (its own machine ID): `datagram`
    /// must be the datagram this was opened from.
    pub fn signed_message(&self, datagram: &[u8], receiver: &str) -> Vec<u8> {
        signed_message(receiver, &datagram[..self.signed_len.min(datagram.len())])
    }
}

fn signed_message(receiver: &str, head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + 1 + receiver.len() + head.len());
    out.extend_from_slice(DOMAIN);
    out.push(receiver.len().min(255) as u8);
    out.extend_from_slice(receiver.as_bytes());
    out.extend_from_slice(head);
    out
}

/// What [`seal`] puts in a datagram besides the payload.
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'a> {
    /// This machine's ID.
    pub sender: &'a str,
    /// This node's boot (the incarnation it started with).
    pub boot: u64,
    /// The next sequence number (never repeated within a boot).
    pub seq: u64,
    /// The receiver's machine ID (signed, not sent).
    pub receiver: &'a str,
    /// The receiver's incarnation as this node knows it.
    pub receiver_incarnation: u64,
}

/// Seals `payload` for the receiver of `envelope`, signed by `sign`. Fails (sending nothing) when
/// a field exceeds its cap or the signer returns no signature.
pub fn seal(
    envelope: Envelope<'_>,
    payload: &[u8],
    sign: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Result<Vec<u8>, String> {
    let id = envelope.sender.as_bytes();
    if id.is_empty() || id.len() > MAX_ID {
        return Err(format!("sender ID of {} bytes (1 to {MAX_ID})", id.len()));
    }
    if payload.is_empty() || payload.len() > MAX_PAYLOAD {
        return Err(format!(
            "payload of {} bytes (1 to {MAX_PAYLOAD})",
            payload.len()
        ));
    }
    let mut out = Vec::with_capacity(2 + 1 + id.len() + 26 + payload.len() + 2 + 72);
    out.extend_from_slice(&[SEALED, VERSION, id.len() as u8]);
    out.extend_from_slice(id);
    out.extend_from_slice(&envelope.boot.to_be_bytes());
    out.extend_from_slice(&envelope.seq.to_be_bytes());
    out.extend_from_slice(&envelope.receiver_incarnation.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    let signature = sign(&signed_message(envelope.receiver, &out));
    if signature.is_empty() || signature.len() > MAX_SIGNATURE {
        return Err(format!("signature of {} bytes", signature.len()));
    }
    out.extend_from_slice(&(signature.len() as u16).to_be_bytes());
    out.extend_from_slice(&signature);
    if out.len() > MAX_SEALED {
        return Err(format!(
            "sealed datagram of {} bytes exceeds the cap of {MAX_SEALED} bytes",
            out.len()
        ));
    }
    Ok(out)
}

/// Why a datagram whose signature checked is still refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// It comes from an older boot of its sender than one already heard.
    OldBoot,
    /// Its sequence number was already taken, or is too far below the newest one.
    Replayed,
}

/// One sender's newest boot, its newest sequence number and which of the [`WINDOW`] below it were
/// taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Window {
    boot: u64,
    top: u64,
    /// Bit `i`: sequence number `top - i` was taken.
    seen: u64,
}

impl Window {
    fn check(&self, boot: u64, seq: u64) -> Result<(), Stale> {
        if boot < self.boot {
            return Err(Stale::OldBoot);
        }
        if boot > self.boot || seq > self.top {
            return Ok(());
        }
        let back = self.top - seq;
        if back >= WINDOW || self.seen & (1 << back) != 0 {
            return Err(Stale::Replayed);
        }
        Ok(())
    }

    fn mark(&mut self, boot: u64, seq: u64) {
        if boot > self.boot {
            *self = Window {
                boot,
                top: seq,
                seen: 1,
            };
        } else if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            } | 1;
            self.top = seq;
        } else {
            self.seen |= 1 << (self.top - seq);
        }
    }
}

/// Per sender, what was already taken: a datagram is accepted once, and never from an older boot.
/// Call [`Freshness::check`] before the signature check (cheap refusals first) and
/// [`Freshness::take`] after it: only datagrams whose signature checked change the state.
#[derive(Debug, Default)]
pub struct Freshness {
    by_sender: HashMap<String, Window>,
}

impl Freshness {
    /// Whether a datagram of `sender` with this boot and sequence number would be fresh.
    pub fn check(&self, sender: &str, boot: u64, seq: u64) -> Result<(), Stale> {
        match self.by_sender.get(sender) {
            Some(w) => w.check(boot, seq),
            None => Ok(()),
        }
    }

    /// Checks and records a datagram whose signature checked: `Ok` only the first time.
    pub fn take(&mut self, sender: &str, boot: u64, seq: u64) -> Result<(), Stale> {
        self.check(sender, boot, seq)?;
        if !self.by_sender.contains_key(sender) && self.by_sender.len() >= MAX_SENDERS {
            // Only certified senders get here; a cluster has fewer. Keep the newest boots.
            let mut boots: Vec<u64> = self.by_sender.values().map(|w| w.boot).collect();
            boots.sort_unstable();
            let median = boots[boots.len() / 2];
            self.by_sender.retain(|_, w| w.boot > median);
        }
        self.by_sender
            .entry(sender.to_string())
            .or_default()
            .mark(boot, seq);
        Ok(())
    }

    /// Forgets a sender (it left the membership).
    pub fn forget(&mut self, sender: &str) {
        self.by_sender.remove(sender);
    }

    /// How many senders are tracked.
    pub fn len(&self) -> usize {
        self.by_sender.len()
    }

    /// Whether no sender is tracked.
    pub fn is_empty(&self) -> bool {
        self.by_sender.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy_sign(message: &[u8]) -> Vec<u8> {
        // A stand-in signature: a checksum of the message (the transport's tests use real keys).
        let sum = message
            .iter()
            .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(*b)));
        sum.to_be_bytes().to_vec()
    }

    fn envelope(seq: u64) -> Envelope<'static> {
        Envelope {
            sender: "m1",
            boot: 1_700_000_000_000,
            seq,
            receiver: "m2",
            receiver_incarnation: 1_700_000_000_123,
        }
    }

    #[test]
    fn a_sealed_datagram_opens_and_its_signature_covers_sender_receiver_and_payload() {
        let payload = b"\0swim packet";
        let datagram = seal(envelope(7), payload, toy_sign).unwrap();
        assert!(is_sealed(datagram[0]));
        // Not a QUIC packet: the fixed bit and the long-header bit are clear.
        assert_eq!(datagram[0] & 0xc0, 0);
        let opened = open(&datagram).unwrap();
        assert_eq!(opened.sender, "m1");
        assert_eq!(opened.boot, 1_700_000_000_000);
        assert_eq!(opened.seq, 7);
        assert_eq!(opened.receiver_incarnation, 1_700_000_000_123);
        assert_eq!(opened.payload, payload);
        let message = opened.signed_message(&datagram, "m2");
        assert_eq!(opened.signature, toy_sign(&message).as_slice());
        // Addressed to m2: for any other receiver the signed bytes differ.
        assert_ne!(
            toy_sign(&opened.signed_message(&datagram, "m3")),
            opened.signature
        );
        // Every byte before the signature is covered.
        for i in 0..datagram.len() - opened.signature.len() - 2 {
            let mut bent = datagram.clone();
            bent[i] ^= 1;
            if let Ok(o) = open(&bent) {
                assert_ne!(
                    toy_sign(&o.signed_message(&bent, "m2")),
                    o.signature,
                    "byte {i}"
                );
            }
        }
    }

    #[test]
    fn garbage_truncations_and_oversized_fields_are_refused() {
        let datagram = seal(envelope(1), b"x", toy_sign).unwrap();
        for len in 0..datagram.len() {
            assert!(open(&datagram[..len]).is_err(), "truncated to {len}");
        }
        let mut trailing = datagram.clone();
        trailing.push(0);
        assert!(open(&trailing).unwrap_err().contains("trailing"));
        let mut version = datagram.clone();
        version[1] = 2;
        assert!(open(&version).unwrap_err().contains("version 2"));
        assert!(open(&vec![SEALED; MAX_SEALED + 1])
            .unwrap_err()
            .contains("exceeds the cap"));
        assert!(seal(envelope(1), &[0; MAX_PAYLOAD + 1], toy_sign).is_err());
        assert!(seal(envelope(1), b"", toy_sign).is_err());
        assert!(seal(envelope(1), b"x", |_| Vec::new()).is_err());
        let long = "m".repeat(MAX_ID + 1);
        let e = Envelope {
            sender: &long,
            ..envelope(1)
        };
        assert!(seal(e, b"x", toy_sign).is_err());
    }

    #[test]
    fn each_datagram_is_taken_once_and_never_from_an_older_boot() {
        let mut f = Freshness::default();
        f.take("m1", 10, 5).unwrap();
        assert_eq!(f.take("m1", 10, 5), Err(Stale::Replayed));
        // Out of order within the window: taken once.
        f.take("m1", 10, 3).unwrap();
        assert_eq!(f.take("m1", 10, 3), Err(Stale::Replayed));
        f.take("m1", 10, 4).unwrap();
        f.take("m1", 10, 100).unwrap();
        // 5 is now more than WINDOW below the newest, 40 within it.
        assert_eq!(f.check("m1", 10, 36), Err(Stale::Replayed));
        f.take("m1", 10, 40).unwrap();
        assert_eq!(f.take("m1", 10, 40), Err(Stale::Replayed));
        f.take("m1", 10, 101).unwrap();
        // A new boot starts over; the old one is refused from then on.
        f.take("m1", 11, 0).unwrap();
        assert_eq!(f.take("m1", 10, 102), Err(Stale::OldBoot));
        // Senders are independent.
        f.take("m2", 10, 5).unwrap();
        assert_eq!(f.len(), 2);
        // check alone records nothing.
        f.check("m3", 1, 1).unwrap();
        f.check("m3", 1, 1).unwrap();
        f.forget("m1");
        f.take("m1", 10, 5).unwrap();
    }

    #[test]
    fn a_large_jump_clears_the_window() {
        let mut f = Freshness::default();
        for seq in 0..10 {
            f.take("m1", 1, seq).unwrap();
        }
        f.take("m1", 1, 10 + WINDOW * 3).unwrap();
        assert_eq!(f.take("m1", 1, 9), Err(Stale::Replayed));
        f.take("m1", 1, 10 + WINDOW * 3 - 1).unwrap();
    }
}
