//! fleetctl's command line (clap derive). Every global flag can also come from `FLEETCTL_<FLAG>` in the
//! environment (`--request-timeout` ↔ `FLEETCTL_REQUEST_TIMEOUT`); a flag on the command line wins.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

/// Default number of times load/start/stop/unload check whether the desired state was reached.
pub const DEFAULT_BLOCK_ATTEMPTS: u32 = 10;

const AFTER_HELP: &str = "\
Exit status: 0 on success; 1 when fleetd reports an error, cannot be reached, or (load, start, stop,
unload) the desired state was recorded but could not be confirmed within --block-attempts; 2 on a
command-line usage error.";

/// Help output as fleet's: what it is, its version, then usage and options.
const HELP_TEMPLATE: &str =
    "{about-with-newline}\nVersion: {version}\n\n{usage-heading} {usage}\n\n{all-args}{after-help}";

/// fleetctl: control a fleet cluster through fleetd's HTTP API v1.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "fleetctl",
    about = "fleetctl controls a fleet cluster through fleetd's HTTP API v1",
    version,
    help_template = HELP_TEMPLATE,
    disable_version_flag = true,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Global flags, accepted before or after the command.
    #[command(flatten)]
    pub global: GlobalFlags,
    /// The command to run.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Flags valid with every command.
#[derive(Args, Debug, Clone, PartialEq)]
#[command(next_help_heading = "Global options")]
pub struct GlobalFlags {
    /// Location of fleetd's API: unix:///PATH, http://HOST:PORT or https://HOST:PORT. Only the
    /// first of a comma-separated list is used.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_ENDPOINT",
        default_value = "unix:///var/run/fleet.sock"
    )]
    pub endpoint: String,
    /// Seconds to wait for each answer from fleetd.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_REQUEST_TIMEOUT",
        default_value_t = 3.0,
        value_parser = positive_seconds
    )]
    pub request_timeout: f64,
    /// Reach fleetd through SSH on `HOST[:PORT]` (the system's OpenSSH client forwards a local socket to
    /// --endpoint as seen from HOST); `ssh` then jumps through HOST too.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_TUNNEL",
        value_name = "HOST[:PORT]"
    )]
    pub tunnel: Option<String>,
    /// Username for SSH connections (--tunnel, ssh).
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_SSH_USERNAME",
        default_value = "core"
    )]
    pub ssh_username: String,
    /// Seconds to wait for an SSH connection (OpenSSH's ConnectTimeout).
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_SSH_TIMEOUT",
        default_value_t = 10.0,
        value_parser = positive_seconds
    )]
    pub ssh_timeout: f64,
    /// Verify SSH host keys against --known-hosts-file (write --strict-host-key-checking=false to turn off).
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_STRICT_HOST_KEY_CHECKING",
        default_value_t = true,
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub strict_host_key_checking: bool,
    /// File of trusted SSH host keys (OpenSSH's known_hosts format; unknown hosts are asked about).
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_KNOWN_HOSTS_FILE",
        default_value = "~/.fleetctl/known_hosts"
    )]
    pub known_hosts_file: String,
    /// CA certificate that signed fleetd's TLS certificate (https endpoints).
    #[arg(long, global = true, env = "FLEETCTL_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate for an https endpoint (signed by fleetd's api_client_ca_file).
    #[arg(long, global = true, env = "FLEETCTL_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Key of --cert-file.
    #[arg(long, global = true, env = "FLEETCTL_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// File holding a bearer token for an https endpoint (fleetd's api_token_file).
    #[arg(long, global = true, env = "FLEETCTL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Accepted for compatibility; fleetctl only talks to the API, which knows its own etcd prefix.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_ETCD_KEY_PREFIX",
        default_value = "/_coreos.com/fleet/"
    )]
    pub etcd_key_prefix: String,
    /// Print every API request and its outcome on stderr.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_DEBUG",
        action = ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub debug: bool,
    /// Print the version and exit.
    #[arg(long, global = true, action = ArgAction::SetTrue)]
    pub version: bool,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{s:?} must be a positive number of seconds"))
    }
}

