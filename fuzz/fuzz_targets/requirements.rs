//! `[X-Fleet]` requirements: reading them from any unit file never panics, and matching their globs
//! against any name finishes (libFuzzer's -timeout catches exponential matching).
#![no_main]

use fleet_sched::requirements::glob_match;
use fleet_sched::{Requirements, UnitFile, UnitName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    // The first line names the unit; the rest is the [X-Fleet] section.
    let (name, body) = data.split_once('\n').unwrap_or(("a@b.service", data));
    let name = UnitName::parse(name).unwrap_or_else(|_| UnitName::parse("a@b.service").unwrap());
    let Ok(file) = UnitFile::parse(&format!("[X-Fleet]\n{body}")) else {
        return;
    };
    if let Ok(req) = Requirements::from_unit(&name, &file) {
        let _ = req.validate();
        for p in req.conflicts.iter().chain(&req.replaces) {
            let _ = glob_match(p, name.as_str());
            let _ = glob_match(p, p);
        }
        let _ = req.conflicts_with(name.as_str());
        let _ = req.metadata_matches(&Default::default());
    }
});
