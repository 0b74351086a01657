//! One fleetd per runtime directory.
//!
//! `runtime_dir` holds what a fleetd keeps across its own restarts and what its fence guard reads: the
//! lease it renews (`lease.json`), the witness committee (`seats.json`, `witness.json`) and the fence
//! deadline (`fence`, docs/safety.md). Two fleetds writing the same files would each overwrite the
//! other's fence deadline and lease, so that the guard would protect neither. fleetd therefore holds
//! an exclusive lock on `<runtime_dir>/fleetd.lock` for as long as it runs (the kernel drops it when
//! the process ends, however it ends) and refuses to start while another process holds it.
//!
//! One fleetd per system manager, too. The fence guard (`fleet-guard.service`) and the units' fence
//! drop-ins live in the system manager's unit directory, one set per machine: a second fleetd on
//! the same systemd (another runtime directory) would rewrite the guard to watch its own deadline,
//! and the first fleetd's units would lose their fencing. So a fleetd that drives the system manager
//! (not `systemd_user`) of a machine booted with systemd also holds [`SYSTEM_LOCK`]
//! ([`lock_system_manager`]).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name in the runtime directory.
pub const LOCK_FILE: &str = "fleetd.lock";

/// The lock of the machine's system manager: whoever holds it owns `fleet-guard.service`.
pub const SYSTEM_LOCK: &str = "/run/fleet-guard.lock";

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct RuntimeLock {
    _file: File,
    path: PathBuf,
}

impl RuntimeLock {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "the runtime directory {dir} is in use by another fleetd ({holder}): each fleetd on a \
         machine needs its own runtime_dir (FLEET_RUNTIME_DIR)"
    )]
    InUse {
        /// The runtime directory.
        dir: PathBuf,
        /// The holder as its lock file names it ("pid N"), or "pid unknown".
        holder: String,
    },
    /// Another process drives this machine's system manager and its fence guard.
    #[error(
        "this machine's systemd and its fence guard (fleet-guard.service) are driven by another \
         fleetd ({holder}, lock {}): run one fleetd per machine, or give a second one \
         systemd_user=true (FLEET_SYSTEMD_USER)",
        path.display()
    )]
    SystemInUse {
        /// The lock file.
        path: PathBuf,
        /// The holder as its lock file names it ("pid N"), or "pid unknown".
        holder: String,
    },
    /// The directory or the file could not be created, opened or locked.
    #[error("locking the runtime directory {}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Creates `dir` if needed and takes its lock, writing this process's ID into the lock file.
pub fn lock(dir: &Path) -> Result<RuntimeLock, LockError> {
    lock_file(dir, &dir.join(LOCK_FILE)).map_err(|e| match e {
        Held(holder) => LockError::InUse {
            dir: dir.to_path_buf(),
            holder,
        },
        Failed(e) => e,
    })
}

/// On a machine booted with systemd (`/run/systemd/system` exists, as `sd_booted(3)` checks), takes
/// [`SYSTEM_LOCK`]; elsewhere (a host without systemd, where fleetd has no guard to install) returns
/// `Ok(None)`.
pub fn lock_system_manager() -> Result<Option<RuntimeLock>, LockError> {
    if !Path::new("/run/systemd/system").is_dir() {
        return Ok(None);
    }
    lock_system_manager_at(Path::new(SYSTEM_LOCK)).map(Some)
}

/// [`lock_system_manager`] with its lock file at `path` (tests).
pub fn lock_system_manager_at(path: &Path) -> Result<RuntimeLock, LockError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    lock_file(dir, path).map_err(|e| match e {
        Held(holder) => LockError::SystemInUse {
            path: path.to_path_buf(),
            holder,
        },
        Failed(e) => e,
    })
}

enum Refused {
    /// Another process holds it; its stamp.
    Held(String),
    Failed(LockError),
}
use Refused::{Failed, Held};

/// Creates `dir` if needed, opens `path` and takes an exclusive lock on it, writing this process's ID
/// into it.
fn lock_file(dir: &Path, path: &Path) -> Result<RuntimeLock, Refused> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Failed(LockError::Io { path, source })
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io(path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) => format!("pid {pid}"),
                Err(_) => "pid unknown".to_string(),
            };
            return Err(Held(holder));
        }
        Err(TryLockError::Error(e)) => return Err(io(path)(e)),
    }
    // Ours now: say who holds it (for the next one's error message).
    let stamp = (|| {
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "{}", std::process::id())
    })();
    stamp.map_err(io(path))?;
    Ok(RuntimeLock {
        _file: file,
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_naming_the_holder_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run/fleet");
        let first = lock(&dir).expect("the first lock");
        assert_eq!(first.path(), dir.join(LOCK_FILE));
        let text = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());

        // A second open file description conflicts with the first, as another process would.
        let err = lock(&dir).expect_err("the directory is locked");
        let msg = err.to_string();
        assert!(matches!(err, LockError::InUse { .. }), "{err:?}");
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("FLEET_RUNTIME_DIR"), "{msg}");
        // The refused attempt left the holder's stamp alone.
        assert_eq!(
            std::fs::read_to_string(first.path()).unwrap().trim(),
            std::process::id().to_string()
        );

        drop(first);
        let again = lock(&dir).expect("free again once dropped");
        drop(again);
        // Another directory is independent.
        let _a = lock(&dir).unwrap();
        let _b = lock(&tmp.path().join("other")).expect("another directory");
    }

    #[test]
    fn a_second_system_manager_lock_is_refused_naming_the_holder_and_the_way_out() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run/fleet-guard.lock");
        let first = lock_system_manager_at(&path).expect("the first lock");
        // A runtime directory lock elsewhere does not stand in its way.
        let _runtime = lock(&tmp.path().join("run/fleet")).unwrap();
        let err = lock_system_manager_at(&path).expect_err("held");
        assert!(matches!(err, LockError::SystemInUse { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("fleet-guard.service"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("FLEET_SYSTEMD_USER"), "{msg}");
        drop(first);
        let _again = lock_system_manager_at(&path).expect("free again once dropped");
    }

    #[test]
    fn a_directory_that_cannot_be_created_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("plain-file");
        std::fs::write(&file, "x").unwrap();
        let err = lock(&file.join("sub")).expect_err("a file is in the way");
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("plain-file"), "{err}");
    }
}
