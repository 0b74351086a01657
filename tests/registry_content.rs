//! Units that share content (one `unit-files/<hash>` for every unit with that content) through the
//! registry against a real etcd: the content stays while a unit uses it and goes with the last one,
//! whatever two registries do at once.

mod support;

use std::time::Duration;

use fleet_sched::DesiredState;
use support::{registry, unit_file as file, unit_name as name, Etcd};

#[tokio::test]
async fn units_with_equal_content_share_one_file_until_the_last_is_destroyed() {
    let etcd = Etcd::shared();
    let r = registry(&etcd).await;
    let f = file("/bin/shared");
    let key = format!("unit-files/{}", f.hash());
    for n in ["web@1.service", "web@2.service", "web@3.service"] {
        r.create_unit(&name(n), &f, DesiredState::Inactive)
            .await
            .unwrap();
    }
    let files = |d: &std::collections::BTreeMap<String, String>| {
        d.keys().filter(|k| k.starts_with("unit-files/")).count()
    };
    let dump = etcd.dump().await;
    assert_eq!(files(&dump), 1);

    r.destroy_unit(&name("web@1.service")).await.unwrap();
    // Replacing one user of the content must not delete it either.
    r.replace_unit(&name("web@2.service"), &file("/bin/other"), None)
        .await
        .unwrap();
    assert!(etcd.dump().await.contains_key(&key));
    r.destroy_unit(&name("web@3.service")).await.unwrap();
    let dump = etcd.dump().await;
    assert!(
        !dump.contains_key(&key),
        "content of the last user is collected: {dump:?}"
    );
    assert_eq!(files(&dump), 1, "the replaced unit's new content stays");
}

#[tokio::test]
async fn concurrent_destroy_and_create_of_shared_content_keep_the_content() {
    let etcd = Etcd::shared();
    let r1 = registry(&etcd).await;
    let r2 = registry(&etcd).await;
    let f = file("/bin/gc-race");
    let key = format!("unit-files/{}", f.hash());
    for round in 0..5 {
        let old = name(&format!("old{round}.service"));
        let new = name(&format!("new{round}.service"));
        r1.create_unit(&old, &f, DesiredState::Inactive)
            .await
            .unwrap();
        r2.wait_available(Duration::from_secs(5)).await.unwrap();
        let (a, b) = tokio::join!(
            r1.destroy_unit(&old),
            r2.create_unit(&new, &f, DesiredState::Inactive)
        );
        a.unwrap();
        b.unwrap();
        let dump = etcd.dump().await;
        assert!(
            dump.contains_key(&key),
            "round {round}: content of {new} lost: {dump:?}"
        );
        r2.destroy_unit(&new).await.unwrap();
        assert!(!etcd.dump().await.contains_key(&key));
    }
}

#[tokio::test]
async fn concurrent_destroys_of_the_units_sharing_content_remove_the_content() {
    let etcd = Etcd::shared();
    let r1 = registry(&etcd).await;
    let r2 = registry(&etcd).await;
    let f = file("/bin/gc-both");
    let key = format!("unit-files/{}", f.hash());
    for round in 0..5 {
        let a = name(&format!("both-a{round}.service"));
        let b = name(&format!("both-b{round}.service"));
        r1.create_unit(&a, &f, DesiredState::Inactive)
            .await
            .unwrap();
        r1.create_unit(&b, &f, DesiredState::Inactive)
            .await
            .unwrap();
        r2.wait_available(Duration::from_secs(5)).await.unwrap();
        let t0 = std::time::Instant::now();
        while r2.unit(&a).unwrap().is_none() || r2.unit(&b).unwrap().is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "r2 never saw both units"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Each sees the other unit still sharing the content when it decides to keep it.
        let (x, y) = tokio::join!(r1.destroy_unit(&a), r2.destroy_unit(&b));
        x.unwrap();
        y.unwrap();
        let dump = etcd.dump().await;
        assert!(
            !dump.contains_key(&key),
            "round {round}: the content outlived both of its units: {dump:?}"
        );
    }
}
