//! The agents' relay messages (`src/agent/relay/wire.rs`, included as it is): a request or a response
//! that decodes encodes to itself, the unit name a responder checks before acting is validated without
//! a panic, and a decoded request names only valid machine IDs (checked by the decoder).
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
        // A request that decodes names only valid machine IDs.
        if let Request::Support { machine, .. } | Request::Vote { machine, .. } = &r {
            assert_eq!(MachineId::parse(machine.as_str()).as_ref(), Ok(machine));
        }
    }
    if let Ok(r) = Response::decode(data) {
        assert_eq!(Response::decode(&r.encode()), Ok(r));
    }
});
