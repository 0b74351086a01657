//! The timings of the safety rules, all derived from one setting (`fence_after`) and the lease TTL.

use std::time::Duration;

/// Timings of the safety rules (see `docs/safety.md` for the argument that uses each of them).
///
/// One setting, [`Timing::fence_after`], trades failover speed against tolerance of network blips: a
/// machine that can neither confirm its etcd lease nor get enough support from the witness committee
/// stops its units `fence_after` after its last confirmation, and a machine taking a unit over waits until
/// that holder has provably done so. Everything else follows from it and the lease TTL (`agent_ttl`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// F: how long a machine keeps running its claimed units after its last lease confirmation when the
    /// witness committee does not support it. Default [`Timing::DEFAULT_FENCE_AFTER`] (700 ms).
    pub fence_after: Duration,
    /// The lease TTL (`agent_ttl`): claims vanish with the lease; a machine stops its units before then
    /// whatever support it has, and a departed witness keeps its seat for that long.
    pub ttl: Duration,
    /// Bound on how much two machines' clock *rates* may differ, in parts per million (offsets do
    /// not matter: no rule compares two machines' clocks). Default 10,000 (1%); NTP keeps real clocks
    /// within 500.
    pub clock_rate_ppm: u32,
    /// K: from a fence deadline to the fenced units' processes being gone (the agent or the fence guard
    /// sends SIGKILL through systemd). Default 100 ms.
    pub kill_allowance: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing::new(Timing::DEFAULT_FENCE_AFTER, Duration::from_secs(30))
    }
}

impl Timing {
    /// fleetd's default `fence_after` (its configuration and the simulator take it from here), chosen
    /// for the failover goal of issue 11 (a crashed machine's units active elsewhere p50 <= 1.5 s on
    /// 5 machines): a crash's down verdict needs `F + 150 ms` of silence after the first unanswered
    /// probe, so the failover time moves with F (docs/benchmarks.md, "Choosing fence_after").
    pub const DEFAULT_FENCE_AFTER: Duration = Duration::from_millis(700);

    /// Timings for `fence_after` and a lease TTL, with the default clock-rate bound and kill allowance.
    pub fn new(fence_after: Duration, ttl: Duration) -> Timing {
        Timing {
            fence_after,
            ttl,
            clock_rate_ppm: 10_000,
            kill_allowance: Duration::from_millis(100),
        }
    }

    /// V: how long one witness's support lets a machine without its lease keep its units (from when it
    /// asked). Four `fence_after`s: support is asked for every `V/3` while the lease is unconfirmed.
    pub fn support_validity(&self) -> Duration {
        self.fence_after * 4
    }

    /// How long a witness waits after supporting a lease before it may vote that the lease be taken over:
    /// `V` stretched by the clock-rate bound, plus the kill allowance.
    pub fn vote_after_support(&self) -> Duration {
        self.stretch(self.support_validity()) + self.kill_allowance
    }

    /// P: how often the agent renews its lease: three times per `fence_after`, so that one lost or
    /// late answer does not leave the lease unconfirmed for a whole `fence_after`.
    pub fn keepalive_period(&self) -> Duration {
        (self.fence_after / 3).max(Duration::from_millis(10))
    }

    /// How often a machine about to take units over asks etcd about the holder's lease.
    pub fn lease_poll_period(&self) -> Duration {
        (self.fence_after / 5).clamp(Duration::from_millis(20), Duration::from_millis(100))
    }

    /// `d` stretched by the clock-rate bound: a duration measured on one machine's clock is at most this
    /// long on any other machine's clock.
    pub fn stretch(&self, d: Duration) -> Duration {
        d + d.mul_f64(f64::from(self.clock_rate_ppm) / 1e6)
    }

    /// `d` shrunk by the clock-rate bound: a duration measured on another clock is at least this long here.
    pub fn shrink(&self, d: Duration) -> Duration {
        d.saturating_sub(d.mul_f64(f64::from(self.clock_rate_ppm) / 1e6))
    }

    /// How long after a holder's last possible guard extension its units are provably gone, measured on
    /// another machine's clock: F stretched by the rate bound, plus the kill allowance.
    pub fn fenced_after(&self) -> Duration {
        self.stretch(self.fence_after) + self.kill_allowance
    }

    /// How long a machine may keep its units after its last lease confirmation however its view looks:
    /// etcd expires the lease (and the claims) TTL after the last renewal it received, which was no
    /// earlier than the confirmed request was sent.
    pub fn slow_fence_after(&self) -> Duration {
        self.shrink(self.ttl).saturating_sub(self.kill_allowance)
    }

    /// Checks the relations the safety argument needs; `Err` says which one fails.
    pub fn check(&self) -> Result<(), String> {
        if self.fence_after < Duration::from_millis(30) {
            return Err(format!(
                "fence_after {:?} is too short (at least 30 ms)",
                self.fence_after
            ));
        }
        if self.slow_fence_after() <= self.fence_after {
            return Err(format!(
                "agent_ttl {:?} must be well above fence_after {:?}",
                self.ttl, self.fence_after
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_timings_of_the_defaults() {
        let t = Timing::default();
        assert_eq!(t.keepalive_period(), Duration::from_nanos(233_333_333));
        assert_eq!(t.fenced_after(), Duration::from_millis(807));
        assert_eq!(t.slow_fence_after(), Duration::from_millis(29_600));
        assert_eq!(t.support_validity(), Duration::from_millis(2800));
        assert_eq!(t.vote_after_support(), Duration::from_millis(2928));
        assert_eq!(t.lease_poll_period(), Duration::from_millis(100));
        assert!(t.check().is_ok());
    }

    #[test]
    fn a_ttl_close_to_fence_after_is_refused() {
        let t = Timing::new(Duration::from_secs(2), Duration::from_secs(2));
        assert!(t.check().unwrap_err().contains("agent_ttl"));
    }

    #[test]
    fn stretch_and_shrink_bound_both_ways() {
        let t = Timing::default();
        let d = Duration::from_secs(1);
        assert_eq!(t.stretch(d), Duration::from_millis(1010));
        assert_eq!(t.shrink(d), Duration::from_millis(990));
    }
}
