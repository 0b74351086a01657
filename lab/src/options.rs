//! [`LabOptions`]: how to build a lab (bind mounts, units, environment, etcd).

use std::path::PathBuf;

/// A bind mount from the host into every machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// Host path.
    pub src: PathBuf,
    /// Path inside the machines.
    pub dst: PathBuf,
    /// Mount read-only.
    pub read_only: bool,
}

/// How to build a lab. `LabOptions::new()` (= `default()`) is a plain cluster with etcd.
#[derive(Clone, Debug, Default)]
pub struct LabOptions {
    /// Cluster name (`FT_PREFIX`): ASCII letters and digits, at most 20. `None` picks a name unique to
    /// this process and lab, so tests can run in parallel (each cluster has its own hub and bridge).
    pub prefix: Option<String>,
    /// Bind mounts into every machine (`FT_BINDS`).
    pub binds: Vec<Bind>,
    /// Unit files on the host, installed into every machine and started at every boot (`FT_UNITS`).
    pub units: Vec<PathBuf>,
    /// Units given as `(name, contents)`, installed and started like [`LabOptions::units`].
    pub unit_texts: Vec<(String, String)>,
    /// Extra `KEY=value` lines appended to [`ENV_FILE`](crate::ENV_FILE) in every machine.
    pub env: Vec<(String, String)>,
    /// Do not start the hub etcd (faster boot for tests that only need systemd).
    pub no_etcd: bool,
    /// Run an etcd cluster of this many members instead of the hub etcd (`FT_ETCD_MEMBERS`): member
    /// `k` (1-based) in a netns of its own at [`etcd_member_ip`](crate::etcd_member_ip)`(k)`, so it can be killed, frozen or
    /// cut off alone. `FT_ETCD` in [`ENV_FILE`](crate::ENV_FILE) then lists every client URL.
    pub etcd_members: Option<usize>,
    /// Serve etcd's clients over TLS with client certificates (`FT_ETCD_TLS`): the directory holds
    /// `ca.pem`, `server.pem`, `server.key` (with IP SANs of every member and 127.0.0.1) and
    /// `client.pem`/`client.key` (used by [`Lab::etcdctl`](crate::Lab::etcdctl)). Member clusters only.
    pub etcd_tls: Option<PathBuf>,
    /// Extra command-line flags for every etcd member (`FT_ETCD_ARGS`), e.g.
    /// `--auto-compaction-retention=1s`. Member clusters only.
    pub etcd_args: Vec<String>,
}

impl LabOptions {
    /// A plain cluster with etcd and a generated prefix.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the cluster prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }
    /// Adds a bind mount `src` (host) -> `dst` (every machine).
    pub fn bind(
        mut self,
        src: impl Into<PathBuf>,
        dst: impl Into<PathBuf>,
        read_only: bool,
    ) -> Self {
        self.binds.push(Bind {
            src: src.into(),
            dst: dst.into(),
            read_only,
        });
        self
    }
    /// Adds a unit file (host path) installed and started in every machine at boot.
    pub fn unit_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.units.push(path.into());
        self
    }
    /// Adds a unit given by name and contents, installed and started in every machine at boot.
    pub fn unit(mut self, name: impl Into<String>, contents: impl Into<String>) -> Self {
        self.unit_texts.push((name.into(), contents.into()));
        self
    }
    /// Adds `KEY=value` to [`ENV_FILE`](crate::ENV_FILE) in every machine.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    /// Skips the hub etcd.
    pub fn without_etcd(mut self) -> Self {
        self.no_etcd = true;
        self
    }
    /// Runs an etcd cluster of `members` members, each in a netns of its own, instead of the hub
    /// etcd (see [`LabOptions::etcd_members`]).
    pub fn etcd_cluster(mut self, members: usize) -> Self {
        self.etcd_members = Some(members);
        self
    }
    /// Serves etcd over TLS with client certificates from `dir` (see [`LabOptions::etcd_tls`]).
    pub fn etcd_tls(mut self, dir: impl Into<PathBuf>) -> Self {
        self.etcd_tls = Some(dir.into());
        self
    }
    /// Adds a command-line flag for every etcd member (see [`LabOptions::etcd_args`]).
    pub fn etcd_arg(mut self, arg: impl Into<String>) -> Self {
        self.etcd_args.push(arg.into());
        self
    }
}
