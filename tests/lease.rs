//! The agent's lease keeper against a real etcd.

mod support;

use std::time::Duration;

use support::{registry, Etcd};

/// The lease a lease keeper renews, as etcd sees it: `Some(remaining seconds)`, or `None` when gone.
async fn lease_ttl(etcd: &Etcd, id: i64) -> Option<i64> {
    let mut c = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let ttl = c.lease_time_to_live(id, None).await.unwrap().ttl();
    (ttl >= 0).then_some(ttl)
}

#[tokio::test]
// long: each step waits more than a TTL to show which leases etcd still keeps
async fn a_replaced_lease_is_kept_until_retired_and_resumed_by_a_restarted_keeper() {
    use fleet::registry::lease::LeaseKeeper;
    let etcd = Etcd::shared();
    let r = registry(&etcd).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lease.json");
    let ttl = Duration::from_secs(2);
    let period = Duration::from_millis(200);
    let start = || LeaseKeeper::start(r.clone(), "m1", ttl, period, Some(file.clone()));
    let k = start();
    let t0 = std::time::Instant::now();
    while k.status().lease.id == 0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "no lease granted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = k.status().lease.id;
    let new = k.replace(Duration::from_secs(5)).await.unwrap();
    assert_ne!(new, old);
    let s = k.status();
    assert_eq!(
        (s.lease.id, s.retiring.as_ref().map(|r| r.id)),
        (new, Some(old))
    );
    assert!(
        k.replace(Duration::from_secs(5)).await.is_err(),
        "no second replacement while one lease retires"
    );
    // Both renewed past their TTL, and the retiring lease's own confirmations go on.
    let before = s.retiring.unwrap().last_confirmed();
    tokio::time::sleep(ttl * 2).await;
    assert!(
        lease_ttl(&etcd, old).await.is_some(),
        "the retiring lease expired"
    );
    assert!(
        lease_ttl(&etcd, new).await.is_some(),
        "the new lease expired"
    );
    let after = k.status().retiring.unwrap().last_confirmed();
    assert!(
        after > before,
        "the retiring lease is not confirmed any more"
    );
    // A restarted keeper resumes both (a fleetd restart in the middle of a replacement).
    k.detach();
    let k = start();
    let s = k.status();
    assert_eq!(
        (s.lease.id, s.retiring.as_ref().map(|r| r.id)),
        (new, Some(old))
    );
    tokio::time::sleep(ttl * 2).await;
    assert!(
        lease_ttl(&etcd, old).await.is_some(),
        "the retiring lease was not resumed"
    );
    assert!(
        lease_ttl(&etcd, new).await.is_some(),
        "the new lease was not resumed"
    );
    // Retired: revoked at once, the current lease kept.
    k.retire();
    assert_eq!(k.status().retiring, None);
    let t0 = std::time::Instant::now();
    while lease_ttl(&etcd, old).await.is_some() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the retired lease stays"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(ttl * 2).await;
    assert!(
        lease_ttl(&etcd, new).await.is_some(),
        "the current lease expired"
    );
    // A restart after the retirement resumes the current lease only.
    k.detach();
    let k = start();
    assert_eq!(k.status().retiring, None);
    assert_eq!(k.status().lease.id, new);
    k.revoke(Duration::from_secs(5)).await;
    assert_eq!(lease_ttl(&etcd, new).await, None);
}
