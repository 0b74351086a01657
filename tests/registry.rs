//! The etcd registry against a real etcd.

mod support;

use std::time::Duration;

use fleet::registry::{Registry, RegistryError, RegistryOptions};
use fleet_sched::{DesiredState, UnitName};
use support::{registry, unit_file as file, unit_name as name, Etcd};

#[tokio::test]
// long: one unit's whole life through the registry, each step on the state the last left
async fn create_get_list_replace_destroy_round_trip() {
    let etcd = Etcd::shared();
    let r = registry(&etcd).await;
    let a = name("a.service");
    let f1 = file("/bin/true");
    r.create_unit(&a, &f1, DesiredState::Inactive)
        .await
        .unwrap();

    // Read-your-writes: the mirror has it as soon as create returns.
    let u = r.unit(&a).unwrap().expect("unit a");
    assert_eq!(u.hash, f1.hash());
    assert_eq!(*u.file, f1);
    assert_eq!(u.desired_state, DesiredState::Inactive);

    let dump = etcd.dump().await;
    assert_eq!(dump[&format!("unit-files/{}", f1.hash())], f1.serialize());
    let record: serde_json::Value = serde_json::from_str(&dump["units/a.service"]).unwrap();
    assert_eq!(
        record,
        serde_json::json!({"name":"a.service","hash":f1.hash().to_string(),"desiredState":"inactive"})
    );

    assert_eq!(
        r.create_unit(&a, &file("/bin/false"), DesiredState::Launched)
            .await,
        Err(RegistryError::AlreadyExists(a.clone()))
    );

    r.set_desired_state(&a, DesiredState::Launched)
        .await
        .unwrap();
    assert_eq!(
        r.unit(&a).unwrap().unwrap().desired_state,
        DesiredState::Launched
    );

    let b = name("b.service");
    r.create_unit(&b, &file("/bin/b"), DesiredState::Loaded)
        .await
        .unwrap();
    let names: Vec<String> = r
        .units()
        .unwrap()
        .iter()
        .map(|u| u.name.to_string())
        .collect();
    assert_eq!(names, ["a.service", "b.service"]);

    // Replace keeps the desired state when none is given, and drops the old content.
    let f2 = file("/bin/sleep 1");
    r.replace_unit(&a, &f2, None).await.unwrap();
    let u = r.unit(&a).unwrap().unwrap();
    assert_eq!(
        (u.hash, u.desired_state),
        (f2.hash(), DesiredState::Launched)
    );
    let dump = etcd.dump().await;
    assert!(
        !dump.contains_key(&format!("unit-files/{}", f1.hash())),
        "{dump:?}"
    );

    r.destroy_unit(&a).await.unwrap();
    assert_eq!(r.unit(&a).unwrap(), None);
    assert_eq!(
        r.destroy_unit(&a).await,
        Err(RegistryError::NotFound(a.clone()))
    );
    assert_eq!(
        r.set_desired_state(&a, DesiredState::Loaded).await,
        Err(RegistryError::NotFound(a.clone()))
    );
    let dump = etcd.dump().await;
    assert_eq!(
        dump.keys().cloned().collect::<Vec<_>>(),
        vec![
            format!("unit-files/{}", file("/bin/b").hash()),
            "units/b.service".to_string()
        ]
    );
}

