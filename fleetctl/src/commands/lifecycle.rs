//! The verbs that create units and change their desired state: `submit`, `load`, `start`, `stop`,
//! `unload`, `destroy`, `cat`, `restart` (one request per unit, all sent at once: [`crate::client::Api::put_units`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};
use fleet_api_types::Unit;
use fleet_sched::{Requirements, UnitFile, UnitName};

use super::*;
use crate::args::BlockFlags;
use crate::client::Transport;
use crate::names;

impl<T: Transport> Ctx<T> {
    /// `submit`.
    pub async fn submit(&mut self, args: &[String], replace: bool) -> Result<()> {
        self.lazy_create(args, replace, CreateVerb::Submit).await?;
        Ok(())
    }

    /// Make sure every argument's unit exists in the cluster (fleet's `lazyCreateUnits`), creating it from
    /// the local file or a template. Returns the unit names.
    pub(super) async fn lazy_create(
        &mut self,
        args: &[String],
        replace: bool,
        verb: CreateVerb,
    ) -> Result<Vec<UnitName>> {
        let parsed = args
            .iter()
            .map(|a| unit_name(a).map(|n| (a.as_str(), n)))
            .collect::<Result<Vec<_>>>()?;
        // Many units: list the cluster's units once instead of one lookup per argument.
        let snapshot = if parsed.len() > BULK_THRESHOLD {
            let all = self
                .api
                .units()
                .await
                .context(worded!("Error retrieving list of units from fleetd"))?;
            Some(all.into_iter().map(|u| (u.name.clone(), u)).collect())
        } else {
            None
        };
        let mut known = Known {
            snapshot,
            planned: BTreeMap::new(),
        };
        let mut names = Vec::with_capacity(parsed.len());
        let mut seen = std::collections::BTreeSet::new();
        let mut to_create: Vec<(UnitName, UnitFile)> = Vec::new();
        for (arg, name) in parsed {
            // A unit named twice is handled once.
            if seen.insert(name.clone()) {
                if let Some(file) = self.ensure_unit(arg, &name, replace, verb, &known).await? {
                    known.planned.insert(
                        name.to_string(),
                        Unit {
                            name: name.to_string(),
                            options: file.options().to_vec(),
                            desired_state: Some(DesiredState::Inactive),
                            ..Unit::default()
                        },
                    );
                    to_create.push((name.clone(), file));
                }
                names.push(name);
            }
        }
        self.create_units(to_create).await?;
        Ok(names)
    }

    /// A unit about to be created in this run, else from the snapshot when there is one, else from
    /// fleetd.
    pub(super) async fn lookup(&mut self, name: &UnitName, known: &Known) -> Result<Option<Unit>> {
        if let Some(u) = known.planned.get(name.as_str()) {
            return Ok(Some(u.clone()));
        }
        match &known.snapshot {
            Some(map) => Ok(map.get(name.as_str()).cloned()),
            None => self.get_unit(name).await,
        }
    }

    /// What `arg` needs: `Some(file)` to create (or replace) unit `name` with, `None` when the stored
    /// unit stays as it is (with fleet's warnings when the local file differs).
    pub(super) async fn ensure_unit(
        &mut self,
        arg: &str,
        name: &UnitName,
        replace: bool,
        verb: CreateVerb,
        known: &Known,
    ) -> Result<Option<UnitFile>> {
        let local_path = names::local_path_of(arg);
        let existing = self.lookup(name, known).await?;
        let file = match existing {
            Some(stored) => {
                let stored_hash = stored_file(&stored)?.hash();
                let local = self.local_file(&local_path, name)?;
                let differs = local
                    .as_ref()
                    .map(|f| f.file.hash() != stored_hash)
                    .unwrap_or(false);
                if !replace {
                    if let (true, Some(f)) = (differs, &local) {
                        say!(
                            self.err,
                            "WARNING: Unit {name} in registry differs from local unit file {}. Add --replace to override.",
                            f.origin
                        );
                    }
                    return Ok(None);
                }
                let Some(local) = local else {
                    fail!(
                        "Error: cannot replace unit {name}: no local unit file {} (or template next to it)",
                        local_path.display()
                    );
                };
                if !differs {
                    say!(
                        self.out,
                        "Found same Unit({name}) in Registry, nothing to do"
                    );
                    return Ok(None);
                }
                if !verb.may_replace(stored.desired_state) {
                    say!(
                        self.err,
                        "Warning: can not replace Unit({name}) in state '{}' with {}, use the appropriate command",
                        word(&stored.desired_state),
                        verb.word()
                    );
                    return Ok(None);
                }
                local.file
            }
            None => self.find_new_unit_file(&local_path, name, known).await?,
        };
        Ok(Some(file))
    }

