//! fleet's output of the list verbs: machine legends, metadata, the tables (through [`crate::table`]) and
//! the `--json` documents, each as a pure function of what the API returned.

use std::collections::BTreeMap;

use anyhow::Result;
use fleet_api_types::{Machine, Unit, UnitState};
use fleet_sched::{MachineId, UnitFile};

use crate::commands::requirements_of;
use crate::table::Table;

/// `id8...` or the full ID.
pub fn machine_id_legend(id: &MachineId, full: bool) -> String {
    if full {
        id.to_string()
    } else {
        format!("{}...", id.short())
    }
}

/// `id8.../IP` (or the full ID with `--full`); just the ID legend when the IP is unknown.
pub fn machine_full_legend(id: &MachineId, machine: Option<&Machine>, full: bool) -> String {
    let legend = machine_id_legend(id, full);
    match machine {
        Some(m) if !m.primary_ip.is_empty() => format!("{legend}/{}", m.primary_ip),
        _ => legend,
    }
}

/// Metadata as sorted `k=v,k=v`, `-` when empty.
pub fn format_metadata(metadata: &BTreeMap<String, String>) -> String {
    if metadata.is_empty() {
        return "-".to_string();
    }
    metadata
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// Split and check `--fields` against the valid names.
pub(crate) fn parse_fields<'a>(fields: &'a str, valid: &[&str]) -> Result<Vec<&'a str>> {
    if fields.is_empty() {
        fail!("Error: must define output format (--fields)");
    }
    let cols: Vec<&str> = fields.split(',').collect();
    for c in &cols {
        if !valid.contains(c) {
            fail!(
                "Error: invalid key in output format: {c:?} (valid: {})",
                valid.join(",")
            );
        }
    }
    Ok(cols)
}

/// Valid `list-unit-files` fields.
pub const UNIT_FILE_FIELDS: &[&str] = &[
    "unit", "hash", "dstate", "state", "target", "desc", "global", "tmachine",
];
/// Valid `list-units` fields.
pub const UNIT_FIELDS: &[&str] = &["unit", "machine", "active", "sub", "hash", "load"];
/// Valid `list-machines` fields.
pub const MACHINE_FIELDS: &[&str] = &["machine", "ip", "metadata"];

/// The `list-unit-files` table for `units` (sorted here by name).
pub fn unit_files_table(
    units: &[Unit],
    machines: &BTreeMap<MachineId, Machine>,
    cols: &[&str],
    full: bool,
    legend: bool,
) -> Table {
    let mut sorted: Vec<&Unit> = units.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut t = Table::new();
    if legend {
        t.header(cols);
    }
    for u in sorted {
        let file = UnitFile::from_options(u.options.clone()).ok();
        let global = requirements_of(u).is_some_and(|r| r.global);
        let target = || {
            if global {
                "global".to_string()
            } else if let Some(id) = &u.machine_id {
                machine_full_legend(id, machines.get(id), full)
            } else {
                "-".to_string()
            }
        };
        let row = cols
            .iter()
            .map(|c| match *c {
                "unit" => u.name.clone(),
                "hash" => match &file {
                    Some(f) if full => f.hash().to_string(),
                    Some(f) => f.hash().short(),
                    None => "-".to_string(),
                },
                "dstate" if u.damaged.is_some() => format!("{} (damaged)", dash(&u.desired_state)),
                "dstate" => dash(&u.desired_state),
                "state" if global => "-".to_string(),
                "state" => dash(&u.current_state),
                "target" | "tmachine" => target(),
                "desc" => file
                    .as_ref()
                    .and_then(|f| f.description().map(str::to_string))
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| "-".to_string()),
                "global" => global.to_string(),
                other => unreachable!("field {other} was validated"),
            })
            .collect();
        t.row(row);
    }
    t
}

/// The `list-units` table for `states` (sorted here by unit, then machine).
pub fn units_table(
    states: &[UnitState],
    machines: &BTreeMap<MachineId, Machine>,
    cols: &[&str],
    full: bool,
    legend: bool,
) -> Table {
    let mut sorted: Vec<&UnitState> = states.iter().collect();
    sorted.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
    let mut t = Table::new();
    if legend {
        t.header(cols);
    }
    for s in sorted {
        let row = cols
            .iter()
            .map(|c| match *c {
                "unit" => dash(&s.name),
                "machine" => match &s.machine_id {
                    Some(id) => machine_full_legend(id, machines.get(id), full),
                    None => "-".to_string(),
                },
                "active" => dash(&s.systemd_active_state),
                "sub" => dash(&s.systemd_sub_state),
                "load" => dash(&s.systemd_load_state),
                "hash" if s.hash.is_empty() => "-".to_string(),
                "hash" if full => s.hash.clone(),
                "hash" => s.hash.chars().take(7).collect(),
                other => unreachable!("field {other} was validated"),
            })
            .collect();
        t.row(row);
    }
    t
}

