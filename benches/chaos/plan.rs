//! The fault plan of the chaos bench: drawn from the seed before the run, so that a seed always gives
//! the same sequence of faults, machines and times (`--plan` prints it), and what happened to each
//! fault once executed ([`Done`]). No lab here: unit tests in `tests/bench_chaos.rs`.
#![allow(dead_code)]

use std::time::Duration;

use crate::support::Rng;

/// What is done to the machines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `Lab::kill` (SIGKILL of the machine's systemd: everything in it dies); healed by `Lab::boot`.
    Crash,
    /// `systemctl kill -s KILL fleet`; systemd restarts it (`Restart=always`, 100 ms). Instant.
    FleetdKill,
    /// The same with a runtime drop-in `Restart=no`; healed by removing it and starting fleet again.
    FleetdKillDown,
    /// `systemctl kill -s STOP fleet` (fleetd hangs, its units and its guard live); healed by SIGCONT.
    FleetdStop,
    /// `Lab::freeze` (cgroup freezer: the whole machine hangs); healed by `Lab::thaw`.
    Freeze,
    /// `Lab::cut` (the machine's bridge port down: peers and etcd gone); healed by `Lab::heal`.
    Cut,
    /// `Lab::drop` (nftables drops all of the machine's traffic); healed by `Lab::undrop`.
    Drop,
    /// `Lab::loss` (this many % of packets dropped each way); healed by `Lab::undrop`.
    Loss(u8),
    /// The machine's traffic with etcd dropped both ways (as `FleetLab::block_etcd`); peers still reach
    /// it.
    EtcdLoss,
    /// The lab network split in two: traffic between `machines` (the minority) and the others dropped
    /// both ways; etcd reachable from the side(s) given.
    Partition(EtcdSide),
}

/// Which side of a partition still reaches etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtcdSide {
    Both,
    Majority,
    Minority,
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Crash => "machine crash (SIGKILL)",
            Kind::FleetdKill => "fleetd SIGKILL, restarted",
            Kind::FleetdKillDown => "fleetd SIGKILL, kept down",
            Kind::FleetdStop => "fleetd SIGSTOP/SIGCONT",
            Kind::Freeze => "machine freeze/thaw",
            Kind::Cut => "link cut/heal",
            Kind::Drop => "all traffic dropped",
            Kind::Loss(_) => "packet loss",
            Kind::EtcdLoss => "etcd unreachable",
            Kind::Partition(EtcdSide::Both) => "partition, etcd on both sides",
            Kind::Partition(EtcdSide::Majority) => "partition, etcd with the majority",
            Kind::Partition(EtcdSide::Minority) => "partition, etcd with the minority",
        }
    }

    /// Whether the heal (or the fault itself) starts a new fleetd on the victim.
    pub fn restarts_fleetd(&self) -> bool {
        matches!(self, Kind::Crash | Kind::FleetdKill | Kind::FleetdKillDown)
    }

    /// How long after the heal the victims still count as faulted.
    pub fn quiet_after(&self) -> Duration {
        if self.restarts_fleetd() {
            FRESH
        } else {
            RECOVER
        }
    }

    /// Whether the victims' units must move once the fault lasts long enough (docs/safety.md): the
    /// victim can neither renew its lease nor get support, or its fleetd is gone.
    pub fn moves_units(&self) -> Option<bool> {
        match self {
            Kind::Crash
            | Kind::FleetdKillDown
            | Kind::FleetdStop
            | Kind::Freeze
            | Kind::Cut
            | Kind::Drop
            | Kind::Partition(EtcdSide::Majority) => Some(true),
            Kind::FleetdKill
            | Kind::EtcdLoss
            | Kind::Partition(EtcdSide::Both)
            | Kind::Partition(EtcdSide::Minority) => Some(false),
            Kind::Loss(_) => None,
        }
    }
}

/// One planned fault: `machines` are its victims (for a partition, the minority side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub id: usize,
    pub kind: Kind,
    pub machines: Vec<usize>,
    /// From the start of the chaos phase.
    pub at: Duration,
    /// When it is undone (equal to `at` for an instant fault).
    pub heal: Duration,
}

impl Fault {
    /// Until when its victims count as faulted (the heal, then [`Kind::quiet_after`]).
    pub fn busy_until(&self) -> Duration {
        self.heal + self.kind.quiet_after()
    }

    pub fn describe(&self) -> String {
        let who: Vec<String> = self.machines.iter().map(|m| format!("m{m}")).collect();
        let extra = match self.kind {
            Kind::Loss(p) => format!(" {p}%"),
            Kind::Partition(_) => " | the rest".to_string(),
            _ => String::new(),
        };
        format!("#{} {} {}{extra}", self.id, self.kind.name(), who.join(","))
    }
}

/// How long after a fault's heal its machines stay untouched (units settle), so that faults do not
/// pile onto one machine; they count as faulted (`max_faults`) until then.
pub const RECOVER: Duration = Duration::from_secs(3);

/// The same after a fault that restarts fleetd (a crashed machine booted again, fleetd killed): a
/// fresh fleetd's witness stays quiet for 4.14 s (it cannot vote), so its machine counts as faulted
/// and no fault touches it until 6 s after the heal. The executor also waits until 5 s after the
/// (re)start really happened before it faults that machine again (a boot can be late).
pub const FRESH: Duration = Duration::from_secs(6);

