//! Verbs answered on the unit's machine: `status`, `journal` (with `--follow`), and the target of `ssh`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use fleet_api_types::Machine;
use fleet_sched::{MachineId, UnitName};

use super::*;
use crate::args::{JournalArgs, SshArgs};
use crate::client::Transport;

impl<T: Transport> Ctx<T> {
    /// `status`: `systemctl status` of each unit, from the machine running it (every machine running
    /// it, for a global unit, unless `machine` picks one), an empty line between units as in fleet.
    /// Returns systemctl's last non-zero exit code (fleet exited with it), else 0.
    pub async fn status(&mut self, args: &[String], machine: Option<&str>) -> Result<i32> {
        let names = args
            .iter()
            .map(|a| unit_name(a))
            .collect::<Result<Vec<_>>>()?;
        let mut code = 0;
        for (i, name) in names.iter().enumerate() {
            let Some(u) = self.get_unit(name).await? else {
                fail!("Error: unit {name} does not exist");
            };
            let machines: Vec<Option<String>> = match machine {
                Some(m) => vec![Some(m.to_string())],
                None if is_global(&u) => {
                    let ids = self.machines_running(name).await?;
                    if ids.is_empty() {
                        vec![None]
                    } else {
                        ids.into_iter().map(|m| Some(m.to_string())).collect()
                    }
                }
                None => vec![None],
            };
            for (j, m) in machines.iter().enumerate() {
                if i > 0 || j > 0 {
                    say!(self.out, "");
                }
                let o = self
                    .api
                    .unit_status(name.as_str(), STATUS_LINES, m.as_deref())
                    .await
                    .with_context(|| worded!("Error retrieving the status of {name}"))?;
                if machines.len() > 1 {
                    let legend = self.legend(&o.machine_id).await;
                    say!(self.out, "{name} on {legend}:");
                }
                self.write_out(&o.text)?;
                if let Some(c) = o.exit_code.filter(|c| *c != 0) {
                    code = c;
                }
            }
        }
        Ok(code)
    }

