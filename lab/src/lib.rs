//! The cluster lab as a Rust guard for tests: N emulated machines, each booting a real systemd as
//! PID 1 of its own namespaces (with a D-Bus system bus inside), plus a real etcd in a hub network
//! namespace. It drives `cluster-lab.sh` (next to this crate's `Cargo.toml`); see `lab/README.md`.
//!
//! ```no_run
//! use fleet_lab::{Lab, LabOptions};
//! if !fleet_lab::require_root() {
//!     return; // prints why
//! }
//! let lab = Lab::up(2, LabOptions::new()).unwrap();
//! let out = lab.sh_ok(1, &["systemctl", "is-system-running"]).unwrap();
//! assert_eq!(out.trim(), "running");
//! let bus = lab.bus_address(1).unwrap(); // unix:path=/proc/<pid>/root/run/dbus/system_bus_socket
//! let etcd = lab.etcd_endpoint().unwrap(); // http://127.0.0.1:<port>, forwarded into the hub
//! lab.kill(2).unwrap();
//! lab.boot(2).unwrap();
//! # let _ = (bus, etcd);
//! // dropping `lab` tears everything down
//! ```
//!
//! Network facts: machine `i` (1-based) is `10.77.0.(10+i)`, the hub etcd is `http://10.77.0.1:2379`
//! *inside* the lab. The host has no route into the lab (nothing is added to the host netns, and
//! clusters with different prefixes reuse the same addresses); [`Lab::etcd_endpoint`] and
//! [`Lab::forward_tcp`] give the test process a `127.0.0.1` port forwarded into a lab netns.
//!
//! Running `fleetd` in the machines: bind the cargo profile dir ([`cargo_profile_dir`]) to
//! [`FLEET_BIN_DIR`] and install a unit started at boot that reads [`ENV_FILE`]:
//!
//! ```no_run
//! # use fleet_lab::{Lab, LabOptions};
//! let opts = LabOptions::new()
//!     .bind(fleet_lab::cargo_profile_dir().unwrap(), fleet_lab::FLEET_BIN_DIR, true)
//!     .unit(
//!         "fleet.service",
//!         "[Service]\nEnvironmentFile=/etc/fleettest.env\n\
//!          ExecStart=/opt/fleet/bin/fleetd --etcd-servers=${FT_ETCD}\n",
//!     )
//!     .env("FLEET_METADATA", "lab=yes");
//! let lab = Lab::up(3, opts).unwrap();
//! # drop(lab);
//! ```

mod diag;
mod etcd;
mod forward;
mod options;

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use forward::Forward;
pub use options::{Bind, LabOptions};

/// The lab script shipped with this crate.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/cluster-lab.sh");
/// Where every cluster keeps its state (overlay upper dirs, etcd data): RAM, never the host rootfs.
pub const STATE_ROOT: &str = "/dev/shm/fleettest";
/// Address of the hub (bridge + etcd) inside every cluster.
pub const HUB_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The hub etcd's client URL as seen from inside the lab machines.
pub const ETCD_IN_LAB: &str = "http://10.77.0.1:2379";
/// Suggested mount point for the cargo binaries inside the machines (see [`LabOptions::bind`]).
pub const FLEET_BIN_DIR: &str = "/opt/fleet/bin";
/// Per-machine facts for units under test: `FT_MACHINE`, `FT_IP`, `FT_ETCD` + [`LabOptions::env`].
pub const ENV_FILE: &str = "/etc/fleettest.env";

/// IP address of machine `i` (1-based) inside its cluster.
pub fn machine_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, (10 + i) as u8)
}

/// IP address of etcd member `k` (1-based) of a member cluster ([`LabOptions::etcd_cluster`]).
pub fn etcd_member_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, (1 + k) as u8)
}

/// Most members a lab etcd cluster may have (their addresses sit below the machines').
pub const MAX_ETCD_MEMBERS: usize = 8;

