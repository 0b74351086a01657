//! One member's gossip cost at scale (issue 14.4), with the real `Node`, in-process, simulated time:
//! [1] a whole cluster of real nodes in a `VirtualNet` (5, 20, 100 members by default), and [2] one
//! real node of a 100, 1,000 and 10,000-member cluster, its peers modelled at the rates SWIM gives.
//!
//!     cargo bench -p fleet-gossip --features testing --bench scale   # [1] 5,20,100 [2] 100,1000,10000
//!     CLUSTER_SIZES=5,10 SIZES=1000 SECS=120 UNITS=10 cargo bench -p fleet-gossip --features testing --bench scale
//!
//! What runs for real: the node under test (foca, Lifeguard, pushes, anti-entropy, the roster), and
//! a second real node (the "mirror", holding the same membership and state) that answers and starts
//! its syncs. What is modelled, from SWIM's rates: every member probes one member per
//! `probe_period`, so the node receives one ping per period from a random member, and every member
//! it pings acks after `RTT`; every member starts a sync every `anti_entropy_interval` with a random
//! member, so the node answers one per interval (the mirror plays the peers). With `CHURN` (unit
//! state changes per second in the whole cluster) the node also receives each change about
//! `max_transmissions` times in pushes, as rumour mongering delivers it.
//!
//! Printed per size: the node's CPU (thread CPU time inside its calls, so a loaded host inflates it
//! less than wall time would, though caches and frequency still suffer), its payload bytes per
//! second each way (datagrams and sync messages), its new QUIC connections per second (a peer not
//! contacted for `IDLE_TIMEOUT`, 60 s, needs one), and the bytes on the wire: payload plus what QUIC
//! adds per packet (`QUIC_OVERHEAD`, 32 B), per ACK (`QUIC_ACK`, 18 B) and per connection set-up
//! (`HANDSHAKE_BYTES`, 2,100 B each way on average), measured by `gossip-quic/examples/quic_cost.rs`
//! and checked against the lab (`tests/lab_gossip.rs`, `gossip_cost_per_machine_in_the_lab`).
//!
//! Part [2] prints the wire twice: "quic", every contact over a QUIC connection (the transport
//! before sealed datagrams), and "sealed", today's transport (`fleet_gossip_quic::seal`): a
//! datagram to a peer without an open connection travels sealed (`SEAL_OVERHEAD` bytes more, no
//! ACK, no set-up); a summary offer too, answered only when the digests differ, by a sync over a
//! new connection (whose bytes are modelled as the same exchange's); a peer with an open
//! connection is reached over it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fleet_gossip::core::{Config, Node};
use fleet_gossip::testing::running_unit as running;
use fleet_gossip::testing::{env_or as env, synthetic_cluster, thread_cpu, VirtualNet};
use fleet_gossip::wire::{FullState, SyncAnswer, SyncOffer, DATAGRAM_STATE, DATAGRAM_SWIM};
use fleet_gossip::{MachineId, Metadata, NodeIdentity, Stamp, UnitState, Update};
use foca::{Codec, Header, Message, PostcardCodec};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// One-way LAN latency of the model.
const RTT: Duration = Duration::from_micros(250);

#[derive(Default)]
struct Totals {
    busy: Duration,
    datagrams_in: u64,
    datagrams_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    sync_in: u64,
    sync_out: u64,
    /// QUIC packets the sync messages take (at most `STREAM_PACKET` bytes of frame each).
    sync_packets_in: u64,
    sync_packets_out: u64,
    connections: u64,
    /// The sealed transport's model.
    sealed: SealedTotals,
}

/// Bytes and connections of the sealed transport (see the module docs).
#[derive(Default)]
struct SealedTotals {
    payload_in: f64,
    payload_out: f64,
    /// Bytes beyond the payload: seals, QUIC packets, ACKs and set-ups.
    extra_in: f64,
    extra_out: f64,
    connections: u64,
    sealed_in: u64,
    sealed_out: u64,
}

