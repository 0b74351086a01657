//! The nemesis: a fault plan drawn from the seed before the run (so a seed always gives the same
//! sequence of faults, machines and times), and its execution against the lab.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::lab::FleetLab;
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
#[derive(Clone, Debug)]
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

/// How long after a fault's heal its machines stay untouched (a rebooted machine rejoins, units
/// settle), so that faults do not pile onto one machine.
const RECOVER: Duration = Duration::from_secs(3);

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
            .filter(|f| f.at <= t && t < f.heal + RECOVER)
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

/// What the samplers must know about a machine.
pub const UP: u8 = 0;
pub const FROZEN: u8 = 1;
pub const DOWN: u8 = 2;

/// Per machine: [`UP`], [`FROZEN`] or [`DOWN`] (index 0 unused).
pub struct States(pub Vec<AtomicU8>);

impl States {
    pub fn new(machines: usize) -> States {
        States((0..=machines).map(|_| AtomicU8::new(UP)).collect())
    }
    pub fn get(&self, i: usize) -> u8 {
        self.0[i].load(Ordering::SeqCst)
    }
    pub fn set(&self, i: usize, s: u8) {
        self.0[i].store(s, Ordering::SeqCst)
    }
}

/// The nftables table of the bench (partitions and etcd loss), apart from the lab's own tables.
const TABLE: &str = "ftchaos";

/// Drops, in machine `i`'s netns, its traffic with the machines `peers` and (if `etcd`) with the hub
/// etcd, both ways.
fn block(fl: &FleetLab, i: usize, peers: &[usize], etcd: bool) -> Result<(), String> {
    let mut rin = String::new();
    let mut rout = String::new();
    if !peers.is_empty() {
        let ips: Vec<String> = peers
            .iter()
            .map(|&p| fleet_lab::machine_ip(p).to_string())
            .collect();
        let set = ips.join(", ");
        rin.push_str(&format!(" ip saddr {{ {set} }} drop;"));
        rout.push_str(&format!(" ip daddr {{ {set} }} drop;"));
    }
    if etcd {
        let hub = fleet_lab::HUB_IP;
        rin.push_str(&format!(" ip saddr {hub} tcp sport 2379 drop;"));
        rout.push_str(&format!(" ip daddr {hub} tcp dport 2379 drop;"));
    }
    let script = format!(
        "nft -f - <<'EOF'\ntable inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n\
         chain in {{ type filter hook input priority 0;{rin} }}\n\
         chain out {{ type filter hook output priority 0;{rout} }}\n}}\nEOF\n"
    );
    sh(fl, i, &["sh", "-c", &script])
}

fn unblock(fl: &FleetLab, i: usize) -> Result<(), String> {
    sh(fl, i, &["nft", "delete", "table", "inet", TABLE])
}

fn sh(fl: &FleetLab, i: usize, cmd: &[&str]) -> Result<(), String> {
    fl.lab.sh_ok(i, cmd).map(|_| ()).map_err(|e| e.to_string())
}

const NORESTART: &str = "/run/systemd/system/fleet.service.d/zz-chaos-norestart.conf";

fn lab<E: std::fmt::Display>(r: Result<(), E>) -> Result<(), String> {
    r.map_err(|e| e.to_string())
}

/// Injects `f`. Records in `states` what the samplers must know (before a machine hangs or dies).
pub fn inject(fl: &FleetLab, states: &States, f: &Fault, machines: usize) -> Result<(), String> {
    let m = f.machines[0];
    match &f.kind {
        Kind::Crash => {
            states.set(m, DOWN);
            lab(fl.lab.kill(m))
        }
        Kind::FleetdKill => sh(fl, m, &["systemctl", "kill", "-s", "KILL", "fleet.service"]),
        Kind::FleetdKillDown => sh(
            fl,
            m,
            &[
                "sh",
                "-c",
                &format!(
                    "mkdir -p /run/systemd/system/fleet.service.d && \
                     printf '[Service]\\nRestart=no\\n' > {NORESTART} && systemctl daemon-reload && \
                     systemctl kill -s KILL fleet.service"
                ),
            ],
        ),
        Kind::FleetdStop => sh(fl, m, &["systemctl", "kill", "-s", "STOP", "fleet.service"]),
        Kind::Freeze => {
            states.set(m, FROZEN);
            lab(fl.lab.freeze(m))
        }
        Kind::Cut => lab(fl.lab.cut(m)),
        Kind::Drop => lab(fl.lab.drop(m)),
        Kind::Loss(p) => lab(fl.lab.loss(m, *p)),
        Kind::EtcdLoss => block(fl, m, &[], true),
        Kind::Partition(side) => {
            let minority = &f.machines;
            let majority: Vec<usize> = (1..=machines).filter(|i| !minority.contains(i)).collect();
            let mut errors = Vec::new();
            for &i in minority {
                let etcd = *side == EtcdSide::Majority;
                if let Err(e) = block(fl, i, &majority, etcd) {
                    errors.push(e);
                }
            }
            for &i in &majority {
                let etcd = *side == EtcdSide::Minority;
                if let Err(e) = block(fl, i, minority, etcd) {
                    errors.push(e);
                }
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            }
        }
    }
}

/// Undoes `f`.
pub fn heal(fl: &FleetLab, states: &States, f: &Fault, machines: usize) -> Result<(), String> {
    let m = f.machines[0];
    match &f.kind {
        Kind::Crash => {
            let r = lab(fl.lab.boot(m));
            states.set(m, UP);
            r
        }
        Kind::FleetdKill => Ok(()),
        Kind::FleetdKillDown => sh(
            fl,
            m,
            &[
                "sh",
                "-c",
                &format!(
                    "rm -f {NORESTART} && systemctl daemon-reload && \
                     systemctl reset-failed fleet.service; systemctl start fleet.service"
                ),
            ],
        ),
        Kind::FleetdStop => sh(fl, m, &["systemctl", "kill", "-s", "CONT", "fleet.service"]),
        Kind::Freeze => {
            let r = lab(fl.lab.thaw(m));
            states.set(m, UP);
            r
        }
        Kind::Cut => lab(fl.lab.heal(m)),
        Kind::Drop | Kind::Loss(_) => lab(fl.lab.undrop(m)),
        Kind::EtcdLoss => unblock(fl, m),
        Kind::Partition(_) => {
            let errors: Vec<String> = (1..=machines)
                .filter_map(|i| unblock(fl, i).err())
                .collect();
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            }
        }
    }
}
