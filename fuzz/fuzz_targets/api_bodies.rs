//! The API's request bodies: decoding a `PUT /units/{name}` or `PATCH /machines` body and validating
//! what it holds (as the handlers do) never panics, whatever the bytes.
//!
//! The wire types are the server's own (`fleet-api-types`, which needs only serde and fleet-sched), so
//! this build does not instrument fleetd's whole dependency tree.
#![no_main]

use fleet_api_types as schema;
use fleet_sched::{Requirements, UnitFile, UnitName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(u) = serde_json::from_slice::<schema::Unit>(data) {
        let name = UnitName::parse(&u.name);
        // Its states were parsed with it (`fleet-api-types`): the handler takes them as they are.
        let _ = (u.desired_state, u.current_state);
        if let Ok(file) = UnitFile::from_options(u.options) {
            if let Ok(name) = name {
                let _ = Requirements::from_unit(&name, &file);
            }
            let _ = file.hash();
        }
    }
    if let Ok(ops) = serde_json::from_slice::<Vec<schema::MachineMetadataOp>>(data) {
        let _ = serde_json::to_string(&ops);
    }
});
