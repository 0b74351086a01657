//! Which units are fleet's, and which names the machine already uses for units that are not.
//!
//! Ownership is recorded, not inferred from a directory listing: every unit file [`Systemd::load_unit`]
//! writes starts with [`OWNER_MARKER`] (a comment: systemd and fleet's parser skip it, so the content and
//! its hash are unchanged). A file in the units directory without it (left there by hand, say) is not
//! fleet's: fleet does not stop, unload, relay for or overwrite it.
//!
//! A unit name the machine already uses outside fleet (a distro service, a unit in
//! `/etc/systemd/system`, fleetd's own unit, a mount unit systemd made from the mount table) must never
//! be shadowed by a fleet unit: `LinkUnitFiles(runtime)` puts fleet's file in `/run/systemd/system`, which
//! takes precedence over the distribution's units, so fleet would then start, stop and replace the
//! host's service. [`Systemd::host_units`] takes a snapshot of those names: every entry of systemd's unit
//! search path (`UnitPath`) except fleet's own files and runtime links, and every unit systemd has loaded.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::manager::{Systemd, MANAGER_IFACE, MANAGER_PATH};
use crate::names::validate_unit_name;

/// The first line of every unit file fleet writes: the record that the unit is fleet's.
pub const OWNER_MARKER: &str =
    "# Written by fleetd: this unit belongs to fleet (change it with fleetctl, not here).";

/// `contents` as fleet writes it: [`OWNER_MARKER`], then the contents.
pub(crate) fn marked(contents: &str) -> String {
    let mut s = String::with_capacity(OWNER_MARKER.len() + 1 + contents.len());
    s.push_str(OWNER_MARKER);
    s.push('\n');
    s.push_str(contents);
    s
}

/// Whether unit file text was written by fleet (starts with [`OWNER_MARKER`]).
pub fn is_marked(text: &str) -> bool {
    text.strip_prefix(OWNER_MARKER)
        .is_some_and(|rest| rest.starts_with('\n'))
}

/// Whether the file at `path` was written by fleet (reads only its first line).
pub fn written_by_fleet(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = Vec::with_capacity(OWNER_MARKER.len() + 1);
    if f.take(OWNER_MARKER.len() as u64 + 1)
        .read_to_end(&mut head)
        .is_err()
    {
        return false;
    }
    std::str::from_utf8(&head).is_ok_and(is_marked)
}

/// The units on a machine that are not fleet's, at one moment ([`Systemd::host_units`]).
#[derive(Debug, Clone, Default)]
pub struct HostUnits {
    /// Unit files (or symlinks, `/dev/null` masks included) in systemd's search path that are not
    /// fleet's, by name: the first path found.
    files: HashMap<String, PathBuf>,
    /// Files in fleet's units directory that fleet did not write.
    strays: HashMap<String, PathBuf>,
    /// Files in fleet's units directory that fleet wrote (systemd has those loaded on fleet's behalf).
    fleets: std::collections::HashSet<String>,
    /// Units systemd has loaded, by name (their load state).
    loaded: HashMap<String, String>,
}

impl HostUnits {
    /// Why unit `name` must not be fleet's on this machine, if it must not: a unit of that name (or
    /// the template an instance would come from) exists outside fleet, or systemd has one loaded that
    /// fleet did not write.
    pub fn foreign(&self, name: &str) -> Option<String> {
        if let Some(p) = self.strays.get(name) {
            return Some(format!(
                "{} is there and fleet did not write it",
                p.display()
            ));
        }
        if let Some(p) = self.files.get(name) {
            return Some(format!("{} exists there (not fleet's)", p.display()));
        }
        if let Some((prefix, rest)) = name.split_once('@') {
            if let Some((_, suffix)) = rest.rsplit_once('.') {
                let template = format!("{prefix}@.{suffix}");
                if let Some(p) = self.files.get(&template) {
                    return Some(format!("{} exists there (not fleet's)", p.display()));
                }
            }
        }
        if !self.fleets.contains(name) {
            if let Some(state) = self.loaded.get(name) {
                if state != "not-found" {
                    return Some(format!(
                        "systemd has a unit of that name ({state}) that is not fleet's"
                    ));
                }
            }
        }
        None
    }
}

impl Systemd {
    /// Whether unit `name`'s file in the units directory was written by fleet.
    pub fn owns(&self, name: &str) -> bool {
        validate_unit_name(name).is_ok() && written_by_fleet(&self.local_unit_file_path(name))
    }