/// The verbs.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum Command {
    /// Upload units (local unit files, or instances of templates) to the cluster without starting them.
    #[command(after_help = EX_SUBMIT)]
    Submit(SubmitArgs),
    /// Schedule units onto machines and load them into systemd, without starting them.
    #[command(after_help = EX_LOAD)]
    Load(StartArgs),
    /// Schedule units onto machines (if needed) and start them.
    #[command(after_help = EX_START)]
    Start(StartArgs),
    /// Stop running units (they stay loaded on their machine). Stopping an inactive unit is an error.
    #[command(after_help = EX_STOP)]
    Stop(BlockArgs),
    /// Unload units from their machines (they stay in the cluster, inactive).
    #[command(after_help = EX_UNLOAD)]
    Unload(BlockArgs),
    /// Remove units from the cluster entirely (stopping and unloading them first).
    #[command(after_help = EX_DESTROY)]
    Destroy(UnitsArgs),
    /// Print the unit file of a unit as the cluster stores it.
    #[command(after_help = EX_CAT)]
    Cat(CatArgs),
    /// List the units in the cluster, whether or not they are placed on a machine.
    #[command(after_help = EX_LIST_UNIT_FILES)]
    ListUnitFiles(ListUnitFilesArgs),
    /// List the state of units on the machines that report them.
    #[command(after_help = EX_LIST_UNITS)]
    ListUnits(ListUnitsArgs),
    /// List the machines of the cluster.
    #[command(after_help = EX_LIST_MACHINES)]
    ListMachines(ListMachinesArgs),
    /// Print `systemctl status` of units, as the machine running each one reports it.
    #[command(after_help = EX_STATUS)]
    Status(StatusArgs),
    /// Print the journal of a unit, read on the machine running it.
    #[command(after_help = EX_JOURNAL)]
    Journal(JournalArgs),
    /// Restart units where they run (on every machine, for a global unit): each gets a new process.
    #[command(after_help = EX_RESTART)]
    Restart(RestartArgs),
    /// Open an SSH session (or run COMMAND) on a machine, named by an ID prefix or by a unit it runs.
    #[command(after_help = EX_SSH)]
    Ssh(SshArgs),
    /// What-if runs of this cluster: `simulate capture` writes the live cluster as a fleet-sim scenario.
    #[command(subcommand, after_help = EX_SIMULATE)]
    Simulate(SimulateCommand),
    /// Print a shell completion script for fleetctl.
    #[command(after_help = EX_COMPLETION)]
    Completion(CompletionArgs),
    /// Print the version of fleetctl.
    #[command(after_help = EX_VERSION)]
    Version,
    /// Mint the gossip TLS files: a cluster CA, or a machine certificate signed by it (local files
    /// only; fleetd is not contacted).
    #[command(after_help = GEN_CERTS_HELP)]
    GenCerts(GenCertsArgs),
}

const GEN_CERTS_HELP: &str = "\
fleetd's agents speak to each other (gossip) over QUIC with mutual TLS: every machine needs the cluster
CA certificate, and a certificate and key of its own signed by that CA. A peer whose certificate is not
signed by the CA is refused.

Files written (keys are created with mode 0600; existing files are kept unless --force):
  --ca                 DIR/ca.pem, DIR/ca.key         (keep ca.key off the machines)
  --machine-id ID      DIR/ID.pem, DIR/ID.key         (signed by CA-DIR/ca.pem and CA-DIR/ca.key)

Example:
  fleetctl gen-certs --dir /root/fleet-ca --ca
  fleetctl gen-certs --dir /root/fleet-certs --ca-dir /root/fleet-ca --machine-id $(cat /etc/machine-id)
  # then on that machine, in fleet.conf (after copying the three files there):
  #   gossip_ca_file=/etc/fleet/ca.pem
  #   gossip_cert_file=/etc/fleet/<ID>.pem
  #   gossip_key_file=/etc/fleet/<ID>.key";

