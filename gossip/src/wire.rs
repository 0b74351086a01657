//! What nodes send each other: datagrams (a kind byte, then a foca SWIM packet or a state push) and
//! the three messages of a sync exchange. Everything is postcard; every decoder refuses trailing
//! bytes, and every size is bounded before anything is allocated for it.

use foca::{Codec, Header, Member, Message, PostcardCodec};
use serde::{Deserialize, Serialize};

use crate::core::Error;
use crate::store::{OriginDelta, Update};
use crate::types::{MachineId, NodeIdentity, Stamp};

/// First byte of a datagram that carries a foca SWIM packet.
pub const DATAGRAM_SWIM: u8 = 0;
/// First byte of a datagram that carries a state push ([`StatePush`]).
pub const DATAGRAM_STATE: u8 = 1;

/// The largest sync message (offer, answer or delta) a node sends or accepts, in bytes.
///
/// The largest real message is the answer to a full offer (a join): the whole membership, the
/// whole digest and all state, each entry with its origin's signature, and each origin's
/// certificate. Encoded sizes: a member about 65 bytes, a digest entry about 45, an origin's
/// metadata about 150 and each unit's state about 90 (a 32-character machine ID, a 30-character
/// unit name), a signature 73 (ECDSA P-256), a certificate about 450. For the largest cluster fleet
/// supports, 10,000 machines and 100,000 units, that is 0.65 + 0.45 + 1.5 + 9 + 8 + 4.5 MB ≈
/// 24.1 MB; 32 MiB leaves 39% headroom. Summary exchanges (the periodic anti-entropy) stay under a
/// few kilobytes.
pub const MAX_SYNC_MESSAGE: usize = 32 << 20;

/// Step 1 of a sync: the initiator's identity and either a summary of its state digest (the
/// periodic anti-entropy) or, for a join or a heal, its whole membership and digest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncOffer {
    pub(crate) from: NodeIdentity,
    /// Full offers: the membership.
    pub(crate) members: Vec<Member<NodeIdentity>>,
    /// Full offers: per origin, the stamp up to which the initiator has everything.
    pub(crate) digest: Vec<(MachineId, Stamp)>,
    /// Summary offers: the digest folded into a power-of-two number of 32-bit bucket sums.
    pub(crate) summary: Option<Vec<u32>>,
}

/// Step 2 of a sync: the peer's answer. To a full offer: the members of its membership that the
/// offer did not list with the same identity, incarnation and state, its digest and the state the
/// initiator lacks. To a summary: which buckets differ, and its digest of those buckets' origins.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncAnswer {
    pub(crate) from: NodeIdentity,
    pub(crate) members: Vec<Member<NodeIdentity>>,
    pub(crate) digest: Vec<(MachineId, Stamp)>,
    pub(crate) state: Vec<OriginDelta>,
    /// Answers to a summary: the differing buckets (of `bucket_count`) that `digest` covers.
    pub(crate) buckets: Vec<u16>,
    pub(crate) bucket_count: u16,
}

/// A membership list plus state: step 3 of a sync (what the peer lacks), or a full snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FullState {
    pub(crate) from: NodeIdentity,
    pub(crate) members: Vec<Member<NodeIdentity>>,
    pub(crate) state: Vec<OriginDelta>,
}

/// A state push: updates the sender made or learnt, passed on by rumour mongering.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatePush {
    pub(crate) from: NodeIdentity,
    pub(crate) updates: Vec<Update>,
}

macro_rules! wire {
    ($t:ty) => {
        impl $t {
            /// Encodes for the wire (postcard).
            pub fn encode(&self) -> Vec<u8> {
                postcard::to_allocvec(self).expect("encoding to a Vec cannot fail")
            }

            /// Decodes from the wire; trailing bytes are an error.
            pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
                let (value, rest) = postcard::take_from_bytes::<Self>(bytes)?;
                if rest.is_empty() {
                    Ok(value)
                } else {
                    Err(Error::Decode(postcard::Error::DeserializeUnexpectedEnd))
                }
            }

            /// The sender's identity.
            pub fn from(&self) -> &NodeIdentity {
                &self.from
            }
        }
    };
}
wire!(SyncOffer);
wire!(SyncAnswer);
wire!(FullState);
wire!(StatePush);

impl FullState {
    /// Step 3 of a sync (or a snapshot) from `from`: `members` and `state` (tools and tests build
    /// their own with it).
    pub fn new(
        from: NodeIdentity,
        members: Vec<Member<NodeIdentity>>,
        state: Vec<OriginDelta>,
    ) -> Self {
        FullState {
            from,
            members,
            state,
        }
    }
}