    /// A snapshot of the units of this machine that are not fleet's (see the module documentation):
    /// one `Get(UnitPath)`, one `ListUnits`, and a listing of each directory of the search path.
    pub async fn host_units(&self) -> Result<HostUnits> {
        let search: Vec<String> = self
            .property(MANAGER_PATH, MANAGER_IFACE, "UnitPath")
            .await?;
        let ours = self.config().units_directory.clone();
        let root = self.config().fs_root.clone();
        let listed = self
            .manager()
            .list_units()
            .await
            .map_err(|e| Error::from_call("ListUnits", "", e))?;
        let local_ours = self.local_units_directory();
        let scan = tokio::task::spawn_blocking(move || {
            let mut h = HostUnits::default();
            for dir in &search {
                let dir = Path::new(dir);
                if same_dir(dir, &ours) {
                    continue;
                }
                let Ok(rd) = std::fs::read_dir(root.join(dir.strip_prefix("/").unwrap_or(dir)))
                else {
                    continue;
                };
                for e in rd.flatten() {
                    let Ok(name) = e.file_name().into_string() else {
                        continue;
                    };
                    if validate_unit_name(&name).is_err() || h.files.contains_key(&name) {
                        continue;
                    }
                    let Ok(ft) = e.file_type() else { continue };
                    if ft.is_dir() {
                        continue;
                    }
                    if ft.is_symlink() {
                        // fleet's runtime link (LinkUnitFiles) to its own file is not the host's.
                        if let Ok(target) = std::fs::read_link(e.path()) {
                            if target == ours.join(&name) {
                                continue;
                            }
                        }
                    }
                    h.files.insert(name, dir.join(e.file_name()));
                }
            }
            if let Ok(rd) = std::fs::read_dir(&local_ours) {
                for e in rd.flatten() {
                    let Ok(name) = e.file_name().into_string() else {
                        continue;
                    };
                    if validate_unit_name(&name).is_err() {
                        continue;
                    }
                    if written_by_fleet(&e.path()) {
                        h.fleets.insert(name);
                    } else {
                        h.strays.insert(name, ours.join(e.file_name()));
                    }
                }
            }
            h
        });
        let mut h = scan.await.map_err(|e| Error::Io {
            path: PathBuf::from("/"),
            source: std::io::Error::other(e.to_string()),
        })?;
        h.loaded = listed
            .into_iter()
            .map(|(name, _, load, ..)| (name, load))
            .collect();
        Ok(h)
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a.components().eq(b.components())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_a_comment_line_that_leaves_the_content_alone() {
        let text = "[Service]\nExecStart=/bin/true\n";
        let m = marked(text);
        assert!(is_marked(&m));
        assert!(!is_marked(text));
        assert!(!is_marked(&format!("{OWNER_MARKER}x\n")));
        assert_eq!(m.strip_prefix(OWNER_MARKER).unwrap(), format!("\n{text}"));
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.service"), dir.path().join("b.service"));
        std::fs::write(&a, &m).unwrap();
        std::fs::write(&b, text).unwrap();
        assert!(written_by_fleet(&a));
        assert!(!written_by_fleet(&b));
        assert!(!written_by_fleet(&dir.path().join("missing.service")));
    }

    #[test]
    fn foreign_names_files_templates_strays_and_loaded_units() {
        let mut h = HostUnits::default();
        h.files.insert(
            "ssh.service".into(),
            "/usr/lib/systemd/system/ssh.service".into(),
        );
        h.files.insert(
            "getty@.service".into(),
            "/usr/lib/systemd/system/getty@.service".into(),
        );
        h.strays.insert(
            "stray.service".into(),
            "/run/fleet/units/stray.service".into(),
        );
        h.loaded.insert("home.mount".into(), "loaded".into());
        h.loaded.insert("gone.service".into(), "not-found".into());
        h.loaded.insert("mine.service".into(), "loaded".into());
        h.fleets.insert("mine.service".into());
        h.fleets.insert("ssh.service".into());
        assert!(
            h.foreign("ssh.service").unwrap().contains("/usr/lib"),
            "a host file counts even when fleet's is in place"
        );
        assert!(h
            .foreign("getty@tty9.service")
            .unwrap()
            .contains("getty@.service"));
        assert!(h
            .foreign("stray.service")
            .unwrap()
            .contains("did not write"));
        assert!(h.foreign("home.mount").is_some());
        assert!(h.foreign("gone.service").is_none());
        assert!(h.foreign("mine.service").is_none());
        assert!(h.foreign("web@1.service").is_none());
    }
}
