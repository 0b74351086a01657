//! fleetd configuration: /etc/fleet/fleet.conf, FLEET_* environment, command-line flags.
//!
//! Every setting is a *key* (`etcd_servers`, `metadata`, ...). A key can be given in three places;
//! the first that has it wins:
//!
//! 1. a command-line flag `--<key>` (dashes or underscores: `--etcd-servers`, `--etcd_servers`),
//! 2. the environment variable `FLEET_<KEY>` (upper case: `FLEET_ETCD_SERVERS`),
//! 3. the configuration file (default `/etc/fleet/fleet.conf`, `--config PATH` to change it),
//!    an INI file of global `key = value` lines,
//!
//! and otherwise the default of [`Config::default`]. Keys of fleet v1 that mean nothing in this
//! design (`disable_engine`, `disable_watches`, ...) are accepted and reported as [`Warning`]s.
//!
//! Every option is declared once, in `options.rs`; the [`Config`] struct, the flags
//! ([`FleetdArgs`]), the file and environment keys, the SIGHUP [`Change`]s and the table in
//! `docs/configuration.md` (`docs.rs`) all come from that declaration (`declare.rs` says how).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

mod args;
mod declare;
mod docs;
mod options;
#[cfg(test)]
mod tests;
mod values;

pub use args::FleetdArgs;
pub use declare::{Change, Field, Key, Meta, Obsolete, Origin, Reload};
pub use docs::docs_table;
pub use options::Config;
pub use values::{
    normalize_prefix, parse_bool, parse_duration, parse_metadata, parse_size, show_duration,
    valid_metadata_key, validate_machine_id, ConfigValue,
};

/// Default path of the configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/fleet/fleet.conf";

/// Where the value of a key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The configuration file at this path.
    File(PathBuf),
    /// The environment variable `FLEET_<KEY>`.
    Env,
    /// A command-line flag.
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env => f.write_str("environment"),
            Source::Flag => f.write_str("command line"),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of the configuration file is not `key = value`, a comment or a section header.
    #[error("{path}:{line}: expected `key = value`, found {text:?}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending line.
        text: String,
    },
    /// A key has a value that cannot be used.
    #[error("invalid value {value:?} for {key} (from {origin}): {reason}")]
    InvalidValue {
        /// The key, e.g. `etcd_request_timeout`.
        key: String,
        /// The value as given.
        value: String,
        /// Where the value came from.
        origin: Source,
        /// What is wrong with it.
        reason: String,
    },
}

/// Something accepted but worth telling the operator (logged at WARN by fleetd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning(pub String);

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every key fleetd accepts: the options, then the obsolete keys, each in declaration order.
pub fn keys() -> impl Iterator<Item = Key> {
    options::FIELDS
        .iter()
        .map(Key::Field)
        .chain(options::OBSOLETE.iter().map(Key::Obsolete))
}

/// The names of every key fleetd accepts (including the obsolete ones).
pub fn known_keys() -> impl Iterator<Item = &'static str> {
    keys().map(Key::name)
}

/// The key named `name`.
pub fn find_key(name: &str) -> Option<Key> {
    keys().find(|k| k.name() == name)
}

/// The raw `key -> (value, source)` map before parsing, built layer by layer.
#[derive(Debug, Default, Clone)]
pub struct RawConfig {
    values: BTreeMap<String, (String, Source)>,
    warnings: Vec<Warning>,
}

