//! fleetctl: the command-line client of fleetd's HTTP API v1.
//!
//! - [`args`]: the command line (clap), with `FLEETCTL_<FLAG>` environment fallbacks.
//! - [`client`]: the endpoint, the HTTP transport and the typed API calls (with paging).
//! - [`names`]: arguments to unit names (`hello` → `hello.service`, paths → base names).
//! - [`table`]: fleet's tab-aligned table output.
//! - [`commands`]: the verbs.
//! - [`ssh`]: `ssh` and `--tunnel` through the system's OpenSSH client.
//! - [`certs`]: `gen-certs`, which mints gossip's TLS files locally.
//!
//! fleetctl talks only to the API: it never reads etcd, and it knows nothing of gossip or systemd
//! (except `gen-certs`, which only writes local files with the gossip crate's minting functions).

/// A failure already worded for the user, as fleet's fleetctl worded it (`Error creating unit ...`,
/// `Error: unit ... does not exist`): `main` prints it as it is. Any other error that reaches `main`
/// (a [`client::ClientError`] without context, an I/O error) is printed after `Error: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worded(pub String);

impl std::fmt::Display for Worded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Worded {}

/// A [`Worded`] message (for `.context(..)` and `.with_context(|| ..)`), with `format!`'s arguments.
macro_rules! worded {
    ($($arg:tt)*) => { $crate::Worded(format!($($arg)*)) };
}

/// A [`Worded`] error, as an `anyhow::Error`.
macro_rules! worded_err {
    ($($arg:tt)*) => { anyhow::Error::new($crate::Worded(format!($($arg)*))) };
}

/// Returns a [`Worded`] error from the enclosing function.
macro_rules! fail {
    ($($arg:tt)*) => { return Err(worded_err!($($arg)*)) };
}

pub mod args;
pub mod certs;
pub mod client;
pub mod commands;
pub mod names;
pub mod render;
pub mod ssh;
pub mod table;

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{CommandFactory, Parser};
use hyper::Method;

use args::{Cli, Command};
use client::{Api, ClientError, Credentials, HttpTransport, RawResponse, Transport};
use commands::{CreateVerb, Ctx};

/// The version fleetctl reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A transport that prints every request and its outcome on stderr (`--debug`).
pub struct Logged<T> {
    inner: T,
    on: bool,
}

impl<T: Transport> Transport for Logged<T> {
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ClientError> {
        let started = Instant::now();
        let label = format!("{method} {path}");
        let res = self.inner.send(method, path, body).await;
        if self.on {
            let ms = started.elapsed().as_secs_f64() * 1e3;
            match &res {
                Ok(r) => eprintln!("DEBUG: {label} -> {} ({ms:.1} ms)", r.status),
                Err(e) => eprintln!("DEBUG: {label} -> {e} ({ms:.1} ms)"),
            }
        }
        res
    }

    async fn send_batch(
        &mut self,
        batch: Vec<client::BatchRequest>,
    ) -> Vec<Result<RawResponse, ClientError>> {
        let started = Instant::now();
        let labels: Vec<String> = batch.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
        let res = self.inner.send_batch(batch).await;
        if self.on {
            let ms = started.elapsed().as_secs_f64() * 1e3;
            for (label, r) in labels.iter().zip(&res) {
                match r {
                    Ok(r) => eprintln!(
                        "DEBUG: {label} -> {} (batch of {}, {ms:.1} ms)",
                        r.status,
                        res.len()
                    ),
                    Err(e) => {
                        eprintln!("DEBUG: {label} -> {e} (batch of {}, {ms:.1} ms)", res.len())
                    }
                }
            }
        }
        res
    }
}

/// Ends fleetctl with this exit status without printing anything more (`status` exits with
/// systemctl's code, as fleet did).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitWith(pub u8);

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitWith {}

/// What fleetctl prints for a failed command: a [`Worded`] failure (with its causes) as it is, any
/// other error after `Error: `.
pub fn report(e: &anyhow::Error) -> String {
    if e.downcast_ref::<Worded>().is_some() {
        format!("{e:#}")
    } else {
        format!("Error: {e:#}")
    }
}

/// Entry point of the `fleetctl` binary: parse the command line and the environment, run, exit.
pub fn main() -> ExitCode {
    run(Cli::parse())
}

/// Run a parsed command line; errors are printed on stderr and turn into exit status 1.
pub fn run(cli: Cli) -> ExitCode {
    match run_inner(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(ExitWith(code)) = e.downcast_ref::<ExitWith>() {
                return ExitCode::from(*code);
            }
            eprintln!("{}", report(&e));
            ExitCode::from(1)
        }
    }
}

