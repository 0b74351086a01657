//! The nemesis: the execution of the fault plan (`plan.rs`) against the lab.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::lab::FleetLab;
use crate::plan::{EtcdSide, Fault, Kind};

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

/// Undoes `f`. Returns the instant (µs since the epoch) right before the one write that undid it, when
/// there is one: a thaw (a frozen machine's copies execute again from there, not from before the
/// call).
pub fn heal(
    fl: &FleetLab,
    states: &States,
    f: &Fault,
    machines: usize,
) -> Result<Option<u64>, String> {
    let m = f.machines[0];
    if f.kind == Kind::Freeze {
        let r = thaw(fl, m);
        states.set(m, UP);
        return r.map(Some);
    }
    let r = match &f.kind {
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
        Kind::Freeze => unreachable!("thawed above"),
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
    };
    r.map(|()| None)
}

/// Thaws machine `m` as `Lab::thaw` does (writes `0` to its `cgroup.freeze`), without the script's
/// start-up in between: returns the instant right before the write. Counted from before
/// `Lab::thaw`, the thaw overlaps included tens of ms of a bash start on a loaded host.
fn thaw(fl: &FleetLab, m: usize) -> Result<u64, String> {
    let file = crate::support::machine_cgroup(fl, m).join("cgroup.freeze");
    let at = crate::support::journal::now_us();
    std::fs::write(&file, "0").map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(at)
}
