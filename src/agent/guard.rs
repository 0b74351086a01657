//! The fence guard: `fleetd guard`, run by systemd as `fleet-guard.service` (docs/safety.md).
//!
//! The agent writes its fence deadline (`CLOCK_MONOTONIC` µs) to the fence file on every pass. The guard
//! reads it every 20 ms and, once it has passed, kills every unit bound to it (the units with fleet's
//! fence drop-in) — whether fleetd is alive, dead or hung. While the deadline is ahead it pings
//! systemd's watchdog with a timeout that ends shortly after the deadline, so a guard that hangs is
//! killed by systemd, which then stops the bound units itself.
//!
//! The kill does not wait for systemd: the guard writes `1` to each bound unit's cgroup `cgroup.kill`
//! first (the kernel kills every process of it at once), then asks systemd to stop and kill them (so
//! that `Restart=` does not bring them back and systemd's state follows). After a thaw of the whole
//! machine, systemd and the D-Bus daemon compete for CPU with every unit just resumed; the guard runs
//! with real-time scheduling (or, where that is refused, the highest nice priority) and its memory
//! locked as it is touched, so that it is the first to run and its kill costs no round trip.

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
    write_stamp(file, "tmp", deadline)
}

/// Reads the deadline: `Ok(Some(None))` for "fenced", `Ok(None)` when there is no file or it is of
/// another boot; an error (naming the file and what is wrong) when it cannot be read or does not parse.
pub fn read_deadline(file: &Path) -> Result<Option<Option<Time>>, StampError> {
    read_stamp(file)
}

/// The file in which the guard records, when it guards again after a fencing, when that fencing began
/// (next to the fence file): the agent then counts the units the guard stopped as not started.
pub fn fenced_mark_file(fence_file: &Path) -> PathBuf {
    fence_file.with_extension("fenced")
}

/// Records that the guard guards again after a fencing that began at `at` (this boot's
/// `CLOCK_MONOTONIC`), atomically.
pub fn write_fenced_mark(file: &Path, at: Time) -> std::io::Result<()> {
    write_stamp(file, "fenced-tmp", Some(at))
}

/// When the fencing the guard last recovered from during this boot began (`None`: none, or no valid
/// mark; an invalid one is logged).
pub fn read_fenced_mark(file: &Path) -> Option<Time> {
    match read_stamp(file) {
        Ok(Some(Some(at))) => Some(at),
        Ok(Some(None)) => {
            tracing::warn!(file = %file.display(), "fencing mark says none: ignored");
            None
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("{e}: ignored");
            None
        }
    }
}

/// A fence file or a fencing mark that cannot be read or does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", file.display())]
pub struct StampError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong with it.
    pub problem: BadStamp,
}

/// What is wrong with the text of a fence file or a fencing mark.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadStamp {
    /// It could not be read.
    #[error("cannot be read: {0}")]
    Unreadable(String),
    /// Not two words.
    #[error("expected \"<microseconds or none> <boot ID>\", found {0:?}")]
    Shape(String),
    /// The first word is neither a count of microseconds nor `none`.
    #[error("{0:?} is not a time in microseconds (nor none)")]
    Time(String),
}

/// The one line a fence file and a fencing mark hold: `<µs|none> <boot ID>`, the time on this boot's
/// `CLOCK_MONOTONIC` (`None`: `none`, a fence file's "fenced now") and the boot it is of.
fn stamp_line(at: Option<Time>, boot_id: &str) -> String {
    match at {
        Some(t) => format!("{} {boot_id}\n", t.as_micros()),
        None => format!("none {boot_id}\n"),
    }
}

/// Parses what [`stamp_line`] writes: the time (`None` for `none`) and the boot ID.
fn parse_stamp(text: &str) -> Result<(Option<Time>, &str), BadStamp> {
    let mut words = text.split_whitespace();
    let (Some(at), Some(boot), None) = (words.next(), words.next(), words.next()) else {
        return Err(BadStamp::Shape(text.to_owned()));
    };
    let at = match at {
        "none" => None,
        us => Some(Time::from_micros(
            us.parse().map_err(|_| BadStamp::Time(us.to_owned()))?,
        )),
    };
    Ok((at, boot))
}

/// Writes this boot's stamp `at` to `file` through `file.<tmp_extension>`, atomically.
fn write_stamp(file: &Path, tmp_extension: &str, at: Option<Time>) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension(tmp_extension);
    std::fs::write(&tmp, stamp_line(at, &clock::boot_id()))?;
    std::fs::rename(&tmp, file)
}

