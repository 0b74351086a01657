//! A cluster-lab cluster with `fleetd` running as a systemd service in every machine, for end-to-end
//! tests. Root only: tests call [`FleetLab::up`] which returns `None` (after printing why) elsewhere.
#![allow(dead_code)]

use std::process::Output;
use std::time::{Duration, Instant};

use fleet_lab::{Lab, LabOptions};

/// The lab's fleetd unit (cargo binaries bound at /opt/fleet/bin).
pub const FLEET_UNIT: &str = include_str!("../../lab/fleet.service");

/// A lab cluster running fleetd; dropping it tears the cluster down.
pub struct FleetLab {
    pub lab: Lab,
}

impl FleetLab {
    /// `n` machines running fleetd with `FLEET_*` settings `env`, waiting until every agent announced
    /// itself. `None` (with a message) when not root or the lab's tools are missing.
    pub fn up(n: usize, env: &[(&str, &str)]) -> Option<FleetLab> {
        if !fleet_lab::require_root() {
            return None;
        }
        let bin = fleet_lab::cargo_profile_dir().expect("cargo profile dir");
        let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
        let mut opts = LabOptions::new()
            .bind(bin, fleet_lab::FLEET_BIN_DIR, true)
            .bind(examples, "/opt/fleet/examples", true)
            .unit("fleet.service", FLEET_UNIT)
            .env("FLEET_AGENT_TTL", "3s")
            .env("FLEET_GOSSIP_INSECURE", "true")
            .env("FLEET_ENGINE_RECONCILE_INTERVAL", "1s");
        for (k, v) in env {
            opts = opts.env(*k, *v);
        }
        let lab = Lab::up(n, opts).expect("lab up");
        let fl = FleetLab { lab };
        fl.wait_for("every machine announced", Duration::from_secs(30), |fl| {
            let out = fl.fleetctl(1, &["list-machines", "--no-legend"]);
            (out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() == n)
                .then_some(())
        });
        Some(fl)
    }

    /// Runs fleetctl inside machine `i`.
    pub fn fleetctl(&self, i: usize, args: &[&str]) -> Output {
        let mut cmd = vec!["/opt/fleet/bin/fleetctl"];
        cmd.extend_from_slice(args);
        self.lab.sh(i, &cmd).expect("run fleetctl in the lab")
    }

    /// Runs fleetctl inside machine `i`, expects success, returns stdout.
    pub fn fleetctl_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.fleetctl(i, args);
        assert!(
            out.status.success(),
            "fleetctl {args:?} on m{i} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a file into machine `i` (its private /tmp is fine: fleetctl runs there too).
    pub fn write_file(&self, i: usize, path: &str, contents: &str) {
        let root = self.lab.machine_root(i).expect("machine root");
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, contents).unwrap();
    }

    /// systemd's `ActiveState` of `unit` in machine `i`.
    pub fn active_state(&self, i: usize, unit: &str) -> String {
        self.show(i, unit, "ActiveState")
    }

    /// One property of `unit` in machine `i` (`systemctl show -p`).
    pub fn show(&self, i: usize, unit: &str, prop: &str) -> String {
        let out = self
            .lab
            .sh(i, &["systemctl", "show", "--value", "-p", prop, unit])
            .expect("systemctl show");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The machine ID of machine `i`.
    pub fn machine_id(&self, i: usize) -> String {
        let root = self.lab.machine_root(i).expect("machine root");
        std::fs::read_to_string(root.join("etc/machine-id"))
            .expect("machine-id")
            .trim()
            .to_string()
    }

    /// Which lab machine (1-based) has `unit` active, if exactly one has.
    pub fn running_on(&self, unit: &str) -> Vec<usize> {
        (1..=self.lab.machines())
            .filter(|i| self.lab.machine_pid(*i).is_ok() && self.active_state(*i, unit) == "active")
            .collect()
    }

    /// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout` naming `what`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&FleetLab) -> Option<T>,
    ) -> T {
        let t0 = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if t0.elapsed() > timeout {
                let journal = self
                    .lab
                    .sh(1, &["journalctl", "-u", "fleet", "--no-pager", "-n", "40"])
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                panic!("timed out after {timeout:?} waiting for: {what}\nm1 fleetd journal:\n{journal}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
