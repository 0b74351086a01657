//! `fleetctl ssh` and `--tunnel`, both through the system's OpenSSH client (`ssh`): fleetctl builds its
//! command line from the global SSH flags and never speaks SSH itself.
//!
//! - `ssh` runs `ssh [options] -p PORT -l USER IP [-- COMMAND...]` and exits with its status.
//! - `--tunnel HOST[:PORT]` runs `ssh -N -L LOCAL.sock:REMOTE HOST` in the background, where REMOTE
//!   is `--endpoint` as seen from HOST (the unix socket path, or `host:port`), and fleetctl talks HTTP
//!   to LOCAL.sock (a private directory, removed with the tunnel). With `ssh`, the session jumps
//!   through HOST (`ProxyCommand=ssh ... -W %h:%p HOST`).
//!
//! The flags map to OpenSSH options: `--ssh-username` → `-l`, `--ssh-timeout` → `ConnectTimeout`,
//! `--known-hosts-file` → `UserKnownHostsFile` (its directory is created), and
//! `--strict-host-key-checking` → `StrictHostKeyChecking=ask` (unknown hosts are asked about, changed
//! keys refused, as fleet did) or, when false, `no` with no known-hosts file at all.

use std::io::Read as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};

use super::args::GlobalFlags;
use super::client::Endpoint;

/// The OpenSSH client fleetctl runs.
pub const SSH_PROGRAM: &str = "ssh";

/// Default SSH port (of the machines with `ssh`, of the tunnel host without `:PORT`).
pub const DEFAULT_PORT: u16 = 22;

/// The SSH settings shared by `ssh` and `--tunnel`.
#[derive(Debug, Clone, PartialEq)]
pub struct SshOptions {
    /// `--ssh-username`.
    pub user: String,
    /// `--ssh-timeout`, whole seconds (at least 1).
    pub connect_timeout: u64,
    /// `--strict-host-key-checking`.
    pub strict: bool,
    /// `--known-hosts-file`, `~` expanded.
    pub known_hosts: PathBuf,
    /// `--tunnel`: the host (and port) to jump through.
    pub tunnel: Option<(String, u16)>,
}

/// `~` or `~/...` with `$HOME`.
pub fn expand_home(path: &str) -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    match (path, home) {
        ("~", Some(h)) => h,
        (p, Some(h)) if p.starts_with("~/") => h.join(&p[2..]),
        (p, _) => PathBuf::from(p),
    }
}

/// Splits `HOST[:PORT]` (`[v6]:PORT` for IPv6); the port defaults to `default`.
pub fn split_host_port(s: &str, default: u16) -> Result<(String, u16)> {
    let bad = |why: &str| worded_err!("Error: invalid SSH host {s:?}: {why}");
    if s.is_empty() {
        return Err(bad("empty"));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| bad("no closing ]"))?;
        match after {
            "" => (h, None),
            p => (
                h,
                Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
            ),
        }
    } else if s.matches(':').count() == 1 {
        let (h, p) = s.split_once(':').expect("one colon");
        (h, Some(p))
    } else {
        (s, None)
    };
    if host.is_empty() || host.starts_with('-') {
        return Err(bad("no host"));
    }
    let port = match port {
        None => default,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
    };
    Ok((host.to_string(), port))
}

