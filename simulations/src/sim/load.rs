//! Loading the scenario's units: unit files from a directory or written in the scenario, instances of
//! templates, what the simulator submits.

use super::*;

pub(super) type Loaded = (Vec<UnitDef>, Vec<UnitInfo>, Vec<(String, UnitFile)>);

pub(super) fn load_units(sc: &Scenario) -> Result<Loaded, SimError> {
    let mut files: BTreeMap<String, UnitFile> = BTreeMap::new();
    // Units written out in the scenario: launched ones are submitted, inactive ones are not (fleet
    // does not schedule them), loaded ones are refused (the systemd model only runs launched units).
    for u in &sc.units.inline {
        let file = UnitFile::parse(&u.file).map_err(|err| SimError::Unit {
            name: u.name.clone(),
            message: err.to_string(),
        })?;
        match u.state {
            DesiredState::Launched => {}
            DesiredState::Inactive => continue,
            DesiredState::Loaded => {
                return Err(SimError::Unit {
                    name: u.name.clone(),
                    message: "desired state loaded: fleet-sim runs launched units only (edit its \
                              state to launched or inactive)"
                        .into(),
                })
            }
        }
        if UnitName::parse(&u.name).is_ok_and(|n| n.is_template()) {
            return Err(SimError::Unit {
                name: u.name.clone(),
                message: "a template is not a unit (write its instances)".into(),
            });
        }
        if files.insert(u.name.clone(), file).is_some() {
            return Err(SimError::Unit {
                name: u.name.clone(),
                message: "listed twice".into(),
            });
        }
    }
    let dir = sc.base_dir.join(&sc.units.dir);
    let rd: Vec<_> = if sc.units.dir.as_os_str().is_empty() {
        Vec::new()
    } else {
        std::fs::read_dir(&dir)
            .map_err(|source| SimError::UnitsDir {
                path: dir.clone(),
                source,
            })?
            .collect()
    };
    for e in rd {
        let e = e.map_err(|source| SimError::UnitsDir {
            path: dir.clone(),
            source,
        })?;
        let name = e.file_name().to_string_lossy().to_string();
        if !name.ends_with(".service") {
            continue;
        }
        if !sc.units.only.is_empty() && !sc.units.only.contains(&name) {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).map_err(|source| SimError::UnitsDir {
            path: e.path(),
            source,
        })?;
        let file = UnitFile::parse(&text).map_err(|err| SimError::Unit {
            name: name.clone(),
            message: err.to_string(),
        })?;
        if files.insert(name.clone(), file).is_some() {
            return Err(SimError::Unit {
                name,
                message: format!("both in [[units.unit]] and in {}", dir.display()),
            });
        }
    }
    for t in sc.units.instances.keys() {
        if !files.contains_key(t) {
            return Err(SimError::Unit {
                name: t.clone(),
                message: format!("no such template in {}", dir.display()),
            });
        }
    }
    let mut defs = Vec::new();
    let mut infos = Vec::new();
    let mut raw = Vec::new();
    let mut add = |name: String, file: &UnitFile| -> Result<(), SimError> {
        let un = UnitName::parse(&name).map_err(|e| SimError::Unit {
            name: name.clone(),
            message: e.to_string(),
        })?;
        let req = Requirements::from_unit(&un, file).map_err(|e| SimError::Unit {
            name: name.clone(),
            message: e.to_string(),
        })?;
        defs.push(UnitDef {
            name: un.clone(),
            hash: file.hash(),
            global: req.global,
        });
        infos.push(UnitInfo::new(un, req, DesiredState::Launched));
        raw.push((name, file.clone()));
        Ok(())
    };
    for (name, file) in &files {
        let un = UnitName::parse(name).map_err(|e| SimError::Unit {
            name: name.clone(),
            message: e.to_string(),
        })?;
        if un.is_template() {
            let count = sc.units.instances.get(name).copied().unwrap_or(0);
            let (prefix, suffix) = name.split_once("@.").expect("a template has @.");
            for k in 1..=count {
                add(format!("{prefix}@{k}.{suffix}"), file)?;
            }
        } else {
            add(name.clone(), file)?;
        }
    }
    if defs.is_empty() {
        return Err(SimError::Unit {
            name: if sc.units.dir.as_os_str().is_empty() {
                "[[units.unit]]".into()
            } else {
                dir.display().to_string()
            },
            message: "no launched unit to submit (inactive units are not submitted)".into(),
        });
    }
    Ok((defs, infos, raw))
}
