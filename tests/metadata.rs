//! Metadata set through `PATCH /fleet/v1/machines` survives a fleetd restart (real etcd, real fleetd).

mod support;

use serde_json::json;
use support::{http, http_get, Etcd, Fleetd};

const JSON: (&str, &str) = ("Content-Type", "application/json");

#[test]
fn metadata_set_through_the_api_survives_a_restart() {
    let etcd = Etcd::shared();
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap().to_string();
    let start = || {
        let f = Fleetd::builder(&etcd)
            .machine_id("0123456789abcdef0123456789abcdef")
            .config("metadata", "region=west,disk=ssd")
            .config("state_dir", &state_dir)
            .start();
        f.wait_ready();
        f
    };
    let mut f = start();
    let id = f.machine_id().to_string();
    let body = json!([
        {"op": "add", "path": format!("/{id}/metadata/rack"), "value": {"value": "r7"}},
        {"op": "remove", "path": format!("/{id}/metadata/disk")}
    ]);
    let r = http(
        f.socket(),
        "PATCH",
        "/fleet/v1/machines",
        &[JSON],
        body.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    let want = json!({"rack": "r7", "region": "west"});
    let metadata = |f: &Fleetd| {
        let all = http_get(f.socket(), "/fleet/v1/machines").json();
        all["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == json!(id))
            .map(|m| m["metadata"].clone())
    };
    assert_eq!(metadata(&f), Some(want.clone()));
    assert!(state.path().join("metadata.json").exists());

    f.kill();
    let f = start();
    assert_eq!(
        metadata(&f),
        Some(want),
        "run-time metadata is restored after a restart"
    );
}