/// Quotes a word for `sh` (ProxyCommand runs through the user's shell).
fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl SshOptions {
    /// The settings the global flags give.
    pub fn from_flags(g: &GlobalFlags) -> Result<SshOptions> {
        let tunnel = g
            .tunnel
            .as_deref()
            .map(|t| split_host_port(t, DEFAULT_PORT))
            .transpose()
            .context("--tunnel")?;
        Ok(SshOptions {
            user: g.ssh_username.clone(),
            connect_timeout: (g.ssh_timeout.ceil() as u64).max(1),
            strict: g.strict_host_key_checking,
            known_hosts: expand_home(&g.known_hosts_file),
            tunnel,
        })
    }

    /// `-o` options every connection gets (host keys, timeout).
    pub fn options(&self) -> Vec<String> {
        let mut o = vec![
            "-o".to_string(),
            format!("ConnectTimeout={}", self.connect_timeout),
        ];
        if self.strict {
            o.extend([
                "-o".into(),
                "StrictHostKeyChecking=ask".into(),
                "-o".into(),
                format!("UserKnownHostsFile={}", self.known_hosts.display()),
            ]);
        } else {
            o.extend([
                "-o".into(),
                "StrictHostKeyChecking=no".into(),
                "-o".into(),
                "UserKnownHostsFile=/dev/null".into(),
                "-o".into(),
                "LogLevel=ERROR".into(),
            ]);
        }
        o
    }

    /// Arguments to reach a host's `port` as the user: options, the jump through the tunnel (when
    /// `jump`), `-p`, `-l`.
    fn connection(&self, port: u16, jump: bool) -> Vec<String> {
        let mut a = self.options();
        if let Some((thost, tport)) = self.tunnel.as_ref().filter(|_| jump) {
            let mut jump = vec![SSH_PROGRAM.to_string()];
            jump.extend(self.options());
            jump.extend([
                "-p".into(),
                tport.to_string(),
                "-l".into(),
                self.user.clone(),
                "-W".into(),
                "%h:%p".into(),
                thost.clone(),
            ]);
            let cmd = jump
                .iter()
                .map(|w| if w == "%h:%p" { w.clone() } else { sh_quote(w) })
                .collect::<Vec<_>>()
                .join(" ");
            a.extend(["-o".into(), format!("ProxyCommand={cmd}")]);
        }
        a.extend([
            "-p".into(),
            port.to_string(),
            "-l".into(),
            self.user.clone(),
        ]);
        a
    }

    /// The `ssh` arguments (without the program) of a session on `host:port` running `command` (a
    /// login shell when empty).
    pub fn session_args(
        &self,
        host: &str,
        port: u16,
        forward_agent: bool,
        command: &[String],
    ) -> Vec<String> {
        let mut a = self.connection(port, true);
        if forward_agent {
            a.push("-A".into());
        }
        a.push(host.to_string());
        if !command.is_empty() {
            a.push("--".into());
            a.extend(command.iter().cloned());
        }
        a
    }

    /// Creates the known-hosts file's directory (mode 0700) when host keys are checked: ssh adds the
    /// keys it was told to trust there.
    pub fn prepare(&self) -> Result<()> {
        if !self.strict {
            return Ok(());
        }
        if let Some(dir) = self
            .known_hosts
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| {
                    worded!("Error creating {} for --known-hosts-file", dir.display())
                })?;
        }
        Ok(())
    }
}

/// Runs an interactive `ssh` session (or a command) on `host` and returns its exit status (128 +
/// the signal when ssh was killed by one). fleetctl outlives Ctrl-C meanwhile (the terminal sends
/// it to ssh too, which decides), so that it can report ssh's status and close a `--tunnel`.
pub async fn run_session(
    opts: &SshOptions,
    host: &str,
    port: u16,
    forward_agent: bool,
    command: &[String],
) -> Result<i32> {
    use std::os::unix::process::ExitStatusExt as _;
    use tokio::signal::unix::{signal, SignalKind};
    opts.prepare()?;
    let args = opts.session_args(host, port, forward_agent, command);
    let mut interrupts =
        signal(SignalKind::interrupt()).context(worded!("Error installing the SIGINT handler"))?;
    let mut child = tokio::process::Command::new(SSH_PROGRAM)
        .args(&args)
        .spawn()
        .with_context(|| worded!("Error running {SSH_PROGRAM} (is OpenSSH's client installed?)"))?;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.with_context(|| worded!("Error waiting for {SSH_PROGRAM}"))?;
                return Ok(status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(127)));
            }
            _ = interrupts.recv() => {}
        }
    }
}

