//! The connection to systemd's Manager and the unit operations fleet needs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;
use zbus::message::Type as MessageType;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{Connection, MatchRule, MessageStream};

use crate::error::{Error, Result};
use crate::events::{drain, Subscription};
use crate::names::validate_unit_name;
use crate::state::{ActiveState, JobResult, LoadState, UnitState};

mod files;
mod query;

use files::write_atomic;

/// Where unit files are written by default (as fleet v1 did).
pub const DEFAULT_UNITS_DIRECTORY: &str = "/run/fleet/units";
/// Default D-Bus method call timeout.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) const SYSTEMD: &str = "org.freedesktop.systemd1";
pub(crate) const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
pub(crate) const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";

/// `(type, file, destination)` of a unit file change.
type UnitFileChange = (String, String, String);
/// One entry of `ListUnitsByNames`.
pub(crate) type ListedUnit = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_blocking = false
)]
pub(crate) trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn reload(&self) -> zbus::Result<()>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn link_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<Vec<UnitFileChange>>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<UnitFileChange>)>;
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<UnitFileChange>>;
    fn get_unit_file_state(&self, file: &str) -> zbus::Result<String>;
    fn list_units_by_names(&self, names: &[&str]) -> zbus::Result<Vec<ListedUnit>>;
    fn list_units(&self) -> zbus::Result<Vec<ListedUnit>>;
    #[zbus(name = "GetUnitByPID")]
    fn get_unit_by_pid(&self, pid: u32) -> zbus::Result<OwnedObjectPath>;
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
}

/// Which bus systemd is reached on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bus {
    /// The system bus (`DBUS_SYSTEM_BUS_ADDRESS` or `/run/dbus/system_bus_socket`).
    System,
    /// The session bus (a user manager: `systemd --user`).
    Session,
    /// A D-Bus address, e.g. `unix:path=/proc/<pid>/root/run/dbus/system_bus_socket`.
    Address(String),
}

/// How to reach systemd and where unit files go.
#[derive(Clone, Debug)]
pub struct Config {
    /// The bus.
    pub bus: Bus,
    /// Directory of fleet's unit files as systemd sees it (absolute, UTF-8). Default
    /// [`DEFAULT_UNITS_DIRECTORY`].
    pub units_directory: PathBuf,
    /// Where systemd's root filesystem is for this process: `/` normally; `/proc/<pid>/root` when
    /// driving a lab machine (or container) from outside. Files are written under it.
    pub fs_root: PathBuf,
    /// Timeout of each D-Bus call. Default [`DEFAULT_CALL_TIMEOUT`].
    pub call_timeout: Duration,
    /// When `load_unit` calls `Reload`. Default [`ReloadPolicy::Always`].
    pub reload: ReloadPolicy,
}

/// `StartUnit` calls [`Systemd::start_units`] keeps in flight.
pub const START_PIPELINE: usize = 32;

/// Jobs [`Systemd::start_units`] lets systemd hold at once before it queues more (systemd's `NJobs`,
/// every client's jobs). systemd watches the bus client of every job it queues with a match rule on
/// its own bus connection, and dbus-daemon allows a connection 512 of those on the system bus
/// (`max_match_rules_per_connection`): past that systemd loses its bus connection ("Got disconnect on
/// API bus") and every call in flight fails. Seen in the lab starting 1,000 units at once: 32 starts
/// failed with `NoReply` after 12 s and the agent's subscription had to reconnect.
pub const MAX_QUEUED_JOBS: u32 = 448;

/// One unit for [`Systemd::load_units`].
#[derive(Clone, Copy, Debug)]
pub struct LoadSpec<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its unit file (fleet's ownership marker is added).
    pub contents: &'a str,
    /// Enable it at runtime (it has an `[Install]` section: see [`crate::has_install_section`]).
    pub enable: bool,
}

