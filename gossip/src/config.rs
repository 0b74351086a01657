//! The node's settings: failure detection, dissemination, anti-entropy.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

/// Failure detection and dissemination settings.
///
/// The defaults aim at a LAN (sub-millisecond RTT) and a blip tolerance of 700 ms (see
/// [`Config::with_blip_tolerance`]): a member silent for less than that is never declared down, a
/// crashed one is declared down about 0.85 s after the first probe that reaches it unanswered, at a
/// cost of a few small datagrams per second per member. Roughly, detection takes the wait until some member probes the
/// dead one (each member probes one random member per `probe_period`; the chance that nobody probes a
/// given member in one period is about 1/e, so p99 is about 4.6 periods in a large cluster), plus one
/// `probe_period` (direct probe, then indirect probes through `num_indirect_probes` members), plus
/// `suspect_to_down_after`, plus the spread of the verdict (`gossip_interval` rounds to
/// `gossip_fanout` members, piggybacked on probes too).
///
/// Accuracy (Lifeguard, on top of foca; see the `lifeguard` module): a live member that is suspected
/// refutes as soon as it hears the suspicion (the prober's next ping carries it, and foca gossips the
/// refutation at once). A suspicion starts at `suspicion_max` and shrinks towards
/// `suspect_to_down_after` only as other members independently fail to reach the suspect
/// (`suspicion_confirmations` of them bring it to the minimum), so one member's lost packets or slow
/// scheduler cannot bring a verdict early. A member that misses its own acks (its local health
/// score, at most `max_local_health`) probes and waits for acks `score + 1` times more slowly, so a
/// starved node does not accuse healthy ones. A member wrongly declared down rejoins by itself with
/// a renewed identity (see [`crate::NodeIdentity`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How often this node probes one member. Default 400 ms.
    pub probe_period: Duration,
    /// How long to wait for a direct ack before asking other members to probe indirectly. Must be
    /// less than `probe_period`. Default 80 ms.
    pub probe_rtt: Duration,
    /// How many members to ask for an indirect probe. Default 3.
    pub num_indirect_probes: usize,
    /// The shortest time a suspect has to refute before it is declared down: the suspicion timeout
    /// once `suspicion_confirmations` other members confirmed it. Default 450 ms (a blip tolerance
    /// of 700 ms, see [`Config::with_blip_tolerance`]).
    pub suspect_to_down_after: Duration,
    /// The suspicion timeout with no confirmation (Lifeguard's dynamic suspicion: it shrinks
    /// logarithmically with each independent confirmation down to `suspect_to_down_after`).
    /// Default 1.05 s (1.5 times the blip tolerance).
    pub suspicion_max: Duration,
    /// How many independent confirmations bring the suspicion timeout to its minimum (capped by
    /// the number of other live members). Default 2.
    pub suspicion_confirmations: usize,
    /// The highest local health score (Lifeguard's awareness): each probe of ours that fails adds
    /// one, each that succeeds takes one away, and hearing ourselves suspected adds one; probing
    /// runs `score + 1` times slower. Default 8.
    pub max_local_health: u8,
    /// How long a down member is remembered (and its last state kept) before it is forgotten; a
    /// machine cannot rejoin with the same identity before then (restarts use a new one). Default
    /// 10 min.
    pub remove_down_after: Duration,
    /// How many times each node passes on each membership update and state update (state updates
    /// go in pushes of their own, see `gossip_interval`). A member misses
    /// an update only if none of the roughly `n · max_transmissions` sends reach it, so the chance
    /// that some member of `n` misses one is about `n · e^(-max_transmissions)` (then anti-entropy
    /// delivers it within `anti_entropy_interval`). Default 12: about 0.06% for 100 machines, 0.6%
    /// for 1000; raise it for larger clusters.
    pub max_transmissions: u8,
    /// Largest datagram, in bytes. Must fit in one QUIC datagram: 1100 is safe before path MTU
    /// discovery (QUIC's minimum is 1200-byte packets). Default 1100.
    pub max_packet_size: usize,
    /// How often to push pending state updates (and gossip pending membership updates) to
    /// `gossip_fanout` random members. Default 100 ms.
    pub gossip_interval: Duration,
    /// How many members each gossip round goes to. Default 3.
    pub gossip_fanout: usize,
    /// How long a unit state learnt from others may wait in this node's outbox to be passed on;
    /// beyond, it is dropped (sent or not) and left to anti-entropy. A single change is passed on
    /// its `max_transmissions` times within a few rounds, well before; a burst larger than the
    /// pushes carry (thousands of unit states at once) would otherwise keep every node pushing
    /// updates that everyone has for minutes. This node's own updates, metadata, suspicion claims
    /// and vouches never expire. Default 1 s.
    pub push_max_wait: Duration,
    /// How often to announce ourselves to one random member seen down (heals partitions: a member
    /// that was only cut off answers, and both sides renew and rejoin). Default 15 s. (foca's
    /// periodic announce to live members is off: its answer, a feed of up to `max_packet_size`
    /// bytes of members, cost every node about 220 B/s each way, and the periodic anti-entropy
    /// repairs memberships at a cost proportional to what differs.)
    pub announce_interval: Duration,
    /// How often to run anti-entropy with one random live member (a summary of the state digest in
    /// a few hundred bytes; details only for what differs), and a full sync (membership and state)
    /// with one random member seen down (which heals partitions: both sides renew and rejoin).
    /// Also, once per interval, with probability min(1, k / live members), a full sync with one of
    /// the k seed addresses and addresses of forgotten members (after `remove_down_after`) that are
    /// no known member's: a partition longer than `remove_down_after` merges back through them.
    /// Default 5 s.
    pub anti_entropy_interval: Duration,
    /// While no member is alive, how often to retry joining through the seeds and a few members
    /// last seen down. Default 1 s.
    pub join_retry_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            probe_period: Duration::from_millis(400),
            probe_rtt: Duration::from_millis(80),
            num_indirect_probes: 3,
            suspect_to_down_after: Duration::from_millis(450),
            suspicion_max: Duration::from_millis(1050),
            suspicion_confirmations: 2,
            max_local_health: 8,
            remove_down_after: Duration::from_secs(600),
            max_transmissions: 12,
            max_packet_size: 1100,
            gossip_interval: Duration::from_millis(100),
            gossip_fanout: 3,
            push_max_wait: Duration::from_secs(1),
            announce_interval: Duration::from_secs(15),
            anti_entropy_interval: Duration::from_secs(5),
            join_retry_interval: Duration::from_secs(1),
        }
    }
}

