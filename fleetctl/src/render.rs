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

/// A state's word, `""` when there is none (for [`dash`] and [`json_str`]).
pub(crate) fn word<S: std::fmt::Display>(state: &Option<S>) -> String {
    state.as_ref().map(ToString::to_string).unwrap_or_default()
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

/// One cell of a list: the table prints it, `--json` holds it.
enum Cell<'a> {
    /// Nothing to show: `-` in the table, `null` in JSON (so is an empty text).
    None,
    /// A text.
    Text(String),
    /// A yes/no (`true`/`false` in the table, a JSON boolean).
    Bool(bool),
    /// `k=v,k=v` in the table, an object in JSON.
    Map(&'a BTreeMap<String, String>),
}

impl Cell<'_> {
    /// A state's word, or nothing.
    fn word<S: std::fmt::Display>(state: &Option<S>) -> Self {
        Cell::Text(word(state))
    }

    fn text(self) -> String {
        match self {
            Cell::None => "-".to_string(),
            Cell::Text(s) => dash(&s),
            Cell::Bool(b) => b.to_string(),
            Cell::Map(m) => format_metadata(m),
        }
    }

    fn json(self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Cell::None => Value::Null,
            Cell::Text(s) => json_str(&s),
            Cell::Bool(b) => Value::Bool(b),
            Cell::Map(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        }
    }
}

/// The table of `rows`, one column per `cols` (a header first when `legend`).
fn table<'a, R>(
    rows: &'a [R],
    cols: &[&str],
    legend: bool,
    cell: impl Fn(&'a R, &str) -> Cell<'a>,
) -> Table {
    let mut t = Table::new();
    if legend {
        t.header(cols);
    }
    for r in rows {
        t.row(cols.iter().map(|c| cell(r, c).text()).collect());
    }
    t
}

/// The JSON array of `rows`: one object per row, keyed by `cols`.
fn json<'a, R>(
    rows: &'a [R],
    cols: &[&str],
    cell: impl Fn(&'a R, &str) -> Cell<'a>,
) -> serde_json::Value {
    let rows = rows.iter().map(|r| {
        let obj = cols.iter().map(|c| (c.to_string(), cell(r, c).json()));
        serde_json::Value::Object(obj.collect())
    });
    serde_json::Value::Array(rows.collect())
}

/// A unit of `list-unit-files`, its file parsed once.
struct UnitFileRow<'a> {
    unit: &'a Unit,
    file: Option<UnitFile>,
    global: bool,
}

/// `units` sorted by name, each with its file.
fn unit_file_rows(units: &[Unit]) -> Vec<UnitFileRow<'_>> {
    let mut rows: Vec<UnitFileRow> = units
        .iter()
        .map(|u| UnitFileRow {
            unit: u,
            file: UnitFile::from_options(u.options.clone()).ok(),
            global: requirements_of(u).is_some_and(|r| r.global),
        })
        .collect();
    rows.sort_by(|a, b| a.unit.name.cmp(&b.unit.name));
    rows
}

/// Column `col` of `list-unit-files` for `r` (`full`: whole IDs and hashes).
fn unit_file_cell<'a>(
    r: &UnitFileRow<'a>,
    col: &str,
    machines: &BTreeMap<MachineId, Machine>,
    full: bool,
) -> Cell<'a> {
    let u = r.unit;
    match col {
        "unit" => Cell::Text(u.name.clone()),
        "hash" => match &r.file {
            Some(f) if full => Cell::Text(f.hash().to_string()),
            Some(f) => Cell::Text(f.hash().short()),
            None => Cell::None,
        },
        "dstate" => Cell::word(&u.desired_state),
        "state" if r.global => Cell::None,
        "state" => Cell::word(&u.current_state),
        "target" | "tmachine" if r.global => Cell::Text("global".into()),
        "target" | "tmachine" => match &u.machine_id {
            Some(id) => Cell::Text(machine_full_legend(id, machines.get(id), full)),
            None => Cell::None,
        },
        "desc" => Cell::Text(
            r.file
                .as_ref()
                .and_then(|f| f.description().map(str::to_string))
                .unwrap_or_default(),
        ),
        "global" => Cell::Bool(r.global),
        other => unreachable!("field {other} was validated"),
    }
}

/// The `list-unit-files` table for `units` (sorted here by name); a damaged unit's desired state says so.
pub fn unit_files_table(
    units: &[Unit],
    machines: &BTreeMap<MachineId, Machine>,
    cols: &[&str],
    full: bool,
    legend: bool,
) -> Table {
    table(&unit_file_rows(units), cols, legend, |r, c| {
        let cell = unit_file_cell(r, c, machines, full);
        match (c, &r.unit.damaged) {
            ("dstate", Some(_)) => Cell::Text(format!("{} (damaged)", cell.text())),
            _ => cell,
        }
    })
}

