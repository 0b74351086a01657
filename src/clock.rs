//! The machine's monotonic clock (`CLOCK_MONOTONIC`) as the decision core's [`Time`].
//!
//! Every process of a boot reads the same clock, so a restarted fleetd and the fence guard agree with
//! what an earlier fleetd wrote. It does not jump with NTP steps; it keeps counting while the machine's
//! processes are frozen (so a thawed machine sees its deadlines passed).

use fleet_decide::Time;

/// Now, on `CLOCK_MONOTONIC`.
pub fn now() -> Time {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    Time::from_micros(ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000)
}

/// The tokio instant at which `CLOCK_MONOTONIC` reads (or read) `t`.
pub fn instant_at(t: Time) -> tokio::time::Instant {
    let (now_t, now_i) = (now(), tokio::time::Instant::now());
    if t >= now_t {
        now_i + t.since(now_t)
    } else {
        now_i.checked_sub(now_t.since(t)).unwrap_or(now_i)
    }
}

/// `CLOCK_MONOTONIC` at the tokio instant `i` (in the past or the future).
pub fn time_of(i: tokio::time::Instant) -> Time {
    let (n, ni) = (now(), tokio::time::Instant::now());
    if i >= ni {
        n + (i - ni)
    } else {
        n - (ni - i)
    }
}

/// This boot's ID (`/proc/sys/kernel/random/boot_id`): monotonic times saved by an earlier boot mean
/// nothing.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