    /// The local file to compare a stored unit with: the argument's file, else (for an instance) the
    /// template file next to it.
    pub(super) fn local_file(&self, path: &Path, name: &UnitName) -> Result<Option<Found>> {
        if let Some(file) = read_unit_file(path)? {
            return Ok(Some(Found {
                file,
                origin: path.display().to_string(),
            }));
        }
        if let Some(template) = name.template() {
            let tpath = names::template_path_next_to(path, template.as_str());
            if let Some(file) = read_unit_file(&tpath)? {
                return Ok(Some(Found {
                    file,
                    origin: tpath.display().to_string(),
                }));
            }
        }
        Ok(None)
    }

    /// Where a unit that is not in the cluster comes from: the local file, else the template in the
    /// cluster, else the template file next to the argument.
    pub(super) async fn find_new_unit_file(
        &mut self,
        path: &Path,
        name: &UnitName,
        known: &Known,
    ) -> Result<UnitFile> {
        if let Some(file) = read_unit_file(path)? {
            return Ok(file);
        }
        let Some(template) = name.template() else {
            fail!(
                "Error: unable to find unit {name} in the cluster or on the filesystem (no file {})",
                path.display()
            );
        };
        let tpath: PathBuf = names::template_path_next_to(path, template.as_str());
        if let Some(stored) = self.lookup(&template, known).await? {
            let file = stored_file(&stored)?;
            if let Ok(Some(local)) = read_unit_file(&tpath) {
                if local.hash() != file.hash() {
                    say!(
                        self.err,
                        "WARNING: Unit {template} in registry differs from local template unit file {}. Add --replace to override.",
                        tpath.display()
                    );
                }
            }
            return Ok(file);
        }
        match read_unit_file(&tpath)? {
            Some(file) => Ok(file),
            None => fail!(
                "Error: unable to find unit {name} or its template {template} in the cluster or on the filesystem (no file {} or {})",
                path.display(),
                tpath.display()
            ),
        }
    }

    /// Check every unit's `[X-Fleet]` (any error stops everything before a request is sent), print
    /// their warnings, PUT them all at once ([`Api::put_units`]), print `Unit X inactive` for each in
    /// order. Units that could not be created are reported after the others.
    pub(super) async fn create_units(&mut self, units: Vec<(UnitName, UnitFile)>) -> Result<()> {
        let mut api_units = Vec::with_capacity(units.len());
        for (name, file) in units {
            let req = Requirements::from_unit(&name, &file).map_err(|e| {
                worded_err!("Error creating unit {name}: invalid [X-Fleet] options: {e}")
            })?;
            for w in &req.warnings {
                say!(self.err, "WARNING: Unit {name}: {w}");
            }
            api_units.push(Unit {
                name: name.to_string(),
                options: file.into_options(),
                ..Unit::default()
            });
        }
        let results = self.api.put_units(&api_units).await;
        let mut failed = Vec::new();
        for (u, r) in api_units.iter().zip(results) {
            match r {
                Ok(()) => say!(self.out, "Unit {} inactive", u.name),
                Err(e) => failed
                    .push(anyhow::Error::new(e).context(worded!("Error creating unit {}", u.name))),
            }
        }
        batch_result(&mut self.err, failed, "units could not be created")
    }

    /// `load` (`target` = loaded) and `start` (`target` = launched).
    pub async fn activate(
        &mut self,
        args: &[String],
        replace: bool,
        block: &BlockFlags,
        verb: CreateVerb,
    ) -> Result<()> {
        let (target, word) = match verb {
            CreateVerb::Load => (DesiredState::Loaded, "load"),
            CreateVerb::Start => (DesiredState::Launched, "start"),
            CreateVerb::Submit => unreachable!("submit does not activate"),
        };
        // A template can never be loaded or launched: say so before creating anything.
        for arg in args {
            let name = unit_name(arg)?;
            if name.is_template() {
                fail!(
                    "Error: unit {name} is a template: it can be submitted but not {target}; {word} an instance such as {}@1.{}",
                    name.prefix(),
                    name.suffix()
                );
            }
        }
        let names = self.lazy_create(args, replace, verb).await?;
        self.set_states(&names, target).await?;
        if block.no_block {
            for name in &names {
                say!(self.out, "Triggered unit {name} {word}");
            }
            return Ok(());
        }
        self.wait_for(&names, target, block.block_attempts).await
    }