fn run_inner(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    if g.version || matches!(cli.command, Some(Command::Version)) {
        println!("fleetctl version {VERSION}");
        return Ok(());
    }
    if let Some(Command::GenCerts(a)) = &cli.command {
        certs::gen_certs(a, &mut std::io::stdout())?;
        return Ok(());
    }
    if let Some(Command::Completion(a)) = &cli.command {
        let mut script = Vec::new();
        clap_complete::generate(a.shell, &mut Cli::command(), "fleetctl", &mut script);
        let mut out = std::io::stdout().lock();
        return out
            .write_all(&script)
            .and_then(|_| out.flush())
            .context(worded!("Error writing the completion script"));
    }
    let Some(command) = cli.command.clone() else {
        let mut help = Cli::command();
        help.print_help()?;
        return Ok(());
    };
    let ssh_opts = ssh::SshOptions::from_flags(g)?;
    // Lives until fleetctl ends: dropping it ends ssh.
    let tunnel = match &g.tunnel {
        Some(_) => Some(ssh::Tunnel::open(&ssh_opts, &ssh::remote_of(&g.endpoint)?)?),
        None => None,
    };
    let tunnelled = tunnel
        .as_ref()
        .map(|t| format!("unix://{}", t.socket().display()));
    if g.endpoint.contains(',') {
        eprintln!(
            "WARNING: multiple endpoints provided but only the first ({}) is used",
            g.endpoint.split(',').next().unwrap_or_default()
        );
    }
    if (g.ca_file.is_some()
        || g.cert_file.is_some()
        || g.key_file.is_some()
        || g.token_file.is_some())
        && !g.endpoint.starts_with("https://")
    {
        eprintln!(
            "WARNING: --ca-file, --cert-file, --key-file and --token-file only apply to https endpoints; ignored"
        );
    }
    let first = g.endpoint.split(',').next().unwrap_or_default().trim();
    let first = tunnelled.as_deref().unwrap_or(first);
    let transport = HttpTransport::new(first, Duration::from_secs_f64(g.request_timeout))?
        .with_credentials(&Credentials {
            ca_file: g.ca_file.clone(),
            cert_file: g.cert_file.clone(),
            key_file: g.key_file.clone(),
            token_file: g.token_file.clone(),
        })?;
    let api = Api::new(Logged {
        inner: transport,
        on: g.debug,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut ctx = Ctx::new(
        api,
        Box::new(std::io::stdout()),
        Box::new(std::io::stderr()),
    );
    let res = rt.block_on(async {
        match &command {
            Command::Submit(a) => ctx.submit(&a.units.units, a.replace).await,
            Command::Load(a) => {
                ctx.activate(&a.units.units, a.replace, &a.block, CreateVerb::Load)
                    .await
            }
            Command::Start(a) => {
                ctx.activate(&a.units.units, a.replace, &a.block, CreateVerb::Start)
                    .await
            }
            Command::Stop(a) => ctx.stop(&a.units.units, &a.block).await,
            Command::Unload(a) => ctx.unload(&a.units.units, &a.block).await,
            Command::Destroy(a) => ctx.destroy(&a.units).await,
            Command::Cat(a) => ctx.cat(&a.unit).await,
            Command::ListUnitFiles(a) => ctx.list_unit_files(a).await,
            Command::ListUnits(a) => ctx.list_units(a).await,
            Command::ListMachines(a) => ctx.list_machines(a).await,
            Command::Status(a) => match ctx.status(&a.units.units, a.machine.as_deref()).await? {
                0 => Ok(()),
                code => Err(ExitWith(code.clamp(1, 255) as u8).into()),
            },
            Command::Journal(a) => {
                // Installed before the first request, so that Ctrl-C always ends --follow cleanly.
                let int = if a.follow {
                    use tokio::signal::unix::{signal, SignalKind};
                    Some(signal(SignalKind::interrupt()).context("installing the SIGINT handler")?)
                } else {
                    None
                };
                ctx.journal(a, async move {
                    match int {
                        Some(mut int) => {
                            int.recv().await;
                        }
                        None => std::future::pending().await,
                    }
                })
                .await
            }
            Command::Restart(a) => {
                ctx.restart(&a.units.units, a.machine.as_deref(), &a.block)
                    .await
            }
            Command::Ssh(a) => {
                let (ip, cmd) = ctx.ssh_target(a).await?;
                match ssh::run_session(&ssh_opts, &ip, a.ssh_port, a.forward_agent, &cmd).await? {
                    0 => Ok(()),
                    code => Err(ExitWith(code.clamp(1, 255) as u8).into()),
                }
            }
            Command::Simulate(args::SimulateCommand::Capture(a)) => {
                ctx.simulate_capture(a, first).await
            }
            Command::Version | Command::GenCerts(_) | Command::Completion(_) => {
                unreachable!("handled above")
            }
        }
    });
    let _ = std::io::stdout().flush();
    res
}

#[cfg(test)]
mod report_tests {
    use super::*;

    #[test]
    fn worded_failures_print_as_they_are_and_others_after_error() {
        let e = worded_err!("Error: unit {} does not exist", "a.service");
        assert_eq!(report(&e), "Error: unit a.service does not exist");
        let plain = anyhow::Error::new(std::io::Error::other("disk on fire"));
        assert_eq!(report(&plain), "Error: disk on fire");
        let r: Result<(), std::io::Error> = Err(std::io::Error::other("broken pipe"));
        let e = r
            .context(worded!("Error creating unit {}", "b.service"))
            .unwrap_err();
        assert_eq!(report(&e), "Error creating unit b.service: broken pipe");
    }
}