#[tokio::test]
async fn concurrent_creates_of_one_name_have_exactly_one_winner() {
    let etcd = Etcd::shared();
    let r1 = registry(&etcd).await;
    let r2 = registry(&etcd).await;
    for round in 0..5 {
        let n = name(&format!("race{round}.service"));
        let (f1, f2) = (
            file(&format!("/bin/one {round}")),
            file(&format!("/bin/two {round}")),
        );
        let (a, b) = tokio::join!(
            r1.create_unit(&n, &f1, DesiredState::Inactive),
            r2.create_unit(&n, &f2, DesiredState::Launched)
        );
        let wins = [&a, &b].iter().filter(|x| x.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {a:?} {b:?}");
        let loser = if a.is_ok() { b } else { a };
        assert_eq!(loser, Err(RegistryError::AlreadyExists(n.clone())));
        // Both fleetds see the winner's content right after their call returned.
        let u1 = r1.unit(&n).unwrap().unwrap();
        let u2 = r2.unit(&n).unwrap().unwrap();
        assert_eq!(u1.hash, u2.hash);
        // Only the winner's content was written.
        let dump = etcd.dump().await;
        let loser_hash = if u1.hash == f1.hash() {
            f2.hash()
        } else {
            f1.hash()
        };
        assert!(!dump.contains_key(&format!("unit-files/{loser_hash}")));
    }
}

#[tokio::test]
async fn the_mirror_sees_writes_made_behind_its_back() {
    let etcd = Etcd::shared();
    let r = registry(&etcd).await;
    let mut rx = r.subscribe();
    rx.borrow_and_update();
    let mut c = etcd.client().await;
    let f = file("/bin/external");
    let p = etcd.prefix();
    etcd.put_unit_behind(&mut c, "ext.service", &f, "loaded")
        .await;
    // The revision of our own last write (other tests write to the shared etcd concurrently).
    // Claims are bound to a lease (an agent's); one bound to none would count as free.
    let lease = c.lease_grant(30, None).await.unwrap().id();
    let rev = c
        .put(
            format!("{p}claims/ext.service"),
            r#"{"machineID":"m1"}"#,
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| s.revision >= rev))
        .await
        .expect("notified")
        .unwrap();
    let u = r.unit(&name("ext.service")).unwrap().expect("mirrored");
    assert_eq!(u.desired_state, DesiredState::Loaded);
    assert_eq!(*u.file, f);
    let claim = r
        .claim(&name("ext.service"))
        .unwrap()
        .expect("claim mirrored");
    assert_eq!(claim.machine_id.as_str(), "m1");

    let rev = c
        .delete(format!("{p}units/ext.service"), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| s.revision >= rev))
        .await
        .expect("notified")
        .unwrap();
    assert_eq!(r.unit(&name("ext.service")).unwrap(), None);
}

#[tokio::test]
async fn a_stopped_etcd_makes_the_registry_unavailable_until_it_is_back() {
    let etcd = Etcd::private();
    let r = registry(&etcd).await;
    let a = name("a.service");
    r.create_unit(&a, &file("/bin/true"), DesiredState::Inactive)
        .await
        .unwrap();

    etcd.stop();
    let mut rx = r.subscribe();
    tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|s| !s.available))
        .await
        .expect("unavailability noticed within 15 s")
        .unwrap();
    assert!(matches!(r.units(), Err(RegistryError::Unavailable(_))));
    assert!(matches!(r.unit(&a), Err(RegistryError::Unavailable(_))));
    assert!(matches!(
        r.create_unit(&name("b.service"), &file("/bin/b"), DesiredState::Inactive)
            .await,
        Err(RegistryError::Unavailable(_))
    ));
    assert!(matches!(
        r.destroy_unit(&a).await,
        Err(RegistryError::Unavailable(_))
    ));

    etcd.restart();
    r.wait_available(Duration::from_secs(20))
        .await
        .expect("registry recovers after etcd restarts");
    let names: Vec<String> = r
        .units()
        .unwrap()
        .iter()
        .map(|u| u.name.to_string())
        .collect();
    assert_eq!(names, ["a.service"]);
    r.create_unit(&name("b.service"), &file("/bin/b"), DesiredState::Inactive)
        .await
        .unwrap();
    assert_eq!(r.units().unwrap().len(), 2);
}

