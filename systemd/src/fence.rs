//! Fencing through systemd: killing a unit at once, binding fleet's claimed units to the fence guard
//! (`fleet-guard.service`), and installing that guard (docs/safety.md, "The fence guard").
//!
//! Each claimed unit gets a runtime drop-in, `/run/systemd/system/<unit>.d/50-fleet-fence.conf`, with
//! `BindsTo=` and `After=` on the guard: when the guard stops or fails (its watchdog fired because it
//! hung, or it exited after fencing), systemd stops every bound unit. The guard itself kills them with
//! SIGKILL when the fence deadline passes, which is faster than a stop.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::manager::Systemd;
use crate::names::validate_unit_name;

/// The fence guard's unit.
pub const GUARD_UNIT: &str = "fleet-guard.service";

/// File name of the drop-in that binds a claimed unit to the guard.
pub const FENCE_DROPIN: &str = "50-fleet-fence.conf";

const DROPIN: &str = "# Written by fleetd: fleet claims this unit on this machine. It stops with fleet's fence guard\n\
# (docs/safety.md in the fleet repository).\n\
[Unit]\n\
BindsTo=fleet-guard.service\n\
After=fleet-guard.service\n";

impl Systemd {
    /// The runtime unit directory of the system manager (`/run/systemd/system`), under `fs_root`.
    fn runtime_unit_dir(&self) -> PathBuf {
        self.config().fs_root.join("run/systemd/system")
    }

    /// Path of unit `name`'s fence drop-in (under `fs_root`).
    pub fn fence_dropin_path(&self, name: &str) -> PathBuf {
        self.runtime_unit_dir()
            .join(format!("{name}.d"))
            .join(FENCE_DROPIN)
    }

    /// Binds unit `name` to the fence guard (writes its drop-in). Returns whether the file was new or
    /// changed: systemd then needs a reload for a unit it already loaded.
    pub async fn bind_to_guard(&self, name: &str) -> Result<bool> {
        validate_unit_name(name)?;
        let path = self.fence_dropin_path(name);
        if tokio::fs::read_to_string(&path).await.ok().as_deref() == Some(DROPIN) {
            return Ok(false);
        }
        let dir = path.parent().expect("drop-in has a directory");
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        tokio::fs::write(&path, DROPIN)
            .await
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        Ok(true)
    }

    /// Removes unit `name`'s fence drop-in (a global unit, or an unloaded one). Returns whether there
    /// was one.
    pub async fn unbind_from_guard(&self, name: &str) -> Result<bool> {
        validate_unit_name(name)?;
        let path = self.fence_dropin_path(name);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                let _ =
                    tokio::fs::remove_dir(path.parent().expect("drop-in has a directory")).await;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// The units bound to the guard (those with a fence drop-in), sorted.
    pub fn guarded_units(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.runtime_unit_dir()) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                let unit = n.strip_suffix(".d")?.to_string();
                e.path().join(FENCE_DROPIN).exists().then_some(unit)
            })
            .filter(|u| validate_unit_name(u).is_ok())
            .collect();
        v.sort();
        v
    }

    /// `KillUnit(name, "all", signal)`.
    pub async fn kill_unit(&self, name: &str, signal: i32) -> Result<()> {
        validate_unit_name(name)?;
        self.manager()
            .kill_unit(name, "all", signal)
            .await
            .map_err(|e| Error::from_call("KillUnit", name, e))
    }

    /// Fences unit `name`: queues a stop (so that `Restart=` does not bring it back) and kills every
    /// process of it with SIGKILL at once. A unit that is not loaded is already fenced.
    pub async fn fence_unit(&self, name: &str) -> Result<()> {
        match self.stop_unit(name).await {
            Ok(_) | Err(Error::NoSuchUnit(_)) => {}
            Err(e) => return Err(e),
        }
        match self.kill_unit(name, 9).await {
            Ok(()) | Err(Error::NoSuchUnit(_)) => Ok(()),
            // Nothing to kill (the stop already finished): fine.
            Err(Error::Refused { name: err, .. })
                if err == "org.freedesktop.systemd1.NoSuchProcess" =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Fences every unit of `names` at once: one task per unit, so the stops and kills go to systemd
    /// together and the whole fence costs about two round trips to systemd, not two per unit (the
    /// takeover rule allows `kill_allowance`, 100 ms, from the deadline to the processes being gone;
    /// one unit after the other took 1.5 s for 13 units on a loaded machine). Returns each failure.
    pub async fn fence_units(&self, names: &[String]) -> Vec<(String, Error)> {
        let mut tasks = tokio::task::JoinSet::new();
        for n in names {
            let (systemd, n) = (self.clone(), n.clone());
            tasks.spawn(async move {
                let r = systemd.fence_unit(&n).await;
                (n, r)
            });
        }
        let mut failed = Vec::new();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok((_, Ok(()))) => {}
                Ok((n, Err(e))) => failed.push((n, e)),
                // Nothing aborts these tasks; a panic in one is a bug: pass it on.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        failed
    }

    /// Writes the guard's unit (`/run/systemd/system/fleet-guard.service`) running `exec_start`, and
    /// reloads systemd when it changed. Returns whether it changed.
    pub async fn install_guard(&self, exec_start: &str) -> Result<bool> {
        let text = format!(
            "# Written by fleetd: fleet's fence guard (docs/safety.md in the fleet repository). It kills\n\
             # fleet's claimed units when fleetd's fence deadline passes, even if fleetd is dead or hung.\n\
             [Unit]\n\
             Description=fleet fence guard\n\
             DefaultDependencies=no\n\
             \n\
             [Service]\n\
             Type=notify\n\
             NotifyAccess=main\n\
             ExecStart={exec_start}\n\
             WatchdogSec=10s\n\
             WatchdogSignal=SIGKILL\n\
             Restart=no\n"
        );
        let dir = self.runtime_unit_dir();
        let path = dir.join(GUARD_UNIT);
        if tokio::fs::read_to_string(&path).await.ok().as_deref() == Some(text.as_str()) {
            return Ok(false);
        }
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
        tokio::fs::write(&path, text)
            .await
            .map_err(|source| Error::Io { path, source })?;
        self.reload().await?;
        Ok(true)
    }
}