impl Config {
    /// The blip tolerance of the defaults (fleetd's default `fence_after`; a test of fleetd's
    /// configuration checks that the two agree).
    pub const DEFAULT_BLIP_TOLERANCE: Duration = Duration::from_millis(700);

    /// How long after a thaw a suspect's refutation may take to reach its suspecters: the thawed
    /// member handles what arrived meanwhile (pings and gossip carrying the suspicion) and answers at
    /// once; its refutation rides on those answers and on its next gossip round (`gossip_interval`).
    pub const REFUTATION_ALLOWANCE: Duration = Duration::from_millis(150);

    /// These settings with the suspicion timeouts derived from a blip tolerance `tolerance` (fleetd
    /// passes its `fence_after`): a member silent (frozen, cut off, starved) for less than
    /// `tolerance` is never declared down, and a crashed one is declared down soon after it.
    ///
    /// A down verdict needs a probe that went unanswered for a whole `probe_period` (foca judges a
    /// probe when its next round begins) and then a suspicion that stood for at least
    /// `suspect_to_down_after`, unrefuted: the member was silent from the ping on for at least
    /// their sum, less the time its refutation takes to come back ([`Config::REFUTATION_ALLOWANCE`]). So
    /// `suspect_to_down_after = tolerance + REFUTATION_ALLOWANCE − probe_period` (never below half
    /// the tolerance), and the unconfirmed suspicion lasts 1.5 times the tolerance (Lifeguard's
    /// maximum: one member's own trouble cannot bring a verdict before others confirm it).
    ///
    /// A crash is then declared down about `tolerance + REFUTATION_ALLOWANCE` after the first ping
    /// to the dead member, plus the wait for that ping (a fraction of a probe period in a
    /// small cluster, where every member probes every other one every few periods).
    pub fn with_blip_tolerance(mut self, tolerance: Duration) -> Config {
        let min = (tolerance + Self::REFUTATION_ALLOWANCE)
            .saturating_sub(self.probe_period)
            .max(tolerance / 2);
        self.suspect_to_down_after = min;
        self.suspicion_max = (tolerance * 3 / 2).max(min);
        self
    }

    /// The shortest time from a member falling silent to any Down verdict about it, anywhere: a probe
    /// of it must go unanswered for `probe_rtt`, then the suspicion must stand for at least
    /// `suspect_to_down_after` (Lifeguard's timeouts only ever lengthen these: local health slows
    /// probing, unconfirmed suspicions last longer). Every node must run the same settings for
    /// this to hold cluster-wide (fleetd's are built in).
    ///
    /// It assumes no suspicion of the member was already pending when it fell silent (lost packets
    /// can leave one): such a suspicion runs from when it started. Lifeguard makes it last
    /// `suspicion_max` unless other members independently fail to reach the member too, which they
    /// only do once it is silent (or cut off from them as well).
    ///
    /// 530 ms by default.
    pub fn min_detection(&self) -> Duration {
        self.probe_rtt + self.suspect_to_down_after
    }

