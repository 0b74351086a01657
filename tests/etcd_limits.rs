//! etcd's own limits: its request size, many units in one prefix, and the NOSPACE alarm.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet::registry::{Registry, RegistryError, RegistryOptions, ETCD_MAX_REQUEST_BYTES};
use fleet_sched::{DesiredState, UnitFile, UnitName};
use support::own_etcd::OwnEtcd;
use support::{put_inactive_unit, Etcd, Fleetd};

fn name(s: &str) -> UnitName {
    UnitName::parse(s).unwrap()
}

async fn registry(endpoint: &str, prefix: &str) -> Registry {
    let mut opts = RegistryOptions::new(vec![endpoint.to_string()], prefix);
    opts.backoff_max = Duration::from_millis(300);
    let r = Registry::start(opts);
    r.wait_available(Duration::from_secs(20)).await.unwrap();
    r
}

/// A unit file of about `bytes` bytes.
fn big_file(bytes: usize) -> UnitFile {
    let line = format!("Environment=PAD={}\n", "x".repeat(1000));
    let text = format!(
        "[Service]\nExecStart=/bin/true\n{}",
        line.repeat(bytes / line.len() + 1)
    );
    UnitFile::parse(&text).unwrap()
}

#[tokio::test]
async fn a_unit_too_large_for_etcd_is_refused_before_it_is_sent() {
    let etcd = Etcd::shared();
    let r = registry(etcd.endpoint(), etcd.prefix()).await;
    let f = big_file(ETCD_MAX_REQUEST_BYTES);
    let e = r
        .create_unit(&name("big.service"), &f, DesiredState::Loaded)
        .await
        .unwrap_err();
    match &e {
        RegistryError::TooLarge(m) => {
            assert!(
                m.contains("big.service") && m.contains("--max-request-bytes"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(etcd.dump().await.is_empty(), "nothing written");

    // Just under the limit: accepted by the check, and by etcd.
    let ok = big_file(ETCD_MAX_REQUEST_BYTES - 64 * 1024);
    r.create_unit(&name("large.service"), &ok, DesiredState::Loaded)
        .await
        .unwrap();
    // A replace with too large a file is refused too, and keeps the old content.
    let e = r
        .replace_unit(&name("large.service"), &f, None)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::TooLarge(_)), "{e:?}");
    assert_eq!(*r.unit(&name("large.service")).unwrap().unwrap().file, ok);
}

#[test]
fn the_api_answers_413_for_a_unit_larger_than_etcd_accepts() {
    let etcd = Etcd::shared();
    let f = Fleetd::builder(&etcd)
        .config("api_max_body", &(8 * 1024 * 1024).to_string())
        .start();
    f.wait_ready();
    let pad = "x".repeat(1000);
    let options: Vec<serde_json::Value> = (0..1700)
        .map(|i| serde_json::json!({"section": "Service", "name": "Environment", "value": format!("P{i}={pad}")}))
        .chain([serde_json::json!({"section": "Service", "name": "ExecStart", "value": "/bin/true"})])
        .collect();
    let r = support::http_put_json(
        f.socket(),
        "/fleet/v1/units/huge.service",
        &serde_json::json!({"desiredState": "loaded", "options": options}),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        r.error_message().contains("exceeds etcd's request limit"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn thousands_of_units_are_read_in_pages_at_one_revision() {
    let etcd = Etcd::shared();
    let p = etcd.prefix().to_string();
    let mut c = etcd.client().await;
    let f = UnitFile::parse("[Service]\nExecStart=/bin/sleep 1\n").unwrap();
    c.put(format!("{p}unit-files/{}", f.hash()), f.serialize(), None)
        .await
        .unwrap();
    const N: usize = 2600; // > 2 pages of units, plus their claims
                           // Claims are bound to a lease, as an agent's are (one bound to none counts as free).
    let lease = c.lease_grant(120, None).await.unwrap().id();
    for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
        let ops: Vec<etcd_client::TxnOp> = chunk
            .iter()
            .flat_map(|i| {
                [
                    etcd_client::TxnOp::put(
                        format!("{p}units/u{i:05}.service"),
                        format!(
                            r#"{{"name":"u{i:05}.service","hash":"{}","desiredState":"loaded"}}"#,
                            f.hash()
                        ),
                        None,
                    ),
                    etcd_client::TxnOp::put(
                        format!("{p}claims/u{i:05}.service"),
                        r#"{"machineID":"m1"}"#,
                        Some(etcd_client::PutOptions::new().with_lease(lease)),
                    ),
                ]
            })
            .collect();
        c.txn(etcd_client::Txn::new().and_then(ops)).await.unwrap();
    }
    let r = registry(etcd.endpoint(), &p).await;
    assert_eq!(r.units().unwrap().len(), N);
    assert_eq!(r.claims().unwrap().len(), N);
    assert_eq!(r.stats().full_reads, 1);
}

/// An etcd on loopback with a small backend quota (its NOSPACE alarm is easy to raise).
struct SmallEtcd {
    url: String,
    etcd: OwnEtcd,
}

impl SmallEtcd {
    fn start(quota: usize) -> SmallEtcd {
        let flags = ["--quota-backend-bytes".to_string(), quota.to_string()];
        let etcd = OwnEtcd::start("small", "http", &flags, &["--command-timeout=5s".into()]);
        SmallEtcd {
            url: etcd.url().to_string(),
            etcd,
        }
    }

    fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        self.etcd.etcdctl(args)
    }

    /// Writes filler values outside fleet's prefix until etcd raises NOSPACE.
    fn fill(&self) {
        use std::io::Write;
        let value = "f".repeat(512 * 1024);
        for i in 0.. {
            // The value on stdin (too long for an argument).
            let mut child = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &self.url, "--command-timeout=5s", "put"])
                .arg(format!("/filler/{i}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(value.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("database space exceeded") {
                return;
            }
            assert!(out.status.success(), "filling etcd: {err}");
            assert!(i < 200, "etcd never ran out of space");
        }
    }

    /// What an operator does: delete, compact, defragment, disarm.
    fn recover(&self) {
        self.etcdctl(&["del", "--prefix", "/filler/"]).unwrap();
        let status = self.etcdctl(&["endpoint", "status", "-w", "json"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&status).unwrap();
        let rev = v[0]["Status"]["header"]["revision"].as_i64().unwrap();
        self.etcdctl(&["compact", &rev.to_string()]).unwrap();
        self.etcdctl(&["defrag"]).unwrap();
        self.etcdctl(&["alarm", "disarm"]).unwrap();
    }
}

#[test]
fn the_nospace_alarm_gives_api_writes_a_503_that_says_so_and_reads_keep_working() {
    let etcd = SmallEtcd::start(8 * 1024 * 1024);
    let plain = Etcd::shared(); // (the builder wants one; the endpoint is overridden)
    let f = Fleetd::builder(&plain)
        .env("FLEET_ETCD_SERVERS", &etcd.url)
        .start();
    f.wait_ready();
    assert_eq!(put_inactive_unit(&f, "before.service").status, 201);

    etcd.fill();
    let r = put_inactive_unit(&f, "during.service");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], 503);
    let msg = r.error_message();
    assert!(
        msg.starts_with("fleet server unable to write to etcd")
            && msg.contains("NOSPACE")
            && msg.contains("database space exceeded")
            && msg.contains("etcdctl alarm disarm"),
        "{msg}"
    );
    // Reads are answered from the mirror; the registry stays connected.
    let r = support::http_get(f.socket(), "/fleet/v1/units");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("before.service"));
    assert!(f.log().contains("NOSPACE"), "{}", f.log());

    etcd.recover();
    let t0 = Instant::now();
    loop {
        let r = put_inactive_unit(&f, "after.service");
        if r.status == 201 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", r.text());
        std::thread::sleep(Duration::from_millis(200));
    }
}
