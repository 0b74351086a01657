//! What systemd says about units and processes: states, unit files, the unit of a process.

use super::*;

impl Systemd {
    /// The state of one unit. A unit systemd does not know is reported as `not-found`/`inactive`
    /// (like `systemctl show`), not as an error.
    pub async fn unit_state(&self, name: &str) -> Result<UnitState> {
        let mut units = self.list_units(&[name]).await?;
        match units.pop() {
            Some((_, state)) => Ok(state),
            None => Err(Error::NoSuchUnit(name.to_string())),
        }
    }

    /// States of the named units, in the order given (`ListUnitsByNames`, plus `MainPID` of the
    /// services that may have one: one more call per such service).
    pub async fn list_units(&self, names: &[&str]) -> Result<Vec<(String, UnitState)>> {
        let listed = self.list_by_names(names).await?;
        let mut out = Vec::with_capacity(listed.len());
        for (name, path, mut state) in listed {
            if name.ends_with(".service") && state.active_state.may_have_main_pid() {
                state.main_pid = self.main_pid(&path).await?;
            }
            out.push((name, state));
        }
        Ok(out)
    }

    /// [`Systemd::list_units`] without `MainPID` (always `None`): one `ListUnitsByNames` call however
    /// many units. `list_units` makes one more call per running service, each answered by systemd
    /// between the jobs it runs: 1,000 sequential calls for 1,000 running units.
    pub async fn list_unit_states(&self, names: &[&str]) -> Result<Vec<(String, UnitState)>> {
        let listed = self.list_by_names(names).await?;
        Ok(listed.into_iter().map(|(n, _, s)| (n, s)).collect())
    }

    /// `ListUnitsByNames`: name, object path and state (without `MainPID`) of each unit, in order.
    async fn list_by_names(
        &self,
        names: &[&str],
    ) -> Result<Vec<(String, OwnedObjectPath, UnitState)>> {
        for n in names {
            validate_unit_name(n)?;
        }
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let listed = self
            .inner
            .manager
            .list_units_by_names(names)
            .await
            .map_err(|e| Error::from_call("ListUnitsByNames", &names.join(" "), e))?;
        Ok(listed
            .into_iter()
            .map(
                |(
                    name,
                    _desc,
                    load,
                    active,
                    sub,
                    _following,
                    path,
                    _job_id,
                    _job_type,
                    _job_path,
                )| {
                    let state = UnitState {
                        load_state: load.into(),
                        active_state: ActiveState::from(active),
                        sub_state: crate::state::SubState::from(sub),
                        main_pid: None,
                    };
                    (name, path, state)
                },
            )
            .collect())
    }

    /// States of the units whose files fleet wrote into the units directory (sorted by name).
    pub async fn list_fleet_units(&self) -> Result<Vec<(String, UnitState)>> {
        let dir = self.local_units_directory();
        let mut names = Vec::new();
        match tokio::fs::read_dir(&dir).await {
            Ok(mut entries) => loop {
                match entries.next_entry().await {
                    Ok(Some(e)) => {
                        if let Some(n) = e.file_name().to_str() {
                            if validate_unit_name(n).is_ok()
                                && crate::owner::written_by_fleet(&e.path())
                            {
                                names.push(n.to_string());
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(source) => return Err(Error::Io { path: dir, source }),
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Io { path: dir, source }),
        }
        names.sort();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.list_units(&names).await
    }

    /// `GetUnitFileState`: `linked-runtime`, `enabled-runtime`, `static`, ... of a unit file.
    pub async fn unit_file_state(&self, name: &str) -> Result<String> {
        validate_unit_name(name)?;
        self.inner
            .manager
            .get_unit_file_state(name)
            .await
            .map_err(|e| match Error::from_call("GetUnitFileState", name, e) {
                Error::Refused { name: err, .. }
                    if err == "org.freedesktop.DBus.Error.FileNotFound" =>
                {
                    Error::NoSuchUnit(name.to_string())
                }
                other => other,
            })
    }

    /// The name of the unit that contains process `pid` (`GetUnitByPID`, then its `Id`).
    pub async fn unit_of_process(&self, pid: u32) -> Result<String> {
        let unit = self
            .inner
            .manager
            .get_unit_by_pid(pid)
            .await
            .map_err(|e| Error::from_call("GetUnitByPID", &pid.to_string(), e))?;
        self.property(unit.as_str(), "org.freedesktop.systemd1.Unit", "Id")
            .await
    }

    /// The type of the job systemd has queued for the unit that contains process `pid` (`"restart"`,
    /// `"stop"`, ...), or `None` when there is none. fleetd asks this about itself on SIGTERM: a
    /// `restart` job means "come back", so it leaves its units running; a `stop` means "leave".
    pub async fn job_of_process_unit(&self, pid: u32) -> Result<Option<String>> {
        let unit = self
            .inner
            .manager
            .get_unit_by_pid(pid)
            .await
            .map_err(|e| Error::from_call("GetUnitByPID", &pid.to_string(), e))?;
        let job: (u32, OwnedObjectPath) = self
            .property(unit.as_str(), "org.freedesktop.systemd1.Unit", "Job")
            .await?;
        if job.0 == 0 {
            return Ok(None);
        }
        let kind: String = self
            .property(job.1.as_str(), "org.freedesktop.systemd1.Job", "JobType")
            .await?;
        Ok(Some(kind))
    }

    pub(crate) async fn property<T>(&self, path: &str, iface: &str, name: &str) -> Result<T>
    where
        T: TryFrom<OwnedValue>,
        T::Error: std::fmt::Display,
    {
        let what = "Properties.Get";
        let reply = self
            .inner
            .conn
            .call_method(
                Some(SYSTEMD),
                path,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(iface, name),
            )
            .await
            .map_err(|e| Error::from_call(what, path, e))?;
        let value: OwnedValue = reply
            .body()
            .deserialize()
            .map_err(|e| Error::from_call(what, path, e))?;
        T::try_from(value).map_err(|e| Error::Bus {
            context: format!("Get({name}) on {path}: unexpected type: {e}"),
            source: Box::new(zbus::Error::Failure(e.to_string())),
        })
    }

    async fn main_pid(&self, unit_path: &OwnedObjectPath) -> Result<Option<u32>> {
        let reply = self
            .inner
            .conn
            .call_method(
                Some(SYSTEMD),
                unit_path.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &("org.freedesktop.systemd1.Service", "MainPID"),
            )
            .await;
        let reply = match reply {
            Ok(r) => r,
            // The unit went away between the listing and this call.
            Err(zbus::Error::MethodError(..)) | Err(zbus::Error::FDO(_)) => return Ok(None),
            Err(e) => return Err(Error::from_call("Get(MainPID)", unit_path.as_str(), e)),
        };
        let value: OwnedValue = reply
            .body()
            .deserialize()
            .map_err(|e| Error::from_call("Get(MainPID)", unit_path.as_str(), e))?;
        Ok(u32::try_from(&value).ok().filter(|pid| *pid != 0))
    }
}
