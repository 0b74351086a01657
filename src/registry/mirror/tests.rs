use super::*;

fn put<'a>(key: &'a str, value: &'a str, rev: i64) -> Change<'a> {
    Change::Put {
        key: key.as_bytes(),
        value: value.as_bytes(),
        mod_revision: rev,
        create_revision: rev,
        lease: 0,
    }
}

#[test]
fn a_unit_needs_its_record_and_its_content() {
    let keys = Keys::new("/p/");
    let file = UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
    let hash = file.hash();
    let record = format!(r#"{{"name":"a.service","hash":"{hash}","desiredState":"loaded"}}"#);
    let mut m = Mirror::default();
    m.apply(&keys, put("/p/units/a.service", &record, 2));
    assert!(m.units().is_empty(), "no content yet");
    let text = file.serialize();
    m.apply(&keys, put(&format!("/p/unit-files/{hash}"), &text, 2));
    let units = m.units();
    assert_eq!(units.len(), 1);
    assert_eq!(units[0].desired_state, DesiredState::Loaded);
    assert_eq!(*units[0].file, file);
    assert_eq!(units[0].mod_revision, 2);
    m.apply(
        &keys,
        Change::Delete {
            key: b"/p/units/a.service",
        },
    );
    assert!(m.units().is_empty());
}

#[test]
fn garbage_values_are_ignored() {
    let keys = Keys::new("/p/");
    let mut m = Mirror::default();
    m.apply(&keys, put("/p/units/a.service", "not json", 2));
    m.apply(
        &keys,
        put("/p/claims/a.service", r#"{"machineID":"no/slash"}"#, 3),
    );
    m.apply(
        &keys,
        put(
            "/p/units/b.service",
            r#"{"name":"c.service","hash":"0123456789abcdef0123456789abcdef01234567","desiredState":"loaded"}"#,
            4,
        ),
    );
    assert!(m.records.is_empty());
    assert!(m.claims.is_empty());
    // Bound to no lease and never seen bound: free.
    assert!(m
        .free_claims
        .contains_key(&UnitName::parse("a.service").unwrap()));
    assert_eq!(m.damage().len(), 3);
}

fn record(name: &str, hash: &UnitHash, state: &str) -> String {
    format!(r#"{{"name":"{name}","hash":"{hash}","desiredState":"{state}"}}"#)
}

fn claim_put<'a>(key: &'a str, value: &'a str, rev: i64, lease: i64) -> Change<'a> {
    Change::Put {
        key: key.as_bytes(),
        value: value.as_bytes(),
        mod_revision: rev,
        create_revision: rev,
        lease,
    }
}

/// A unit `a.service` running `/bin/true`, launched, at revision 2.
fn one_unit() -> (Keys, Mirror, UnitFile) {
    let keys = Keys::new("/p/");
    let file = UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
    let hash = file.hash();
    let mut m = Mirror::default();
    m.apply(
        &keys,
        put(&format!("/p/unit-files/{hash}"), &file.serialize(), 2),
    );
    m.apply(
        &keys,
        put(
            "/p/units/a.service",
            &record("a.service", &hash, "launched"),
            2,
        ),
    );
    (keys, m, file)
}

#[test]
fn a_unit_record_that_stops_parsing_keeps_its_last_good_value_until_fixed() {
    let (keys, mut m, file) = one_unit();
    let a = UnitName::parse("a.service").unwrap();
    let hash = file.hash();
    for (rev, garbage) in [
        (3, "\u{1}\u{7f}\u{3}random bytes".to_string()),
        (4, record("a.service", &hash, "bogus")),
        (5, record("b.service", &hash, "launched")),
    ] {
        m.apply(&keys, put("/p/units/a.service", &garbage, rev));
        let u = m.unit(&a).expect("the last good value is kept");
        assert_eq!(u.desired_state, DesiredState::Launched);
        assert_eq!(*u.file, file);
        assert_eq!(
            u.mod_revision, rev,
            "writes compare the key's current revision"
        );
        assert!(
            u.damaged.as_deref().unwrap().contains("unit record"),
            "{u:?}"
        );
        let d = &m.damage()["/p/units/a.service"];
        assert!(d.kept);
        assert_eq!(d.kind(), "unit");
    }
    // Fixed: the new value counts, the damage is gone.
    m.apply(
        &keys,
        put(
            "/p/units/a.service",
            &record("a.service", &hash, "loaded"),
            6,
        ),
    );
    let u = m.unit(&a).unwrap();
    assert_eq!(u.desired_state, DesiredState::Loaded);
    assert_eq!(u.damaged, None);
    assert!(m.damage().is_empty());
}

#[test]
fn a_unit_file_that_stops_parsing_keeps_its_last_good_content() {
    let (keys, mut m, file) = one_unit();
    let a = UnitName::parse("a.service").unwrap();
    let key = format!("/p/unit-files/{}", file.hash());
    m.apply(&keys, put(&key, "[Service", 3));
    let u = m.unit(&a).expect("kept");
    assert_eq!(*u.file, file);
    assert!(u.damaged.as_deref().unwrap().contains("unit file"), "{u:?}");
    assert_eq!(m.files[&file.hash()].mod_revision, 3);
    m.apply(&keys, put(&key, &file.serialize(), 4));
    assert_eq!(m.unit(&a).unwrap().damaged, None);
    assert!(m.damage().is_empty());
}

#[test]
fn a_lease_bound_claim_that_stops_parsing_keeps_its_holder() {
    let keys = Keys::new("/p/");
    let a = UnitName::parse("a.service").unwrap();
    let mut m = Mirror::default();
    m.apply(
        &keys,
        claim_put("/p/claims/a.service", r#"{"machineID":"m1"}"#, 5, 77),
    );
    m.apply(&keys, claim_put("/p/claims/a.service", "garbage", 6, 77));
    let c = m.claim(&a).expect("kept");
    assert_eq!(
        (c.machine_id.as_str(), c.lease, c.mod_revision),
        ("m1", 77, 6)
    );
    assert!(!c.unbound);
    assert!(c.damaged.is_some());
    assert!(m.free_claims.is_empty());
    m.apply(
        &keys,
        claim_put("/p/claims/a.service", r#"{"machineID":"m2"}"#, 7, 78),
    );
    let c = m.claim(&a).unwrap();
    assert_eq!((c.machine_id.as_str(), c.damaged), ("m2", None));
}

#[test]
fn an_unreadable_claim_without_history_is_held_by_its_leases_machine() {
    let keys = Keys::new("/p/");
    let a = UnitName::parse("a.service").unwrap();
    let mut m = Mirror::default();
    m.apply(&keys, claim_put("/p/claims/a.service", "garbage", 5, 77));
    assert_eq!(m.claims()[&a].machine_id.as_str(), UNKNOWN_HOLDER);
    m.apply(&keys, claim_put("/p/machines/m3", r#"{"id":"m3"}"#, 6, 77));
    assert_eq!(m.claims()[&a].machine_id.as_str(), "m3");
    assert_eq!(m.claim(&a).unwrap().machine_id.as_str(), "m3");
    assert!(
        m.free_claims.is_empty(),
        "a claim with a live lease is never free"
    );
}

#[test]
fn a_claim_bound_to_no_lease_is_free_unless_it_replaced_a_bound_one() {
    let keys = Keys::new("/p/");
    let a = UnitName::parse("a.service").unwrap();
    let mut m = Mirror::default();
    // Never seen bound: free, whatever it says.
    for (rev, v) in [(3, "garbage"), (4, r#"{"machineID":"m1"}"#)] {
        m.apply(&keys, claim_put("/p/claims/a.service", v, rev, 0));
        assert!(m.claim(&a).is_none());
        assert_eq!(m.free_claims[&a].mod_revision, rev);
    }
    // Bound, then overwritten without a lease: the holder may still run it.
    m.apply(
        &keys,
        claim_put("/p/claims/a.service", r#"{"machineID":"m1"}"#, 5, 77),
    );
    assert!(m.free_claims.is_empty());
    m.apply(&keys, claim_put("/p/claims/a.service", "garbage", 6, 0));
    let c = m.claim(&a).unwrap();
    assert!(c.unbound);
    assert_eq!(
        (c.machine_id.as_str(), c.lease, c.mod_revision),
        ("m1", 77, 6)
    );
    m.apply(
        &keys,
        Change::Delete {
            key: b"/p/claims/a.service",
        },
    );
    assert!(m.claim(&a).is_none() && m.free_claims.is_empty() && m.damage().is_empty());
}

#[test]
fn a_full_read_keeps_the_last_good_values_of_the_mirror_it_replaces() {
    let (keys, old, file) = one_unit();
    let a = UnitName::parse("a.service").unwrap();
    let mut old = old;
    old.apply(
        &keys,
        claim_put("/p/claims/a.service", r#"{"machineID":"m1"}"#, 3, 77),
    );
    let mut new = Mirror::default();
    new.apply(
        &keys,
        put(&format!("/p/unit-files/{}", file.hash()), "[Service", 9),
    );
    new.apply(&keys, put("/p/units/a.service", "\u{0}", 9));
    new.apply(&keys, claim_put("/p/claims/a.service", "garbage", 9, 0));
    assert!(new.unit(&a).is_none());
    new.adopt_last_good(&old);
    let u = new.unit(&a).expect("adopted");
    assert_eq!(
        (u.desired_state, u.mod_revision),
        (DesiredState::Launched, 9)
    );
    let c = new.claim(&a).expect("adopted");
    assert!(c.unbound && c.machine_id.as_str() == "m1" && c.mod_revision == 9);
    assert!(new.free_claims.is_empty());
    assert!(new.damage().values().all(|d| d.kept));
}

#[test]
fn claims_are_mirrored() {
    let keys = Keys::new("/p/");
    let mut m = Mirror::default();
    m.apply(
        &keys,
        Change::Put {
            key: b"/p/claims/a.service",
            value: br#"{"machineID":"abc123"}"#,
            mod_revision: 5,
            create_revision: 5,
            lease: 77,
        },
    );
    let c = &m.claims[&UnitName::parse("a.service").unwrap()];
    assert_eq!(c.machine_id.as_str(), "abc123");
    assert_eq!(c.lease, 77);
}