fn ms_between(rng: &mut Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(lo + rng.below(hi - lo + 1))
}

/// A fault duration: 30% short blips (100 ms to 1 s, around `fence_after`), else `lo..hi` ms.
fn duration(rng: &mut Rng, lo: u64, hi: u64) -> Duration {
    if rng.below(10) < 3 {
        ms_between(rng, 100, 1000)
    } else {
        ms_between(rng, lo, hi)
    }
}

/// The plan of a run: faults on `machines` machines over `length`, at most `max_faults` machines
/// faulted at once (a partition is alone), a random 0.5–4 s between attempts.
pub fn plan(seed: u64, length: Duration, machines: usize, max_faults: usize) -> Vec<Fault> {
    let mut rng = Rng::new(seed);
    let mut faults: Vec<Fault> = Vec::new();
    let mut t = Duration::from_secs(2);
    // (weight, kind constructor)
    let weights: [(u64, u8); 10] = [
        (3, 0),
        (2, 1),
        (2, 2),
        (2, 3),
        (2, 4),
        (2, 5),
        (2, 6),
        (1, 7),
        (2, 8),
        (2, 9),
    ];
    let total: u64 = weights.iter().map(|w| w.0).sum();
    let end = length.saturating_sub(Duration::from_secs(1));
    loop {
        t += ms_between(&mut rng, 500, 4000);
        if t >= end {
            break;
        }
        let active: Vec<&Fault> = faults
            .iter()
            .filter(|f| f.at <= t && t < f.busy_until())
            .collect();
        if active.iter().any(|f| matches!(f.kind, Kind::Partition(_))) {
            continue;
        }
        let busy: Vec<usize> = active.iter().flat_map(|f| f.machines.clone()).collect();
        let mut pick = rng.below(total);
        let mut which = 0;
        for (w, k) in weights {
            if pick < w {
                which = k;
                break;
            }
            pick -= w;
        }
        let id = faults.len() + 1;
        if which == 9 {
            if !active.is_empty() {
                continue;
            }
            let size = 1 + rng.below(((machines - 1) / 2) as u64) as usize;
            let mut pool: Vec<usize> = (1..=machines).collect();
            let mut minority = Vec::new();
            for _ in 0..size {
                minority.push(pool.remove(rng.below(pool.len() as u64) as usize));
            }
            minority.sort();
            let side = match rng.below(3) {
                0 => EtcdSide::Both,
                1 => EtcdSide::Majority,
                _ => EtcdSide::Minority,
            };
            let heal = (t + duration(&mut rng, 1000, 20_000)).min(end);
            faults.push(Fault {
                id,
                kind: Kind::Partition(side),
                machines: minority,
                at: t,
                heal,
            });
            continue;
        }
        let mut distinct = busy.clone();
        distinct.sort();
        distinct.dedup();
        if distinct.len() >= max_faults {
            continue;
        }
        let free: Vec<usize> = (1..=machines).filter(|m| !busy.contains(m)).collect();
        if free.is_empty() {
            continue;
        }
        let m = free[rng.below(free.len() as u64) as usize];
        let (kind, d) = match which {
            0 => (Kind::Crash, ms_between(&mut rng, 1000, 20_000)),
            1 => (Kind::FleetdKill, Duration::ZERO),
            2 => (Kind::FleetdKillDown, duration(&mut rng, 1000, 15_000)),
            3 => (Kind::FleetdStop, duration(&mut rng, 200, 10_000)),
            4 => (Kind::Freeze, duration(&mut rng, 200, 10_000)),
            5 => (Kind::Cut, duration(&mut rng, 200, 15_000)),
            6 => (Kind::Drop, duration(&mut rng, 200, 15_000)),
            7 => (
                Kind::Loss(10 + rng.below(51) as u8),
                ms_between(&mut rng, 1000, 15_000),
            ),
            _ => (Kind::EtcdLoss, duration(&mut rng, 500, 20_000)),
        };
        faults.push(Fault {
            id,
            kind,
            machines: vec![m],
            at: t,
            heal: (t + d).min(end),
        });
    }
    faults
}

/// A fault as it happened (host clock, µs since the epoch).
#[derive(Clone, Debug)]
pub struct Done {
    pub fault: Fault,
    /// Just before and just after the injection.
    pub before: u64,
    pub after: u64,
    /// Just before and just after the heal (an instant fault: its injection).
    pub healed: Option<(u64, u64)>,
    /// The injection failed (nothing to heal).
    pub error: Option<String>,
    pub heal_error: Option<String>,
    /// A failed heal tried again once the nemesis ended: when, and its error if it failed again.
    pub retried: Option<(u64, Option<String>)>,
}

impl Done {
    /// When its victims were back to normal (or the end of the observation `end` if never).
    pub fn over(&self, end: u64) -> u64 {
        match (
            &self.error,
            &self.heal_error,
            self.retried.as_ref(),
            self.healed,
        ) {
            (Some(_), ..) => self.after,
            (None, Some(_), Some((t, None)), _) => *t,
            (None, Some(_), ..) => end,
            (None, None, _, Some((_, h))) => h,
            (None, None, _, None) => end,
        }
    }
}