impl RawConfig {
    /// Lays the lines of a configuration file over the current values.
    pub fn apply_file(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') && line.ends_with(']') {
                let name = line[1..line.len() - 1].trim().to_string();
                self.warnings.push(Warning(format!(
                    "{}:{}: section [{name}] ignored: fleet.conf has only global keys",
                    path.display(),
                    i + 1
                )));
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(ConfigError::Syntax {
                    path: path.to_path_buf(),
                    line: i + 1,
                    text: line.to_string(),
                });
            };
            let k = k.trim();
            if k.is_empty() {
                return Err(ConfigError::Syntax {
                    path: path.to_path_buf(),
                    line: i + 1,
                    text: line.to_string(),
                });
            }
            let v = unquote(v.trim());
            self.set(k, v, Source::File(path.to_path_buf()));
        }
        Ok(())
    }

    /// Lays `FLEET_<KEY>` variables over the current values (other variables are ignored).
    pub fn apply_env<I, K, V>(&mut self, vars: I)
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        for (k, v) in vars {
            let Some(rest) = k.as_ref().strip_prefix("FLEET_") else {
                continue;
            };
            let name = rest.to_ascii_lowercase();
            // Only known keys: FLEET_* is also used by tests and scripts for other things.
            if known_keys().any(|known| known == name) {
                self.set(&name, v.as_ref().to_string(), Source::Env);
            }
        }
    }

    /// Lays command-line values over the current values.
    pub fn apply_flags<'a, I>(&mut self, flags: I)
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        for (k, v) in flags {
            self.set(k, v.to_string(), Source::Flag);
        }
    }

    fn set(&mut self, key: &str, value: String, source: Source) {
        match find_key(key) {
            Some(Key::Field(_)) => {}
            Some(Key::Obsolete(o)) => self.warnings.push(Warning(format!(
                "{key} (from {source}) is accepted but ignored: {}",
                o.why
            ))),
            None => self.warnings.push(Warning(format!(
                "unknown key {key} (from {source}) ignored"
            ))),
        }
        self.values.insert(key.to_string(), (value, source));
    }

    /// Parses every value into a [`Config`], returning it with the warnings collected.
    pub fn build(&self) -> Result<(Config, Vec<Warning>), ConfigError> {
        let mut c = Config::default();
        for (key, (value, source)) in &self.values {
            let v = value.trim();
            let parsed = match c.set_field(key, v) {
                Some(result) => result,
                // Obsolete keys are only checked; unknown keys were warned about.
                None => match find_key(key) {
                    Some(Key::Obsolete(Obsolete {
                        check: Some(check), ..
                    })) => check(v),
                    _ => Ok(()),
                },
            };
            parsed.map_err(|reason| ConfigError::InvalidValue {
                key: key.clone(),
                value: value.clone(),
                origin: source.clone(),
                reason,
            })?;
        }
        self.check_together(
            &c.etcd_certfile,
            &c.etcd_keyfile,
            ("etcd_certfile", "etcd_keyfile"),
            true,
        )?;
        // The password is not repeated in the message.
        self.check_together(
            &c.etcd_username,
            &c.etcd_password,
            ("etcd_username", "etcd_password"),
            false,
        )?;
        self.check_api_tcp(&c)?;
        Ok((c, self.warnings.clone()))
    }

    /// Two options given together or not at all; the error names the second (`keys.1`).
    fn check_together<A, B>(
        &self,
        a: &Option<A>,
        b: &Option<B>,
        keys: (&str, &str),
        show_value: bool,
    ) -> Result<(), ConfigError> {
        if a.is_some() == b.is_some() {
            return Ok(());
        }
        let value = match self.values.get(keys.1) {
            Some((v, _)) if show_value => v.clone(),
            _ => String::new(),
        };
        Err(ConfigError::InvalidValue {
            key: keys.1.into(),
            value,
            origin: self
                .values
                .get(keys.1)
                .or_else(|| self.values.get(keys.0))
                .map(|(_, s)| s.clone())
                .unwrap_or(Source::Default),
            reason: format!("{} and {} must be given together", keys.0, keys.1),
        })
    }

    /// The TCP listener is TLS with client credentials, or explicitly insecure.
    fn check_api_tcp(&self, c: &Config) -> Result<(), ConfigError> {
        let err = |key: &str, reason: &str| ConfigError::InvalidValue {
            key: key.to_string(),
            value: self
                .values
                .get(key)
                .map(|(v, _)| v.clone())
                .unwrap_or_default(),
            origin: self.source_of(key),
            reason: reason.to_string(),
        };
        let tls = c.api_tls_cert_file.is_some() || c.api_tls_key_file.is_some();
        if c.api_tls_cert_file.is_some() != c.api_tls_key_file.is_some() {
            return Err(err(
                "api_tls_key_file",
                "api_tls_cert_file and api_tls_key_file must be given together",
            ));
        }
        if tls && c.api_tcp_insecure {
            return Err(err(
                "api_tcp_insecure",
                "contradicts api_tls_cert_file: choose TLS or plain HTTP",
            ));
        }
        if tls && c.api_client_ca_file.is_none() && c.api_token_file.is_none() {
            return Err(err(
                "api_tls_cert_file",
                "the TLS listener needs client credentials: set api_client_ca_file and/or api_token_file",
            ));
        }
        if c.api_tcp.is_some() && !tls && !c.api_tcp_insecure {
            return Err(err(
                "api_tcp",
                "the TCP API needs TLS (api_tls_cert_file, api_tls_key_file, and api_client_ca_file \
                 or api_token_file), or api_tcp_insecure=true for plain HTTP on a trusted network",
            ));
        }
        Ok(())
    }

    /// Where the value of `key` comes from.
    pub fn source_of(&self, key: &str) -> Source {
        self.values
            .get(key)
            .map(|(_, s)| s.clone())
            .unwrap_or(Source::Default)
    }
}

impl Config {
    /// Loads the configuration the way fleetd does: the file (`file`, or [`DEFAULT_CONFIG_FILE`]
    /// when it exists), then `env` (`FLEET_*` pairs), then `flags` (`key`, `value`).
    /// An explicitly given file must exist.
    pub fn load<'a, E, K, V, F>(
        file: Option<&Path>,
        env: E,
        flags: F,
    ) -> Result<(Config, Vec<Warning>), ConfigError>
    where
        E: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
        F: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut raw = RawConfig::default();
        let (path, required) = match file {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => raw.apply_file(&path, &text)?,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ConfigError::Read { path, source }),
        }
        raw.apply_env(env);
        raw.apply_flags(flags);
        raw.build()
    }

    /// This machine's ID: `machine_id`, else the first line of `machine_id_file`.
    pub fn resolve_machine_id(&self) -> Result<String, ConfigError> {
        if let Some(id) = &self.machine_id {
            return Ok(id.clone());
        }
        let text =
            std::fs::read_to_string(&self.machine_id_file).map_err(|source| ConfigError::Read {
                path: self.machine_id_file.clone(),
                source,
            })?;
        let id = text.lines().next().unwrap_or("").trim();
        validate_machine_id(id).map_err(|reason| ConfigError::InvalidValue {
            key: "machine_id_file".into(),
            value: id.to_string(),
            origin: Source::File(self.machine_id_file.clone()),
            reason,
        })
    }
}

/// A value in `"..."` or `'...'` loses its quotes.
fn unquote(v: &str) -> String {
    if v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
    {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}