/// What went wrong while driving the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab script, or a command run inside the lab, exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error (the script logs there).
        stderr: String,
    },
    /// Spawning a command or touching a lab file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The machine index is outside `1..=machines`.
    #[error("no machine {index} in this lab (machines are 1..={machines})")]
    NoSuchMachine {
        /// The index asked for.
        index: usize,
        /// How many machines the lab has.
        machines: usize,
    },
    /// The machine is not running (killed or powered off and not booted again).
    #[error("machine {0} is not running")]
    NotRunning(usize),
    /// The machine is running, so it cannot be booted.
    #[error("machine {0} is already running; kill or power it off first")]
    AlreadyRunning(usize),
    /// An option the lab script cannot express (e.g. a path containing a space or a colon).
    #[error("invalid lab option: {0}")]
    InvalidOption(String),
    /// Another cluster with this prefix exists (left by `cluster-lab.sh up`, or owned by a live process).
    #[error("a cluster with prefix {prefix:?} already exists ({why}); `FT_PREFIX={prefix} {SCRIPT} down` removes it")]
    PrefixInUse {
        /// The prefix.
        prefix: String,
        /// Who holds it.
        why: String,
    },
}

/// Result of lab operations.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// The cargo profile directory holding the binaries of the current build (`target/debug` when run
/// from a test, example or bench binary, which live in `target/debug/{deps,examples}`).
/// `CARGO_TARGET_DIR`-independent: derived from the running executable.
pub fn cargo_profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(io_err("locating the current executable"))?;
    let mut dir = exe
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| LabError::InvalidOption(format!("{} has no parent", exe.display())))?;
    if matches!(
        dir.file_name().and_then(|n| n.to_str()),
        Some("deps" | "examples")
    ) {
        dir.pop();
    }
    Ok(dir)
}

/// True when lab tests can run here: root, and systemd, dbus, util-linux, iproute2, etcd and curl
/// installed. Otherwise prints why the calling test is skipped (to the real stderr, so it is seen
/// even when the test harness captures output) and returns false.
pub fn require_root() -> bool {
    match missing_prerequisite() {
        None => true,
        Some(why) => {
            let _ = writeln!(io::stderr(), "skipping lab test: {why}");
            false
        }
    }
}

fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (the lab needs namespaces, mounts and cgroups)".into());
    }
    for file in ["/usr/lib/systemd/systemd", SCRIPT] {
        if !Path::new(file).exists() {
            return Some(format!("{file} is missing"));
        }
    }
    let tools = [
        "bash",
        "nsenter",
        "unshare",
        "setpriv",
        "flock",
        "ip",
        "dbus-daemon",
        "etcd",
        "curl",
    ];
    for tool in tools {
        if which(tool).is_none() {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    if !Path::new("/dev/shm").is_dir() {
        return Some("/dev/shm is missing".into());
    }
    None
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A network namespace of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Netns {
    /// The hub: bridge `10.77.0.1` and etcd.
    Hub,
    /// Machine `i` (1-based).
    Machine(usize),
}

/// A running cluster. Dropping it tears the cluster down (machines, etcd, netns, cgroups, state).
pub struct Lab {
    prefix: String,
    /// Members of the etcd cluster (0: the hub etcd).
    etcd_members: usize,
    /// etcd serves clients over TLS.
    etcd_tls: bool,
    machines: AtomicUsize,
    state: PathBuf,
    env: Vec<(String, String)>,
    forwards: Mutex<Vec<Forward>>,
    etcd_endpoint: OnceLock<String>,
    down: AtomicBool,
    /// `FT_UNITS`/`FT_ENV_FILE` of [`Lab::up`], for every later boot.
    boot_env: OnceLock<Vec<(String, String)>>,
}

static NEXT_LAB: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    /// Boots a hub (+ etcd unless [`LabOptions::no_etcd`]) and `n` machines; returns once every
    /// machine's systemd reports `running` or `degraded` (~0.3 s per machine). On failure whatever
    /// was started is torn down again. First reaps clusters left by crashed test processes.
    // long: the boot in cluster-lab.sh's order (options, prefix, files, script), undone on failure
    pub fn up(n: usize, opts: LabOptions) -> Result<Lab> {
        let prefix = match &opts.prefix {
            Some(p) => p.clone(),
            None => format!(
                "ft{}x{}",
                std::process::id(),
                NEXT_LAB.fetch_add(1, Ordering::Relaxed)
            ),
        };
        if prefix.is_empty()
            || prefix.len() > 20
            || !prefix.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(LabError::InvalidOption(format!(
                "prefix {prefix:?}: use 1 to 20 ASCII letters and digits"
            )));
        }
        let state = Path::new(STATE_ROOT).join(&prefix);
        let mut env = vec![("FT_PREFIX".to_string(), prefix.clone())];
        let mut binds = String::new();
        for b in &opts.binds {
            let (src, dst) = (path_str(&b.src)?, path_str(&b.dst)?);
            write!(
                binds,
                "{src}:{dst}{} ",
                if b.read_only { ":ro" } else { "" }
            )
            .unwrap();
        }
        env.push(("FT_BINDS".into(), binds));
        if opts.no_etcd {
            env.push(("FT_NO_ETCD".into(), "1".into()));
        }
        let members = opts.etcd_members.unwrap_or(0);
        if members > MAX_ETCD_MEMBERS || (opts.etcd_members.is_some() && members == 0) {
            return Err(LabError::InvalidOption(format!(
                "{members} etcd members: use 1 to {MAX_ETCD_MEMBERS}"
            )));
        }
        if members == 0 && (opts.etcd_tls.is_some() || !opts.etcd_args.is_empty()) {
            return Err(LabError::InvalidOption(
                "etcd TLS and etcd flags need an etcd member cluster (LabOptions::etcd_cluster)"
                    .into(),
            ));
        }
        if members > 0 {
            env.push(("FT_ETCD_MEMBERS".into(), members.to_string()));
        }
        if let Some(dir) = &opts.etcd_tls {
            env.push(("FT_ETCD_TLS".into(), path_str(dir)?.to_string()));
        }
        if !opts.etcd_args.is_empty() {
            for a in &opts.etcd_args {
                if a.contains(char::is_whitespace) || a.is_empty() {
                    return Err(LabError::InvalidOption(format!("etcd flag {a:?}")));
                }
            }
            env.push(("FT_ETCD_ARGS".into(), opts.etcd_args.join(" ")));
        }
        let lab = Lab {
            prefix,
            etcd_members: members,
            etcd_tls: opts.etcd_tls.is_some(),
            machines: AtomicUsize::new(n),
            state,
            env,
            forwards: Mutex::new(Vec::new()),
            etcd_endpoint: OnceLock::new(),
            down: AtomicBool::new(true), // nothing to tear down yet
            boot_env: OnceLock::new(),
        };
        if let Err(e) = lab.script(&["reap"]) {
            let _ = writeln!(
                io::stderr(),
                "fleet-lab: reaping stale clusters failed: {e}"
            );
        }
        lab.claim_prefix()?;
        lab.down.store(false, Ordering::SeqCst);
        let n = n.to_string();
        let files = lab.files_env(&opts)?;
        let _ = lab.boot_env.set(files.clone());
        let mut env = vec![("FT_OWNER".to_string(), std::process::id().to_string())];
        env.extend(files);
        lab.script_env(&["up", &n], &env)?; // on error, Drop tears down the partial cluster
        Ok(lab)
    }

    /// Checks that no other cluster uses the prefix, then creates its state dir (under the
    /// host-wide lock the script also takes, so a concurrent `down` cannot remove the parent).
    fn claim_prefix(&self) -> Result<()> {
        let _lock = GlobalLock::take()?;
        if self.state.exists() {
            let why = match fs::read_to_string(self.state.join("owner")) {
                Ok(pid) => format!("owned by process {}", pid.trim()),
                Err(_) => "started by hand".into(),
            };
            return Err(LabError::PrefixInUse {
                prefix: self.prefix.clone(),
                why,
            });
        }
        let dir = self.state.join("lab");
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))
    }

    /// Writes the unit texts and the extra environment into the state dir; returns the script env.
    fn files_env(&self, opts: &LabOptions) -> Result<Vec<(String, String)>> {
        let dir = self.state.join("lab");
        let mut units = String::new();
        for u in &opts.units {
            write!(units, "{} ", path_str(u)?).unwrap();
        }
        for (name, text) in &opts.unit_texts {
            if name.contains('/') || name.contains(char::is_whitespace) || name.is_empty() {
                return Err(LabError::InvalidOption(format!("unit name {name:?}")));
            }
            let path = dir.join(name);
            fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
            write!(units, "{} ", path.display()).unwrap();
        }
        let mut env = vec![("FT_UNITS".to_string(), units)];
        if !opts.env.is_empty() {
            let mut text = String::new();
            for (k, v) in &opts.env {
                if k.is_empty() || k.contains(['=', '\n']) || v.contains('\n') {
                    return Err(LabError::InvalidOption(format!("environment {k:?}={v:?}")));
                }
                writeln!(text, "{k}={v}").unwrap();
            }
            let path = dir.join("extra.env");
            fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
            env.push(("FT_ENV_FILE".into(), path.display().to_string()));
        }
        Ok(env)
    }

    /// The cluster prefix (`FT_PREFIX`): `FT_PREFIX=<prefix> cluster-lab.sh ...` drives it by hand.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Number of machines (1-based indices `1..=machines()`).
    pub fn machines(&self) -> usize {
        self.machines.load(Ordering::SeqCst)
    }

    /// The cluster's state directory (`/dev/shm/fleettest/<prefix>`): `m<i>/console.log`,
    /// `etcd/etcd.log`, overlay upper dirs.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    fn check(&self, i: usize) -> Result<()> {
        let machines = self.machines();
        if i == 0 || i > machines {
            return Err(LabError::NoSuchMachine { index: i, machines });
        }
        Ok(())
    }

    /// Host PID of machine `i`'s systemd (PID 1 inside the machine).
    pub fn machine_pid(&self, i: usize) -> Result<u32> {
        self.check(i)?;
        let file = self.state.join(format!("m{i}/pid"));
        match fs::read_to_string(&file) {
            Ok(s) => s.trim().parse().map_err(|_| LabError::NotRunning(i)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(LabError::NotRunning(i)),
            Err(e) => Err(io_err(format!("reading {}", file.display()))(e)),
        }
    }

    /// Machine `i`'s root filesystem as seen from the host (`/proc/<pid>/root`): write files into
    /// the machine through it.
    pub fn machine_root(&self, i: usize) -> Result<PathBuf> {
        Ok(PathBuf::from(format!(
            "/proc/{}/root",
            self.machine_pid(i)?
        )))
    }

    /// D-Bus address of machine `i`'s system bus, usable from the host:
    /// `unix:path=/proc/<pid>/root/run/dbus/system_bus_socket`. Changes when the machine reboots.
    pub fn bus_address(&self, i: usize) -> Result<String> {
        Ok(format!(
            "unix:path=/proc/{}/root/run/dbus/system_bus_socket",
            self.machine_pid(i)?
        ))
    }

    /// Runs `cmd` inside machine `i` (all its namespaces, via `nsenter`).
    pub fn sh(&self, i: usize, cmd: &[&str]) -> Result<Output> {
        let pid = self.machine_pid(i)?.to_string();
        let mut args = vec!["-t", &pid, "-a"];
        args.extend_from_slice(cmd);
        run(Command::new("nsenter").args(&args))
    }

    /// Like [`Lab::sh`], but fails unless the command succeeds; returns its stdout.
    pub fn sh_ok(&self, i: usize, cmd: &[&str]) -> Result<String> {
        let out = self.sh(i, cmd)?;
        ok_stdout(&format!("m{i}: {}", cmd.join(" ")), out)
    }

    /// Runs `cmd` in the hub netns (where etcd is `127.0.0.1:2379` and `10.77.0.1:2379`).
    pub fn hub(&self, cmd: &[&str]) -> Result<Output> {
        let ns = format!("{}-hub", self.prefix);
        let mut args = vec!["netns", "exec", &ns];
        args.extend_from_slice(cmd);
        run(Command::new("ip").args(&args))
    }

    /// Like [`Lab::hub`], but fails unless the command succeeds; returns its stdout.
    pub fn hub_ok(&self, cmd: &[&str]) -> Result<String> {
        let out = self.hub(cmd)?;
        ok_stdout(&format!("hub: {}", cmd.join(" ")), out)
    }

    /// Path of a lab netns (`/run/netns/<prefix>-hub` or `/run/netns/<prefix>-m<i>`).
    pub fn netns_path(&self, ns: Netns) -> Result<PathBuf> {
        let name = match ns {
            Netns::Hub => format!("{}-hub", self.prefix),
            Netns::Machine(i) => {
                self.check(i)?;
                format!("{}-m{i}", self.prefix)
            }
        };
        Ok(Path::new("/run/netns").join(name))
    }

    /// Forwards a fresh `127.0.0.1` port of the host to `target` as reached from inside `ns`
    /// (e.g. a machine's HTTP API at `10.77.0.11:8080`). Lives as long as the lab.
    pub fn forward_tcp(&self, ns: Netns, target: SocketAddr) -> Result<SocketAddr> {
        let netns = self.netns_path(ns)?;
        let fwd = Forward::start(netns, target)?;
        let addr = fwd.addr;
        self.forwards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(fwd);
        Ok(addr)
    }

    /// Hard crash: SIGKILL machine `i`'s PID 1 (the kernel kills everything in the machine).
    /// Its netns, IP and disk (overlay upper dir) stay; [`Lab::boot`] starts it again.
    pub fn kill(&self, i: usize) -> Result<()> {
        self.machine_script("kill", i)
    }
    /// Clean shutdown (SIGRTMIN+4 to systemd; units are stopped), then cleanup like [`Lab::kill`].
    pub fn poweroff(&self, i: usize) -> Result<()> {
        self.machine_pid(i)?;
        self.machine_script("poweroff", i)
    }
    /// Freezes machine `i` (cgroup freezer): processes hang, sockets stay open, the kernel still
    /// answers pings.
    pub fn freeze(&self, i: usize) -> Result<()> {
        self.machine_script("freeze", i)
    }
    /// Thaws a frozen machine.
    pub fn thaw(&self, i: usize) -> Result<()> {
        self.machine_script("thaw", i)
    }
    /// Takes machine `i`'s bridge port down (link loss; peers see NO-CARRIER).
    pub fn cut(&self, i: usize) -> Result<()> {
        self.machine_script("cut", i)
    }
    /// Undoes [`Lab::cut`].
    pub fn heal(&self, i: usize) -> Result<()> {
        self.machine_script("heal", i)
    }
    /// Silently drops all traffic in and out of machine `i`'s eth0 (nftables): a partition.
    pub fn drop(&self, i: usize) -> Result<()> {
        self.machine_script("drop", i)
    }
    /// Undoes [`Lab::drop`] and [`Lab::loss`].
    pub fn undrop(&self, i: usize) -> Result<()> {
        self.machine_script("undrop", i)
    }
    /// Drops `percent`% of packets each way on machine `i`'s eth0 (nftables; no netem here).
    pub fn loss(&self, i: usize, percent: u8) -> Result<()> {
        self.check(i)?;
        self.script(&["loss", &i.to_string(), &percent.min(100).to_string()])
    }
    /// Boots machine `i` again after [`Lab::kill`] or [`Lab::poweroff`] (same identity and disk).
    pub fn boot(&self, i: usize) -> Result<()> {
        match self.machine_pid(i) {
            Ok(pid) if Path::new(&format!("/proc/{pid}")).exists() => {
                return Err(LabError::AlreadyRunning(i))
            }
            Err(e @ LabError::NoSuchMachine { .. }) => return Err(e),
            _ => {}
        }
        self.check(i)?;
        self.script_env(&["boot", &i.to_string()], self.boot_env())
    }

    /// The units and extra environment given at [`Lab::up`]: every (re)boot installs them again.
    fn boot_env(&self) -> &[(String, String)] {
        self.boot_env.get().map(Vec::as_slice).unwrap_or(&[])
    }
    /// Adds a machine (netns + boot) and returns its index.
    pub fn add_machine(&self) -> Result<usize> {
        let i = self.machines() + 1;
        let s = i.to_string();
        self.script(&["net", &s])?;
        self.machines.store(i, Ordering::SeqCst);
        self.script_env(&["boot", &s], self.boot_env())?;
        Ok(i)
    }

    /// Tears the cluster down now (also done by `Drop`). Idempotent.
    pub fn down(&self) -> Result<()> {
        if self.down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        for fwd in self
            .forwards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            fwd.stop();
        }
        self.script(&["down"])
    }

    fn machine_script(&self, verb: &str, i: usize) -> Result<()> {
        self.check(i)?;
        self.script(&[verb, &i.to_string()])
    }

    fn script(&self, args: &[&str]) -> Result<()> {
        self.script_env(args, &[])
    }

    /// Runs the script and returns its stdout (fails unless it succeeds).
    fn script_stdout(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("bash");
        cmd.arg(SCRIPT).args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = run(&mut cmd)?;
        ok_stdout(
            &format!(
                "FT_PREFIX={} cluster-lab.sh {}",
                self.prefix,
                args.join(" ")
            ),
            out,
        )
    }

    fn script_env(&self, args: &[&str], extra: &[(String, String)]) -> Result<()> {
        let mut cmd = Command::new("bash");
        cmd.arg(SCRIPT).args(args);
        for (k, v) in self.env.iter().chain(extra) {
            cmd.env(k, v);
        }
        let out = run(&mut cmd)?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !log.is_empty() {
            // The script logs what it did (boot times); libtest shows it for failing tests.
            eprint!("{log}");
        }
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!(
                    "FT_PREFIX={} cluster-lab.sh {}",
                    self.prefix,
                    args.join(" ")
                ),
                status: out.status,
                stderr: log.into_owned(),
            });
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            let _ = writeln!(io::stderr(), "fleet-lab: tearing down {}: {e}", self.prefix);
        }
    }
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.prefix)
            .field("machines", &self.machines())
            .finish()
    }
}