/// When [`Systemd::load_unit`] reloads systemd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReloadPolicy {
    /// After every load (what fleet v1 did): always correct, but a `Reload` re-reads every unit
    /// file, so it costs more the more units the machine has, and reloads are serialized.
    #[default]
    Always,
    /// Skip the `Reload` when systemd does not know the unit yet (`not-found`) and it is not
    /// enabled: systemd (>= 246) loads a unit file that appeared in its search path on first use
    /// (it notices the changed directory). A unit that is loaded (new contents) or enabled (new
    /// dependencies) still gets a `Reload`.
    WhenNeeded,
}

impl Config {
    /// Defaults for `bus`.
    pub fn new(bus: Bus) -> Config {
        Config {
            bus,
            units_directory: DEFAULT_UNITS_DIRECTORY.into(),
            fs_root: "/".into(),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            reload: ReloadPolicy::Always,
        }
    }
    /// Sets [`Config::reload`].
    pub fn reload_policy(mut self, policy: ReloadPolicy) -> Config {
        self.reload = policy;
        self
    }
    /// Sets [`Config::units_directory`].
    pub fn units_directory(mut self, dir: impl Into<PathBuf>) -> Config {
        self.units_directory = dir.into();
        self
    }
    /// Sets [`Config::fs_root`].
    pub fn fs_root(mut self, root: impl Into<PathBuf>) -> Config {
        self.fs_root = root.into();
        self
    }
    /// Sets [`Config::call_timeout`].
    pub fn call_timeout(mut self, timeout: Duration) -> Config {
        self.call_timeout = timeout;
        self
    }
}

/// A job systemd queued.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Job {
    /// Job id (last component of the path).
    pub id: u32,
    /// Job object path.
    pub path: String,
}

/// A connection to systemd's Manager. Cheap to clone (clones share the connection).
///
/// Reconnecting: when a call fails with [`Error::is_disconnected`] or a [`Subscription`] yields
/// [`crate::Event::Disconnected`], the connection is dead for good. Get a new handle with
/// [`Systemd::reconnect`] (or [`Systemd::reconnect_with_backoff`]), replace the old one everywhere,
/// [`Systemd::subscribe`] again, and re-read the states of your units ([`Systemd::list_units`]),
/// since changes during the gap were not seen.
#[derive(Clone, Debug)]
pub struct Systemd {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    conn: Connection,
    manager: ManagerProxy<'static>,
    subscribed: OnceCell<()>,
}