/// Reads the stamp in `file`: `Ok(None)` when there is no file or it is of another boot.
fn read_stamp(file: &Path) -> Result<Option<Option<Time>>, StampError> {
    let error = |problem| StampError {
        file: file.to_owned(),
        problem,
    };
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error(BadStamp::Unreadable(e.to_string()))),
    };
    let (at, boot) = parse_stamp(&text).map_err(error)?;
    Ok((boot == clock::boot_id()).then_some(at))
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
    prioritize();
    crate::api::activation::notify_or_log("READY=1\nSTATUS=guarding");
    tracing::info!(file = %fence_file.display(), "fence guard running");
    let mut fenced_at: Option<Time> = None;
    // This guard just started: a guard before it, if any, stopped (its watchdog fired at a thaw or
    // because it hung, or it was killed), and systemd stopped every unit bound to it (`BindsTo=`) with
    // it. Tell the agent as after a fencing (below), so that the units it started count as not started
    // and start again; otherwise the agent keeps their claims, renews its lease and never runs them,
    // and nobody may take them over.
    let mut began_at: Option<Time> = Some(clock::now());
    // The last error reading the fence file (logged when it changes, not every period).
    let mut unreadable: Option<StampError> = None;
    // Whether `cgroup.kill` was found missing (logged once).
    let mut cgroup_kill_missing = false;
    loop {
        let now = clock::now();
        // No valid file (fleetd never wrote one this boot, or it does not parse): nothing may run.
        let deadline = match read_deadline(&fence_file) {
            Ok(d) => {
                unreadable = None;
                d.flatten()
            }
            Err(e) => {
                if unreadable.as_ref() != Some(&e) {
                    tracing::warn!("{e}: no deadline, fencing");
                    unreadable = Some(e);
                }
                None
            }
        };
        match deadline {
            Some(d) if now < d => {
                let fenced = fenced_at.take();
                if let Some(at) = fenced.or(began_at.take()) {
                    if fenced.is_some() {
                        tracing::info!("fence deadline ahead again: guarding");
                    } else {
                        tracing::info!(
                            "guarding; the units bound to an earlier guard count as stopped"
                        );
                    }
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
                    kill_cgroups(&systemd, &units, &mut cgroup_kill_missing);
                    quiet_watchdog_while_fenced();
                    units
                } else {
                    quiet_watchdog_while_fenced();
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
                    kill_cgroups(&systemd, &active, &mut cgroup_kill_missing);
                    active
                };
                for (u, e) in systemd.fence_units(&targets).await {
                    tracing::warn!(unit = %u, "fencing: {e}");
                }
            }
        }
        // Wake at the deadline itself when it comes before the next look (tokio's timers run on
        // `CLOCK_MONOTONIC`, like the deadline; after a freeze they are overdue and fire at once).
        let next = match deadline {
            Some(d) if now < d => GUARD_PERIOD.min(d.since(now)),
            _ => GUARD_PERIOD,
        };
        tokio::time::sleep(next).await;
    }
}

/// While fenced, the guard's watchdog gets its full period ([`FENCED_WATCHDOG`]), pinged before any
/// round trip to systemd: the last ping while the deadline was ahead allowed only up to
/// [`WATCHDOG_MARGIN`] past it, and after a thaw (or on a loaded machine) systemd and the D-Bus
/// daemon may take longer than that to answer the fencing calls. A guard killed there by its watchdog
/// loses nothing the kill needed (the units' cgroups were killed first, and systemd stops the bound
/// units), but the guard must then start again before the units can (`tests/lab_safety.rs`,
/// `a_guard_whose_fencing_calls_stall_is_not_killed_by_its_watchdog`).
fn quiet_watchdog_while_fenced() {
    let _ = crate::api::activation::notify(&format!(
        "WATCHDOG=1\nWATCHDOG_USEC={}",
        FENCED_WATCHDOG.as_micros()
    ));
}

/// The guard's watchdog while fenced: `WatchdogSec=` of `fleet-guard.service` (`fleet_systemd`).
const FENCED_WATCHDOG: Duration = Duration::from_secs(10);

/// Kills `targets` through their cgroups (`cgroup.kill`), before systemd is asked to: logs what
/// could not be killed that way, and once that the kernel lacks `cgroup.kill` (before 5.14) or there
/// is no cgroup v2 hierarchy (`missing` remembers it was logged); systemd's kill covers those.
fn kill_cgroups(systemd: &fleet_systemd::Systemd, targets: &[String], missing: &mut bool) {
    let started = std::time::Instant::now();
    let Some(done) = systemd.kill_cgroups(targets) else {
        if !std::mem::replace(missing, true) {
            tracing::warn!("no cgroup v2 hierarchy: fencing through systemd only");
        }
        return;
    };
    if !done.unsupported.is_empty() && !std::mem::replace(missing, true) {
        tracing::warn!(
            units = done.unsupported.len(),
            "no cgroup.kill (kernel before 5.14): fencing through systemd only"
        );
    }
    for (u, e) in &done.failed {
        tracing::warn!(unit = %u, "fencing: writing cgroup.kill: {e}");
    }
    if !done.killed.is_empty() {
        tracing::info!(
            units = done.killed.len(),
            micros = started.elapsed().as_micros() as u64,
            "fencing: killed through cgroup.kill"
        );
    }
}