/// `simulate` verbs.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum SimulateCommand {
    /// Write the live cluster (machines and metadata, units with their files and desired states, where
    /// each unit is active) as a fleet-sim scenario file, then check that the simulated cluster places
    /// every unit where it runs now.
    #[command(after_help = EX_SIMULATE_CAPTURE)]
    Capture(CaptureArgs),
}

const EX_SIMULATE: &str = "\
Example:
  fleetctl simulate capture -o cluster.toml";
const EX_SIMULATE_CAPTURE: &str = "\
The scenario lists the machines in ID order (fault selectors may name them by index: machines = \"0,3\"),
carries every unit file inline ([[units.unit]]) and has no fault: add [[fault]] tables (or fleet-sim's
command-line faults) and run it with fleet-sim. The simulated cluster starts with every unit claimed
where it runs now; capture simulates it once without faults and prints on stderr every unit it runs
elsewhere (a unit whose requirements no longer hold where it runs, for one).

Examples:
  fleetctl simulate capture -o cluster.toml
  fleet-sim run cluster.toml";

/// `simulate capture`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct CaptureArgs {
    /// Write the scenario to FILE instead of standard output.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The scenario's name.
    #[arg(long, default_value = "captured")]
    pub name: String,
    /// Simulated time the scenario runs (e.g. 60s, 2m).
    #[arg(long, default_value = "60s")]
    pub duration: String,
    /// Do not simulate the captured cluster to check where it places the units.
    #[arg(long)]
    pub no_check: bool,
}

/// `gen-certs`.
#[derive(Args, Debug, Clone, PartialEq)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["ca", "machine_id"])))]
pub struct GenCertsArgs {
    /// Directory to write the files into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Mint a new cluster CA: DIR/ca.pem and DIR/ca.key.
    #[arg(long, conflicts_with_all = ["machine_id", "ca_dir"])]
    pub ca: bool,
    /// Mint a certificate for this machine (its machine ID, the certificate's common name):
    /// DIR/ID.pem and DIR/ID.key.
    #[arg(long, value_name = "ID")]
    pub machine_id: Option<String>,
    /// Directory holding the CA's ca.pem and ca.key (default: --dir).
    #[arg(long, value_name = "CA-DIR", requires = "machine_id")]
    pub ca_dir: Option<PathBuf>,
    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,
}

const EX_SUBMIT: &str = "\
Examples:
  fleetctl submit hello.service           # ./hello.service, stored as hello.service (inactive)
  fleetctl submit --replace web@.service  # a template, replacing a different stored copy";
const EX_LOAD: &str = "\
Examples:
  fleetctl load hello                     # hello.service: placed and loaded, not started
  fleetctl load --no-block web@1 web@2    # instances of web@.service, without waiting";
const EX_START: &str = "\
Examples:
  fleetctl start hello.service            # submits ./hello.service if the cluster lacks it
  fleetctl start --block-attempts=40 web@{1,2,3}.service";
const EX_STOP: &str = "\
Example:
  fleetctl stop hello.service";
const EX_UNLOAD: &str = "\
Example:
  fleetctl unload hello.service";
const EX_DESTROY: &str = "\
Example:
  fleetctl destroy hello.service web@1.service";
const EX_CAT: &str = "\
Example:
  fleetctl cat hello.service";
const EX_LIST_UNIT_FILES: &str = "\
--json prints a JSON array with one object per unit, keyed by the --fields names, with the values of
--full (null where the table shows -; global is a boolean).

Examples:
  fleetctl list-unit-files
  fleetctl list-unit-files --fields=unit,desc,global --no-legend
  fleetctl list-unit-files --json | jq -r '.[] | select(.dstate == \"launched\") | .unit'";
const EX_LIST_UNITS: &str = "\
--json prints a JSON array with one object per unit and machine, keyed by the --fields names, with
the values of --full (null where the table shows -).

Examples:
  fleetctl list-units
  fleetctl list-units --fields=unit,machine,hash,load --full
  fleetctl list-units --json";