/// Stream payload per QUIC packet (packets of QUIC's minimum MTU, 1,200 bytes, without MTU discovery).
const STREAM_PACKET: usize = 1150;

impl Totals {
    fn sent_sync(&mut self, len: usize) {
        self.sync_out += len as u64;
        self.sync_packets_out += len.div_ceil(STREAM_PACKET) as u64;
    }

    fn received_sync(&mut self, len: usize) {
        self.sync_in += len as u64;
        self.sync_packets_in += len.div_ceil(STREAM_PACKET) as u64;
    }
}

/// What QUIC adds, from `gossip-quic/examples/quic_cost.rs` (`docs/benchmarks.md`).
struct Wire {
    /// Bytes a packet carries beyond its payload (short header, frame header, AEAD tag).
    packet: f64,
    /// Bytes of the ACK a received packet causes.
    ack: f64,
    /// Bytes of one connection set-up, each way on average (the connecting side sends more).
    handshake: f64,
    /// Bytes a sealed datagram carries beyond its payload (`fleet_gossip_quic::seal`: 3 bytes of
    /// header, a 32-character machine ID, boot, sequence number and the receiver's incarnation
    /// (24), two lengths (4) and an ECDSA P-256 signature in DER (70-72): 134).
    seal: f64,
}

impl Wire {
    fn from_env() -> Wire {
        Wire {
            packet: env("QUIC_OVERHEAD", 32.0),
            ack: env("QUIC_ACK", 18.0),
            handshake: env("HANDSHAKE_BYTES", 2100.0),
            seal: env("SEAL_OVERHEAD", 134.0),
        }
    }
}

enum Ev {
    /// A datagram for the node under test, from peer `from`.
    Deliver(usize, Vec<u8>),
    /// A random peer pings the node.
    PeerPing,
    /// A random peer starts a sync with the node (played by the mirror).
    PeerSync,
    /// A unit state changes somewhere in the cluster.
    Churn,
}

struct Bench {
    ids: Vec<NodeIdentity>,
    by_addr: HashMap<SocketAddr, usize>,
    node: Node,
    mirror: Node,
    rng: StdRng,
    queue: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    totals: Totals,
    /// When the node last exchanged anything with each peer (for the connection model).
    contact: HashMap<usize, Instant>,
    /// The sealed model's open connections: when each was last used.
    open: HashMap<usize, Instant>,
    idle_timeout: Duration,
    seal: f64,
    packet: f64,
    ack: f64,
    handshake: f64,
    probe_number: u8,
    versions: HashMap<usize, u64>,
    units: usize,
}