    /// The largest foca packet: a datagram less its kind byte.
    pub(crate) fn foca_max_packet(&self) -> usize {
        self.max_packet_size.max(256) - 1
    }

    pub(crate) fn foca(&self) -> foca::Config {
        let one = NonZeroUsize::MIN;
        foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: NonZeroUsize::new(self.num_indirect_probes).unwrap_or(one),
            max_transmissions: NonZeroU8::new(self.max_transmissions).unwrap_or(NonZeroU8::MIN),
            suspect_to_down_after: self.suspect_to_down_after,
            remove_down_after: Some(self.remove_down_after),
            // One byte of every datagram says what it carries (SWIM, or a state push).
            max_packet_size: NonZeroUsize::new(self.foca_max_packet()).unwrap_or(one),
            notify_down_members: true,
            periodic_announce: None,
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: self.announce_interval,
                num_members: one,
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: self.gossip_interval,
                num_members: NonZeroUsize::new(self.gossip_fanout).unwrap_or(one),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_those_of_the_default_blip_tolerance() {
        let d = Config::default();
        assert_eq!(
            d.clone()
                .with_blip_tolerance(Config::DEFAULT_BLIP_TOLERANCE),
            d
        );
        // Silent for the whole tolerance plus the refutation allowance before any verdict.
        assert_eq!(
            d.probe_period + d.suspect_to_down_after,
            Config::DEFAULT_BLIP_TOLERANCE + Config::REFUTATION_ALLOWANCE
        );
    }

    /// A 5-member virtual LAN (4 survivors: few confirmations possible) with a 2 s tolerance: a
    /// member frozen for just under 2 s is declared down by nobody, in any seed; a crashed one is
    /// declared down everywhere within the tolerance plus 1.5 s, and not before the tolerance.
    #[test]
    fn a_member_silent_for_less_than_the_tolerance_is_not_declared_down_and_a_crash_is() {
        use crate::core::Event;
        use crate::testing::VirtualNet;
        use crate::Liveness;
        let tolerance = Duration::from_secs(2);
        let config = Config::default().with_blip_tolerance(tolerance);
        let n = 5;
        for seed in 0..6 {
            let mut net = VirtualNet::new(seed, config.clone());
            let first = net.add_node(&[]);
            for _ in 1..n {
                net.add_node(&[first]);
            }
            assert!(net.run_until(Duration::from_secs(10), |net| {
                (0..n).all(|a| (0..n).all(|b| a == b || net.sees_alive(a, b)))
            }));
            net.run_for(Duration::from_secs(2));
            let since = net.elapsed();
            net.freeze(3);
            net.run_for(tolerance - Duration::from_millis(50));
            net.thaw(3);
            net.run_for(Duration::from_secs(5));
            let downs: usize = (0..n)
                .filter(|i| *i != 3)
                .map(|i| {
                    net.events(i)
                        .iter()
                        .filter(|(t, e)| {
                            *t >= since && *e == Event::MemberDown(VirtualNet::machine_id(3))
                        })
                        .count()
                })
                .sum();
            assert_eq!(
                downs, 0,
                "seed {seed}: frozen for less than the tolerance, declared down"
            );
            net.kill(3);
            let killed = net.elapsed();
            let others = net.running();
            assert!(
                net.run_until(tolerance + Duration::from_millis(1500), |net| {
                    others
                        .iter()
                        .all(|o| net.liveness(*o, 3) == Some(Liveness::Down))
                }),
                "seed {seed}: crash not declared down everywhere within {:?}",
                tolerance + Duration::from_millis(1500)
            );
            // Never before the tolerance.
            assert!(
                net.elapsed() - killed >= tolerance,
                "seed {seed}: {:?}",
                net.elapsed() - killed
            );
        }
    }

    #[test]
    fn the_suspicion_follows_the_tolerance() {
        let c = Config::default().with_blip_tolerance(Duration::from_secs(5));
        assert_eq!(c.suspect_to_down_after, Duration::from_millis(4750));
        assert_eq!(c.suspicion_max, Duration::from_millis(7500));
        let c = Config::default().with_blip_tolerance(Duration::from_millis(100));
        assert_eq!(c.suspect_to_down_after, Duration::from_millis(50));
        assert_eq!(c.suspicion_max, Duration::from_millis(150));
    }
}