#[tokio::test]
async fn a_registry_started_before_etcd_connects_when_it_appears() {
    let etcd = Etcd::private();
    etcd.stop();
    let mut opts = RegistryOptions::new(vec![etcd.endpoint().to_string()], etcd.prefix());
    opts.backoff_max = Duration::from_millis(300);
    let r = Registry::start(opts);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(r.units(), Err(RegistryError::Unavailable(_))));
    etcd.restart();
    r.wait_available(Duration::from_secs(20)).await.unwrap();
    assert!(r.units().unwrap().is_empty());
}

#[tokio::test]
async fn reconfigure_switches_to_another_prefix() {
    let etcd = Etcd::shared();
    let other = Etcd::shared();
    let r = registry(&etcd).await;
    r.create_unit(
        &name("here.service"),
        &file("/bin/here"),
        DesiredState::Inactive,
    )
    .await
    .unwrap();
    let r2 = registry(&other).await;
    r2.create_unit(
        &name("there.service"),
        &file("/bin/there"),
        DesiredState::Loaded,
    )
    .await
    .unwrap();

    let mut opts = RegistryOptions::new(vec![other.endpoint().to_string()], other.prefix());
    opts.backoff_max = Duration::from_millis(500);
    r.reconfigure(opts);
    assert!(!r.status().available);
    r.wait_available(Duration::from_secs(10)).await.unwrap();
    let names: Vec<String> = r
        .units()
        .unwrap()
        .iter()
        .map(|u| u.name.to_string())
        .collect();
    assert_eq!(names, ["there.service"]);
    assert_eq!(r.keys().prefix(), other.prefix());
    // Writes go to the new prefix.
    r.destroy_unit(&name("there.service")).await.unwrap();
    assert!(other.dump().await.is_empty());
    assert_eq!(etcd.dump().await.len(), 2, "the old prefix is untouched");
}

/// Puts `value` under `key` (relative to the test's prefix), optionally bound to `lease`, and waits until
/// the registry has applied it.
async fn put_behind_its_back(etcd: &Etcd, r: &Registry, key: &str, value: &[u8], lease: i64) {
    let mut c = etcd.client().await;
    let opts = (lease != 0).then(|| etcd_client::PutOptions::new().with_lease(lease));
    let rev = c
        .put(format!("{}{key}", etcd.prefix()), value, opts)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut rx = r.subscribe();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| s.revision >= rev))
        .await
        .expect("applied")
        .unwrap();
}

/// Garbage in a unit's record or in its unit file keeps the unit as it was (its last good value, marked
/// damaged) until the key is fixed; writes through the registry still work on it.
#[tokio::test]
async fn garbage_in_a_unit_record_or_its_unit_file_keeps_the_last_good_value() {
    let etcd = Etcd::shared();
    let r = registry(&etcd).await;
    let a = name("g.service");
    let f = file("/bin/sleep 1000");
    r.create_unit(&a, &f, DesiredState::Launched).await.unwrap();
    let random: Vec<u8> = (0..64u32).map(|i| (i * 151 + 7) as u8).collect();
    let good = format!(
        r#"{{"name":"g.service","hash":"{}","desiredState":"launched"}}"#,
        f.hash()
    );
    let bogus = good.replace("launched", "bogus");
    let file_key = format!("unit-files/{}", f.hash());
    for (key, garbage) in [
        ("units/g.service", &random[..]),
        ("units/g.service", bogus.as_bytes()),
        (file_key.as_str(), b"[Service".as_slice()),
    ] {
        put_behind_its_back(&etcd, &r, key, garbage, 0).await;
        let u = r.unit(&a).unwrap().expect("the unit is still there");
        assert_eq!(u.desired_state, DesiredState::Launched, "{key}");
        assert_eq!(*u.file, f, "{key}");
        assert!(u.damaged.is_some(), "{key}: {u:?}");
        let snap = r.snapshot().unwrap();
        assert!(snap.units.iter().any(|u| u.name == a), "{key}");
        let damage = r.damage().unwrap();
        let d = &damage[&format!("{}{key}", etcd.prefix())];
        assert!(d.kept, "{d:?}");
        // Fixed: recovered.
        let fixed = if key.starts_with("units/") {
            good.clone().into_bytes()
        } else {
            f.serialize().into_bytes()
        };
        put_behind_its_back(&etcd, &r, key, &fixed, 0).await;
        assert_eq!(r.unit(&a).unwrap().unwrap().damaged, None, "{key}");
        assert!(r.damage().unwrap().is_empty());
    }
    // A damaged record can still be changed through the registry (it compares the key's revision).
    put_behind_its_back(&etcd, &r, "units/g.service", b"garbage", 0).await;
    r.set_desired_state(&a, DesiredState::Loaded).await.unwrap();
    let u = r.unit(&a).unwrap().unwrap();
    assert_eq!((u.desired_state, u.damaged), (DesiredState::Loaded, None));
    put_behind_its_back(&etcd, &r, "units/g.service", b"garbage", 0).await;
    r.destroy_unit(&a).await.unwrap();
    assert_eq!(r.unit(&a).unwrap(), None);
}

