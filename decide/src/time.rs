//! Local monotonic time, as the core sees it.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// A point on this machine's monotonic clock, in microseconds from an arbitrary origin.
///
/// fleetd uses `CLOCK_MONOTONIC` (shared by every process of a boot, so a restarted fleetd and the fence
/// guard read the same clock); the simulator uses each machine's simulated local clock. Times of two
/// machines are never compared: rules that involve another machine go through etcd's clock (lease
/// observations) or through durations measured on one clock, with a bound on clock *rates*
/// ([`crate::Timing::clock_rate_ppm`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    /// The origin.
    pub const ZERO: Time = Time(0);

    /// From microseconds.
    pub const fn from_micros(us: u64) -> Time {
        Time(us)
    }

    /// In microseconds.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    /// `self - d`, saturating at the origin.
    pub fn saturating_sub(self, d: Duration) -> Time {
        Time(self.0.saturating_sub(micros(d)))
    }
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(micros(d)))
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        self.saturating_sub(d)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}