/// The `list-machines` table (sorted here by ID).
pub fn machines_table(machines: &[Machine], cols: &[&str], full: bool, legend: bool) -> Table {
    let mut sorted: Vec<&Machine> = machines.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut t = Table::new();
    if legend {
        t.header(cols);
    }
    for m in sorted {
        let row = cols
            .iter()
            .map(|c| match *c {
                "machine" => machine_id_legend(&m.id, full),
                "ip" => dash(&m.primary_ip),
                "metadata" => format_metadata(&m.metadata),
                other => unreachable!("field {other} was validated"),
            })
            .collect();
        t.row(row);
    }
    t
}

/// `Some(s)` as a JSON string, `null` when empty.
pub(crate) fn json_str(s: &str) -> serde_json::Value {
    if s.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::String(s.to_string())
    }
}

/// `list-unit-files --json`: one object per unit (sorted by name), keyed by `cols`, with the values
/// `--full` shows (`null` for `-`, `global` a boolean).
pub fn unit_files_json(
    units: &[Unit],
    machines: &BTreeMap<MachineId, Machine>,
    cols: &[&str],
) -> serde_json::Value {
    use serde_json::Value;
    let mut sorted: Vec<&Unit> = units.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let rows = sorted.into_iter().map(|u| {
        let file = UnitFile::from_options(u.options.clone()).ok();
        let global = requirements_of(u).is_some_and(|r| r.global);
        let obj = cols.iter().map(|c| {
            let v = match *c {
                "unit" => json_str(&u.name),
                "hash" => file
                    .as_ref()
                    .map_or(Value::Null, |f| Value::String(f.hash().to_string())),
                "dstate" => json_str(&u.desired_state),
                "state" if global => Value::Null,
                "state" => json_str(&u.current_state),
                "target" | "tmachine" if global => Value::String("global".into()),
                "target" | "tmachine" => match &u.machine_id {
                    Some(id) => Value::String(machine_full_legend(id, machines.get(id), true)),
                    None => Value::Null,
                },
                "desc" => json_str(file.as_ref().and_then(|f| f.description()).unwrap_or("")),
                "global" => Value::Bool(global),
                other => unreachable!("field {other} was validated"),
            };
            (c.to_string(), v)
        });
        Value::Object(obj.collect())
    });
    Value::Array(rows.collect())
}

/// `list-units --json`: one object per unit and machine (sorted), keyed by `cols`, with the values
/// `--full` shows (`null` for `-`).
pub fn units_json(
    states: &[UnitState],
    machines: &BTreeMap<MachineId, Machine>,
    cols: &[&str],
) -> serde_json::Value {
    use serde_json::Value;
    let mut sorted: Vec<&UnitState> = states.iter().collect();
    sorted.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
    let rows = sorted.into_iter().map(|s| {
        let obj = cols.iter().map(|c| {
            let v = match *c {
                "unit" => json_str(&s.name),
                "machine" => match &s.machine_id {
                    Some(id) => Value::String(machine_full_legend(id, machines.get(id), true)),
                    None => Value::Null,
                },
                "active" => json_str(&s.systemd_active_state),
                "sub" => json_str(&s.systemd_sub_state),
                "load" => json_str(&s.systemd_load_state),
                "hash" => json_str(&s.hash),
                other => unreachable!("field {other} was validated"),
            };
            (c.to_string(), v)
        });
        Value::Object(obj.collect())
    });
    Value::Array(rows.collect())
}

/// `list-machines --json`: one object per machine (sorted by ID), keyed by `cols`: `machine` the full
/// ID, `ip` (`null` when unknown), `metadata` an object.
pub fn machines_json(machines: &[Machine], cols: &[&str]) -> serde_json::Value {
    use serde_json::Value;
    let mut sorted: Vec<&Machine> = machines.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let rows = sorted.into_iter().map(|m| {
        let obj = cols.iter().map(|c| {
            let v = match *c {
                "machine" => Value::String(m.id.to_string()),
                "ip" => json_str(&m.primary_ip),
                "metadata" => Value::Object(
                    m.metadata
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect(),
                ),
                other => unreachable!("field {other} was validated"),
            };
            (c.to_string(), v)
        });
        Value::Object(obj.collect())
    });
    Value::Array(rows.collect())
}