impl Systemd {
    pub(crate) fn manager(&self) -> &ManagerProxy<'static> {
        &self.inner.manager
    }

    /// Connects to systemd on `bus` with default settings ([`Config::new`]).
    pub async fn connect_bus(bus: Bus) -> Result<Systemd> {
        Systemd::connect(Config::new(bus)).await
    }

    /// Connects to systemd as `config` says.
    pub async fn connect(config: Config) -> Result<Systemd> {
        if !config.units_directory.is_absolute() || config.units_directory.to_str().is_none() {
            return Err(Error::Io {
                path: config.units_directory.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the units directory must be an absolute UTF-8 path",
                ),
            });
        }
        let context = format!("connecting to {:?}", config.bus);
        let builder = match &config.bus {
            Bus::System => zbus::connection::Builder::system(),
            Bus::Session => zbus::connection::Builder::session(),
            Bus::Address(a) => zbus::connection::Builder::address(a.as_str()),
        }
        .map_err(|e| Error::connect(context.clone(), e))?;
        let conn = builder
            .method_timeout(config.call_timeout)
            .build()
            .await
            .map_err(|e| Error::connect(context.clone(), e))?;
        let manager = ManagerProxy::new(&conn)
            .await
            .map_err(|e| Error::connect(context, e))?;
        tracing::debug!(bus = ?config.bus, "connected to systemd");
        Ok(Systemd {
            inner: Arc::new(Inner {
                config,
                conn,
                manager,
                subscribed: OnceCell::new(),
            }),
        })
    }

    /// A new connection with the same configuration (one attempt).
    pub async fn reconnect(&self) -> Result<Systemd> {
        Systemd::connect(self.inner.config.clone()).await
    }

    /// Reconnects, retrying with exponential backoff (50 ms doubling up to 2 s) until `give_up_after`
    /// has passed; returns the last error then.
    pub async fn reconnect_with_backoff(&self, give_up_after: Duration) -> Result<Systemd> {
        let deadline = tokio::time::Instant::now() + give_up_after;
        let mut delay = Duration::from_millis(50);
        loop {
            match self.reconnect().await {
                Ok(sd) => return Ok(sd),
                Err(e) if tokio::time::Instant::now() + delay > deadline => return Err(e),
                Err(e) => tracing::debug!(error = %e, ?delay, "reconnecting to systemd"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// The configuration this handle was made with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Path of unit `name`'s file as systemd sees it (`<units_directory>/<name>`).
    pub fn unit_file_path(&self, name: &str) -> PathBuf {
        self.inner.config.units_directory.join(name)
    }

    /// Path of unit `name`'s file for this process (under [`Config::fs_root`]).
    pub fn local_unit_file_path(&self, name: &str) -> PathBuf {
        self.local_units_directory().join(name)
    }

    pub(crate) fn local_units_directory(&self) -> PathBuf {
        let dir = &self.inner.config.units_directory;
        self.inner
            .config
            .fs_root
            .join(dir.strip_prefix("/").unwrap_or(dir))
    }

    /// Refuses to touch unit `name` unless its file in the units directory was written by fleet, or
    /// there is none and its runtime link (if any) is fleet's.
    async fn check_ours(&self, name: &str) -> Result<()> {
        let file = self.local_unit_file_path(name);
        let path = file.clone();
        let ours = self.unit_file_path(name);
        let link = self.config().fs_root.join("run/systemd/system").join(name);
        let ok = tokio::task::spawn_blocking(move || match std::fs::symlink_metadata(&path) {
            Ok(_) => crate::owner::written_by_fleet(&path),
            Err(_) => match std::fs::read_link(&link) {
                Ok(target) => target == ours,
                Err(_) => std::fs::symlink_metadata(&link).is_err(),
            },
        })
        .await
        .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            Err(Error::NotFleets(name.to_string()))
        }
    }

    /// Writes unit `name` (atomically: temp file + rename) into the units directory, links it into
    /// systemd as a runtime unit (`LinkUnitFiles(runtime, force)`), enables it at runtime when
    /// `enable` (pass [`crate::has_install_section`] of the contents), then reloads systemd
    /// (see [`ReloadPolicy`]). Loading a unit again replaces it. Does not start it.
    ///
    /// The file starts with [`crate::OWNER_MARKER`]. A unit whose file (or runtime link) fleet did not
    /// write is refused with [`Error::NotFleets`] and left alone.
    pub async fn load_unit(&self, name: &str, contents: &str, enable: bool) -> Result<()> {
        let spec = LoadSpec {
            name,
            contents,
            enable,
        };
        let mut results = self.load_units(&[spec]).await?;
        results.pop().expect("one result per unit")
    }

    /// [`Systemd::load_unit`] for many units at once: every file written, then **one**
    /// `LinkUnitFiles` call for all of them, one `EnableUnitFiles` call for those to enable, and at
    /// most one `Reload` (under [`ReloadPolicy::WhenNeeded`]: when one of them is enabled or already
    /// known to systemd, asked with one `ListUnitsByNames`).
    ///
    /// Why: systemd rebuilds its map of unit files on a lookup whenever a unit directory changed since
    /// the previous one, and every call above walks its unit directories; loading units one by one
    /// therefore costs more per unit the more units systemd holds. A batch pays each of those once.
    ///
    /// Returns one result per unit, in order (a unit that is not fleet's, has a bad name or whose file
    /// cannot be written fails alone; when a batched call fails, its units are tried one by one so that
    /// only the faulty ones fail). `Err` only when the final `Reload` fails (then no unit of the batch
    /// can be counted as loaded).
    pub async fn load_units(&self, units: &[LoadSpec<'_>]) -> Result<Vec<Result<()>>> {
        let mut results: Vec<Result<()>> = Vec::with_capacity(units.len());
        for u in units {
            let r = match validate_unit_name(u.name) {
                Ok(()) => self.check_ours(u.name).await,
                Err(e) => Err(e),
            };
            results.push(r);
        }
        let ok = |results: &[Result<()>]| -> Vec<usize> {
            (0..units.len()).filter(|&i| results[i].is_ok()).collect()
        };
        let names: Vec<&str> = ok(&results).iter().map(|&i| units[i].name).collect();
        if names.is_empty() {
            return Ok(results);
        }
        let m = &self.inner.manager;
        let reload = units.iter().any(|u| u.enable)
            || self.inner.config.reload == ReloadPolicy::Always
            || match m.list_units_by_names(&names).await {
                Ok(listed) => listed
                    .iter()
                    .any(|l| LoadState::from(l.2.clone()) != LoadState::NotFound),
                Err(e) => {
                    tracing::debug!("ListUnitsByNames before loading: {e}; reloading");
                    true
                }
            };
        let dir = self.local_units_directory();
        for i in ok(&results) {
            let u = &units[i];
            if let Err(e) = write_atomic(&dir, u.name, &crate::owner::marked(u.contents)).await {
                results[i] = Err(e);
            }
        }
        let paths: Vec<String> = units
            .iter()
            .map(|u| {
                let p = self.unit_file_path(u.name);
                p.to_str().expect("checked UTF-8 at connect").to_string()
            })
            .collect();
        let written = ok(&results);
        self.batched(&mut results, &written, &paths, FileCall::Link)
            .await;
        let enable: Vec<usize> = ok(&results)
            .into_iter()
            .filter(|&i| units[i].enable)
            .collect();
        self.batched(&mut results, &enable, &paths, FileCall::Enable)
            .await;
        if reload {
            self.reload().await?;
        }
        Ok(results)
    }

    /// One D-Bus call for the units `which` (their `paths`); if it fails, one call per unit, and
    /// each unit whose own call fails gets that error.
    async fn batched(
        &self,
        results: &mut [Result<()>],
        which: &[usize],
        paths: &[String],
        call: FileCall,
    ) {
        if which.is_empty() {
            return;
        }
        let method = call.method();
        let files: Vec<&str> = which.iter().map(|&i| paths[i].as_str()).collect();
        match self.file_call(call, &files).await {
            Ok(()) => return,
            Err(e) if which.len() == 1 => {
                let name = file_name(&paths[which[0]]);
                results[which[0]] = Err(Error::from_call(method, name, e));
                return;
            }
            Err(e) => tracing::debug!("{method} of {} units: {e}; one by one", which.len()),
        }
        for &i in which {
            if let Err(e) = self.file_call(call, &[paths[i].as_str()]).await {
                results[i] = Err(Error::from_call(method, file_name(&paths[i]), e));
            }
        }
    }

    async fn file_call(&self, call: FileCall, files: &[&str]) -> zbus::Result<()> {
        let m = &self.inner.manager;
        match call {
            FileCall::Link => m.link_unit_files(files, true, true).await.map(|_| ()),
            FileCall::Enable => m.enable_unit_files(files, true, true).await.map(|_| ()),
        }
    }

    /// Undoes [`Systemd::load_unit`]: disables and unlinks the unit (`DisableUnitFiles(runtime)`
    /// removes both the `enable` and the `link` symlinks), removes its file, reloads systemd.
    /// Does not stop it: stop first, or it keeps running as a `not-found` unit. A unit fleet did not
    /// write is refused with [`Error::NotFleets`] and left alone.
    pub async fn unload_unit(&self, name: &str) -> Result<()> {
        let mut results = self.unload_units(&[name]).await?;
        results.pop().expect("one result per unit")
    }

    /// [`Systemd::unload_unit`] for many units at once: one `DisableUnitFiles` call for all of them
    /// (one per unit only if that fails), their files removed, one `Reload`. Returns one result per
    /// unit, in order; `Err` only when the final `Reload` fails.
    pub async fn unload_units(&self, names: &[&str]) -> Result<Vec<Result<()>>> {
        let mut results: Vec<Result<()>> = Vec::with_capacity(names.len());
        for n in names {
            let r = match validate_unit_name(n) {
                Ok(()) => self.check_ours(n).await,
                Err(e) => Err(e),
            };
            results.push(r);
        }
        let ok: Vec<usize> = (0..names.len()).filter(|&i| results[i].is_ok()).collect();
        if ok.is_empty() {
            return Ok(results);
        }
        let m = &self.inner.manager;
        let all: Vec<&str> = ok.iter().map(|&i| names[i]).collect();
        let disable = |n: &str, e: zbus::Error| -> Result<()> {
            match Error::from_call("DisableUnitFiles", n, e) {
                // Never loaded (or already unloaded): nothing to disable.
                Error::NoSuchUnit(_) => Ok(()),
                Error::Refused { name: err, .. }
                    if err == "org.freedesktop.DBus.Error.FileNotFound" =>
                {
                    Ok(())
                }
                other => Err(other),
            }
        };
        if let Err(e) = m.disable_unit_files(&all, true).await {
            if ok.len() == 1 {
                results[ok[0]] = disable(names[ok[0]], e);
            } else {
                tracing::debug!("DisableUnitFiles of {} units: {e}; one by one", ok.len());
                for &i in &ok {
                    if let Err(e) = m.disable_unit_files(&[names[i]], true).await {
                        results[i] = disable(names[i], e);
                    }
                }
            }
        }
        for &i in &ok {
            if results[i].is_err() {
                continue;
            }
            let path = self.local_unit_file_path(names[i]);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => results[i] = Err(Error::Io { path, source }),
            }
        }
        self.reload().await?;
        Ok(results)
    }

    /// `Reload`: systemd re-reads all unit files (the reply comes when it is done).
    pub async fn reload(&self) -> Result<()> {
        self.inner
            .manager
            .reload()
            .await
            .map_err(|e| Error::from_call("Reload", "", e))
    }

    /// Queues a start job (mode `replace`).
    pub async fn start_unit(&self, name: &str) -> Result<Job> {
        self.job(JobKind::Start, name).await
    }
    /// Queues a start job (mode `replace`) for each unit, with up to [`START_PIPELINE`] `StartUnit`
    /// calls in flight at once (systemd still runs them in order; the pipeline saves a bus round trip
    /// per unit), and never more than about `MAX_QUEUED_JOBS` jobs queued in systemd. One result per
    /// unit, in order.
    ///
    /// A unit systemd refuses for the load state it holds ([`Error::is_stale_load`]: left from before
    /// fleet wrote its current file, when no reload was needed to load it) is started again after one
    /// daemon reload for all of them (seen in the lab: a unit unloaded there earlier failed every start
    /// with "failed to load properly ... reload service manager" until the reload).
    pub async fn start_units(&self, names: &[&str]) -> Vec<Result<Job>> {
        let mut results = self.start_units_once(names).await;
        let stale: Vec<usize> = (0..names.len())
            .filter(|&i| matches!(&results[i], Err(e) if e.is_stale_load()))
            .collect();
        if stale.is_empty() {
            return results;
        }
        if let Err(e) = self.reload().await {
            tracing::warn!("reload after starts refused for a stale load state: {e}");
            return results;
        }
        let again: Vec<&str> = stale.iter().map(|&i| names[i]).collect();
        for (i, r) in stale.into_iter().zip(self.start_units_once(&again).await) {
            results[i] = r;
        }
        results
    }

    async fn start_units_once(&self, names: &[&str]) -> Vec<Result<Job>> {
        let mut results: Vec<Option<Result<Job>>> = (0..names.len()).map(|_| None).collect();
        // Waves of START_PIPELINE calls, each once systemd has room for its jobs.
        for (wave, chunk) in names.chunks(START_PIPELINE).enumerate() {
            if wave > 0 {
                self.wait_for_job_room().await;
            }
            let mut set = tokio::task::JoinSet::new();
            for (k, name) in chunk.iter().enumerate() {
                let (sd, name, i) = (self.clone(), name.to_string(), wave * START_PIPELINE + k);
                set.spawn(async move { (i, sd.start_unit(&name).await) });
            }
            while let Some(r) = set.join_next().await {
                match r {
                    Ok((i, r)) => results[i] = Some(r),
                    Err(e) => tracing::warn!("a StartUnit task failed: {e}"),
                }
            }
        }
        results
            .into_iter()
            .zip(names)
            .map(|(r, n)| {
                r.unwrap_or_else(|| {
                    Err(Error::Disconnected {
                        context: format!("StartUnit({n})"),
                        source: Box::new(zbus::Error::Failure("the call's task ended".into())),
                    })
                })
            })
            .collect()
    }

    /// The jobs systemd holds (`NJobs`); `None` if it cannot be read.
    pub async fn queued_jobs(&self) -> Option<u32> {
        let reply = self
            .inner
            .conn
            .call_method(
                Some(SYSTEMD),
                MANAGER_PATH,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(MANAGER_IFACE, "NJobs"),
            )
            .await
            .ok()?;
        let value: OwnedValue = reply.body().deserialize().ok()?;
        u32::try_from(&value).ok()
    }

    /// Waits until systemd holds few enough jobs for [`START_PIPELINE`] more ([`MAX_QUEUED_JOBS`]),
    /// for at most the call timeout (then goes on: systemd may be slow, not full).
    async fn wait_for_job_room(&self) {
        let give_up = tokio::time::Instant::now() + self.inner.config.call_timeout;
        while let Some(n) = self.queued_jobs().await {
            if n as usize + START_PIPELINE <= MAX_QUEUED_JOBS as usize
                || tokio::time::Instant::now() >= give_up
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Queues a stop job (mode `replace`).
    pub async fn stop_unit(&self, name: &str) -> Result<Job> {
        self.job(JobKind::Stop, name).await
    }
    /// Queues a restart job (mode `replace`).
    pub async fn restart_unit(&self, name: &str) -> Result<Job> {
        self.job(JobKind::Restart, name).await
    }
    /// Starts `name` and waits for its job to finish (`JobRemoved`); for a service of the default
    /// `Type=simple` that is when its process was forked, not when it is ready.
    pub async fn start_unit_and_wait(&self, name: &str) -> Result<JobResult> {
        self.job_and_wait(JobKind::Start, name).await
    }
    /// Stops `name` and waits for its job to finish.
    pub async fn stop_unit_and_wait(&self, name: &str) -> Result<JobResult> {
        self.job_and_wait(JobKind::Stop, name).await
    }
    /// Restarts `name` and waits for its job to finish.
    pub async fn restart_unit_and_wait(&self, name: &str) -> Result<JobResult> {
        self.job_and_wait(JobKind::Restart, name).await
    }

    async fn job(&self, kind: JobKind, name: &str) -> Result<Job> {
        validate_unit_name(name)?;
        let m = &self.inner.manager;
        let path = match kind {
            JobKind::Start => m.start_unit(name, "replace").await,
            JobKind::Stop => m.stop_unit(name, "replace").await,
            JobKind::Restart => m.restart_unit(name, "replace").await,
        }
        .map_err(|e| Error::from_call(kind.method(), name, e))?;
        let path = path.as_str().to_string();
        let id = path
            .rsplit('/')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok(Job { id, path })
    }

    async fn job_and_wait(&self, kind: JobKind, name: &str) -> Result<JobResult> {
        validate_unit_name(name)?;
        self.ensure_subscribed().await?;
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(SYSTEMD)
            .and_then(|b| b.path(MANAGER_PATH))
            .and_then(|b| b.interface(MANAGER_IFACE))
            .and_then(|b| b.member("JobRemoved"))
            .map_err(|e| Error::from_call("AddMatch", name, e))?
            .build();
        // Listen before queueing: the job may finish before StartUnit's reply arrives.
        let stream = MessageStream::for_match_rule(rule, &self.inner.conn, Some(256))
            .await
            .map_err(|e| Error::from_call("AddMatch", name, e))?;
        let mut signals = drain(stream);
        let job = self.job(kind, name).await?;
        while let Some(msg) = signals.recv().await {
            let Ok(msg) = msg else { break };
            let body = msg.body();
            let Ok((_id, path, _unit, result)) =
                body.deserialize::<(u32, OwnedObjectPath, String, String)>()
            else {
                continue;
            };
            if path.as_str() == job.path {
                return Ok(JobResult::from(result));
            }
        }
        Err(Error::Disconnected {
            context: format!("waiting for job {} of {name}", job.path),
            source: Box::new(zbus::Error::Failure("the signal stream ended".into())),
        })
    }

    /// `Subscribe` once per connection (systemd only emits unit and job signals on the system
    /// bus while some client is subscribed).
    pub(crate) async fn ensure_subscribed(&self) -> Result<()> {
        self.inner
            .subscribed
            .get_or_try_init(|| async {
                match self.inner.manager.subscribe().await {
                    Ok(()) => Ok(()),
                    Err(zbus::Error::MethodError(name, _, _))
                        if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(Error::from_call("Subscribe", "", e)),
                }
            })
            .await
            .map(|_| ())
    }

    /// Subscribes to unit state changes and job results (see [`Subscription`]). Each call makes an
    /// independent stream.
    pub async fn subscribe(&self) -> Result<Subscription> {
        self.subscribe_filtered(|_| true).await
    }

    /// Like [`Systemd::subscribe`], but only for the units whose name `wanted` accepts
    /// (`UnitChanged`, `UnitRemoved` and `JobRemoved` of others are dropped early, before any
    /// work is done for them); `Reloaded` and `Disconnected` always come through.
    pub async fn subscribe_filtered(
        &self,
        wanted: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<Subscription> {
        self.subscribe_with_backlog(wanted, crate::MAX_BACKLOG)
            .await
    }

    /// Like [`Systemd::subscribe_filtered`], with room for `max_backlog` events (instead of
    /// [`crate::MAX_BACKLOG`]) before the subscription drops them for one [`crate::Event::Resync`].
    pub async fn subscribe_with_backlog(
        &self,
        wanted: impl Fn(&str) -> bool + Send + 'static,
        max_backlog: usize,
    ) -> Result<Subscription> {
        self.ensure_subscribed().await?;
        Subscription::start(&self.inner.conn, Box::new(wanted), max_backlog).await
    }
}

#[derive(Clone, Copy, Debug)]
enum JobKind {
    Start,
    Stop,
    Restart,
}

impl JobKind {
    fn method(self) -> &'static str {
        match self {
            JobKind::Start => "StartUnit",
            JobKind::Stop => "StopUnit",
            JobKind::Restart => "RestartUnit",
        }
    }
}

/// Writes `dir/name` atomically: a temp file in the same directory, then rename. The temp file's name
/// has a fixed length (it does not contain `name`), so the longest valid unit name (255 bytes, the file
/// system's limit too) still fits; it starts with `.`, which no unit name does.
/// A unit-file call of the Manager that [`Systemd::load_units`] makes for many files at once.
#[derive(Clone, Copy)]
enum FileCall {
    /// `LinkUnitFiles(files, runtime, force)`.
    Link,
    /// `EnableUnitFiles(files, runtime, force)`.
    Enable,
}

impl FileCall {
    fn method(self) -> &'static str {
        match self {
            FileCall::Link => "LinkUnitFiles",
            FileCall::Enable => "EnableUnitFiles",
        }
    }
}

/// The last component of a unit file's path: the unit's name.
fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}