    /// Sets the desired state of every unit of `names` to `target`, all at once.
    pub(super) async fn set_states(
        &mut self,
        names: &[UnitName],
        target: DesiredState,
    ) -> Result<()> {
        let strs: Vec<&str> = names.iter().map(UnitName::as_str).collect();
        let results = self.api.set_desired_states(&strs, target).await;
        let failed: Vec<anyhow::Error> = names
            .iter()
            .zip(results)
            .filter_map(|(name, r)| {
                r.err().map(|e| {
                    anyhow::Error::new(e).context(worded!(
                        "Error setting target state of unit {name} to {target}"
                    ))
                })
            })
            .collect();
        batch_result(&mut self.err, failed, "desired states could not be set")
    }

    /// Look up every argument's unit; all must exist.
    pub(super) async fn existing_units(&mut self, args: &[String]) -> Result<Vec<Unit>> {
        let mut units = Vec::with_capacity(args.len());
        for arg in args {
            let name = unit_name(arg)?;
            match self.get_unit(&name).await? {
                Some(u) => units.push(u),
                None => fail!("Error: unit {name} does not exist in the cluster"),
            }
        }
        Ok(units)
    }

    /// `stop`: desired state loaded; an inactive unit cannot be stopped.
    pub async fn stop(&mut self, args: &[String], block: &BlockFlags) -> Result<()> {
        let units = self.existing_units(args).await?;
        for u in &units {
            if u.desired_state == Some(DesiredState::Inactive) && !is_global(u) {
                fail!(
                    "Error: unable to stop unit {} in state inactive (it is not loaded; nothing to stop)",
                    u.name
                );
            }
        }
        self.change_state(units, DesiredState::Loaded, "stop", block)
            .await
    }

    /// `unload`: desired state inactive.
    pub async fn unload(&mut self, args: &[String], block: &BlockFlags) -> Result<()> {
        let units = self.existing_units(args).await?;
        self.change_state(units, DesiredState::Inactive, "unload", block)
            .await
    }

    pub(super) async fn change_state(
        &mut self,
        units: Vec<Unit>,
        target: DesiredState,
        word: &str,
        block: &BlockFlags,
    ) -> Result<()> {
        let mut change: Vec<(UnitName, bool)> = Vec::new();
        for u in units {
            let global = is_global(&u);
            if !global && u.desired_state == Some(target) && u.current_state == Some(target) {
                continue; // already there
            }
            let name = UnitName::parse(&u.name)
                .map_err(|e| anyhow!("fleetd returned an invalid unit name {:?}: {e}", u.name))?;
            change.push((name, global));
        }
        let names: Vec<UnitName> = change.iter().map(|(n, _)| n.clone()).collect();
        self.set_states(&names, target).await?;
        let mut wait = Vec::new();
        for (name, global) in change {
            if global {
                say!(self.out, "Triggered global unit {name} {word}");
            } else if block.no_block {
                say!(self.out, "Triggered unit {name} {word}");
            } else {
                wait.push(name);
            }
        }
        if wait.is_empty() {
            return Ok(());
        }
        self.wait_for(&wait, target, block.block_attempts).await
    }

    /// `destroy`: missing units are skipped silently, as in fleet.
    pub async fn destroy(&mut self, args: &[String]) -> Result<()> {
        let names = args
            .iter()
            .map(|a| unit_name(a))
            .collect::<Result<Vec<_>>>()?;
        for name in names {
            if self
                .api
                .destroy_unit(name.as_str())
                .await
                .with_context(|| worded!("Error destroying unit {name}"))?
            {
                say!(self.out, "Destroyed {name}");
            }
        }
        Ok(())
    }

    /// `cat`: the stored unit file, exactly as fleet serializes it.
    pub async fn cat(&mut self, arg: &str) -> Result<()> {
        let name = unit_name(arg)?;
        let Some(u) = self.get_unit(&name).await? else {
            fail!("Error: unit {name} not found");
        };
        let text = stored_file(&u)?.serialize();
        self.write_out(&text)
    }