impl StatePush {
    /// A push of `updates` from `from` (what [`crate::core::Node`] sends; tools and tests build
    /// their own with it).
    pub fn new(from: NodeIdentity, updates: Vec<Update>) -> Self {
        StatePush { from, updates }
    }

    /// As a datagram: the kind byte, then the push.
    pub fn to_datagram(&self) -> Vec<u8> {
        let mut out = vec![DATAGRAM_STATE];
        out.extend(self.encode());
        out
    }
}

impl SyncOffer {
    /// A summary offer (periodic anti-entropy, or a whole summary) rather than a full one (a
    /// join or a retry by a node with no live member).
    pub fn is_summary(&self) -> bool {
        self.summary.is_some()
    }

    /// A whole summary (a join or a heal by a node that has live members): a summary that
    /// carries the initiator's whole state digest too, whose every differing bucket the peer
    /// details, and whose answer carries the state the initiator lacks. It travels on a
    /// stream like a full offer ([`SyncOffer::encode_summary`] is `None`). A node of an
    /// earlier version reads it as a plain summary (a few buckets detailed, no state in the
    /// answer): less is learnt per exchange, nothing wrong.
    pub fn is_whole(&self) -> bool {
        self.summary.is_some() && !self.digest.is_empty()
    }

    /// A summary offer in a compact form that fits one datagram (the sender's identity, a 2-byte
    /// bucket count, then each bucket's sum as 4 bytes: at most 256 × 4 + about 60 bytes);
    /// `None` for a full offer and for a whole summary ([`SyncOffer::is_whole`]).
    pub fn encode_summary(&self) -> Option<Vec<u8>> {
        if self.is_whole() {
            return None;
        }
        let summary = self.summary.as_ref()?;
        let mut out = postcard::to_allocvec(&self.from).expect("encoding to a Vec cannot fail");
        out.extend_from_slice(&(summary.len() as u16).to_be_bytes());
        for sum in summary {
            out.extend_from_slice(&sum.to_be_bytes());
        }
        Some(out)
    }

    /// Decodes [`SyncOffer::encode_summary`]'s form: at most 256 buckets (the most a node sends),
    /// no trailing bytes.
    pub fn decode_summary(bytes: &[u8]) -> Result<SyncOffer, Error> {
        let bad = || Error::Decode(postcard::Error::DeserializeUnexpectedEnd);
        let (from, rest) = postcard::take_from_bytes::<NodeIdentity>(bytes)?;
        let (count, sums) = rest.split_first_chunk::<2>().ok_or_else(bad)?;
        let count = usize::from(u16::from_be_bytes(*count));
        if count == 0 || count > crate::store::BUCKETS || sums.len() != count * 4 {
            return Err(bad());
        }
        let summary = sums
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(SyncOffer {
            from,
            members: Vec::new(),
            digest: Vec::new(),
            summary: Some(summary),
        })
    }
}

impl SyncAnswer {
    /// Whether this answers a summary that matched the peer's own: nothing to exchange.
    pub fn in_sync(&self) -> bool {
        self.bucket_count > 0 && self.buckets.is_empty()
    }
}

/// Assembles a [`StatePush`] datagram from already encoded updates (what the outbox keeps), with
/// the kind byte first.
pub(crate) fn state_datagram(from: &NodeIdentity, count: usize, updates: &[u8]) -> Vec<u8> {
    let mut out = vec![DATAGRAM_STATE];
    out.extend(postcard::to_allocvec(from).expect("encoding to a Vec cannot fail"));
    // postcard encodes a sequence as its length (a varint), then its items.
    out.extend(postcard::to_allocvec(&count).expect("encoding to a Vec cannot fail"));
    out.extend_from_slice(updates);
    out
}

/// The encoded size of a state push's header (kind byte, sender, count) for this sender.
pub(crate) fn state_header_len(from: &NodeIdentity) -> usize {
    1 + postcard::to_allocvec(from).map_or(64, |v| v.len()) + 3
}

/// A foca packet taken apart with foca's own codec: the header, the membership updates it
/// piggybacks, and where the rest (custom broadcasts, unused by fleet) starts.
pub(crate) struct Packet {
    pub(crate) header: Header<NodeIdentity>,
    pub(crate) updates: Vec<Member<NodeIdentity>>,
    has_updates: bool,
    rest: usize,
}