impl Bench {
    fn push(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    /// Runs `f` on the node under test, timing it.
    fn on_node<R>(&mut self, f: impl FnOnce(&mut Node) -> R) -> R {
        let t = thread_cpu();
        let r = f(&mut self.node);
        self.totals.busy += thread_cpu().saturating_sub(t);
        r
    }

    fn touch(&mut self, peer: usize, now: Instant) {
        let fresh = self
            .contact
            .get(&peer)
            .is_none_or(|at| now.duration_since(*at) > self.idle_timeout);
        if fresh {
            self.totals.connections += 1;
        }
        self.contact.insert(peer, now);
    }

    /// Whether the sealed model has a connection open to `peer` now (and marks it used).
    fn connected(&mut self, peer: usize, now: Instant) -> bool {
        let open = self
            .open
            .get(&peer)
            .is_some_and(|at| now.duration_since(*at) <= self.idle_timeout);
        if open {
            self.open.insert(peer, now);
        } else {
            self.open.remove(&peer);
        }
        open
    }

    /// The sealed model: a datagram of `len` bytes to (`out`) or from `peer`.
    fn sealed_datagram(&mut self, peer: usize, len: usize, out: bool, now: Instant) {
        let (packet, ack, seal) = (self.packet, self.ack, self.seal);
        let connected = self.connected(peer, now);
        let t = &mut self.totals.sealed;
        let (payload, extra, extra_back) = if out {
            (&mut t.payload_out, &mut t.extra_out, &mut t.extra_in)
        } else {
            (&mut t.payload_in, &mut t.extra_in, &mut t.extra_out)
        };
        *payload += len as f64;
        if connected {
            *extra += packet;
            *extra_back += ack;
        } else {
            *extra += seal;
            if out {
                t.sealed_out += 1;
            } else {
                t.sealed_in += 1;
            }
        }
    }

    /// The sealed model: a summary offer (`compact`: its sealed form's payload, `None` for a
    /// full offer) sent (`out`) to or received from `peer`, then the sync exchange of `sizes`
    /// (offer, answer, delta as the QUIC transport sends them) if it runs over a connection:
    /// when one is open, when the offer is a full one, or when the digests differ (a new one).
    fn sealed_sync(
        &mut self,
        peer: usize,
        compact: Option<usize>,
        in_sync: bool,
        sizes: [usize; 3],
        out: bool,
        now: Instant,
    ) {
        let connected = self.connected(peer, now);
        let (packet, ack, seal, handshake) = (self.packet, self.ack, self.seal, self.handshake);
        let t = &mut self.totals.sealed;
        if !connected {
            if let Some(compact) = compact {
                let len = 1.0 + compact as f64;
                if out {
                    t.payload_out += len;
                    t.extra_out += seal;
                    t.sealed_out += 1;
                } else {
                    t.payload_in += len;
                    t.extra_in += seal;
                    t.sealed_in += 1;
                }
                if in_sync {
                    return;
                }
            }
            t.connections += 1;
            t.extra_in += handshake;
            t.extra_out += handshake;
            self.open.insert(peer, now);
        }
        // offer and delta from the initiator, the answer from the peer.
        let t = &mut self.totals.sealed;
        for (i, len) in sizes.into_iter().enumerate() {
            let packets = len.div_ceil(STREAM_PACKET) as f64;
            if (i == 1) == out {
                t.payload_in += len as f64;
                t.extra_in += packet * packets;
                t.extra_out += ack * packets;
            } else {
                t.payload_out += len as f64;
                t.extra_out += packet * packets;
                t.extra_in += ack * packets;
            }
        }
    }

    fn swim(&self, from: usize, message: Message<NodeIdentity>) -> Vec<u8> {
        let mut out = vec![DATAGRAM_SWIM];
        PostcardCodec
            .encode_header(
                &Header {
                    src: self.ids[from].clone(),
                    src_incarnation: 0,
                    dst: self.node.identity().clone(),
                    message,
                },
                &mut out,
            )
            .expect("encode");
        out.extend_from_slice(&0u16.to_be_bytes());
        out
    }

    /// Sends what the node wants sent: acks come back for its pings, syncs run with the mirror.
    fn drain(&mut self, now: Instant) {
        while let Some(t) = self.node.poll_transmit() {
            self.totals.datagrams_out += 1;
            self.totals.bytes_out += t.data.len() as u64;
            let Some(&peer) = self.by_addr.get(&t.dst) else {
                continue;
            };
            self.touch(peer, now);
            self.sealed_datagram(peer, t.data.len(), true, now);
            if t.data.first() == Some(&DATAGRAM_SWIM) {
                let mut buf = &t.data[1..];
                if let Ok(h) = Codec::<NodeIdentity>::decode_header(&mut PostcardCodec, &mut buf) {
                    if let Message::Ping(n) = h.message {
                        let ack = self.swim(peer, Message::Ack(n));
                        self.push(now + 2 * RTT, Ev::Deliver(peer, ack));
                    }
                }
            }
        }
        while let Some(peer_addr) = self.node.poll_sync() {
            let Some(&peer) = self.by_addr.get(&peer_addr) else {
                continue;
            };
            self.touch(peer, now);
            let offer = self.on_node(|n| n.sync_offer_to(peer_addr));
            let compact = offer.encode_summary().map(|c| c.len());
            let offer = offer.encode();
            self.totals.sent_sync(offer.len());
            let answer = self
                .mirror
                .handle_sync_offer(now, SyncOffer::decode(&offer).unwrap())
                .unwrap();
            let in_sync = answer.in_sync();
            let answer = answer.encode();
            self.totals.received_sync(answer.len());
            let delta = self.on_node(|n| {
                n.handle_sync_answer(now, SyncAnswer::decode(&answer).unwrap())
                    .map(|d| d.encode())
            });
            let mut delta_len = 0;
            if let Ok(delta) = delta {
                self.totals.sent_sync(delta.len());
                delta_len = delta.len();
                let _ = self.mirror.merge(now, FullState::decode(&delta).unwrap());
            }
            let sizes = [offer.len(), answer.len(), delta_len];
            self.sealed_sync(peer, compact, in_sync, sizes, true, now);
        }
        while self.node.poll_event().is_some() {}
        while self.mirror.poll_transmit().is_some() {}
        while self.mirror.poll_sync().is_some() {}
        while self.mirror.poll_event().is_some() {}
    }

    fn deliver(&mut self, now: Instant, from: usize, data: Vec<u8>) {
        self.totals.datagrams_in += 1;
        self.totals.bytes_in += data.len() as u64;
        self.touch(from, now);
        self.sealed_datagram(from, data.len(), false, now);
        let addr = self.ids[from].addr;
        let _ = self.on_node(|n| n.handle_datagram(now, addr, &data));
        self.drain(now);
    }

    fn random_peer(&mut self) -> usize {
        // 0 is the node under test, 1 the mirror.
        self.rng.random_range(2..self.ids.len())
    }

    fn run(&mut self, start: Instant, secs: u64) {
        let config = self.node.config().clone();
        let end = start + Duration::from_secs(secs);
        let churn: f64 = env("CHURN", 0.0);
        let mut at = start;
        if self.queue.is_empty() {
            // The first run starts the peers' periodic events; later runs continue them.
            self.push(at, Ev::PeerPing);
            self.push(at + config.anti_entropy_interval / 2, Ev::PeerSync);
            if churn > 0.0 {
                self.push(at, Ev::Churn);
            }
        }
        loop {
            let next_ev = self.queue.keys().next().map(|(t, _)| *t);
            let next_timer = self.node.poll_timeout();
            let now = match (next_ev, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            if now > end {
                break;
            }
            at = now;
            if next_timer.is_some_and(|t| t <= now) {
                self.on_node(|n| n.handle_timeout(now));
                self.drain(now);
                continue;
            }
            let (_, ev) = self.queue.pop_first().expect("an event is due");
            match ev {
                Ev::Deliver(from, data) => self.deliver(now, from, data),
                Ev::PeerPing => {
                    let peer = self.random_peer();
                    self.probe_number = self.probe_number.wrapping_add(1);
                    let ping = self.swim(peer, Message::Ping(self.probe_number));
                    self.deliver(now, peer, ping);
                    let jitter = self.rng.random_range(0.5..1.5);
                    self.push(now + config.probe_period.mul_f64(jitter), Ev::PeerPing);
                }
                Ev::PeerSync => {
                    let peer = self.random_peer();
                    self.touch(peer, now);
                    let node_addr = self.node.identity().addr;
                    let offer = self.mirror.sync_offer_to(node_addr);
                    let compact = offer.encode_summary().map(|c| c.len());
                    let offer = offer.encode();
                    self.totals.received_sync(offer.len());
                    let answer = self.on_node(|n| {
                        n.handle_sync_offer(now, SyncOffer::decode(&offer).unwrap())
                            .map(|a| (a.in_sync(), a.encode()))
                    });
                    let mut sizes = [offer.len(), 0, 0];
                    let mut in_sync = false;
                    if let Ok((matched, answer)) = answer {
                        in_sync = matched;
                        sizes[1] = answer.len();
                        self.totals.sent_sync(answer.len());
                        if let Ok(delta) = self
                            .mirror
                            .handle_sync_answer(now, SyncAnswer::decode(&answer).unwrap())
                        {
                            let delta = delta.encode();
                            sizes[2] = delta.len();
                            self.totals.received_sync(delta.len());
                            let _ =
                                self.on_node(|n| n.merge(now, FullState::decode(&delta).unwrap()));
                        }
                    }
                    self.sealed_sync(peer, compact, in_sync, sizes, false, now);
                    self.drain(now);
                    let jitter = self.rng.random_range(0.5..1.5);
                    self.push(
                        now + config.anti_entropy_interval.mul_f64(jitter),
                        Ev::PeerSync,
                    );
                }
                Ev::Churn => {
                    self.churn(now, &config);
                    let gap = Duration::from_secs_f64(1.0 / churn);
                    let jitter = self.rng.random_range(0.5..1.5);
                    self.push(now + gap.mul_f64(jitter), Ev::Churn);
                }
            }
        }
        let _ = at;
    }

    /// One unit state change somewhere: the node receives it `max_transmissions` times in pushes
    /// (from random relays, spread over the next few gossip rounds), and the mirror learns it too.
    fn churn(&mut self, now: Instant, config: &Config) {
        let origin = self.random_peer();
        let v = self.versions.entry(origin).or_insert(1 + self.units as u64);
        *v += 1;
        let update = Update {
            origin: self.ids[origin].machine_id.clone(),
            stamp: Stamp {
                epoch: self.ids[origin].incarnation,
                version: *v,
            },
            entry: fleet_gossip::Entry::Unit {
                name: "app-0000.service".into(),
                state: Some(UnitState {
                    load_state: "loaded".into(),
                    active_state: ["failed", "active"][(*v & 1) as usize].into(),
                    sub_state: "dead".into(),
                    unit_hash: [0; 20],
                }),
            },
            // The size of an ECDSA P-256 signature (DER), as fleetd's are; this bench's node
            // runs unsigned and does not check it.
            signature: vec![0; 71],
        };
        for k in 0..config.max_transmissions {
            let relay = self.random_peer();
            let mut push = vec![DATAGRAM_STATE];
            push.extend(postcard::to_allocvec(&self.ids[relay]).unwrap());
            push.extend(postcard::to_allocvec(&1usize).unwrap());
            push.extend(postcard::to_allocvec(&update).unwrap());
            let at = now + config.gossip_interval * u32::from(k / 3) + RTT;
            self.push(at, Ev::Deliver(relay, push.clone()));
            if k == 0 {
                let addr = self.ids[relay].addr;
                let _ = self.mirror.handle_datagram(now, addr, &push);
            }
        }
    }
}

/// Member `i`'s metadata, as `synthetic_cluster` makes it.
fn machine_metadata(i: usize, units: usize) -> Metadata {
    Metadata {
        public_ip: format!("10.{}.{}.{}", (i >> 16) as u8, (i >> 8) as u8, i as u8),
        metadata: [("rack".to_string(), format!("r{}", i % 40))].into(),
        version: "0.1.0".into(),
        unit_count: units as u32,
    }
}

/// Part 1: a whole cluster of real nodes in a `VirtualNet` (every member real, formed by joins
/// through one seed, `units` units each, then idle). Per member: bytes and datagrams out per
/// second (in is the same on average), and CPU as the run's CPU time divided by members and
/// simulated seconds (it includes the virtual network's own bookkeeping: an upper bound).
fn whole_cluster(sizes: &[usize], secs: u64, warmup: u64, units: usize, wire: &Wire) {
    println!(
        "\n[1] whole cluster of real nodes (VirtualNet, 0.5 ms latency, no loss), idle after \
         formation; {secs} s measured after {warmup} s; {units} units per machine"
    );
    println!(
        "{:>7} {:>12} {:>9} {:>10} {:>12} {:>10}",
        "members", "cpu % (max)", "dgram/s", "payload", "wire", "sync"
    );
    println!(
        "{:>7} {:>12} {:>9} {:>10} {:>12} {:>10}",
        "", "(1 core)", "out", "B/s out", "B/s out", "B/s"
    );
    for &n in sizes {
        let mut net = VirtualNet::new(7, Config::default());
        for i in 0..n {
            let seeds: &[usize] = if i == 0 { &[] } else { &[0] };
            net.add_node_with_id(MachineId::parse(&format!("{i:032x}")).unwrap(), seeds);
        }
        for i in 0..n {
            net.with_node(i, |node, now| {
                node.set_local_metadata(now, machine_metadata(i, units));
                for u in 0..units {
                    node.set_local_unit_state(
                        now,
                        &format!("app-{u:04}.service"),
                        Some(running(i)),
                    );
                }
            });
        }
        net.run_for(Duration::from_secs(warmup));
        let counters = |net: &mut VirtualNet| {
            (0..n)
                .map(|i| net.node(i).unwrap().counters())
                .fold((0u64, 0u64), |(d, b), c| {
                    (d + c.datagrams_out, b + c.bytes_out)
                })
        };
        let (d0, b0) = counters(&mut net);
        let s0 = net.sync_bytes;
        let t = thread_cpu();
        net.run_for(Duration::from_secs(secs));
        let cpu = thread_cpu() - t;
        let (d1, b1) = counters(&mut net);
        let per = |x: u64| x as f64 / n as f64 / secs as f64;
        let sync = per(net.sync_bytes - s0);
        println!(
            "{:>7} {:>12.3} {:>9.1} {:>10.0} {:>12.0} {:>10.0}",
            n,
            100.0 * cpu.as_secs_f64() / n as f64 / secs as f64,
            per(d1 - d0),
            per(b1 - b0) + sync,
            // Every member sends about as much as it receives: each datagram out costs its
            // packet's overhead and one ACK back; syncs' packets are not counted here.
            per(b1 - b0) + sync + (wire.packet + wire.ack) * per(d1 - d0),
            sync,
        );
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("SIZES")
        .unwrap_or_else(|_| "100,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let secs: u64 = env("SECS", 60);
    let warmup: u64 = env("WARMUP", 90);
    let units: usize = env("UNITS", 10);
    let wire = Wire::from_env();
    let idle_timeout = Duration::from_secs(env("IDLE_TIMEOUT", 60));
    let cluster_sizes: Vec<usize> = std::env::var("CLUSTER_SIZES")
        .unwrap_or_else(|_| "5,20,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "QUIC: {} B per packet, {} B per ACK, {} B per connection set-up each way (quic_cost); \
         a seal {} B; payload = datagrams + sync messages; wire = payload + QUIC packets, ACKs, \
         set-ups and seals",
        wire.packet, wire.ack, wire.handshake, wire.seal
    );
    whole_cluster(&cluster_sizes, secs, warmup, units, &wire);
    let config = Config::default();
    println!(
        "\n[2] one real node among modelled peers, simulated time; {secs} s measured after \
         {warmup} s; {units} units per machine; churn {} changes/s in the cluster; a peer not \
         contacted for {idle_timeout:?} (the QUIC idle timeout) needs a new connection",
        env("CHURN", 0.0)
    );
    println!(
        "{:>7} {:>8} {:>8} {:>8} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} {:>9} {:>9}",
        "members",
        "cpu %",
        "dgram/s",
        "dgram/s",
        "payload",
        "payload",
        "quic:",
        "wire",
        "wire",
        "sealed:",
        "sealed/s",
        "payload",
        "wire",
        "wire"
    );
    println!(
        "{:>7} {:>8} {:>8} {:>8} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} {:>9} {:>9}",
        "",
        "(1 core)",
        "in",
        "out",
        "B/s in",
        "B/s out",
        "conn/s",
        "B/s in",
        "B/s out",
        "conn/s",
        "in / out",
        "B/s out",
        "B/s in",
        "B/s out"
    );
    for n in sizes {
        let (ids, snapshot) = synthetic_cluster(n.max(3), units);
        let start = Instant::now();
        let mut node = Node::new(
            config.clone(),
            ids[0].clone(),
            StdRng::seed_from_u64(1),
            start,
        );
        let mut mirror = Node::new(
            config.clone(),
            ids[1].clone(),
            StdRng::seed_from_u64(2),
            start,
        );
        let t = Instant::now();
        node.merge(start, snapshot.clone()).expect("snapshot");
        mirror.merge(start, snapshot).expect("snapshot");
        // A node's own state is its own (the snapshot's copy of it is ignored): the same
        // entries, so that both hold the same stamps for it, as in a formed cluster.
        for (i, n) in [&mut node, &mut mirror].into_iter().enumerate() {
            n.set_local_metadata(start, machine_metadata(i, units));
            let states = (0..units)
                .map(|u| (format!("app-{u:04}.service"), running(i)))
                .collect();
            n.set_local_unit_states(start, &states);
        }
        let load = t.elapsed();
        let by_addr = ids.iter().enumerate().map(|(i, id)| (id.addr, i)).collect();
        let mut b = Bench {
            ids,
            by_addr,
            node,
            mirror,
            rng: StdRng::seed_from_u64(3),
            queue: BTreeMap::new(),
            seq: 0,
            totals: Totals::default(),
            contact: HashMap::new(),
            open: HashMap::new(),
            idle_timeout,
            seal: wire.seal,
            packet: wire.packet,
            ack: wire.ack,
            handshake: wire.handshake,
            probe_number: 0,
            versions: HashMap::new(),
            units,
        };
        b.drain(start);
        b.run(start, warmup);
        b.totals = Totals::default();
        let t0 = start + Duration::from_secs(warmup);
        b.run(t0, secs);
        let s = secs as f64;
        let tt = &b.totals;
        let payload_in = (tt.bytes_in + tt.sync_in) as f64 / s;
        let payload_out = (tt.bytes_out + tt.sync_out) as f64 / s;
        let packets_in = (tt.datagrams_in + tt.sync_packets_in) as f64 / s;
        let packets_out = (tt.datagrams_out + tt.sync_packets_out) as f64 / s;
        let conns = tt.connections as f64 / s;
        let extra = |sent: f64, received: f64| {
            wire.packet * sent + wire.ack * received + wire.handshake * conns
        };
        let st = &tt.sealed;
        println!(
            "{:>7} {:>8.3} {:>8.1} {:>8.1} {:>9.0} {:>9.0} | {:>9.2} {:>9.0} {:>9.0} | {:>9.2} {:>4.1}/{:<4.1} {:>9.0} {:>9.0} {:>9.0}",
            n,
            100.0 * tt.busy.as_secs_f64() / s,
            tt.datagrams_in as f64 / s,
            tt.datagrams_out as f64 / s,
            payload_in,
            payload_out,
            conns,
            payload_in + extra(packets_in, packets_out),
            payload_out + extra(packets_out, packets_in),
            st.connections as f64 / s,
            st.sealed_in as f64 / s,
            st.sealed_out as f64 / s,
            st.payload_out / s,
            (st.payload_in + st.extra_in) / s,
            (st.payload_out + st.extra_out) / s,
        );
        eprintln!("  (the {n}-member snapshot loaded in {load:?})");
    }
}