/// `garbage` in a claim bound to a live lease keeps its holder; in a claim bound to no lease it makes the
/// unit free, and the claim that replaces it is bound to the claimer's lease.
#[tokio::test]
async fn garbage_in_a_claim_keeps_its_holder_or_frees_it_when_bound_to_no_lease() {
    let etcd = Etcd::shared();
    let r = registry(&etcd).await;
    let a = name("c.service");
    let m1 = fleet_sched::MachineId::parse("m1").unwrap();
    let mut c = etcd.client().await;
    let lease = c.lease_grant(30, None).await.unwrap().id();
    use fleet::registry::ClaimWrite;
    r.write_claim(&a, &m1, lease, &ClaimWrite::Claim)
        .await
        .unwrap()
        .expect("claimed");

    put_behind_its_back(&etcd, &r, "claims/c.service", b"garbage", lease).await;
    let claim = r.claim(&a).unwrap().expect("the holder is kept");
    assert_eq!((claim.machine_id.as_str(), claim.lease), ("m1", lease));
    assert!(claim.damaged.is_some() && !claim.unbound);
    assert!(r.snapshot().unwrap().free_claims.is_empty());

    // Rewritten without a lease: still m1's (it may run the unit), flagged unbound.
    put_behind_its_back(&etcd, &r, "claims/c.service", b"garbage", 0).await;
    let claim = r.claim(&a).unwrap().expect("the holder is kept");
    assert!(claim.unbound);
    assert_eq!((claim.machine_id.as_str(), claim.lease), ("m1", lease));
    // The holder binds it again (what the agent does for its own unbound claim).
    r.write_claim(
        &a,
        &m1,
        lease,
        &ClaimWrite::Rebind {
            mod_revision: claim.mod_revision,
            handoff: None,
        },
    )
    .await
    .unwrap()
    .expect("bound again");
    // `write_claim` does not wait for the mirror: wait for the watch to bring the write.
    let claim = claim_seen(&r, &a, |c| !c.unbound).await;
    assert!(!claim.unbound && claim.damaged.is_none());

    // A registry that never saw it bound (a fresh fleetd) sees a free claim, and claiming replaces it.
    let b = name("d.service");
    put_behind_its_back(&etcd, &r, "claims/d.service", b"garbage", 0).await;
    let fresh = registry(&etcd).await;
    let snap = fresh.snapshot().unwrap();
    assert!(!snap.claims.contains_key(&b));
    let free = snap.free_claims[&b].clone();
    let m2 = fleet_sched::MachineId::parse("m2").unwrap();
    assert_eq!(
        fresh
            .write_claim(&b, &m2, lease, &ClaimWrite::Claim)
            .await
            .unwrap(),
        None,
        "a create-only claim cannot succeed while the key exists"
    );
    fresh
        .write_claim(
            &b,
            &m2,
            lease,
            &ClaimWrite::Replace {
                mod_revision: free.mod_revision,
            },
        )
        .await
        .unwrap()
        .expect("replaced");
    let claim = claim_seen(&fresh, &b, |_| true).await;
    assert_eq!((claim.machine_id.as_str(), claim.lease), ("m2", lease));
    assert!(fresh.snapshot().unwrap().free_claims.is_empty());
    c.lease_revoke(lease).await.unwrap();
}