impl Packet {
    /// foca's packet layout: a header, then (unless the message is a custom broadcast and if at
    /// least two bytes follow) a big-endian `u16` count of updates and the updates, then custom
    /// broadcasts.
    pub(crate) fn parse(data: &[u8]) -> Result<Packet, postcard::Error> {
        let mut codec = PostcardCodec;
        let mut buf = data;
        let header: Header<NodeIdentity> = codec.decode_header(&mut buf)?;
        let mut updates = Vec::new();
        let has_updates = buf.len() >= 2 && header.message != Message::Broadcast;
        if has_updates {
            let count = u16::from_be_bytes([buf[0], buf[1]]);
            buf = &buf[2..];
            for _ in 0..count {
                updates.push(codec.decode_member(&mut buf)?);
            }
        }
        Ok(Packet {
            header,
            updates,
            has_updates,
            rest: data.len() - buf.len(),
        })
    }

    /// Whether the packet has a section of membership updates (every message but a broadcast).
    pub(crate) fn has_updates(&self) -> bool {
        self.has_updates
    }

    /// The same packet with only `kept` as its updates.
    pub(crate) fn rewrite(&self, kept: &[Member<NodeIdentity>], data: &[u8]) -> Vec<u8> {
        let mut codec = PostcardCodec;
        let mut out = Vec::with_capacity(data.len());
        codec
            .encode_header(&self.header, &mut out)
            .expect("encoding to a Vec cannot fail");
        if self.has_updates {
            out.extend_from_slice(&(kept.len() as u16).to_be_bytes());
            for m in kept {
                codec
                    .encode_member(m, &mut out)
                    .expect("encoding to a Vec cannot fail");
            }
        }
        out.extend_from_slice(&data[self.rest..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Entry;
    use crate::types::Metadata;

    #[test]
    fn a_compact_summary_offer_round_trips_and_its_caps_hold() {
        let from = NodeIdentity::new(
            MachineId::parse(&"a".repeat(32)).unwrap(),
            "10.0.0.1:7479".parse().unwrap(),
            1_700_000_000_000,
        );
        let offer = SyncOffer {
            from: from.clone(),
            members: Vec::new(),
            digest: Vec::new(),
            summary: Some((0..256u32).map(|i| i.wrapping_mul(0x9e37_79b9)).collect()),
        };
        let compact = offer.encode_summary().unwrap();
        // 256 buckets fit one sealed datagram's payload (1280 bytes) with room to spare.
        assert!(compact.len() < 1100, "{}", compact.len());
        let back = SyncOffer::decode_summary(&compact).unwrap();
        assert_eq!(back.encode(), offer.encode());
        let mut trailing = compact.clone();
        trailing.push(0);
        assert!(SyncOffer::decode_summary(&trailing).is_err());
        assert!(SyncOffer::decode_summary(&compact[..compact.len() - 1]).is_err());
        let head = postcard::to_allocvec(&from).unwrap();
        for count in [0u16, 257, u16::MAX] {
            let mut bytes = head.clone();
            bytes.extend_from_slice(&count.to_be_bytes());
            bytes.resize(bytes.len() + 4 * usize::from(count), 0);
            assert!(SyncOffer::decode_summary(&bytes).is_err(), "{count}");
        }
        let full = SyncOffer {
            summary: None,
            ..offer
        };
        assert!(full.encode_summary().is_none());
    }

    #[test]
    fn a_hand_assembled_state_push_decodes() {
        let from = NodeIdentity::new(
            MachineId::parse("m1").unwrap(),
            "10.0.0.1:7479".parse().unwrap(),
            1_700_000_000_000,
        );
        let updates: Vec<Update> = (1..=3)
            .map(|v| Update {
                origin: MachineId::parse("m2").unwrap(),
                stamp: Stamp {
                    epoch: 5,
                    version: v,
                },
                entry: Entry::Metadata(Metadata::default()),
                signature: vec![1; 70],
            })
            .collect();
        let bytes: Vec<u8> = updates
            .iter()
            .flat_map(|u| postcard::to_allocvec(u).unwrap())
            .collect();
        let datagram = state_datagram(&from, 3, &bytes);
        assert_eq!(datagram[0], DATAGRAM_STATE);
        assert!(datagram.len() <= state_header_len(&from) + bytes.len());
        let push = StatePush::decode(&datagram[1..]).unwrap();
        assert_eq!(push.from, from);
        assert_eq!(push.updates, updates);
        let mut trailing = datagram[1..].to_vec();
        trailing.push(0);
        assert!(StatePush::decode(&trailing).is_err());
    }
}