    /// `restart`: a launched unit is restarted by systemd on every machine running it (only `machine`,
    /// when given), printing `Restarted unit X on ID.../IP` per machine; failures are printed per
    /// machine and make the result an error. A unit that is loaded or inactive is started instead
    /// (as fleet's restart did), waiting as `start` does.
    pub async fn restart(
        &mut self,
        args: &[String],
        machine: Option<&str>,
        block: &BlockFlags,
    ) -> Result<()> {
        let mut names = Vec::with_capacity(args.len());
        let mut to_start = Vec::new();
        for u in self.existing_units(args).await? {
            let name = UnitName::parse(&u.name)
                .map_err(|e| anyhow!("fleetd returned an invalid unit name {:?}: {e}", u.name))?;
            // As fleet's restart: a unit that is not meant to run is started.
            if u.desired_state == Some(DesiredState::Launched) {
                names.push(name);
            } else {
                to_start.push(name);
            }
        }
        for name in &to_start {
            self.api
                .set_desired_state(name.as_str(), DesiredState::Launched)
                .await
                .with_context(|| {
                    worded!("Error setting target state of unit {name} to launched")
                })?;
        }
        if block.no_block {
            for name in &to_start {
                say!(self.out, "Triggered unit {name} start");
            }
        } else if !to_start.is_empty() {
            self.wait_for(&to_start, DesiredState::Launched, block.block_attempts)
                .await?;
        }
        let mut failed = 0;
        for name in &names {
            let results = match self.api.restart_unit(name.as_str(), machine).await {
                Ok(r) => r,
                Err(e) if e.api_status() == Some(404) => {
                    fail!("Error: unit {name} does not exist")
                }
                Err(e) => return Err(e).with_context(|| worded!("Error restarting {name}")),
            };
            for r in results {
                let legend = self.legend(&r.machine_id).await;
                match r.error {
                    None => say!(self.out, "Restarted unit {name} on {legend}"),
                    Some(e) => {
                        failed += 1;
                        say!(self.err, "Error restarting unit {name} on {legend}: {e}");
                    }
                }
            }
        }
        if failed > 0 {
            let plural = if failed == 1 { "" } else { "s" };
            fail!("Error: {failed} restart{plural} failed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::testutil::*;

    #[test]
    pub(super) fn no_block_only_triggers() {
        let stored = r#"{"name":"a.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}],"desiredState":"inactive"}"#;
        let (mut c, out, _) = ctx(&[(200, stored), (204, "")]);
        let flags = BlockFlags {
            no_block: true,
            block_attempts: 10,
        };
        block(c.activate(&["a".into()], false, &flags, CreateVerb::Load)).unwrap();
        assert_eq!(out.text(), "Triggered unit a.service load\n");
    }

    #[test]
    pub(super) fn templates_cannot_be_started_and_bad_names_are_refused_before_any_request() {
        let (mut c, _, _) = ctx(&[]);
        let flags = BlockFlags {
            no_block: true,
            block_attempts: 1,
        };
        let e = block(c.activate(&["web@.service".into()], false, &flags, CreateVerb::Start))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a template"), "{e}");
        let e = block(c.submit(&["bad$name".into()], false))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("Error: invalid unit name \"bad$name.service\""),
            "{e}"
        );
        assert!(c.api.transport().requests.is_empty());
    }

    #[test]
    pub(super) fn api_errors_are_printed_with_what_was_being_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.service");
        std::fs::write(&path, "[Service]\nExecStart=/bin/true\n").unwrap();
        let (mut c, out, _) = ctx(&[
            (
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
            (
                503,
                r#"{"error":{"code":503,"message":"fleet server unable to communicate with etcd"}}"#,
            ),
        ]);
        let e = block(c.submit(&[path.display().to_string()], false)).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "Error creating unit a.service: fleet server unable to communicate with etcd"
        );
        assert_eq!(out.text(), "");
    }

    #[test]
    pub(super) fn stopping_an_inactive_unit_is_an_error() {
        let stored = r#"{"name":"a.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}],"desiredState":"inactive","currentState":"inactive"}"#;
        let (mut c, _, _) = ctx(&[(200, stored)]);
        let flags = BlockFlags {
            no_block: false,
            block_attempts: 1,
        };
        let e = block(c.stop(&["a".into()], &flags))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unable to stop unit a.service in state inactive"),
            "{e}"
        );
        assert_eq!(c.api.transport().requests.len(), 1);
    }

