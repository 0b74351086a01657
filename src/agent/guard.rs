//! The fence guard: `fleetd guard`, run by systemd as `fleet-guard.service` (docs/safety.md).
//!
//! The agent writes its fence deadline (`CLOCK_MONOTONIC` µs) to the fence file on every pass. The guard
//! reads it every 20 ms and, once it has passed, kills every unit bound to it (the units with fleet's
//! fence drop-in) — whether fleetd is alive, dead or hung. While the deadline is ahead it pings
//! systemd's watchdog with a timeout that ends shortly after the deadline, so a guard that hangs is
//! killed by systemd, which then stops the bound units itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_decide::Time;

use crate::clock;

/// The fence file's name in fleetd's runtime directory.
pub const FENCE_FILE: &str = "fence";

/// How often the guard looks.
pub const GUARD_PERIOD: Duration = Duration::from_millis(20);

/// Margin of the watchdog after the deadline (the guard's own kill comes first).
const WATCHDOG_MARGIN: Duration = Duration::from_millis(300);

/// Writes `deadline` (`None`: fenced now) to `file`, atomically.
pub fn write_deadline(file: &Path, deadline: Option<Time>) -> std::io::Result<()> {
    let text = match deadline {
        Some(d) => format!("{} {}\n", d.as_micros(), clock::boot_id()),
        None => format!("none {}\n", clock::boot_id()),
    };
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, file)
}

/// Reads the deadline: `Some(None)` for "fenced", `None` when there is no valid file for this boot.
pub fn read_deadline(file: &Path) -> Option<Option<Time>> {
    let text = std::fs::read_to_string(file).ok()?;
    let (d, boot) = text.trim().split_once(' ')?;
    if boot != clock::boot_id() {
        return None;
    }
    match d {
        "none" => Some(None),
        d => d.parse().ok().map(|us| Some(Time::from_micros(us))),
    }
}

/// The file in which the guard records, when it guards again after a fencing, when that fencing began
/// (next to the fence file): the agent then counts the units the guard stopped as not started.
pub fn fenced_mark_file(fence_file: &Path) -> PathBuf {
    fence_file.with_extension("fenced")
}

/// Records that the guard guards again after a fencing that began at `at` (this boot's
/// `CLOCK_MONOTONIC`), atomically.
pub fn write_fenced_mark(file: &Path, at: Time) -> std::io::Result<()> {
    let tmp = file.with_extension("fenced-tmp");
    std::fs::write(&tmp, format!("{} {}\n", at.as_micros(), clock::boot_id()))?;
    std::fs::rename(&tmp, file)
}

/// When the fencing the guard last recovered from during this boot began (`None`: none, or no valid
/// mark).
pub fn read_fenced_mark(file: &Path) -> Option<Time> {
    let text = std::fs::read_to_string(file).ok()?;
    let (at, boot) = text.trim().split_once(' ')?;
    (boot == clock::boot_id())
        .then(|| at.parse().ok().map(Time::from_micros))
        .flatten()
}

/// Runs the guard until killed. `bus` is the system bus unless `user`.
pub async fn run(fence_file: PathBuf, units_directory: PathBuf, user: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    let bus = if user {
        fleet_systemd::Bus::Session
    } else {
        fleet_systemd::Bus::System
    };
    let systemd = fleet_systemd::Systemd::connect(
        fleet_systemd::Config::new(bus).units_directory(&units_directory),
    )
    .await
    .context("connecting to systemd")?;
    crate::api::activation::notify_or_log("READY=1\nSTATUS=guarding");
    tracing::info!(file = %fence_file.display(), "fence guard running");
    let mut fenced_at: Option<Time> = None;
    loop {
        let now = clock::now();
        // No valid file (fleetd never wrote one this boot): nothing may run.
        let deadline = read_deadline(&fence_file).flatten();
        match deadline {
            Some(d) if now < d => {
                if let Some(at) = fenced_at.take() {
                    tracing::info!("fence deadline ahead again: guarding");
                    // Tell the agent that the units were stopped under it and that it may start
                    // them again now: a start before this point would be killed again (a stop keeps
                    // systemd's `Restart=` from doing it).
                    if let Err(e) = write_fenced_mark(&fenced_mark_file(&fence_file), at) {
                        tracing::warn!("writing the fencing mark: {e}");
                    }
                }
                let usec = d.since(now) + WATCHDOG_MARGIN;
                let _ = crate::api::activation::notify(&format!(
                    "WATCHDOG=1\nWATCHDOG_USEC={}",
                    usec.as_micros()
                ));
            }
            _ => {
                let units = systemd.guarded_units();
                let targets = if fenced_at.is_none() {
                    tracing::warn!(
                        units = units.len(),
                        "fence deadline passed: killing fleet's claimed units"
                    );
                    fenced_at = Some(now);
                    // The first time, every bound unit at once, without asking systemd for its
                    // state first (fencing a stopped unit is harmless): the kill must come within
                    // `kill_allowance` of the deadline.
                    units
                } else {
                    let mut active = Vec::new();
                    for u in units {
                        let up = systemd
                            .unit_state(&u)
                            .await
                            .map(|s| s.active_state.may_have_main_pid())
                            .unwrap_or(true);
                        if up {
                            active.push(u);
                        }
                    }
                    active
                };
                for (u, e) in systemd.fence_units(&targets).await {
                    tracing::warn!(unit = %u, "fencing: {e}");
                }
                // Done for now: keep the watchdog quiet while fenced.
                let _ = crate::api::activation::notify("WATCHDOG=1\nWATCHDOG_USEC=10000000");
            }
        }
        tokio::time::sleep(GUARD_PERIOD).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_trip_and_other_boots_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("fence");
        assert_eq!(read_deadline(&f), None);
        write_deadline(&f, Some(Time::from_micros(1234))).unwrap();
        assert_eq!(read_deadline(&f), Some(Some(Time::from_micros(1234))));
        write_deadline(&f, None).unwrap();
        assert_eq!(read_deadline(&f), Some(None));
        std::fs::write(&f, "99 some-other-boot\n").unwrap();
        assert_eq!(read_deadline(&f), None);
    }

    #[test]
    fn fencing_marks_round_trip_and_other_boots_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let m = fenced_mark_file(&dir.path().join("fence"));
        assert_eq!(m, dir.path().join("fence.fenced"));
        assert_eq!(read_fenced_mark(&m), None);
        write_fenced_mark(&m, Time::from_micros(77)).unwrap();
        assert_eq!(read_fenced_mark(&m), Some(Time::from_micros(77)));
        std::fs::write(&m, "99 some-other-boot\n").unwrap();
        assert_eq!(read_fenced_mark(&m), None);
    }
}