const EX_LIST_MACHINES: &str = "\
--json prints a JSON array with one object per machine, keyed by the --fields names (machine: the
full ID; metadata: an object).

Examples:
  fleetctl list-machines
  fleetctl list-machines --json | jq -r '.[].ip'";
const EX_STATUS: &str = "\
Exits with systemctl's status when it is not 0 (3: not active).

Examples:
  fleetctl status hello.service
  fleetctl status --machine 113f16a7 global-agent.service";
const EX_JOURNAL: &str = "\
A global unit's journal is read on every machine running it, each part headed by the machine (with
--follow, a heading whenever the lines come from another machine); --machine picks one.

Examples:
  fleetctl journal --lines 50 hello.service
  fleetctl journal --follow hello.service      # until Ctrl-C";
const EX_VERSION: &str = "\
Example:
  fleetctl version";
const EX_RESTART: &str = "\
A unit whose desired state is launched is restarted where it runs (systemd's RestartUnit: a new main
process); prints `Restarted unit X on ID.../IP` for every machine and exits 1 when the restart failed
on any (fleet v1 only cycled the desired state, which could leave the old process running). A
machine has 2 s to finish its restart; a slower one is reported as failed while systemd finishes the
job there. A unit that is loaded or inactive is started, as fleet's restart did, waiting like
`start` (--no-block, --block-attempts).

Examples:
  fleetctl restart hello.service
  fleetctl restart --machine 113f16a7 global-agent.service";
const EX_SSH: &str = "\
The target is a machine ID (or a unique prefix of one) or a unit (the machine it runs on); --machine
and --unit say which, and then every argument is part of COMMAND. Runs the system's OpenSSH client
with --ssh-username, --ssh-port, --ssh-timeout, --known-hosts-file and --strict-host-key-checking;
through --tunnel HOST it jumps via HOST (ProxyCommand ssh -W). Exits with ssh's status.

Examples:
  fleetctl ssh 113f16a7                        # a login shell on that machine
  fleetctl ssh hello.service systemctl status hello
  fleetctl ssh --unit hello -- journalctl -n 5
  fleetctl --tunnel bastion.example.com ssh -A 113f16a7";
const EX_COMPLETION: &str = "\
Examples:
  fleetctl completion bash > /etc/bash_completion.d/fleetctl
  fleetctl completion zsh > \"${fpath[1]}/_fleetctl\"
  fleetctl completion fish > ~/.config/fish/completions/fleetctl.fish";

/// `restart`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct RestartArgs {
    /// Only on this machine (full ID), for a global unit: by default every machine running it.
    #[arg(long, value_name = "ID")]
    pub machine: Option<String>,
    /// For units that are not launched (these are started, as `start` does).
    #[command(flatten)]
    pub block: BlockFlags,
    #[command(flatten)]
    pub units: UnitsArgs,
}

/// `ssh`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct SshArgs {
    /// The machine to connect to (an ID or a unique prefix of one).
    #[arg(long, value_name = "ID", conflicts_with = "unit")]
    pub machine: Option<String>,
    /// Connect to the machine running this unit.
    #[arg(long, value_name = "UNIT")]
    pub unit: Option<String>,
    /// Forward the SSH agent connection (ssh -A).
    #[arg(long, short = 'A')]
    pub forward_agent: bool,
    /// Port of the machines' SSH server.
    #[arg(long, default_value_t = 22, value_name = "PORT")]
    pub ssh_port: u16,
    /// MACHINE|UNIT (unless --machine or --unit is given), then the command to run remotely (a login
    /// shell when there is none).
    #[arg(
        value_name = "MACHINE|UNIT [COMMAND]",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
}

/// `completion`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct CompletionArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `status`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct StatusArgs {
    /// Only this machine (full ID), for a global unit: by default every machine running it is shown.
    #[arg(long, value_name = "ID")]
    pub machine: Option<String>,
    /// Accepted for compatibility with fleet (which ran systemctl over SSH): ignored, fleetd relays.
    #[arg(long, hide = true, value_name = "PORT")]
    pub ssh_port: Option<u16>,
    #[command(flatten)]
    pub units: UnitsArgs,
}

