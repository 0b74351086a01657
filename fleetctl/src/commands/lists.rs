//! `list-unit-files`, `list-units`, `list-machines`: fetch, then render as fleet's tables or JSON.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};

use super::*;
use crate::args::{ListFlags, ListMachinesArgs, ListUnitFilesArgs, ListUnitsArgs};
use crate::client::Transport;

impl<T: Transport> Ctx<T> {
    /// `list-unit-files`.
    pub async fn list_unit_files(&mut self, a: &ListUnitFilesArgs) -> Result<()> {
        let cols = parse_fields(&a.fields, UNIT_FILE_FIELDS)?;
        let units = self
            .api
            .units()
            .await
            .context(worded!("Error retrieving list of units from fleetd"))?;
        let needs_machines = cols.iter().any(|c| *c == "target" || *c == "tmachine")
            && units.iter().any(|u| u.machine_id.is_some());
        let machines = self.machines_if(needs_machines).await?;
        self.write_list(
            &a.list,
            || unit_files_json(&units, &machines, &cols),
            |full, legend| unit_files_table(&units, &machines, &cols, full, legend),
        )?;
        if a.list.json {
            return Ok(());
        }
        for u in &units {
            if let Some(why) = &u.damaged {
                say!(
                    self.err,
                    "WARNING: Unit {} is damaged in etcd ({why}); shown and run as its last good value until it is fixed",
                    u.name
                );
            }
        }
        Ok(())
    }

    /// `list-units`.
    pub async fn list_units(&mut self, a: &ListUnitsArgs) -> Result<()> {
        let cols = parse_fields(&a.fields, UNIT_FIELDS)?;
        let states = self
            .api
            .unit_states(None)
            .await
            .context(worded!("Error retrieving list of units from fleetd"))?;
        let machines = self
            .machines_if(cols.contains(&"machine") && !states.is_empty())
            .await?;
        self.write_list(
            &a.list,
            || units_json(&states, &machines, &cols),
            |full, legend| units_table(&states, &machines, &cols, full, legend),
        )
    }

    /// `list-machines`.
    pub async fn list_machines(&mut self, a: &ListMachinesArgs) -> Result<()> {
        let cols = parse_fields(&a.fields, MACHINE_FIELDS)?;
        let machines = self
            .api
            .machines()
            .await
            .context(worded!("Error retrieving list of machines from fleetd"))?;
        self.write_list(
            &a.list,
            || machines_json(&machines, &cols),
            |full, legend| machines_table(&machines, &cols, full, legend),
        )
    }

    /// The machines by ID when a list shows their legends (`needed`), else none (and no request).
    async fn machines_if(&mut self, needed: bool) -> Result<BTreeMap<MachineId, Machine>> {
        if needed {
            Ok(self.machine_map(false).await?.clone())
        } else {
            Ok(BTreeMap::new())
        }
    }

    /// Writes a list as its flags ask: the `--json` document, or the table (`table(full, legend)`).
    fn write_list(
        &mut self,
        flags: &ListFlags,
        json: impl FnOnce() -> serde_json::Value,
        table: impl FnOnce(bool, bool) -> crate::table::Table,
    ) -> Result<()> {
        if flags.json {
            self.write_out(&json_text(&json()))
        } else {
            self.write_out(&table(flags.full, !flags.no_legend).render())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::ListFlags;
    use crate::commands::testutil::*;
    use fleet_api_types::UnitState;

    #[test]
    pub(super) fn json_lists_carry_the_requested_fields_with_full_values_and_nulls() {
        let m = machines();
        let cols = ["unit", "hash", "state", "target", "desc", "global"];
        let v = unit_files_json(&sample_units(), &m, &cols);
        let rows = v.as_array().unwrap();
        assert_eq!(rows.len(), 4);
        // Sorted by name, keyed by field.
        assert_eq!(rows[0]["unit"], "everywhere.service");
        assert_eq!(rows[0]["target"], "global");
        assert_eq!(rows[0]["state"], serde_json::Value::Null);
        assert_eq!(rows[0]["global"], true);
        assert_eq!(rows[1]["unit"], "hello.service");
        assert_eq!(rows[1]["target"], format!("{M1}/10.0.0.1"));
        assert_eq!(rows[1]["desc"], "Hello World");
        assert_eq!(rows[1]["hash"].as_str().map(str::len), Some(40));
        assert_eq!(rows[2]["target"], M2, "no IP known: the bare full ID");
        assert_eq!(rows[3]["target"], serde_json::Value::Null);
        assert_eq!(rows[3]["desc"], serde_json::Value::Null);
        assert_eq!(rows[3].as_object().unwrap().len(), cols.len());

        let states = vec![
            UnitState {
                name: "b.service".into(),
                machine_id: Some(fleet_sched::MachineId::parse(M1).unwrap()),
                hash: "a".repeat(40),
                systemd_active_state: Some("active".into()),
                ..Default::default()
            },
            UnitState {
                name: "a.service".into(),
                ..Default::default()
            },
        ];
        let v = units_json(&states, &m, &["unit", "machine", "active", "sub", "hash"]);
        assert_eq!(
            v,
            serde_json::json!([
                {"unit": "a.service", "machine": null, "active": null, "sub": null, "hash": null},
                {"unit": "b.service", "machine": format!("{M1}/10.0.0.1"), "active": "active",
                 "sub": null, "hash": "a".repeat(40)},
            ])
        );

        let list: Vec<Machine> = m.values().cloned().collect();
        let v = machines_json(&list, &["machine", "ip", "metadata"]);
        assert_eq!(
            v,
            serde_json::json!([
                {"machine": M1, "ip": "10.0.0.1", "metadata": {"disk": "ssd", "region": "us"}},
                {"machine": M2, "ip": null, "metadata": {}},
            ])
        );
    }

    #[test]
    pub(super) fn list_machines_json_is_printed_instead_of_the_table() {
        let (mut c, out, _) = ctx(&[(
            200,
            r#"{"machines":[{"id":"m1","primaryIP":"10.0.0.1","metadata":{"a":"b"}}]}"#,
        )]);
        let a = ListMachinesArgs {
            fields: "machine,ip".into(),
            list: ListFlags {
                full: false,
                no_legend: false,
                json: true,
            },
        };
        block(c.list_machines(&a)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out.text()).unwrap();
        assert_eq!(v, serde_json::json!([{"machine": "m1", "ip": "10.0.0.1"}]));
    }
}