    /// `journal`: the last `--lines` lines of the unit's journal, read on its machine; with
    /// `--follow`, then every poll interval the lines logged since, until `stop` resolves (Ctrl-C).
    /// While following, a machine that does not answer is retried (with one warning) for
    /// [`FOLLOW_PATIENCE`]; when the unit moves to another machine, following continues there.
    pub async fn journal(
        &mut self,
        a: &JournalArgs,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        let name = unit_name(&a.unit)?;
        if a.output != "short" {
            fail!("Error: --output {} is not supported (only short)", a.output);
        }
        let what = || worded!("Error reading the journal of {name}");
        let first = match self
            .api
            .unit_journal(name.as_str(), a.lines, None, a.machine.as_deref())
            .await
        {
            Ok(o) => o,
            Err(e) if e.api_status() == Some(409) && !e.choose_from().is_empty() => {
                // A global unit on several machines: read it on each of them.
                let machines = self.machines_running(&name).await?;
                if machines.len() < 2 {
                    bail!("{}: {e}; pick one with --machine ID", what())
                }
                return self.journal_many(&name, a, machines, stop).await;
            }
            Err(e) => return Err(e).with_context(what),
        };
        self.write_out(&first.text)?;
        if !a.follow {
            return Ok(());
        }
        tokio::pin!(stop);
        let mut cursor = first.cursor;
        // Follow the journal of one machine: a cursor means nothing on another one.
        let mut on = Some(first.machine_id);
        let mut failing_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
            let machine = a.machine.as_deref().or(on.as_ref().map(MachineId::as_str));
            let res = tokio::select! {
                _ = &mut stop => return Ok(()),
                r = self.api.unit_journal(name.as_str(), FOLLOW_BATCH, cursor.as_deref(), machine) => r,
            };
            match res {
                Ok(o) => {
                    failing_since = None;
                    self.write_out(&o.text)?;
                    if on.as_ref() != Some(&o.machine_id) {
                        on = Some(o.machine_id);
                    }
                    if o.cursor.is_some() {
                        cursor = o.cursor;
                    }
                }
                Err(e) if e.api_status() == Some(404) => return Err(e).with_context(what),
                Err(e) => {
                    if e.api_status() == Some(409) && a.machine.is_none() {
                        if let Some(left) = on.take() {
                            // Not on that machine any more: follow it wherever it runs now.
                            say!(self.err, "{name} left machine {left}: {e}");
                            cursor = None;
                        }
                    }
                    let first_failure = failing_since.is_none();
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= FOLLOW_PATIENCE {
                        return Err(e).with_context(what);
                    }
                    if first_failure {
                        say!(self.err, "WARNING: {e}; retrying");
                    }
                }
            }
        }
    }

    /// The machines that report `name` (sorted, each once).
    pub(super) async fn machines_running(&mut self, name: &UnitName) -> Result<Vec<MachineId>> {
        let mut ids: Vec<MachineId> = self
            .api
            .unit_states(Some(name.as_str()))
            .await
            .with_context(|| worded!("Error retrieving the machines running {name}"))?
            .into_iter()
            .filter_map(|s| s.machine_id)
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// `journal` of a global unit on several machines: each machine's last lines under a heading;
    /// with `--follow`, every poll interval each machine's new lines, under a heading whenever the
    /// machine changes, until `stop` resolves. Machines that start running the unit are picked up
    /// (every [`FOLLOW_REFRESH`] polls); one that fails is warned about once and retried.
    pub(super) async fn journal_many(
        &mut self,
        name: &UnitName,
        a: &JournalArgs,
        machines: Vec<MachineId>,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(stop);
        let what = || worded!("Error reading the journal of {name}");
        // Per machine: the cursor to continue from (None before the first answer), whether it failed.
        let mut cursors: BTreeMap<MachineId, (Option<String>, bool)> =
            machines.into_iter().map(|m| (m, (None, false))).collect();
        let mut last_shown: Option<MachineId> = None;
        let mut first_round = true;
        let mut polls = 0u32;
        loop {
            if !first_round {
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = tokio::time::sleep(self.poll_interval) => {}
                }
                polls += 1;
                if polls.is_multiple_of(FOLLOW_REFRESH) {
                    if let Ok(now) = self.machines_running(name).await {
                        for m in now {
                            cursors.entry(m).or_insert((None, false));
                        }
                    }
                }
            }
            let ids: Vec<MachineId> = cursors.keys().cloned().collect();
            for m in ids {
                let (cursor, _) = cursors.get(&m).cloned().unwrap_or_default();
                let lines = if cursor.is_some() {
                    FOLLOW_BATCH
                } else {
                    a.lines
                };
                let res = tokio::select! {
                    _ = &mut stop => return Ok(()),
                    r = self.api.unit_journal(name.as_str(), lines, cursor.as_deref(), Some(m.as_str())) => r,
                };
                match res {
                    Ok(o) => {
                        let entry = cursors.entry(m.clone()).or_default();
                        entry.1 = false;
                        if o.cursor.is_some() {
                            entry.0 = o.cursor;
                        }
                        let heading = first_round || !o.text.is_empty();
                        if heading && last_shown.as_ref() != Some(&m) {
                            if last_shown.is_some() {
                                say!(self.out, "");
                            }
                            let legend = self.legend(&m).await;
                            say!(self.out, "{name} on {legend}:");
                            last_shown = Some(m.clone());
                        }
                        self.write_out(&o.text)?;
                    }
                    Err(e) if e.api_status() == Some(404) => return Err(e).with_context(what),
                    Err(e) if !a.follow => return Err(e).with_context(what),
                    Err(e) => {
                        let entry = cursors.entry(m.clone()).or_default();
                        if !entry.1 {
                            say!(self.err, "WARNING: {e}; retrying");
                        }
                        entry.1 = true;
                    }
                }
            }
            if !a.follow {
                return Ok(());
            }
            first_round = false;
        }
    }

    /// `ssh`: the IP address to connect to and the remote command, from `--machine`, `--unit` or the
    /// first argument (a machine ID prefix, else a unit).
    pub async fn ssh_target(&mut self, a: &SshArgs) -> Result<(String, Vec<String>)> {
        let (machine, command) = if let Some(m) = &a.machine {
            (self.machine_by_prefix(m).await?, a.args.clone())
        } else if let Some(u) = &a.unit {
            let name = unit_name(u)?;
            let Some(m) = self.machine_of_unit(&name).await? else {
                fail!("Error: unit {name} does not exist");
            };
            (m, a.args.clone())
        } else {
            let Some((target, command)) = a.args.split_first() else {
                fail!("Error: one machine or unit must be provided");
            };
            let machine = match self.machine_by_prefix(target).await {
                Ok(m) => m,
                Err(not_a_machine) => {
                    let found = match unit_name(target) {
                        Ok(n) => self.machine_of_unit(&n).await?,
                        Err(_) => None,
                    };
                    found.ok_or_else(|| {
                        not_a_machine
                            .context(worded!("Error: {target:?} is neither a machine nor a unit"))
                    })?
                }
            };
            (machine, command.to_vec())
        };
        if machine.primary_ip.is_empty() {
            fail!("Error: machine {} has no known IP address", machine.id);
        }
        Ok((machine.primary_ip, command))
    }

    /// The one machine whose ID starts with `prefix`.
    pub(super) async fn machine_by_prefix(&mut self, prefix: &str) -> Result<Machine> {
        let found: Vec<Machine> = self
            .machine_map(false)
            .await?
            .values()
            .filter(|m| !prefix.is_empty() && m.id.as_str().starts_with(prefix))
            .cloned()
            .collect();
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => fail!("Error: no machine ID starts with {prefix:?}"),
            many => fail!(
                "Error: {prefix:?} matches {} machines ({}): give more of the ID",
                many.len(),
                many.iter()
                    .map(|m| m.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The machine `name` runs on (a global unit: only when it runs on exactly one); `None` when
    /// there is no such unit.
    pub(super) async fn machine_of_unit(&mut self, name: &UnitName) -> Result<Option<Machine>> {
        let Some(u) = self.get_unit(name).await? else {
            return Ok(None);
        };
        let id = if is_global(&u) {
            match self.machines_running(name).await?.as_slice() {
                [one] => one.clone(),
                [] => fail!("Error: global unit {name} is not running on any machine"),
                many => fail!(
                    "Error: global unit {name} runs on {} machines ({}): pick one with --machine",
                    many.len(),
                    many.iter()
                        .map(MachineId::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        } else if let Some(id) = u.machine_id {
            id
        } else {
            fail!("Error: unit {name} is not running on any machine");
        };
        let known = self.machine_map(false).await?.get(&id).cloned();
        match known {
            Some(m) => Ok(Some(m)),
            None => self
                .machine_map(true)
                .await?
                .get(&id)
                .cloned()
                .map(Some)
                .ok_or_else(|| worded_err!("Error: unit {name} is on machine {id}, which is gone")),
        }
    }
}

#[cfg(test)]
mod tests {

    use crate::commands::testutil::*;

    #[test]
    pub(super) fn status_prints_each_units_status_and_returns_systemctls_last_failure() {
        let (mut c, out, _) = ctx(&[
            (200, UNIT_A),
            (
                200,
                r#"{"machineID":"m2","text":"A is running\n","exitCode":0}"#,
            ),
            (200, UNIT_B),
            (
                200,
                r#"{"machineID":"m2","text":"B is dead\n","exitCode":3}"#,
            ),
        ]);
        let code = block(c.status(&["a".into(), "b".into()], None)).unwrap();
        assert_eq!(code, 3);
        assert_eq!(out.text(), "A is running\n\nB is dead\n");
        let paths: Vec<&str> = c
            .api
            .transport()
            .requests
            .iter()
            .map(|r| r.0.as_str())
            .collect();
        assert_eq!(
            paths,
            [
                "GET /fleet/v1/units/a.service",
                "GET /fleet/v1/units/a.service/status?lines=10",
                "GET /fleet/v1/units/b.service",
                "GET /fleet/v1/units/b.service/status?lines=10",
            ]
        );
    }

    #[test]
    pub(super) fn status_of_a_missing_unit_is_an_error() {
        let (mut c, out, _) = ctx(&[(
            404,
            r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
        )]);
        let e = block(c.status(&["nope".into()], None)).unwrap_err();
        assert_eq!(format!("{e:#}"), "Error: unit nope.service does not exist");
        assert_eq!(out.text(), "");
    }

    #[test]
    pub(super) fn journal_prints_the_last_lines_once_without_follow() {
        let (mut c, out, _) = ctx(&[(
            200,
            r#"{"machineID":"m2","text":"l1\nl2\nl3\n","cursor":"c3"}"#,
        )]);
        block(c.journal(&journal_args(false), std::future::pending())).unwrap();
        assert_eq!(out.text(), "l1\nl2\nl3\n");
        assert_eq!(
            c.api.transport().requests[0].0,
            "GET /fleet/v1/units/a.service/journal?lines=3"
        );
    }

    #[test]
    pub(super) fn follow_continues_from_the_last_cursor_on_the_same_machine_and_stops_when_told() {
        let (mut c, out, _) = ctx(&[(200, r#"{"machineID":"m2","text":"l1\n","cursor":"c1"}"#)]);
        block(c.journal(&journal_args(true), std::future::ready(()))).unwrap();
        assert_eq!(out.text(), "l1\n");
        assert_eq!(c.api.transport().requests.len(), 1);

        let conflict = r#"{"error":{"code":409,"message":"unit is not running on machine m2"}}"#;
        let (mut c, out, err) = ctx(&[
            (200, r#"{"machineID":"m2","text":"l1\n","cursor":"c1"}"#),
            (200, r#"{"machineID":"m2","text":""}"#),
            (200, r#"{"machineID":"m2","text":"l2\nl3\n","cursor":"c3"}"#),
            (
                504,
                r#"{"error":{"code":504,"message":"machine m2 did not answer in time"}}"#,
            ),
            (200, r#"{"machineID":"m2","text":"l4\n","cursor":"c4"}"#),
            (409, conflict),
            (200, r#"{"machineID":"m3","text":"n1\n","cursor":"d1"}"#),
            (
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
        ]);
        let e = block(c.journal(&journal_args(true), std::future::pending())).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "Error reading the journal of a.service: unit does not exist"
        );
        assert_eq!(out.text(), "l1\nl2\nl3\nl4\nn1\n");
        assert!(err
            .text()
            .contains("WARNING: machine m2 did not answer in time; retrying"));
        assert!(
            err.text().contains("a.service left machine m2"),
            "{}",
            err.text()
        );
        let paths: Vec<String> = c
            .api
            .transport()
            .requests
            .iter()
            .map(|r| {
                r.0.trim_start_matches("GET /fleet/v1/units/a.service/journal?")
                    .to_string()
            })
            .collect();
        assert_eq!(
            paths,
            [
                "lines=3",
                "lines=1000&cursor=c1&machineID=m2",
                "lines=1000&cursor=c1&machineID=m2",
                "lines=1000&cursor=c3&machineID=m2",
                "lines=1000&cursor=c3&machineID=m2",
                "lines=1000&cursor=c4&machineID=m2",
                "lines=1000",
                "lines=1000&cursor=d1&machineID=m3",
            ]
        );
    }

    #[test]
    pub(super) fn ssh_finds_a_machine_by_unique_id_prefix_and_keeps_the_command() {
        let (mut c, _, _) = ctx(&[(200, MACHINES_2)]);
        let (ip, cmd) = block(c.ssh_target(&ssh_args(&["2cb", "ls", "-l"]))).unwrap();
        assert_eq!(
            (ip.as_str(), cmd),
            ("10.0.0.3", vec!["ls".into(), "-l".into()])
        );

        // An ambiguous prefix names the candidates (and is no unit either).
        let (mut c, _, _) = ctx(&[
            (200, MACHINES_2),
            (
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
        ]);
        let e = block(c.ssh_target(&ssh_args(&["113f"]))).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("matches 2 machines (113f16a7aa, 113f99bbcc)"),
            "{msg}"
        );
    }

    #[test]
    pub(super) fn ssh_to_a_unit_goes_to_its_machine_and_a_global_one_needs_a_machine() {
        let placed = r#"{"name":"web.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/a"}],"desiredState":"launched","machineID":"2cb2e8a6ee"}"#;
        let (mut c, _, _) = ctx(&[(200, MACHINES_2), (200, placed)]);
        let (ip, cmd) = block(c.ssh_target(&ssh_args(&["web", "hostname"]))).unwrap();
        assert_eq!(
            (ip.as_str(), cmd),
            ("10.0.0.3", vec!["hostname".to_string()])
        );

        // --unit: every argument is the command.
        let (mut c, _, _) = ctx(&[(200, placed), (200, MACHINES_2)]);
        let mut a = ssh_args(&["2cb", "x"]);
        a.unit = Some("web".into());
        let (_, cmd) = block(c.ssh_target(&a)).unwrap();
        assert_eq!(cmd, ["2cb", "x"]);

        let global = r#"{"name":"g.service","options":[{"section":"X-Fleet","name":"Global","value":"true"}],"desiredState":"launched"}"#;
        let states = r#"{"states":[{"name":"g.service","machineID":"113f16a7aa"},{"name":"g.service","machineID":"2cb2e8a6ee"}]}"#;
        let (mut c, _, _) = ctx(&[(200, global), (200, states)]);
        let mut a = ssh_args(&[]);
        a.unit = Some("g".into());
        let e = block(c.ssh_target(&a)).unwrap_err();
        assert!(
            format!("{e:#}")
                .contains("runs on 2 machines (113f16a7aa, 2cb2e8a6ee): pick one with --machine"),
            "{e:#}"
        );
        let e = block(ctx(&[]).0.ssh_target(&ssh_args(&[]))).unwrap_err();
        assert!(format!("{e:#}").contains("one machine or unit"), "{e:#}");
    }

    /// fleetctl reads the machines to choose from in the error document, never in its message.
    #[test]
    fn a_conflict_that_names_no_machines_to_choose_from_is_an_error_whatever_it_says() {
        let (mut c, _, _) = ctx(&[(
            409,
            r#"{"error":{"code":409,"message":"global unit a.service runs on 2 machines (m1, m2); choose one with machineID="}}"#,
        )]);
        let e = block(c.journal(&journal_args(false), std::future::pending())).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "Error reading the journal of a.service: global unit a.service runs on 2 machines (m1, m2); choose one with machineID="
        );
        assert_eq!(c.api.transport().requests.len(), 1);
    }

    #[test]
    pub(super) fn journal_of_a_global_unit_reads_each_machine_under_a_heading_and_follows_them_all()
    {
        let several = r#"{"error":{"code":409,"message":"global unit a.service runs on 2 machines (113f16a7aa, 2cb2e8a6ee); choose one with machineID=","machineIDs":["113f16a7aa","2cb2e8a6ee"]}}"#;
        let states = r#"{"states":[{"name":"a.service","machineID":"2cb2e8a6ee"},{"name":"a.service","machineID":"113f16a7aa"}]}"#;
        let (mut c, out, err) = ctx(&[
            (409, several),
            (200, states),
            (
                200,
                r#"{"machineID":"113f16a7aa","text":"a1\n","cursor":"a1"}"#,
            ),
            (200, MACHINES_2),
            (
                200,
                r#"{"machineID":"2cb2e8a6ee","text":"b1\n","cursor":"b1"}"#,
            ),
            // Following: nothing new on the first, two lines on the second, then the first again.
            (200, r#"{"machineID":"113f16a7aa","text":""}"#),
            (
                200,
                r#"{"machineID":"2cb2e8a6ee","text":"b2\nb3\n","cursor":"b3"}"#,
            ),
            (
                200,
                r#"{"machineID":"113f16a7aa","text":"a2\n","cursor":"a2"}"#,
            ),
            (
                504,
                r#"{"error":{"code":504,"message":"machine 2cb2e8a6ee did not answer in time"}}"#,
            ),
            (
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
        ]);
        let e = block(c.journal(&journal_args(true), std::future::pending())).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "Error reading the journal of a.service: unit does not exist"
        );
        assert_eq!(
            out.text(),
            "a.service on 113f16a7.../10.0.0.1:\na1\n\n\
             a.service on 2cb2e8a6.../10.0.0.3:\nb1\nb2\nb3\n\n\
             a.service on 113f16a7.../10.0.0.1:\na2\n"
        );
        assert_eq!(
            err.text(),
            "WARNING: machine 2cb2e8a6ee did not answer in time; retrying\n"
        );
        let paths: Vec<&str> = c
            .api
            .transport()
            .requests
            .iter()
            .map(|r| r.0.as_str())
            .collect();
        assert_eq!(
            paths[2],
            "GET /fleet/v1/units/a.service/journal?lines=3&machineID=113f16a7aa"
        );
        assert_eq!(
            paths[6],
            "GET /fleet/v1/units/a.service/journal?lines=1000&cursor=b1&machineID=2cb2e8a6ee"
        );

        // Without --follow: each machine once, then done.
        let (mut c, out, _) = ctx(&[
            (409, several),
            (200, states),
            (200, r#"{"machineID":"113f16a7aa","text":"a1\n"}"#),
            (200, MACHINES_2),
            (200, r#"{"machineID":"2cb2e8a6ee","text":""}"#),
        ]);
        block(c.journal(&journal_args(false), std::future::pending())).unwrap();
        assert_eq!(
            out.text(),
            "a.service on 113f16a7.../10.0.0.1:\na1\n\na.service on 2cb2e8a6.../10.0.0.3:\n"
        );
    }
}