    #[test]
    pub(super) fn submit_warns_when_the_local_file_differs_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.service");
        std::fs::write(&path, "[Service]\nExecStart=/bin/false\n").unwrap();
        let stored = r#"{"name":"a.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}],"desiredState":"inactive"}"#;
        let (mut c, out, err) = ctx(&[(200, stored)]);
        block(c.submit(&[path.display().to_string()], false)).unwrap();
        assert_eq!(out.text(), "");
        assert!(
            err.text().contains("differs from local unit file") && err.text().contains("--replace"),
            "{}",
            err.text()
        );
    }

    #[test]
    pub(super) fn submit_of_an_instance_uses_the_template_file_next_to_it_and_warns_about_unknown_keys(
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("web@.service"),
            "[Service]\nExecStart=/bin/echo %i\n[X-Fleet]\nFoo=bar\n",
        )
        .unwrap();
        let (mut c, out, err) = ctx(&[
            (
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
            (
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
            (201, ""),
        ]);
        let arg = dir.path().join("web@1").display().to_string();
        block(c.submit(&[arg], false)).unwrap();
        assert_eq!(out.text(), "Unit web@1.service inactive\n");
        assert!(err.text().contains("\"Foo\""), "{}", err.text());
        let reqs: Vec<_> = c
            .api
            .transport()
            .requests
            .iter()
            .map(|r| r.0.clone())
            .collect();
        assert_eq!(
            reqs,
            [
                "GET /fleet/v1/units/web%401.service",
                "GET /fleet/v1/units/web%40.service",
                "PUT /fleet/v1/units/web%401.service",
            ]
        );
    }

    #[test]
    pub(super) fn rejected_x_fleet_combinations_fail_before_sending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.service");
        std::fs::write(
            &path,
            "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineID=abc\nGlobal=true\n",
        )
        .unwrap();
        let (mut c, out, _) = ctx(&[(
            404,
            r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
        )]);
        let e = block(c.submit(&[path.display().to_string()], false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("MachineID cannot be used with Global"), "{e}");
        assert_eq!(out.text(), "");
        assert_eq!(c.api.transport().requests.len(), 1);
    }

    #[test]
    pub(super) fn restart_prints_every_machine_and_fails_when_one_failed() {
        let block_flags = BlockFlags {
            no_block: false,
            block_attempts: 3,
        };
        let (mut c, out, err) = ctx(&[
            (200, r#"{"name":"g.service","desiredState":"launched"}"#),
            (
                200,
                r#"{"restarts":[{"machineID":"113f16a7aa"},{"machineID":"2cb2e8a6ee","error":"the restart failed: job failed"}]}"#,
            ),
            (200, MACHINES_2),
        ]);
        let e = block(c.restart(&["g".into()], None, &block_flags)).unwrap_err();
        assert_eq!(format!("{e:#}"), "Error: 1 restart failed");
        assert_eq!(
            out.text(),
            "Restarted unit g.service on 113f16a7.../10.0.0.1\n"
        );
        assert_eq!(
            err.text(),
            "Error restarting unit g.service on 2cb2e8a6.../10.0.0.3: the restart failed: job failed\n"
        );
        assert_eq!(
            c.api.transport().requests[1].0,
            "POST /fleet/v1/units/g.service/restart"
        );

        let (mut c, _, _) = ctx(&[
            (200, r#"{"name":"x.service","desiredState":"launched"}"#),
            (
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
        ]);
        let e = block(c.restart(&["x".into()], Some("m1"), &block_flags)).unwrap_err();
        assert_eq!(format!("{e:#}"), "Error: unit x.service does not exist");
        assert_eq!(
            c.api.transport().requests[1].0,
            "POST /fleet/v1/units/x.service/restart?machineID=m1"
        );
        let (mut c, _, _) = ctx(&[(
            404,
            r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
        )]);
        let e = block(c.restart(&["x".into()], None, &block_flags)).unwrap_err();
        assert!(
            format!("{e:#}").contains("x.service does not exist"),
            "{e:#}"
        );
    }

    #[test]
    pub(super) fn restart_starts_a_unit_that_is_loaded_or_inactive() {
        let block_flags = BlockFlags {
            no_block: false,
            block_attempts: 3,
        };
        let (mut c, out, _) = ctx(&[
            (200, r#"{"name":"a.service","desiredState":"loaded"}"#),
            (204, ""),
            (
                200,
                r#"{"name":"a.service","desiredState":"launched","currentState":"launched","machineID":"113f16a7aa"}"#,
            ),
            (200, MACHINES_2),
        ]);
        block(c.restart(&["a".into()], None, &block_flags)).unwrap();
        assert_eq!(
            out.text(),
            "Unit a.service launched on 113f16a7.../10.0.0.1\n"
        );
        let reqs: Vec<&str> = c
            .api
            .transport()
            .requests
            .iter()
            .map(|r| r.0.as_str())
            .collect();
        assert_eq!(reqs[1], "PUT /fleet/v1/units/a.service");
        assert!(!reqs.iter().any(|r| r.ends_with("/restart")), "{reqs:?}");
        let (mut c, out, _) = ctx(&[
            (200, r#"{"name":"a.service","desiredState":"inactive"}"#),
            (204, ""),
        ]);
        let no_block = BlockFlags {
            no_block: true,
            block_attempts: 3,
        };
        block(c.restart(&["a".into()], None, &no_block)).unwrap();
        assert_eq!(out.text(), "Triggered unit a.service start\n");
    }
}