/// `unit`'s claim in `r`'s mirror once `ready` holds for it (claim writes do not wait for the mirror:
/// the watch brings them); panics after 10 s.
async fn claim_seen(
    r: &Registry,
    unit: &UnitName,
    ready: impl Fn(&fleet::registry::Claim) -> bool,
) -> fleet::registry::Claim {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match r.claim(unit).unwrap() {
            Some(c) if ready(&c) => return c,
            seen => assert!(
                tokio::time::Instant::now() < deadline,
                "{unit}'s claim not in the mirror after 10 s: {seen:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every claim key under `etcd`'s prefix: unit → (holder, mod_revision, lease).
async fn claims_in_etcd(etcd: &Etcd) -> std::collections::BTreeMap<String, (String, i64, i64)> {
    let mut c = etcd.client().await;
    let prefix = format!("{}claims/", etcd.prefix());
    let opts = etcd_client::GetOptions::new().with_prefix();
    let resp = c.get(prefix.as_str(), Some(opts)).await.unwrap();
    resp.kvs()
        .iter()
        .map(|kv| {
            let rec: fleet::registry::ClaimRecord = serde_json::from_slice(kv.value()).unwrap();
            let unit = kv.key_str().unwrap()[prefix.len()..].to_string();
            (unit, (rec.machine_id, kv.mod_revision(), kv.lease()))
        })
        .collect()
}

/// A fresh 30 s lease.
async fn grant(etcd: &Etcd) -> i64 {
    etcd.client()
        .await
        .lease_grant(30, None)
        .await
        .unwrap()
        .id()
}

fn claims_of(units: &[UnitName]) -> Vec<(UnitName, fleet::registry::ClaimWrite)> {
    units
        .iter()
        .map(|u| (u.clone(), fleet::registry::ClaimWrite::Claim))
        .collect()
}

/// A batch of claims whose compares all hold is applied whole, in one transaction (one revision).
#[tokio::test]
async fn a_batch_of_claims_is_one_transaction() {
    let etcd = Etcd::shared();
    let r = registry(&etcd).await;
    let m1 = fleet_sched::MachineId::parse("m1").unwrap();
    let lease = grant(&etcd).await;
    let units: Vec<UnitName> = (0..5).map(|i| name(&format!("b{i}.service"))).collect();
    let out = r.write_claims(&m1, lease, &claims_of(&units)).await;
    let revs: Vec<i64> = out
        .iter()
        .map(|o| o.clone().unwrap().expect("applied"))
        .collect();
    assert!(revs.iter().all(|&v| v == revs[0]), "one revision: {revs:?}");
    let held = claims_in_etcd(&etcd).await;
    assert_eq!(held.len(), 5);
    for u in &units {
        assert_eq!(held[u.as_str()], ("m1".to_string(), revs[0], lease));
    }
}

/// One claim of a batch whose compare fails (another machine claimed the unit first) is not written and
/// reported as lost; the batch's other writes (claims and a release) are all applied; nothing of the
/// other machine's claim changes.
#[tokio::test]
async fn a_failed_compare_in_a_batch_fails_only_its_own_write() {
    use fleet::registry::ClaimWrite;
    let etcd = Etcd::shared();
    let r = registry(&etcd).await;
    let (m1, m2) = (
        fleet_sched::MachineId::parse("m1").unwrap(),
        fleet_sched::MachineId::parse("m2").unwrap(),
    );
    let (l1, l2) = (grant(&etcd).await, grant(&etcd).await);
    let taken = name("taken.service");
    let mine = name("mine.service");
    r.write_claim(&taken, &m2, l2, &ClaimWrite::Claim)
        .await
        .unwrap()
        .expect("m2 claims first");
    let mine_rev = r
        .write_claim(&mine, &m1, l1, &ClaimWrite::Claim)
        .await
        .unwrap()
        .expect("m1's claim");
    let before = claims_in_etcd(&etcd).await[taken.as_str()].clone();

    let units: Vec<UnitName> = (0..4).map(|i| name(&format!("f{i}.service"))).collect();
    let mut writes = claims_of(&units);
    writes.insert(2, (taken.clone(), ClaimWrite::Claim));
    let release = ClaimWrite::Release {
        mod_revision: mine_rev,
    };
    writes.push((mine.clone(), release));
    let out = r.write_claims(&m1, l1, &writes).await;
    assert_eq!(out[2], Ok(None), "the taken unit's claim lost");
    let revs: Vec<i64> = [0, 1, 3, 4, 5]
        .iter()
        .map(|&i| out[i].clone().unwrap().expect("applied"))
        .collect();
    assert!(
        revs.iter().all(|&v| v == revs[0]),
        "one retried batch: {revs:?}"
    );
    let held = claims_in_etcd(&etcd).await;
    assert_eq!(
        held[taken.as_str()],
        before,
        "the other machine's claim untouched"
    );
    assert!(!held.contains_key(mine.as_str()), "the release applied");
    for u in &units {
        assert_eq!(held[u.as_str()], ("m1".to_string(), revs[0], l1));
    }
}

/// More claims than one transaction takes go in chunks of `CLAIMS_PER_TXN`, each applied whole.
#[tokio::test]
async fn a_batch_larger_than_a_transaction_goes_in_chunks() {
    use fleet::registry::CLAIMS_PER_TXN;
    let etcd = Etcd::shared();
    let r = registry(&etcd).await;
    let m1 = fleet_sched::MachineId::parse("m1").unwrap();
    let lease = grant(&etcd).await;
    let n = 2 * CLAIMS_PER_TXN + 50;
    let units: Vec<UnitName> = (0..n).map(|i| name(&format!("c{i:03}.service"))).collect();
    let out = r.write_claims(&m1, lease, &claims_of(&units)).await;
    let mut per_rev = std::collections::BTreeMap::<i64, usize>::new();
    for o in &out {
        *per_rev
            .entry(o.clone().unwrap().expect("applied"))
            .or_default() += 1;
    }
    let sizes: Vec<usize> = per_rev.values().copied().collect();
    assert_eq!(sizes, vec![CLAIMS_PER_TXN, CLAIMS_PER_TXN, 50]);
    let held = claims_in_etcd(&etcd).await;
    assert_eq!(held.len(), n);
    assert!(held.values().all(|(m, _, l)| m == "m1" && *l == lease));
}

/// A batch etcd refuses (claims under a lease it no longer knows) is written one by one: the refused
/// claims fail with etcd's error, the release in the same batch is applied.
#[tokio::test]
async fn a_refused_batch_fails_only_the_refused_writes() {
    use fleet::registry::ClaimWrite;
    let etcd = Etcd::shared();
    let r = registry(&etcd).await;
    let m1 = fleet_sched::MachineId::parse("m1").unwrap();
    let (live, gone) = (grant(&etcd).await, grant(&etcd).await);
    etcd.client().await.lease_revoke(gone).await.unwrap();
    let mine = name("r-mine.service");
    let rev = r
        .write_claim(&mine, &m1, live, &ClaimWrite::Claim)
        .await
        .unwrap()
        .expect("claimed");
    let units: Vec<UnitName> = (0..3).map(|i| name(&format!("r{i}.service"))).collect();
    let mut writes = claims_of(&units);
    writes.push((mine.clone(), ClaimWrite::Release { mod_revision: rev }));
    let out = r.write_claims(&m1, gone, &writes).await;
    for o in &out[..3] {
        assert!(matches!(o, Err(RegistryError::Etcd(_))), "{o:?}");
    }
    assert!(matches!(out[3], Ok(Some(_))), "{:?}", out[3]);
    assert!(claims_in_etcd(&etcd).await.is_empty());
}

/// Unit writes that arrive while another is in flight share one transaction (one revision), each with
/// its own compare and its own result: the create of a name that exists fails alone, the others are
/// applied (src/registry/merge.rs).
#[tokio::test]
async fn concurrent_unit_writes_share_a_transaction_and_a_bad_one_fails_alone() {
    let etcd = Etcd::shared();
    let r = registry(&etcd).await;
    let taken = name("merge-taken.service");
    let other = name("merge-other.service");
    r.create_unit(&taken, &file("/bin/taken"), DesiredState::Inactive)
        .await
        .unwrap();
    r.create_unit(&other, &file("/bin/other"), DesiredState::Inactive)
        .await
        .unwrap();
    let before = r.stats();
    let fresh: Vec<UnitName> = (0..20)
        .map(|i| name(&format!("merge{i}.service")))
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for (i, n) in fresh.iter().enumerate() {
        let (r, n) = (r.clone(), n.clone());
        set.spawn(async move {
            let f = file(&format!("/bin/merge {i}"));
            (
                n.clone(),
                r.create_unit(&n, &f, DesiredState::Launched).await,
            )
        });
    }
    {
        let (r1, n) = (r.clone(), taken.clone());
        set.spawn(async move {
            let f = file("/bin/intruder");
            (
                n.clone(),
                r1.create_unit(&n, &f, DesiredState::Launched).await,
            )
        });
        let (r2, n) = (r.clone(), other.clone());
        set.spawn(async move {
            let res = r2.set_desired_state(&n, DesiredState::Loaded).await;
            (n, res)
        });
    }
    let mut results = std::collections::BTreeMap::new();
    while let Some(done) = set.join_next().await {
        let (n, res) = done.unwrap();
        results.insert(n, res);
    }
    assert_eq!(
        results[&taken],
        Err(RegistryError::AlreadyExists(taken.clone()))
    );
    let taken_now = r.unit(&taken).unwrap().unwrap();
    assert_eq!(
        (taken_now.hash, taken_now.desired_state),
        (file("/bin/taken").hash(), DesiredState::Inactive),
        "the failed create changed nothing"
    );
    assert_eq!(results[&other], Ok(()));
    assert_eq!(
        r.unit(&other).unwrap().unwrap().desired_state,
        DesiredState::Loaded
    );
    let revisions = created_at(&r, &results, &fresh);
    let after = r.stats();
    let (writes, txns) = (
        after.unit_writes - before.unit_writes,
        after.unit_write_txns - before.unit_write_txns,
    );
    assert_eq!(writes, 22);
    // The first write goes alone or with the others; the merged transaction fails on the taken name and
    // goes again without it.
    assert!(
        revisions.len() <= 2 && txns <= 3,
        "20 creates at {} revisions ({revisions:?}), 22 writes in {txns} transactions",
        revisions.len()
    );
}

/// The revisions at which `fresh` were created, each checked applied and launched.
fn created_at(
    r: &Registry,
    results: &std::collections::BTreeMap<UnitName, Result<(), RegistryError>>,
    fresh: &[UnitName],
) -> std::collections::BTreeSet<i64> {
    let mut revisions = std::collections::BTreeSet::new();
    for n in fresh {
        assert_eq!(results[n], Ok(()), "{n}");
        let u = r.unit(n).unwrap().expect("created");
        assert_eq!(u.desired_state, DesiredState::Launched);
        revisions.insert(u.mod_revision);
    }
    revisions
}