fn path_str(p: &Path) -> Result<&str> {
    match p.to_str() {
        Some(s) if !s.is_empty() && !s.contains([' ', ':', '\t', '\n']) => Ok(s),
        _ => Err(LabError::InvalidOption(format!(
            "path {}: must be UTF-8 without spaces or colons",
            p.display()
        ))),
    }
}

fn run(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("running {cmd:?}")))
}

fn ok_stdout(what: &str, out: Output) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            cmd: what.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// The host-wide lock of `cluster-lab.sh` (flock on the `/dev/shm` directory).
struct GlobalLock {
    _file: fs::File,
}

impl GlobalLock {
    fn take() -> Result<GlobalLock> {
        let f = fs::File::open("/dev/shm").map_err(io_err("opening /dev/shm for flock"))?;
        // SAFETY: flock on a file descriptor we own; released when the file is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err("flock /dev/shm")(io::Error::last_os_error()));
        }
        Ok(GlobalLock { _file: f })
    }
}

/// One lab shared by the tests of a test binary that do not inject faults: the first test to ask
/// boots it, later ones reuse it while any holder is alive, and the last `Arc` dropped tears it
/// down (statics are never dropped, so a plain `static Lab` would leak the cluster).
///
/// ```no_run
/// static LAB: fleet_lab::SharedLab = fleet_lab::SharedLab::new(1, || fleet_lab::LabOptions::new().without_etcd());
/// let lab = LAB.get().unwrap();
/// # drop(lab);
/// ```
pub struct SharedLab {
    machines: usize,
    options: fn() -> LabOptions,
    slot: Mutex<Weak<Lab>>,
}

impl SharedLab {
    /// A shared lab of `machines` machines built with `options()`.
    pub const fn new(machines: usize, options: fn() -> LabOptions) -> Self {
        SharedLab {
            machines,
            options,
            slot: Mutex::new(Weak::new()),
        }
    }

    /// The running shared lab, booting it if no test holds it.
    pub fn get(&self) -> Result<Arc<Lab>> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lab) = slot.upgrade() {
            return Ok(lab);
        }
        let lab = Arc::new(Lab::up(self.machines, (self.options)())?);
        *slot = Arc::downgrade(&lab);
        Ok(lab)
    }
}
