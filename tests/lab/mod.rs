//! A cluster-lab cluster with `fleetd` running as a systemd service in every machine, for end-to-end
//! tests. Root only: tests call [`FleetLab::up`] which returns `None` (after printing why) elsewhere.
#![allow(dead_code)]

#[path = "../support/bins.rs"]
pub mod bins;
pub mod ssh;

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant};

use fleet_lab::{Lab, LabOptions};

/// A command's stdout and stderr, as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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
        FleetLab::up_with_binds(n, env, &[])
    }

    /// Like [`FleetLab::up`], with more host directories bound read-only into every machine
    /// (`(host dir, path in the machine)`).
    pub fn up_with_binds(
        n: usize,
        env: &[(&str, &str)],
        binds: &[(&std::path::Path, &str)],
    ) -> Option<FleetLab> {
        FleetLab::up_with_options(n, env, binds, |o| o)
    }

    /// Like [`FleetLab::up_with_binds`], with the lab options adjusted by `more` (e.g. an etcd
    /// member cluster: `|o| o.etcd_cluster(3)`).
    pub fn up_with_options(
        n: usize,
        env: &[(&str, &str)],
        binds: &[(&std::path::Path, &str)],
        more: impl FnOnce(LabOptions) -> LabOptions,
    ) -> Option<FleetLab> {
        if !fleet_lab::require_root() {
            return None;
        }
        // The machines run this build's fleetd and fleetctl from the profile directory.
        bins::fleetctl();
        let bin = fleet_lab::cargo_profile_dir().expect("cargo profile dir");
        let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
        let mut opts = LabOptions::new()
            .bind(bin, fleet_lab::FLEET_BIN_DIR, true)
            .bind(examples, "/opt/fleet/examples", true);
        for (src, dst) in binds {
            opts = opts.bind(*src, *dst, true);
        }
        let mut opts = opts
            .unit("fleet.service", FLEET_UNIT)
            .env("FLEET_AGENT_TTL", "3s")
            .env("FLEET_GOSSIP_INSECURE", "true")
            .env("FLEET_ENGINE_RECONCILE_INTERVAL", "1s");
        for (k, v) in env {
            opts = opts.env(*k, *v);
        }
        // FLEET_LAB_RUST_LOG=... sets fleetd's RUST_LOG in every machine (debugging a test).
        if let Ok(v) = std::env::var("FLEET_LAB_RUST_LOG") {
            opts = opts.env("RUST_LOG", &v);
        }
        let lab = Lab::up(n, more(opts)).expect("lab up");
        let fl = FleetLab { lab };
        fl.wait_for_etcd("every machine announced", Duration::from_secs(30), |fl| {
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

    /// Runs fleetctl inside machine `i` for `secs` seconds, then sends it SIGINT (`timeout
    /// --preserve-status -s INT`: its own exit status stays), e.g. a `--follow`.
    pub fn fleetctl_until_sigint(&self, i: usize, secs: &str, args: &[&str]) -> Output {
        let mut cmd = vec![
            "timeout",
            "--preserve-status",
            "-s",
            "INT",
            secs,
            "/opt/fleet/bin/fleetctl",
        ];
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
    /// A failed `systemctl show` (systemd or D-Bus slow to answer on a loaded host: it prints nothing)
    /// is asked again, up to 3 times, rather than read as an empty state.
    pub fn show(&self, i: usize, unit: &str, prop: &str) -> String {
        let mut out = None;
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            let o = self
                .lab
                .sh(i, &["systemctl", "show", "--value", "-p", prop, unit])
                .expect("systemctl show");
            let ok = o.status.success();
            out = Some(o);
            if ok {
                break;
            }
        }
        String::from_utf8_lossy(&out.expect("one attempt").stdout)
            .trim()
            .to_string()
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

    /// fleetd's journal of every machine (and, with `FLEET_LAB_DEBUG` set, the whole journal), for
    /// failure messages.
    pub fn journals_dump(&self) -> String {
        let mut journals = String::new();
        for i in 1..=self.lab.machines() {
            let n = if std::env::var_os("FLEET_LAB_DEBUG").is_some() {
                400
            } else {
                40
            };
            journals.push_str(&format!("--- m{i} fleetd journal:\n{}", self.journal(i, n)));
            if std::env::var_os("FLEET_LAB_DEBUG").is_some() {
                let all = self
                    .lab
                    .sh(i, &["journalctl", "--no-pager", "-n", "60"])
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                journals.push_str(&format!("--- m{i} whole journal:\n{all}"));
            }
        }
        journals
    }

    /// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout` naming `what`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl FnMut(&FleetLab) -> Option<T>,
    ) -> T {
        self.wait_until(what, timeout, f, false)
    }

    /// Like [`FleetLab::wait_for`], for what needs every fleetd to reach etcd (e.g. all announced):
    /// the timeout's message also holds the lab's network ([`fleet_lab::Lab::net_report`]: bridge,
    /// neighbours, routes, nftables, a TCP probe from every machine to etcd).
    pub fn wait_for_etcd<T>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl FnMut(&FleetLab) -> Option<T>,
    ) -> T {
        self.wait_until(what, timeout, f, true)
    }

    fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&FleetLab) -> Option<T>,
        net: bool,
    ) -> T {
        let t0 = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if t0.elapsed() > timeout {
                let net = if net {
                    self.lab.net_report()
                } else {
                    String::new()
                };
                panic!(
                    "timed out after {timeout:?} waiting for: {what}\n{}{net}",
                    self.journals_dump()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Keeps calling `check` (which panics on what must not happen) every `every` for `d`; `check`
    /// gets the time since the hold began.
    pub fn hold(&self, d: Duration, every: Duration, mut check: impl FnMut(&FleetLab, Duration)) {
        let t0 = Instant::now();
        while t0.elapsed() < d {
            check(self, t0.elapsed());
            std::thread::sleep(every.min(d.saturating_sub(t0.elapsed())));
        }
    }

    /// Keeps checking for `d` (every 200 ms) that each unit of `expected` is active on exactly the
    /// machines it names (none: stopped everywhere).
    pub fn hold_on(&self, d: Duration, expected: &BTreeMap<&str, Vec<usize>>) {
        self.hold(d, Duration::from_millis(200), |fl, _| {
            for (u, want) in expected {
                let on = fl.running_on(u);
                assert!(
                    &on == want,
                    "{u} moved or stopped: on {on:?}, expected {want:?}\n{}",
                    fl.journals_dump()
                );
            }
        });
    }

    /// Panics if any of `units` is active on more than one machine.
    pub fn assert_not_twice(&self, units: &[&str]) {
        for u in units {
            let on = self.running_on(u);
            assert!(
                on.len() <= 1,
                "{u} is active on machines {on:?} at once\n{}",
                self.journals_dump()
            );
        }
    }

    /// Waits (up to `timeout`) until `unit` is active on exactly one machine that `ok` accepts,
    /// checking meanwhile that none of `watch` runs twice; returns that machine. `what` says what is
    /// awaited, for the timeout's message.
    pub fn wait_running_on(
        &self,
        unit: &str,
        watch: &[&str],
        what: &str,
        timeout: Duration,
        ok: impl Fn(usize) -> bool,
    ) -> usize {
        self.wait_for(&format!("{unit} {what}"), timeout, |fl| {
            fl.assert_not_twice(watch);
            let on = fl.running_on(unit);
            (on.len() == 1 && ok(on[0])).then(|| on[0])
        })
    }
}

/// The table `nft` uses for [`FleetLab::block_etcd`].
const ETCD_BLOCK_TABLE: &str = "ftetcdblock";

impl FleetLab {
    /// Changes machine `i`'s own metadata through its API (`PATCH /fleet/v1/machines`, curl on the unix
    /// socket inside the machine): `Some(value)` adds or replaces `key`, `None` removes it. Panics unless
    /// fleetd answers 204.
    pub fn patch_metadata(&self, i: usize, key: &str, value: Option<&str>) {
        let id = self.machine_id(i);
        let op = match value {
            Some(v) => format!(
                r#"[{{"op":"add","path":"/{id}/metadata/{key}","value":{{"value":"{v}"}}}}]"#
            ),
            None => format!(r#"[{{"op":"remove","path":"/{id}/metadata/{key}"}}]"#),
        };
        let (code, body) = self.patch_machines(i, &op);
        assert_eq!(code, 204, "PATCH {op} on m{i}: {body}");
    }

    /// `PATCH /fleet/v1/machines` with `body` through machine `i`'s API: the status code and the body.
    pub fn patch_machines(&self, i: usize, body: &str) -> (u16, String) {
        let (code, text) = self.api(i, "PATCH", "/fleet/v1/machines", Some(body), 10);
        let code = code.unwrap_or_else(|| panic!("no status from curl on m{i}: {text}"));
        (code, text)
    }

    /// `method path` on machine `i`'s API (curl on its unix socket, at most `max_secs` seconds;
    /// `body` sent as JSON): the status (`None` when curl printed none; 0 when it got no answer)
    /// and the body.
    pub fn api(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<&str>,
        max_secs: u32,
    ) -> (Option<u16>, String) {
        let (max, url) = (max_secs.to_string(), format!("http://fleet{path}"));
        let mut cmd = vec!["curl", "-sS", "--max-time", max.as_str()];
        cmd.extend(["--unix-socket", "/var/run/fleet.sock"]);
        if method != "GET" {
            cmd.extend(["-X", method]);
        }
        if let Some(body) = body {
            cmd.extend(["-H", "Content-Type: application/json", "-d", body]);
        }
        cmd.extend(["-w", "\n%{http_code}", url.as_str()]);
        let out = self.lab.sh(i, &cmd).expect("run curl in the lab");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().ok(), body.to_string())
    }

    /// Machine `j`'s metadata as `list-machines` on machine `i` shows it (`k=v,k=v`, `-` when empty),
    /// `None` when `i` does not list `j`.
    pub fn metadata_seen(&self, i: usize, j: usize) -> Option<String> {
        let id = self.machine_id(j);
        let out = self.fleetctl(i, &["list-machines", "--no-legend", "--full"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&id.as_str()))
            .map(|cols| cols.get(2).unwrap_or(&"-").to_string())
    }

    /// Waits until every running machine lists machine `j` with exactly `metadata` (`k=v,k=v` sorted,
    /// `-` for none).
    pub fn wait_metadata(&self, j: usize, metadata: &str) {
        self.wait_for(
            &format!("every machine sees m{j} with metadata {metadata}"),
            Duration::from_secs(20),
            |fl| {
                (1..=fl.lab.machines())
                    .filter(|i| fl.lab.machine_pid(*i).is_ok())
                    .all(|i| fl.metadata_seen(i, j).as_deref() == Some(metadata))
                    .then_some(())
            },
        );
    }

    /// Sets metadata `key` of each machine of `values` to its value (all at once), then waits until
    /// every running machine sees each of them with `key=value` (their only metadata).
    pub fn set_metadata(&self, key: &str, values: &[(usize, &str)]) {
        for (i, v) in values {
            self.patch_metadata(*i, key, Some(v));
        }
        for (i, v) in values {
            self.wait_metadata(*i, &format!("{key}={v}"));
        }
    }

    /// Whether machine `i` reaches the hub etcd's client port within 0.5 s (curl to `/version`): a
    /// check that [`FleetLab::block_etcd`] took effect.
    pub fn reaches_etcd(&self, i: usize) -> bool {
        let url = format!("http://{}:2379/version", fleet_lab::HUB_IP);
        self.lab
            .sh(i, &["curl", "-s", "--max-time", "0.5", &url])
            .expect("curl in the lab")
            .status
            .success()
    }

    /// Drops every packet between machine `i` and the hub etcd (10.77.0.1:2379) both ways (nftables in
    /// the machine's netns); gossip and everything else still flow. Undone by [`FleetLab::unblock_etcd`].
    pub fn block_etcd(&self, i: usize) {
        let t = ETCD_BLOCK_TABLE;
        let hub = fleet_lab::HUB_IP.to_string();
        let cmds: [Vec<&str>; 5] = [
            vec!["nft", "add", "table", "inet", t],
            vec![
                "nft", "add", "chain", "inet", t, "out", "{", "type", "filter", "hook", "output",
                "priority", "0", ";", "}",
            ],
            vec![
                "nft", "add", "chain", "inet", t, "in", "{", "type", "filter", "hook", "input",
                "priority", "0", ";", "}",
            ],
            vec![
                "nft", "add", "rule", "inet", t, "out", "ip", "daddr", &hub, "tcp", "dport",
                "2379", "drop",
            ],
            vec![
                "nft", "add", "rule", "inet", t, "in", "ip", "saddr", &hub, "tcp", "sport", "2379",
                "drop",
            ],
        ];
        for cmd in &cmds {
            self.lab.sh_ok(i, cmd).expect("nft in the lab");
        }
    }

    /// Undoes [`FleetLab::block_etcd`].
    pub fn unblock_etcd(&self, i: usize) {
        self.lab
            .sh_ok(i, &["nft", "delete", "table", "inet", ETCD_BLOCK_TABLE])
            .expect("nft in the lab");
    }

    /// The last `lines` lines of fleetd's journal in machine `i` (empty if the machine is down).
    pub fn journal(&self, i: usize, lines: usize) -> String {
        let n = lines.to_string();
        self.lab
            .sh(
                i,
                &[
                    "journalctl",
                    "-u",
                    "fleet",
                    "-u",
                    "fleet-guard",
                    "--no-pager",
                    "-o",
                    "short-precise",
                    "-n",
                    &n,
                ],
            )
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

/// Where [`FleetLab::up_with_tls`] binds its certificates in every machine (read-only).
pub const LAB_TLS_DIR: &str = "/etc/fleet-tls";

/// A [`FleetLab`] whose agents authenticate each other with mutual TLS (see
/// [`FleetLab::up_with_tls`]). Derefs to the [`FleetLab`]; dropping it tears the cluster down, then
/// removes the certificates.
pub struct TlsFleetLab {
    /// The cluster (declared first: dropped before the certificates it mounts).
    pub fl: FleetLab,
    /// `FLEET_*` lines every machine's [`fleet_lab::ENV_FILE`] must hold.
    env: Vec<(String, String)>,
    /// Host directory: `ca/` (the CA, host only), `foreign-ca/`, and `etc/` (bound at [`LAB_TLS_DIR`]).
    pub certs: tempfile::TempDir,
    /// Where this build's `fleetctl` is (it mints the certificates).
    bin: std::path::PathBuf,
}

impl std::ops::Deref for TlsFleetLab {
    type Target = FleetLab;
    fn deref(&self) -> &FleetLab {
        &self.fl
    }
}

/// Runs the `fleetctl` of this build (in the directory `bin`) on the host; panics unless it succeeds.
pub fn host_fleetctl(bin: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new(bin.join("fleetctl"))
        .args(args)
        .output()
        .expect("run fleetctl on the host");
    assert!(
        out.status.success(),
        "fleetctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Mints a CA in `ca` (with `fleetctl gen-certs`) and copies its certificate to `into/ca.pem`.
fn mint_lab_ca(bin: &std::path::Path, ca: &std::path::Path, into: &std::path::Path) {
    host_fleetctl(bin, &["gen-certs", "--dir", ca.to_str().unwrap(), "--ca"]);
    std::fs::create_dir_all(into).expect("certificate directory");
    std::fs::copy(ca.join("ca.pem"), into.join("ca.pem")).expect("copy the CA certificate");
}

/// The `fleet.service` of a TLS lab: the lab's unit, with each machine's certificate and key found
/// by its machine ID (`%m`, which systemd expands) in [`LAB_TLS_DIR`].
fn tls_unit() -> String {
    format!(
        "{FLEET_UNIT}Environment=FLEET_GOSSIP_CERT_FILE={LAB_TLS_DIR}/%m.pem\n\
         Environment=FLEET_GOSSIP_KEY_FILE={LAB_TLS_DIR}/%m.key\n"
    )
}

impl FleetLab {
    /// Like [`FleetLab::up`], but gossip runs with mutual TLS instead of the insecure mode: a cluster
    /// CA and one certificate per machine, naming its machine ID, are minted with this build's
    /// `fleetctl gen-certs` into a temp dir bound read-only at [`LAB_TLS_DIR`] (`ca.pem`,
    /// `<machine-id>.pem`, `<machine-id>.key`); `FLEET_GOSSIP_CA_FILE` and the unit's `%m` paths
    /// point there. Machine IDs are generated when the machines first boot, so their certificates
    /// are minted then and fleetd (which refuses to start without its certificate) is started again.
    /// Also minted: a CA of its own in `LAB_TLS_DIR/foreign/` ([`TlsFleetLab::mint_foreign`] signs
    /// certificates with it for peers that must be refused).
    pub fn up_with_tls(n: usize, env: &[(&str, &str)]) -> Option<TlsFleetLab> {
        if !fleet_lab::require_root() {
            return None;
        }
        bins::fleetctl();
        let bin = fleet_lab::cargo_profile_dir().expect("cargo profile dir");
        let certs = tempfile::Builder::new()
            .prefix("fleetlab-tls")
            .tempdir()
            .expect("temp dir for the lab certificates");
        let etc = certs.path().join("etc");
        mint_lab_ca(&bin, &certs.path().join("ca"), &etc);
        mint_lab_ca(&bin, &certs.path().join("foreign-ca"), &etc.join("foreign"));
        let mut fleet_env: Vec<(String, String)> = vec![
            ("FLEET_AGENT_TTL".into(), "3s".into()),
            ("FLEET_ENGINE_RECONCILE_INTERVAL".into(), "1s".into()),
            (
                "FLEET_GOSSIP_CA_FILE".into(),
                format!("{LAB_TLS_DIR}/ca.pem"),
            ),
        ];
        fleet_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
        let mut opts = LabOptions::new()
            .bind(&bin, fleet_lab::FLEET_BIN_DIR, true)
            .bind(examples, "/opt/fleet/examples", true)
            .bind(&etc, LAB_TLS_DIR, true)
            .unit("fleet.service", tls_unit());
        for (k, v) in &fleet_env {
            opts = opts.env(k.as_str(), v.as_str());
        }
        let lab = Lab::up(n, opts).expect("lab up");
        let tl = TlsFleetLab {
            fl: FleetLab { lab },
            env: fleet_env,
            certs,
            bin,
        };
        for i in 1..=n {
            tl.provision(i);
        }
        tl.wait_all_listed(Duration::from_secs(60));
        Some(tl)
    }
}

impl TlsFleetLab {
    /// Every running machine lists exactly the running machines (`fleetctl list-machines`).
    pub fn wait_all_listed(&self, timeout: Duration) {
        self.wait_for_etcd(
            "every running machine lists every running machine",
            timeout,
            |fl| {
                let want: std::collections::BTreeSet<String> =
                    fl.running().map(|i| fl.machine_id(i)).collect();
                fl.running()
                    .all(|i| fl.listed_machines(i).as_ref() == Some(&want))
                    .then_some(())
            },
        );
    }

    /// Boots machine `i` again (after a kill) and makes sure its fleetd runs with the lab's settings.
    pub fn boot(&self, i: usize) {
        self.lab.boot(i).expect("boot");
        self.provision(i);
    }

    /// Adds a machine running fleetd with the lab's settings; returns its index.
    pub fn add_machine(&self) -> usize {
        let i = self.lab.add_machine().expect("add a machine");
        self.provision(i);
        i
    }

    /// Mints a certificate for machine `id` signed by the lab's CA (if it has none yet) into
    /// [`LAB_TLS_DIR`]: `<id>.pem`, `<id>.key`. Returns true if it minted one.
    pub fn mint(&self, id: &str) -> bool {
        let etc = self.certs.path().join("etc");
        if etc.join(format!("{id}.pem")).exists() {
            return false;
        }
        let ca = self.certs.path().join("ca");
        host_fleetctl(
            &self.bin,
            &[
                "gen-certs",
                "--dir",
                etc.to_str().unwrap(),
                "--ca-dir",
                ca.to_str().unwrap(),
                "--machine-id",
                id,
            ],
        );
        true
    }

    /// Mints a certificate for machine `id` signed by the lab's *foreign* CA into
    /// `LAB_TLS_DIR/foreign/` (`<id>.pem`, `<id>.key`, next to that CA's `ca.pem`).
    pub fn mint_foreign(&self, id: &str) {
        let dir = self.certs.path().join("etc").join("foreign");
        let ca = self.certs.path().join("foreign-ca");
        host_fleetctl(
            &self.bin,
            &[
                "gen-certs",
                "--dir",
                dir.to_str().unwrap(),
                "--ca-dir",
                ca.to_str().unwrap(),
                "--machine-id",
                id,
            ],
        );
    }

    /// Makes sure machine `i` runs fleet.service with this lab's settings and its own certificate:
    /// mints the certificate for its machine ID if missing, installs the unit and the environment
    /// lines if a boot left them out, and (re)starts fleetd then.
    pub fn provision(&self, i: usize) {
        let root = self.lab.machine_root(i).expect("machine root");
        let env_path = root.join(fleet_lab::ENV_FILE.trim_start_matches('/'));
        let env_now = std::fs::read_to_string(&env_path).unwrap_or_default();
        let unit_path = root.join("etc/systemd/system/fleet.service");
        let mut changed = self.mint(&self.machine_id(i));
        if !env_now.contains("FLEET_GOSSIP_CA_FILE=") {
            let mut text = env_now;
            for (k, v) in &self.env {
                text.push_str(&format!("{k}={v}\n"));
            }
            std::fs::write(&env_path, text).expect("write the machine's env file");
            changed = true;
        }
        let unit = tls_unit();
        if std::fs::read_to_string(&unit_path).ok().as_deref() != Some(unit.as_str()) {
            std::fs::write(&unit_path, unit).expect("install fleet.service");
            changed = true;
        }
        if changed {
            self.lab
                .sh_ok(i, &["systemctl", "daemon-reload"])
                .expect("daemon-reload");
            let _ = self
                .lab
                .sh(i, &["systemctl", "reset-failed", "fleet.service"]);
            // Not waiting for fleetd to be ready: machines are provisioned one after the other.
            self.lab
                .sh_ok(i, &["systemctl", "restart", "--no-block", "fleet.service"])
                .expect("start fleet.service");
        }
    }
}

impl FleetLab {
    /// Indices of the machines whose systemd runs (not killed).
    pub fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (1..=self.lab.machines()).filter(|i| self.lab.machine_pid(*i).is_ok())
    }

    /// Full machine IDs machine `i` lists (`fleetctl list-machines --full`); `None` when fleetctl
    /// fails there (fleetd down, or the machine is not running).
    pub fn listed_machines(&self, i: usize) -> Option<std::collections::BTreeSet<String>> {
        let mut cmd = vec!["/opt/fleet/bin/fleetctl"];
        cmd.extend_from_slice(&["list-machines", "--no-legend", "--full", "--fields=machine"]);
        let out = self.lab.sh(i, &cmd).ok()?;
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect()
        })
    }
}

impl FleetLab {
    /// Boots machine `i` again after `lab.kill(i)` and makes sure fleetd starts there with the lab's
    /// settings. (`Lab::boot` rewrites /etc/fleettest.env without the test's `FLEET_*` lines, see
    /// [`FleetLab::restore_fleet_setup`].)
    pub fn boot_fleet(&self, i: usize) {
        self.lab.boot(i).expect("boot");
        self.restore_fleet_setup(i);
    }

    /// Adds a machine running fleetd with the lab's settings; returns its index.
    pub fn add_fleet_machine(&self) -> usize {
        let i = self.lab.add_machine().expect("add machine");
        self.restore_fleet_setup(i);
        i
    }

    /// `Lab::boot` and `Lab::add_machine` run the lab script without the `up`-time environment, so a
    /// (re)booted machine gets /etc/fleettest.env without the test's `FLEET_*` lines (fleetd then
    /// refuses to start: no gossip TLS) and a new machine gets no fleet.service at all. Puts both back
    /// from the lab's state dir and (re)starts fleetd; does nothing when both are already there.
    pub fn restore_fleet_setup(&self, i: usize) {
        let root = self.lab.machine_root(i).expect("machine root");
        let state = self.lab.state_dir().join("lab");
        let extra = std::fs::read_to_string(state.join("extra.env")).unwrap_or_default();
        let env_path = root.join(fleet_lab::ENV_FILE.trim_start_matches('/'));
        let env = std::fs::read_to_string(&env_path).expect("machine env file");
        let mut changed = false;
        if !env.contains(&extra) {
            std::fs::write(&env_path, format!("{env}{extra}")).expect("write env file");
            changed = true;
        }
        let unit = root.join("etc/systemd/system/fleet.service");
        if !unit.exists() {
            std::fs::write(&unit, FLEET_UNIT).expect("write fleet.service");
            changed = true;
        }
        if changed {
            for cmd in [
                &["systemctl", "daemon-reload"][..],
                &["systemctl", "reset-failed", "fleet.service"],
                // Not `restart`: fleetd may already run with the restored settings (Restart=always).
                &["systemctl", "start", "fleet.service"],
            ] {
                let _ = self.lab.sh(i, cmd);
            }
        }
        self.wait_for_etcd(
            &format!("fleetd on m{i} answers"),
            Duration::from_secs(20),
            |fl| {
                fl.fleetctl(i, &["list-machines"])
                    .status
                    .success()
                    .then_some(())
            },
        );
    }

    /// The last `lines` lines of fleetd's journal in every running machine, each under a header.
    pub fn journals(&self, lines: usize) -> String {
        (1..=self.lab.machines())
            .filter(|i| self.lab.machine_pid(*i).is_ok())
            .map(|i| {
                format!(
                    "--- m{i} ({}) ---\n{}",
                    self.machine_id(i),
                    self.journal(i, lines)
                )
            })
            .collect()
    }
}
