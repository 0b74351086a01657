//! Fencing through systemd: killing a unit at once, binding fleet's claimed units to the fence guard
//! (`fleet-guard.service`), and installing that guard (docs/safety.md, "The fence guard").
//!
//! Each claimed unit gets a runtime drop-in, `/run/systemd/system/<unit>.d/50-fleet-fence.conf`, with
//! `BindsTo=` and `After=` on the guard: when the guard stops or fails (its watchdog fired because it
//! hung, or it exited after fencing), systemd stops every bound unit. The guard itself kills them with
//! SIGKILL when the fence deadline passes, which is faster than a stop: first through the kernel
//! (cgroup v2 `cgroup.kill` of each unit's cgroup, [`kill_unit_cgroups`]: no round trip to a systemd that
//! may be starved of CPU, as after a thaw), then through systemd (a stop, so that `Restart=` does not
//! bring the unit back, and `KillUnit`).

use std::path::{Path, PathBuf};

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

/// The cgroup v2 hierarchy under `fs_root`: `sys/fs/cgroup` on a unified host, `sys/fs/cgroup/unified`
/// on a hybrid one; `None` without one.
pub fn cgroup2_root(fs_root: &Path) -> Option<PathBuf> {
    let base = fs_root.join("sys/fs/cgroup");
    [base.clone(), base.join("unified")]
        .into_iter()
        .find(|d| d.join("cgroup.controllers").exists())
}

/// How deep below the cgroup root a unit's cgroup is looked for (`system.slice/a.service` is 2; a
/// slice `a-b-c.slice` nests 3 more).
const CGROUP_DEPTH: usize = 8;

/// What [`kill_unit_cgroups`] did.
#[derive(Debug, Default)]
pub struct CgroupKill {
    /// The units whose cgroup was told to die (`1` written to its `cgroup.kill`).
    pub killed: Vec<String>,
    /// Units with a cgroup but no `cgroup.kill` in it (a kernel before 5.14): not killed this way.
    pub unsupported: Vec<String>,
    /// Units whose `cgroup.kill` could not be written, with the error.
    pub failed: Vec<(String, std::io::Error)>,
}

/// Kills every process of each unit of `names` through the kernel: writes `1` to `cgroup.kill` of the
/// unit's cgroup, found by name in the slices of the cgroup v2 hierarchy `root` (never inside another
/// unit, where a user's or a container's manager keeps units of its own; a unit without a cgroup has no
/// process: nothing to do). `SIGKILL` reaches every process of the cgroup and of its sub-cgroups at
/// once, without systemd. systemd then sees the main process die: a unit with `Restart=` is restarted
/// unless a stop reaches systemd first (within `RestartSec=`), so a caller follows this with
/// [`Systemd::fence_units`].
pub fn kill_unit_cgroups(root: &Path, names: &[String]) -> CgroupKill {
    let wanted: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let mut done = CgroupKill::default();
    let mut dirs = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.filter_map(|e| e.ok()) {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if wanted.contains(name) {
                let kill = e.path().join("cgroup.kill");
                match std::fs::OpenOptions::new().write(true).open(&kill) {
                    Ok(mut f) => match std::io::Write::write_all(&mut f, b"1") {
                        Ok(()) => done.killed.push(name.to_string()),
                        Err(err) => done.failed.push((name.to_string(), err)),
                    },
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                        done.unsupported.push(name.to_string())
                    }
                    Err(err) => done.failed.push((name.to_string(), err)),
                }
            } else if depth + 1 < CGROUP_DEPTH && name.ends_with(".slice") {
                // Only slices hold this manager's units. Below a unit is the unit's own business, or
                // another manager's: a user's (`user@0.service`), a container's
                // (`machine-x.scope/payload/system.slice/...`), whose units of the same name are
                // not fleet's.
                dirs.push((e.path(), depth + 1));
            }
        }
    }
    done
}

impl Systemd {
    /// [`kill_unit_cgroups`] in this manager's cgroup v2 hierarchy (under `fs_root`); `None` when
    /// there is none (cgroup v1 only).
    pub fn kill_cgroups(&self, names: &[String]) -> Option<CgroupKill> {
        let root = cgroup2_root(&self.config().fs_root)?;
        Some(kill_unit_cgroups(&root, names))
    }

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
             Restart=always\n\
             RestartSec=100ms\n"
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroup tree: each path a directory, with a `cgroup.kill` file unless `old_kernel`.
    fn tree(root: &Path, dirs: &[&str], old_kernel: bool) {
        std::fs::write(root.join("cgroup.controllers"), "cpu memory\n").unwrap();
        for d in dirs {
            let d = root.join(d);
            std::fs::create_dir_all(&d).unwrap();
            if !old_kernel {
                std::fs::write(d.join("cgroup.kill"), "").unwrap();
            }
        }
    }

    fn killed(root: &Path, dir: &str) -> bool {
        std::fs::read_to_string(root.join(dir).join("cgroup.kill")).unwrap_or_default() == "1"
    }

    #[test]
    fn cgroup_kill_reaches_the_named_units_in_any_slice_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("sys/fs/cgroup");
        std::fs::create_dir_all(&root).unwrap();
        tree(
            &root,
            &[
                "system.slice/a.service",
                "system.slice/a.service/inner",
                "system.slice/b.service",
                "system.slice/c.service",
                "app.slice/app-web.slice/d.service",
                "init.scope",
                // Another manager's units of the same names: a user's, a container's.
                "user.slice/user-0.slice/user@0.service/app.slice/a.service",
                "machine.slice/machine-c1.scope/payload/system.slice/d.service",
            ],
            false,
        );
        assert_eq!(cgroup2_root(tmp.path()), Some(root.clone()));
        let names: Vec<String> = ["a.service", "d.service", "gone.service"]
            .map(String::from)
            .to_vec();
        let mut done = kill_unit_cgroups(&root, &names);
        done.killed.sort();
        assert_eq!(done.killed, ["a.service", "d.service"]);
        assert!(
            done.unsupported.is_empty() && done.failed.is_empty(),
            "{done:?}"
        );
        assert!(killed(&root, "system.slice/a.service"));
        assert!(killed(&root, "app.slice/app-web.slice/d.service"));
        // The kernel kills a cgroup's sub-cgroups with it: nothing to write there.
        for other in [
            "system.slice/a.service/inner",
            "system.slice/b.service",
            "system.slice/c.service",
            "init.scope",
            "user.slice/user-0.slice/user@0.service/app.slice/a.service",
            "machine.slice/machine-c1.scope/payload/system.slice/d.service",
        ] {
            assert!(!killed(&root, other), "{other}");
        }
    }

    #[test]
    fn without_cgroup_kill_the_units_are_reported_unsupported() {
        let tmp = tempfile::tempdir().unwrap();
        // A hybrid host: the v2 hierarchy is `unified`.
        let root = tmp.path().join("sys/fs/cgroup/unified");
        std::fs::create_dir_all(&root).unwrap();
        tree(&root, &["system.slice/a.service"], true);
        assert_eq!(cgroup2_root(tmp.path()), Some(root.clone()));
        let done = kill_unit_cgroups(&root, &["a.service".to_string()]);
        assert!(done.killed.is_empty() && done.failed.is_empty(), "{done:?}");
        assert_eq!(done.unsupported, ["a.service"]);
        assert_eq!(cgroup2_root(&tmp.path().join("nowhere")), None);
    }
}
