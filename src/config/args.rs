//! fleetd's command line: `--config PATH` and one flag per key of the declaration (`--<key>` with
//! dashes, the underscore spelling as an alias), values kept as text and parsed with the file's
//! and the environment's by [`RawConfig`](super::RawConfig).

use std::path::PathBuf;

use clap::{Arg, ArgMatches, Command};

use super::{keys, Config, ConfigError, Key, Warning};

/// Help output as fleet's: what it is, its version, then usage and options.
const HELP_TEMPLATE: &str =
    "{about-with-newline}\nVersion: {version}\n\n{usage-heading} {usage}\n\n{all-args}{after-help}";

/// Command-line flags of fleetd. Every configuration key is a flag (`--etcd-servers` or
/// `--etcd_servers`); values are parsed exactly like file and environment values.
#[derive(Debug, Clone, Default)]
pub struct FleetdArgs {
    /// The configuration file (`--config`); `None` = `/etc/fleet/fleet.conf` if it exists.
    pub config: Option<PathBuf>,
    /// The keys given on the command line, in declaration order.
    values: Vec<(&'static str, String)>,
}

impl FleetdArgs {
    /// The configuration keys given on the command line, as `(key, value)`.
    pub fn overrides(&self) -> Vec<(&'static str, &str)> {
        self.values.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    /// Loads the configuration with these flags and the process environment.
    pub fn load(&self) -> Result<(Config, Vec<Warning>), ConfigError> {
        Config::load(self.config.as_deref(), std::env::vars(), self.overrides())
    }
}

/// The flag of `key`.
fn flag(key: Key) -> Arg {
    let name = key.name();
    let long = name.replace('_', "-");
    let mut arg = Arg::new(name)
        .value_name(key.value_name())
        .value_parser(clap::value_parser!(String))
        .help(key.summary());
    if let Key::Field(f) = key {
        arg = arg.long_help(f.text());
    }
    if long != name {
        arg = arg.alias(name);
    }
    arg.long(long)
}

impl clap::CommandFactory for FleetdArgs {
    fn command() -> Command {
        let command = Command::new("fleetd")
            .version(env!("CARGO_PKG_VERSION"))
            .about("fleetd: the fleet agent (schedules units, drives systemd, serves the HTTP API)")
            .help_template(HELP_TEMPLATE)
            .after_help(
                "Every key can also be set in the configuration file or as FLEET_<KEY> in the \
                 environment; flags win over the environment, which wins over the file.",
            )
            .arg(
                Arg::new("config")
                    .long("config")
                    .value_name("PATH")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("Configuration file [default: /etc/fleet/fleet.conf, if it exists]"),
            );
        keys().fold(command, |command, key| command.arg(flag(key)))
    }

    fn command_for_update() -> Command {
        Self::command()
    }
}

impl clap::FromArgMatches for FleetdArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = FleetdArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(path) = matches.get_one::<PathBuf>("config") {
            self.config = Some(path.clone());
        }
        let old = std::mem::take(&mut self.values);
        for name in keys().map(Key::name) {
            let given = matches
                .get_one::<String>(name)
                .cloned()
                .or_else(|| old.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()));
            if let Some(value) = given {
                self.values.push((name, value));
            }
        }
        Ok(())
    }
}

impl clap::Parser for FleetdArgs {}
