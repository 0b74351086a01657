//! The agents' relay messages (`src/agent/relay/wire.rs`, included as it is): a request or a response
//! that decodes encodes to itself, and the values a responder checks before acting (the unit name, the
//! witness's machine ID) are validated without a panic.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/agent/relay/wire.rs"]
mod relay;

use fleet_sched::{MachineId, UnitName};
use libfuzzer_sys::fuzz_target;
use relay::{Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::decode(data) {
        assert_eq!(Request::decode(&r.encode()), Ok(r.clone()));
        if let Some(unit) = r.unit() {
            if let Ok(name) = UnitName::parse(unit) {
                assert_eq!(name.as_str(), unit);
            }
        }
        if let Request::Support { machine, .. } | Request::Vote { machine, .. } = &r {
            let _ = MachineId::parse(machine);
        }
    }
    if let Ok(r) = Response::decode(data) {
        assert_eq!(Response::decode(&r.encode()), Ok(r));
    }
});
