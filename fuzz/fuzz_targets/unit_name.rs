//! Unit names: validation never panics; an accepted name keeps its parts and its limits.
#![no_main]

use fleet_sched::name::MAX_NAME_LEN;
use fleet_sched::UnitName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    let Ok(name) = UnitName::parse(s) else {
        return;
    };
    assert!(s.len() <= MAX_NAME_LEN && !s.starts_with('.') && !s.starts_with('@'));
    assert_eq!(name.as_str(), s);
    assert_eq!(format!("{}.{}", name.without_suffix(), name.suffix()), s);
    if let Some(t) = name.template() {
        assert!(t.is_template(), "{t}");
    }
    let json = serde_json::to_string(&name).unwrap();
    assert_eq!(serde_json::from_str::<UnitName>(&json).unwrap(), name);
    let _ = name.expand_specifiers(s);
});