/// Where the tunnel leads on the remote side: `--endpoint` as seen from the tunnel host (a unix
/// socket path, or `host:port` of an http endpoint; https cannot be tunnelled this way).
pub fn remote_of(endpoint: &str) -> Result<String> {
    let first = endpoint.split(',').next().unwrap_or("").trim();
    if first.starts_with("https://") {
        fail!("Error: --tunnel works with unix:// and http:// endpoints, not {first}");
    }
    match Endpoint::parse(first) {
        Ok(Endpoint::Unix(path)) => Ok(path.display().to_string()),
        Ok(Endpoint::Http { authority, .. }) => Ok(authority),
        #[allow(unreachable_patterns)]
        Ok(_) => fail!("Error: --tunnel cannot reach the endpoint {first}"),
        Err(e) => Err(worded_err!("Error: {e}")),
    }
}

/// An `ssh -N -L` forwarding a local unix socket to fleetd's API through the tunnel host. Dropping it
/// ends ssh and removes the socket's directory.
pub struct Tunnel {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Tunnel {
    /// Starts ssh and waits (at most the connect timeout plus 5 s) until the local socket exists.
    pub fn open(opts: &SshOptions, remote: &str) -> Result<Tunnel> {
        let Some((host, port)) = opts.tunnel.clone() else {
            bail!("no --tunnel host");
        };
        opts.prepare()?;
        let dir = private_dir()?;
        let socket = dir.join("fleet.sock");
        let log = dir.join("ssh.log");
        let err =
            std::fs::File::create(&log).context(worded!("Error creating the tunnel's log"))?;
        let mut args = opts.connection(port, false);
        args.extend([
            "-N".into(),
            "-o".into(),
            "ExitOnForwardFailure=yes".into(),
            "-o".into(),
            "StreamLocalBindUnlink=yes".into(),
            "-o".into(),
            "ServerAliveInterval=10".into(),
            "-L".into(),
            format!("{}:{remote}", socket.display()),
            host.clone(),
        ]);
        let child = Command::new(SSH_PROGRAM)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(worded_err!(
                    "Error running {SSH_PROGRAM} for --tunnel {host}: {e} (is OpenSSH's client installed?)"
                ));
            }
        };
        let mut t = Tunnel { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(opts.connect_timeout + 5);
        loop {
            if t.socket.exists() {
                return Ok(t);
            }
            if let Some(status) = t
                .child
                .try_wait()
                .context(worded!("Error waiting for ssh"))?
            {
                let mut msg = String::new();
                let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut msg));
                fail!(
                    "Error: --tunnel {host}:{port}: ssh exited with {status}: {}",
                    msg.trim()
                );
            }
            if Instant::now() > deadline {
                fail!(
                    "Error: --tunnel {host}:{port}: no forwarded socket after {}s",
                    opts.connect_timeout + 5
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The local socket (use as `unix://` endpoint).
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new directory only this user can enter, under `$TMPDIR`.
fn private_dir() -> Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let base = std::env::temp_dir();
    for k in 0..100u32 {
        let dir = base.join(format!("fleetctl-{}-{nanos:x}-{k}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(worded_err!(
                    "Error creating a directory for the tunnel's socket in {}: {e}",
                    base.display()
                ))
            }
        }
    }
    fail!(
        "Error: could not create a private directory in {}",
        base.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(strict: bool, tunnel: Option<(&str, u16)>) -> SshOptions {
        SshOptions {
            user: "core".into(),
            connect_timeout: 10,
            strict,
            known_hosts: PathBuf::from("/home/u/.fleetctl/known_hosts"),
            tunnel: tunnel.map(|(h, p)| (h.to_string(), p)),
        }
    }

    #[test]
    fn host_and_port_are_split_with_a_default_port() {
        assert_eq!(
            split_host_port("10.0.0.1", 22).unwrap(),
            ("10.0.0.1".into(), 22)
        );
        assert_eq!(
            split_host_port("bastion:2222", 22).unwrap(),
            ("bastion".into(), 2222)
        );
        assert_eq!(
            split_host_port("[fd00::1]:23", 22).unwrap(),
            ("fd00::1".into(), 23)
        );
        assert_eq!(
            split_host_port("fd00::1", 22).unwrap(),
            ("fd00::1".into(), 22)
        );
        for bad in [
            "",
            ":22",
            "h:0",
            "h:x",
            "h:70000",
            "[fd00::1",
            "[::1]x",
            "-oProxyCommand=x",
        ] {
            assert!(split_host_port(bad, 22).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn home_is_expanded_only_at_the_start() {
        let home = std::env::var("HOME").unwrap_or_default();
        if home.is_empty() {
            return;
        }
        assert_eq!(
            expand_home("~/.fleetctl/kh"),
            Path::new(&home).join(".fleetctl/kh")
        );
        assert_eq!(expand_home("/etc/kh"), PathBuf::from("/etc/kh"));
        assert_eq!(expand_home("a/~/b"), PathBuf::from("a/~/b"));
    }

    #[test]
    fn a_session_checks_host_keys_against_the_known_hosts_file() {
        let a = opts(true, None).session_args("10.0.0.2", 2222, true, &["hostname".into()]);
        assert_eq!(
            a,
            [
                "-o",
                "ConnectTimeout=10",
                "-o",
                "StrictHostKeyChecking=ask",
                "-o",
                "UserKnownHostsFile=/home/u/.fleetctl/known_hosts",
                "-p",
                "2222",
                "-l",
                "core",
                "-A",
                "10.0.0.2",
                "--",
                "hostname"
            ]
        );
    }

    #[test]
    fn without_strict_checking_no_known_hosts_file_is_used_and_no_command_means_a_shell() {
        let a = opts(false, None).session_args("h", 22, false, &[]);
        assert!(a.contains(&"StrictHostKeyChecking=no".to_string()), "{a:?}");
        assert!(
            a.contains(&"UserKnownHostsFile=/dev/null".to_string()),
            "{a:?}"
        );
        assert_eq!(a.last().map(String::as_str), Some("h"));
        assert!(!a.contains(&"--".to_string()) && !a.contains(&"-A".to_string()));
    }

    #[test]
    fn through_a_tunnel_the_session_jumps_via_the_tunnel_host() {
        let mut o = opts(true, Some(("bastion", 2200)));
        o.known_hosts = PathBuf::from("/tmp/my hosts");
        let a = o.session_args("10.0.0.2", 22, false, &[]);
        let proxy = a
            .iter()
            .find_map(|w| w.strip_prefix("ProxyCommand="))
            .expect("a ProxyCommand");
        assert_eq!(
            proxy,
            "ssh -o ConnectTimeout=10 -o StrictHostKeyChecking=ask -o 'UserKnownHostsFile=/tmp/my hosts' \
             -p 2200 -l core -W %h:%p bastion"
        );
    }

    #[test]
    fn the_tunnel_itself_connects_directly() {
        let o = opts(false, Some(("bastion", 2200)));
        let a = o.connection(2200, false);
        assert!(!a.iter().any(|w| w.starts_with("ProxyCommand")), "{a:?}");
        assert!(a.ends_with(&["-p".into(), "2200".into(), "-l".into(), "core".into()]));
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(sh_quote("plain/path"), "plain/path");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn the_tunnel_leads_to_the_endpoint_as_the_remote_host_sees_it() {
        assert_eq!(
            remote_of("unix:///var/run/fleet.sock").unwrap(),
            "/var/run/fleet.sock"
        );
        assert_eq!(
            remote_of("http://127.0.0.1:49153/base").unwrap(),
            "127.0.0.1:49153"
        );
        assert!(remote_of("https://10.0.0.1:443").is_err());
    }

    #[test]
    fn a_tunnel_whose_ssh_fails_reports_sshs_words() {
        // No ssh server listens on port 1 of localhost: ssh exits at once with its reason.
        if Command::new(SSH_PROGRAM).arg("-V").output().is_err() {
            eprintln!("skipped: no ssh client");
            return;
        }
        let mut o = opts(false, Some(("127.0.0.1", 1)));
        o.connect_timeout = 2;
        let e = Tunnel::open(&o, "/var/run/fleet.sock")
            .err()
            .expect("an error");
        let msg = format!("{e:#}");
        assert!(msg.contains("ssh exited with"), "{msg}");
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
    }
}