/// `journal`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct JournalArgs {
    /// Number of recent journal lines to print.
    #[arg(long, short = 'n', default_value_t = 10, value_name = "N")]
    pub lines: u32,
    /// Keep printing new lines as they are logged (until Ctrl-C).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Output format of the journal lines (only `short`, journalctl's default, is supported).
    #[arg(long, short = 'o', default_value = "short", value_parser = ["short"])]
    pub output: String,
    /// Only on this machine (full ID), for a global unit: by default every machine running it.
    #[arg(long, value_name = "ID")]
    pub machine: Option<String>,
    /// Accepted for compatibility with fleet (which ran journalctl over SSH): ignored.
    #[arg(long, hide = true)]
    pub sudo: bool,
    /// Accepted for compatibility with fleet (which ran journalctl over SSH): ignored, fleetd relays.
    #[arg(long, hide = true, value_name = "PORT")]
    pub ssh_port: Option<u16>,
    /// The unit.
    #[arg(value_name = "UNIT")]
    pub unit: String,
}

/// Units named on the command line.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct UnitsArgs {
    /// Unit names or paths to unit files; `.service` is appended when the name has no unit suffix.
    #[arg(required = true, value_name = "UNIT")]
    pub units: Vec<String>,
}

/// `submit`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct SubmitArgs {
    /// Replace units whose stored file differs from the local one (only while they are inactive).
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub units: UnitsArgs,
}

/// How long to wait for the desired state.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct BlockFlags {
    /// Do not wait: record the desired state and return.
    #[arg(long)]
    pub no_block: bool,
    /// How many times (500 ms apart) to check whether the desired state was reached; 0 waits forever
    /// (fleet's old default). When the attempts run out the desired state stays recorded, the reason it
    /// is not reached is printed, and fleetctl exits 1.
    #[arg(long, default_value_t = DEFAULT_BLOCK_ATTEMPTS, value_name = "N")]
    pub block_attempts: u32,
}

/// `load` and `start`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct StartArgs {
    #[command(flatten)]
    pub block: BlockFlags,
    /// Replace units whose stored file differs from the local one.
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub units: UnitsArgs,
}

/// `stop` and `unload`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct BlockArgs {
    #[command(flatten)]
    pub block: BlockFlags,
    #[command(flatten)]
    pub units: UnitsArgs,
}

/// `cat`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct CatArgs {
    /// The unit to print.
    #[arg(value_name = "UNIT")]
    pub unit: String,
}

/// Flags shared by the list commands.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct ListFlags {
    /// Do not shorten machine IDs (or hashes).
    #[arg(long, short = 'l')]
    pub full: bool,
    /// Do not print the header line.
    #[arg(long)]
    pub no_legend: bool,
    /// Print a JSON array of objects (one per row, keyed by the field names, full values) instead of
    /// the table.
    #[arg(long, conflicts_with = "no_legend")]
    pub json: bool,
}

/// `list-unit-files`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct ListUnitFilesArgs {
    /// Columns to print, comma-separated; valid: unit, hash, dstate, state, target, desc, global,
    /// tmachine.
    #[arg(long, default_value = "unit,hash,dstate,state,target")]
    pub fields: String,
    #[command(flatten)]
    pub list: ListFlags,
}

/// `list-units`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct ListUnitsArgs {
    /// Columns to print, comma-separated; valid: unit, machine, active, sub, hash, load.
    #[arg(long, default_value = "unit,machine,active,sub")]
    pub fields: String,
    #[command(flatten)]
    pub list: ListFlags,
}

/// `list-machines`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct ListMachinesArgs {
    /// Columns to print, comma-separated; valid: machine, ip, metadata.
    #[arg(long, default_value = "machine,ip,metadata")]
    pub fields: String,
    #[command(flatten)]
    pub list: ListFlags,
}

#[cfg(test)]
mod tests;
