//! fleetd as a process: etcd going away and coming back, signals (SIGHUP reloads, SIGTERM exits),
//! `--version` and `--help`, the API on TCP, a claim shown as the unit's machine.

use super::*;

#[test]
fn etcd_down_means_503_and_recovery_after() {
    let etcd = Etcd::private();
    let f = Fleetd::start(&etcd);
    let s = f.socket();
    let r = put(&f, "a.service", json!({"options": options("/bin/true")}));
    assert_eq!(r.status, 201);

    etcd.stop();
    f.wait_for_status(503);
    assert_error(
        &http_get(s, "/fleet/v1/units"),
        503,
        "fleet server unable to communicate with etcd",
    );
    assert_error(
        &http_get(s, "/fleet/v1/units/a.service"),
        503,
        "unable to communicate with etcd",
    );
    assert_error(
        &put(&f, "b.service", json!({"options": options("/bin/b")})),
        503,
        "unable to communicate with etcd",
    );
    let r = http(s, "DELETE", "/fleet/v1/units/a.service", &[], b"").unwrap();
    assert_error(&r, 503, "unable to communicate with etcd");

    etcd.restart();
    f.wait_ready();
    let list = http_get(s, "/fleet/v1/units").json();
    assert_eq!(list["units"].as_array().unwrap().len(), 1, "{list}");
    let keys: Vec<String> = dump(&etcd).into_keys().collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
}

#[test]
fn fleetd_started_without_etcd_answers_503_until_etcd_appears() {
    let etcd = Etcd::private();
    etcd.stop();
    let f = Fleetd::builder(&etcd).start();
    assert_error(
        &http_get(f.socket(), "/fleet/v1/units"),
        503,
        "unable to communicate with etcd",
    );
    etcd.restart();
    f.wait_ready();
}

#[test]
fn sighup_reloads_metadata_and_sigterm_exits_cleanly() {
    let etcd = Etcd::shared();
    let mut f = Fleetd::builder(&etcd).config("metadata", "a=1").start();
    f.wait_ready();
    let conf = std::fs::read_to_string(f.config_path()).unwrap();
    // metadata applies live; fence_after needs a restart (the declaration's reload classes).
    std::fs::write(
        f.config_path(),
        conf.replace("metadata=a=1", "metadata=a=2,b=3") + "fence_after=2s\n",
    )
    .unwrap();
    f.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let md =
            http_get(f.socket(), "/fleet/v1/machines").json()["machines"][0]["metadata"].clone();
        if md == json!({"a": "2", "b": "3"}) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metadata not reloaded: {md}\n{}",
            f.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = f.log();
    let line = |key: &str| {
        log.lines()
            .find(|l| l.contains(&format!("SIGHUP: {key}: ")))
            .unwrap_or_else(|| panic!("no SIGHUP line for {key}:\n{log}"))
            .to_string()
    };
    let metadata = line("metadata");
    assert!(
        metadata.contains(r#""a=1" -> "a=2,b=3""#) && !metadata.contains("restart"),
        "{metadata}"
    );
    let fence = line("fence_after");
    // From the default (the config file the test fleetd starts with does not set it).
    let default = fleet::config::show_duration(fleet_decide::Timing::DEFAULT_FENCE_AFTER);
    assert!(
        fence.contains(&format!(
            r#""{default}" -> "2s" (takes effect after a restart)"#
        )),
        "{fence}"
    );
    f.signal("TERM");
    assert_eq!(f.wait_exit(Duration::from_secs(10)), Some(0), "{}", f.log());
    assert!(!f.socket().exists(), "socket removed on exit");
}

#[test]
fn fleetd_version_and_help() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetd"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--etcd-servers") && help.contains("--config"),
        "{help}"
    );
    assert!(
        help.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "{help}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetd"))
        .args(["--config", "/nonexistent/fleet.conf"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/fleet.conf"));
}

#[test]
fn the_api_is_also_served_on_tcp_when_configured() {
    let etcd = Etcd::shared();
    let addr = support::free_loopback_addr();
    let f = Fleetd::builder(&etcd).config("api_tcp", &addr).start();
    f.wait_ready();
    let body = json!({"options": options("/bin/tcp")}).to_string();
    let r = support::http_tcp(
        &addr,
        "PUT",
        "/fleet/v1/units/t.service",
        &[JSON],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let r = support::http_tcp(&addr, "GET", "/fleet/v1/units", &[], b"").unwrap();
    assert_eq!(
        r.header("server"),
        Some(concat!("fleetd/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(r.json()["units"][0]["name"], "t.service");
    // The unix socket serves the same registry.
    assert_eq!(
        http_get(f.socket(), "/fleet/v1/units/t.service").status,
        200
    );
}

#[test]
fn a_claim_shows_as_the_units_machine() {
    let etcd = Etcd::shared();
    let f = Fleetd::start(&etcd);
    let r = put(
        &f,
        "c.service",
        json!({"options": options("/bin/c"), "desiredState": "launched"}),
    );
    assert_eq!(r.status, 201);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd.client().await;
        // Bound to a lease, as an agent's claim is (one bound to none counts as free).
        let lease = c.lease_grant(60, None).await.unwrap().id();
        c.put(
            format!("{}claims/c.service", etcd.prefix()),
            r#"{"machineID":"0123abcd"}"#,
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let u = http_get(f.socket(), "/fleet/v1/units/c.service").json();
        if u.get("machineID").is_some() {
            assert_eq!(u["machineID"], "0123abcd");
            // No agent reports a state yet: the unit is placed but not (known to be) running.
            assert_eq!(u["currentState"], "inactive");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "claim not mirrored: {u}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_with_a_new_etcd_prefix_reconnects() {
    let etcd = Etcd::shared();
    let other = Etcd::shared();
    let f = Fleetd::start(&etcd);
    let r = put(&f, "old.service", json!({"options": options("/bin/old")}));
    assert_eq!(r.status, 201);
    let conf = std::fs::read_to_string(f.config_path()).unwrap();
    std::fs::write(
        f.config_path(),
        conf.replace(
            &format!("etcd_key_prefix={}", etcd.prefix()),
            &format!("etcd_key_prefix={}", other.prefix()),
        ),
    )
    .unwrap();
    f.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = http_get(f.socket(), "/fleet/v1/units");
        if r.status == 200 && r.json() == json!({"units": []}) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not switched: {}\n{}",
            r.text(),
            f.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = put(&f, "new.service", json!({"options": options("/bin/new")}));
    assert_eq!(r.status, 201);
    assert_eq!(dump(&other).len(), 2);
    assert_eq!(dump(&etcd).len(), 2);
}