/// `list-unit-files --json`: one object per unit (sorted by name), keyed by `cols`, with the values
/// `--full` shows (`null` for `-`, `global` a boolean).
pub fn unit_files_json(
    units: &[Unit],
    machines: &BTreeMap<MachineId, Machine>,
    cols: &[&str],
) -> serde_json::Value {
    json(&unit_file_rows(units), cols, |r, c| {
        unit_file_cell(r, c, machines, true)
    })
}

/// `states` sorted by unit, then machine.
fn unit_state_rows(states: &[UnitState]) -> Vec<&UnitState> {
    let mut sorted: Vec<&UnitState> = states.iter().collect();
    sorted.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
    sorted
}

/// Column `col` of `list-units` for `s` (`full`: whole IDs and hashes).
fn unit_state_cell<'a>(
    s: &UnitState,
    col: &str,
    machines: &BTreeMap<MachineId, Machine>,
    full: bool,
) -> Cell<'a> {
    match col {
        "unit" => Cell::Text(s.name.clone()),
        "machine" => match &s.machine_id {
            Some(id) => Cell::Text(machine_full_legend(id, machines.get(id), full)),
            None => Cell::None,
        },
        "active" => Cell::word(&s.systemd_active_state),
        "sub" => Cell::word(&s.systemd_sub_state),
        "load" => Cell::word(&s.systemd_load_state),
        "hash" if full => Cell::Text(s.hash.clone()),
        "hash" => Cell::Text(s.hash.chars().take(7).collect()),
        other => unreachable!("field {other} was validated"),
    }
}

/// The `list-units` table for `states` (sorted here by unit, then machine).
pub fn units_table(
    states: &[UnitState],
    machines: &BTreeMap<MachineId, Machine>,
    cols: &[&str],
    full: bool,
    legend: bool,
) -> Table {
    table(&unit_state_rows(states), cols, legend, |s, c| {
        unit_state_cell(s, c, machines, full)
    })
}

/// `list-units --json`: one object per unit and machine (sorted), keyed by `cols`, with the values
/// `--full` shows (`null` for `-`).
pub fn units_json(
    states: &[UnitState],
    machines: &BTreeMap<MachineId, Machine>,
    cols: &[&str],
) -> serde_json::Value {
    json(&unit_state_rows(states), cols, |s, c| {
        unit_state_cell(s, c, machines, true)
    })
}

/// `machines` sorted by ID.
fn machine_rows(machines: &[Machine]) -> Vec<&Machine> {
    let mut sorted: Vec<&Machine> = machines.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    sorted
}

/// Column `col` of `list-machines` for `m` (`full`: the whole ID).
fn machine_cell<'a>(m: &'a Machine, col: &str, full: bool) -> Cell<'a> {
    match col {
        "machine" => Cell::Text(machine_id_legend(&m.id, full)),
        "ip" => Cell::Text(m.primary_ip.clone()),
        "metadata" => Cell::Map(&m.metadata),
        other => unreachable!("field {other} was validated"),
    }
}

/// The `list-machines` table (sorted here by ID).
pub fn machines_table(machines: &[Machine], cols: &[&str], full: bool, legend: bool) -> Table {
    table(&machine_rows(machines), cols, legend, |m, c| {
        machine_cell(m, c, full)
    })
}

/// `list-machines --json`: one object per machine (sorted by ID), keyed by `cols`: `machine` the full
/// ID, `ip` (`null` when unknown), `metadata` an object.
pub fn machines_json(machines: &[Machine], cols: &[&str]) -> serde_json::Value {
    json(&machine_rows(machines), cols, |m, c| {
        machine_cell(m, c, true)
    })
}

/// `Some(s)` as a JSON string, `null` when empty.
pub(crate) fn json_str(s: &str) -> serde_json::Value {
    if s.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::String(s.to_string())
    }
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

    /// The table says a damaged unit is; `--json` keeps the desired state itself (and both the same
    /// cells otherwise).
    #[test]
    fn a_damaged_units_desired_state_says_so_in_the_table_only() {
        let mut units = sample_units();
        units[1].damaged = Some("bad claim".into());
        let cols = ["unit", "dstate", "state"];
        let out = unit_files_table(&units[1..2], &machines(), &cols, false, false).render();
        assert_eq!(out, "hello.service\tlaunched (damaged)\tlaunched\n");
        assert_eq!(
            unit_files_json(&units[1..2], &machines(), &cols),
            serde_json::json!([{"unit": "hello.service", "dstate": "launched", "state": "launched"}])
        );
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
            systemd_load_state: Some("loaded".into()),
            systemd_active_state: Some(a.into()),
            systemd_sub_state: Some(if a == "active" { "running" } else { "dead" }.into()),
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