/// Pretty JSON and a newline.
pub(crate) fn json_text(v: &serde_json::Value) -> String {
    let mut t = serde_json::to_string_pretty(v).expect("a JSON value always serializes");
    t.push('\n');
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::stored_file;
    use crate::commands::testutil::*;
    use crate::table::expand_tabs;

    #[test]
    fn list_unit_files_default_columns() {
        let units = sample_units();
        let h = |n: usize| stored_file(&units[n]).unwrap().hash().short();
        let cols = parse_fields("unit,hash,dstate,state,target", UNIT_FILE_FIELDS).unwrap();
        let out = unit_files_table(&units, &machines(), &cols, false, true).render();
        let expected = format!(
            "UNIT\t\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\n\
             everywhere.service\t{}\tlaunched\t-\t\tglobal\n\
             hello.service\t\t{}\tlaunched\tlaunched\t113f16a7.../10.0.0.1\n\
             nomachine.service\t{}\tlaunched\tloaded\t\t2cb2e8a6...\n\
             world.service\t\t{}\tloaded\t\tinactive\t-\n",
            h(2),
            h(1),
            h(3),
            h(0)
        );
        assert_eq!(out, expected);
        assert!(expand_tabs(&out).starts_with(
            "UNIT                    HASH    DSTATE          STATE           TARGET\n"
        ));
    }

    #[test]
    fn list_unit_files_extra_columns_full_and_no_legend() {
        let units = sample_units();
        let cols = parse_fields("unit,desc,global,tmachine,hash", UNIT_FILE_FIELDS).unwrap();
        let out = unit_files_table(&units[1..2], &machines(), &cols, true, false).render();
        let hash = stored_file(&units[1]).unwrap().hash().to_string();
        assert_eq!(hash.len(), 40);
        assert_eq!(
            out,
            format!("hello.service\tHello World\tfalse\t{M1}/10.0.0.1\t{hash}\n")
        );
        let out =
            unit_files_table(&units[0..1], &machines(), &["desc", "global"], false, false).render();
        assert_eq!(out, "-\tfalse\n");
    }

    #[test]
    fn the_hash_is_the_sha1_of_the_serialized_unit() {
        // sha1("[Service]\nExecStart=/bin/true\n")
        let u = unit(
            "a.service",
            &[("Service", "ExecStart", "/bin/true")],
            "",
            "",
            "",
        );
        let out = unit_files_table(&[u], &BTreeMap::new(), &["hash"], true, false).render();
        let expected = {
            use std::process::Command;
            let o = Command::new("sh")
                .args([
                    "-c",
                    "printf '[Service]\\nExecStart=/bin/true\\n' | sha1sum",
                ])
                .output()
                .unwrap();
            String::from_utf8(o.stdout).unwrap()[..40].to_string()
        };
        assert_eq!(out, format!("{expected}\n"));
    }

    #[test]
    fn list_units_rows_are_sorted_by_unit_then_machine() {
        let st = |n: &str, m: &str, a: &str| UnitState {
            name: n.into(),
            hash: "e55c0ae1234567890abcdef1234567890abcdef0".into(),
            machine_id: Some(MachineId::parse(m).unwrap()),
            systemd_load_state: "loaded".into(),
            systemd_active_state: a.into(),
            systemd_sub_state: if a == "active" { "running" } else { "dead" }.into(),
        };
        let states = vec![
            st("hello.service", M2, "active"),
            st("b.service", M1, "inactive"),
            st("hello.service", M1, "active"),
        ];
        let cols = parse_fields("unit,machine,active,sub", UNIT_FIELDS).unwrap();
        let out = units_table(&states, &machines(), &cols, false, true).render();
        assert_eq!(
            out,
            "UNIT\t\tMACHINE\t\t\tACTIVE\t\tSUB\n\
             b.service\t113f16a7.../10.0.0.1\tinactive\tdead\n\
             hello.service\t113f16a7.../10.0.0.1\tactive\t\trunning\n\
             hello.service\t2cb2e8a6...\t\tactive\t\trunning\n"
        );
        assert_eq!(
            expand_tabs(&out).lines().nth(2).unwrap(),
            "hello.service   113f16a7.../10.0.0.1    active          running"
        );
        let cols = parse_fields("hash,load", UNIT_FIELDS).unwrap();
        let out = units_table(&states[..1], &machines(), &cols, false, false).render();
        assert_eq!(out, "e55c0ae\tloaded\n");
        let out = units_table(&states[..1], &machines(), &["hash"], true, false).render();
        assert_eq!(out, "e55c0ae1234567890abcdef1234567890abcdef0\n");
    }

    #[test]
    fn list_machines_shows_short_ids_and_sorted_metadata() {
        let ms: Vec<Machine> = machines().into_values().rev().collect();
        let cols = parse_fields("machine,ip,metadata", MACHINE_FIELDS).unwrap();
        let out = machines_table(&ms, &cols, false, true).render();
        assert_eq!(
            out,
            "MACHINE\t\tIP\t\tMETADATA\n\
             113f16a7...\t10.0.0.1\tdisk=ssd,region=us\n\
             2cb2e8a6...\t-\t\t-\n"
        );
        let out = machines_table(&ms[..1], &["machine"], true, false).render();
        assert_eq!(out, format!("{M2}\n"));
    }

    #[test]
    fn unknown_or_empty_fields_are_rejected() {
        let e = parse_fields("unit,bogus", UNIT_FIELDS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"bogus\""), "{e}");
        assert!(parse_fields("", UNIT_FIELDS).is_err());
        assert!(parse_fields("unit,", UNIT_FIELDS).is_err());
    }

    #[test]
    fn short_machine_ids_are_shown_whole() {
        let abc = MachineId::parse("abc").unwrap();
        assert_eq!(machine_id_legend(&abc, false), "abc...");
        assert_eq!(machine_full_legend(&abc, None, false), "abc...");
    }
}