/// Makes the guard the first to run when the machine is busy (after a thaw, every process of the
/// machine is runnable at once): `SCHED_FIFO` for every thread of the guard (threads it starts later
/// inherit it), else nice -20 where real-time scheduling is refused (a cgroup without real-time
/// runtime); its pages locked in memory as they are touched, so that the kill does not wait for a
/// page-in. What could not be done is logged; the guard runs either way.
fn prioritize() {
    let param = libc::sched_param {
        sched_priority: GUARD_RT_PRIORITY,
    };
    let tasks: Vec<libc::pid_t> = std::fs::read_dir("/proc/self/task")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut refused = None;
    for &tid in &tasks {
        // SAFETY: sched_setscheduler reads one sched_param from a valid pointer.
        if unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &param) } != 0 {
            refused = Some(std::io::Error::last_os_error());
            break;
        }
    }
    match refused {
        None => tracing::info!(
            priority = GUARD_RT_PRIORITY,
            "guard scheduled real-time (SCHED_FIFO)"
        ),
        Some(e) => {
            let mut niced = true;
            for &tid in &tasks {
                // SAFETY: setpriority takes plain integers.
                niced &=
                    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -20) } == 0;
            }
            tracing::warn!(
                niced,
                "real-time scheduling refused ({e}): the guard runs at nice -20 instead"
            );
        }
    }
    // SAFETY: mlockall takes flags only.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) } != 0 {
        tracing::warn!(
            "locking the guard's memory: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The guard's `SCHED_FIFO` priority: any real-time priority runs before every normal process
/// (systemd, the D-Bus daemon, the units); a low one leaves the kernel's own real-time threads first.
const GUARD_RT_PRIORITY: i32 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_trip_and_other_boots_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("fence");
        assert_eq!(read_deadline(&f), Ok(None));
        write_deadline(&f, Some(Time::from_micros(1234))).unwrap();
        assert_eq!(read_deadline(&f), Ok(Some(Some(Time::from_micros(1234)))));
        write_deadline(&f, None).unwrap();
        assert_eq!(read_deadline(&f), Ok(Some(None)));
        std::fs::write(&f, "99 some-other-boot\n").unwrap();
        assert_eq!(read_deadline(&f), Ok(None));
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

    #[test]
    fn the_stamp_parser_reads_what_is_written_and_names_what_is_wrong() {
        let boot = "0d1e2f";
        for at in [
            Some(Time::from_micros(0)),
            Some(Time::from_micros(u64::MAX)),
            None,
        ] {
            assert_eq!(parse_stamp(&stamp_line(at, boot)), Ok((at, boot)));
        }
        assert_eq!(
            parse_stamp(" 12  b \n"),
            Ok((Some(Time::from_micros(12)), "b"))
        );
        for (text, problem) in [
            ("", BadStamp::Shape(String::new())),
            ("1234\n", BadStamp::Shape("1234\n".into())),
            ("1 b extra", BadStamp::Shape("1 b extra".into())),
            ("soon b", BadStamp::Time("soon".into())),
            ("-5 b", BadStamp::Time("-5".into())),
            ("1.5 b", BadStamp::Time("1.5".into())),
            ("None b", BadStamp::Time("None".into())),
        ] {
            assert_eq!(parse_stamp(text), Err(problem), "{text:?}");
        }
        let e = parse_stamp("soon b").unwrap_err().to_string();
        assert!(e.contains("\"soon\""), "{e}");
    }

    #[test]
    fn a_damaged_fence_file_is_an_error_naming_it_and_a_damaged_mark_counts_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("fence");
        std::fs::write(&f, "12x some-boot\n").unwrap();
        let e = read_deadline(&f).unwrap_err();
        assert_eq!(e.problem, BadStamp::Time("12x".into()));
        assert!(e.to_string().contains(&*f.to_string_lossy()), "{e}");
        let m = fenced_mark_file(&f);
        let none = format!("none {}", clock::boot_id());
        for bad in ["", "12x boot", none.as_str()] {
            std::fs::write(&m, bad).unwrap();
            assert_eq!(read_fenced_mark(&m), None, "{bad:?}");
        }
    }
}
