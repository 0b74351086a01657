//! fleetd as a system service, end to end with a real etcd: `GET /metrics`, the TLS TCP listener
//! with client certificates and bearer tokens (and fleetctl over https), socket activation and
//! readiness notification.

mod pki;
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use support::{http, http_get, Etcd, Fleetd, HttpResponse};

/// One sample line of the exposition: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: String,
    value: f64,
}

/// Parses the Prometheus text format strictly enough to catch malformed output: every line is a
/// `# HELP`/`# TYPE` comment or `name[{labels}] value` with a float value; returns the samples and
/// the declared types.
fn parse_exposition(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type {kind} in {line:?}"
            );
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.is_empty() && !line.starts_with('#'), "line {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "name in {line:?}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "no # TYPE before {line:?}");
        samples.push(Sample {
            name: name.to_string(),
            labels: labels.to_string(),
            value,
        });
    }
    (samples, types)
}

fn value(samples: &[Sample], name: &str, labels: &str) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && s.labels == labels)
        .map(|s| s.value)
}

fn scrape(socket: &Path) -> (Vec<Sample>, BTreeMap<String, String>) {
    let r = http_get(socket, "/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse_exposition(&r.text())
}

fn unit_body(exec: &str) -> Vec<u8> {
    json!({"options": [
        {"section": "Service", "name": "ExecStart", "value": exec}
    ]})
    .to_string()
    .into_bytes()
}

#[test]
fn metrics_are_prometheus_text_and_count_activity() {
    let etcd = Etcd::shared();
    let f = Fleetd::start(&etcd);
    let (samples, types) = scrape(f.socket());
    for (name, kind) in [
        ("fleet_build_info", "gauge"),
        ("fleet_machines", "gauge"),
        ("fleet_placements_total", "counter"),
        ("fleet_claim_conflicts_total", "counter"),
        ("fleet_gossip_detection_seconds", "histogram"),
        ("fleet_failover_seconds", "histogram"),
        ("fleet_etcd_request_duration_seconds", "histogram"),
        ("fleet_etcd_request_errors_total", "counter"),
        ("fleet_systemd_job_duration_seconds", "histogram"),
        ("fleet_systemd_job_failures_total", "counter"),
        ("fleet_gossip_bytes_total", "counter"),
        ("fleet_etcd_available", "gauge"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    assert_eq!(
        value(&samples, "fleet_machines", "state=\"alive\""),
        Some(1.0)
    );
    assert_eq!(value(&samples, "fleet_etcd_available", ""), Some(1.0));
    let txns = |s: &[Sample]| {
        value(
            s,
            "fleet_etcd_request_duration_seconds_count",
            "op=\"registry_txn\"",
        )
        .expect("registry txn count")
    };
    let before = txns(&samples);

    // Two unit writes through the API are two registry transactions.
    for n in ["m1.service", "m2.service"] {
        let r = http(
            f.socket(),
            "PUT",
            &format!("/fleet/v1/units/{n}"),
            &[("Content-Type", "application/json")],
            &unit_body("/bin/true"),
        )
        .unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let (after, _) = scrape(f.socket());
    assert_eq!(txns(&after), before + 2.0);
    // Histogram buckets are cumulative and end in the count.
    let inf = value(
        &after,
        "fleet_etcd_request_duration_seconds_bucket",
        "op=\"registry_txn\",le=\"+Inf\"",
    );
    assert_eq!(inf, Some(txns(&after)));
    // Both prefixes' 405 rule does not apply to /metrics: other methods are 405.
    let r = http(f.socket(), "POST", "/metrics", &[], b"").unwrap();
    assert_eq!(r.status, 405);
}

// ---------------------------------------------------------------- TLS and credentials

/// A CA, a server certificate for 127.0.0.1, a client certificate from the CA, one from another
/// CA, and a token file, in `dir`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca = pki::Pki::ca(dir, "ca", "fleet API client CA");
        let rogue = pki::Pki::ca(dir, "rogue-ca", "someone else");
        pki::Pki::leaf(dir, &ca, "server", &["127.0.0.1", "localhost"]);
        pki::Pki::leaf(dir, &ca, "client", &[]);
        pki::Pki::leaf(dir, &rogue, "rogue", &[]);
        std::fs::write(dir.join("token"), "s3cret-token\n").unwrap();
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// One HTTPS request to `addr`, trusting `ca`, presenting `client` (`name` of a leaf) if given.
fn https(
    pki: &Pki,
    addr: &str,
    client: Option<&str>,
    headers: &[(&str, &str)],
    path: &str,
) -> std::io::Result<HttpResponse> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(name) => {
            let certs = CertificateDer::pem_file_iter(pki.path(&format!("{name}.pem")))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{name}.key"))).unwrap();
            b.with_client_auth_cert(certs, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap())
            .unwrap();
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    support::exchange(&mut tls, "GET", path, headers, b"")
}

fn tls_fleetd(etcd: &Etcd, pki: &Pki, addr: &str) -> Fleetd {
    let f = Fleetd::builder(etcd)
        .config("api_tcp", addr)
        .config("api_tls_cert_file", &pki.path("server.pem"))
        .config("api_tls_key_file", &pki.path("server.key"))
        .config("api_client_ca_file", &pki.path("ca.pem"))
        .config("api_token_file", &pki.path("token"))
        .start();
    f.wait_ready();
    f
}

fn assert_refused(r: &HttpResponse, status: u16, part: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"]["code"], status);
    let msg = r.error_message();
    assert!(msg.contains(part), "{msg:?} lacks {part:?}");
    assert!(r.header("server").is_some_and(|s| s.starts_with("fleetd/")));
}

#[test]
fn the_tcp_api_requires_tls_and_a_certificate_or_token() {
    let etcd = Etcd::shared();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let addr = support::free_loopback_addr();
    let f = tls_fleetd(&etcd, &pki, &addr);
    let units = "/fleet/v1/units";

    // No credentials: 401 with a challenge.
    let r = https(&pki, &addr, None, &[], units).unwrap();
    assert_refused(&r, 401, "credentials required");
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"fleet\""));
    // Wrong token, a certificate of another CA, a non-bearer scheme: 403.
    let wrong = [("Authorization", "Bearer nope")];
    assert_refused(
        &https(&pki, &addr, None, &wrong, units).unwrap(),
        403,
        "does not match",
    );
    assert_refused(
        &https(&pki, &addr, Some("rogue"), &[], units).unwrap(),
        403,
        "client certificate not accepted",
    );
    let basic = [("Authorization", "Basic YTpi")];
    assert_refused(
        &https(&pki, &addr, None, &basic, units).unwrap(),
        403,
        "Bearer",
    );
    // The metrics are behind the same door.
    assert_refused(
        &https(&pki, &addr, None, &[], "/metrics").unwrap(),
        401,
        "credentials",
    );

    // The right token, or a certificate from the CA: served.
    let good = [("Authorization", "Bearer s3cret-token")];
    let r = https(&pki, &addr, None, &good, units).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = https(&pki, &addr, Some("client"), &[], units).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = https(&pki, &addr, Some("client"), &[], "/metrics").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // A valid certificate is enough even with a rogue header? No: a wrong token is never ignored
    // silently unless the certificate already proved who the client is.
    let r = https(&pki, &addr, Some("client"), &wrong, units).unwrap();
    assert_eq!(r.status, 200, "the certificate authenticates: {}", r.text());

    // Plain HTTP on the TLS port gets no API answer.
    let plain = support::http_tcp(&addr, "GET", units, &[], b"");
    assert!(
        plain.map_or(true, |r| r.status != 200),
        "plain HTTP must not be served on the TLS port"
    );
    // The unix socket is unaffected (file permissions guard it).
    assert_eq!(http_get(f.socket(), units).status, 200);
}

fn fleetctl(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(support::bins::fleetctl());
    for (k, _) in std::env::vars() {
        if k.starts_with("FLEETCTL_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).envs(env.iter().copied());
    cmd.output().expect("run fleetctl")
}

#[test]
fn fleetctl_talks_to_the_tls_endpoint_with_a_token_or_a_certificate() {
    let etcd = Etcd::shared();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let addr = support::free_loopback_addr();
    let f = tls_fleetd(&etcd, &pki, &addr);
    let endpoint = format!("https://{addr}");
    let ca = pki.path("ca.pem");
    let base = ["--endpoint", &endpoint, "--ca-file", &ca];
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        a.extend_from_slice(&["list-machines", "--no-legend", "--full"]);
        fleetctl(&a, env)
    };
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(f.machine_id()));
    };
    let token = pki.path("token");
    ok(&run(&["--token-file", &token], &[]));
    ok(&run(&[], &[("FLEETCTL_TOKEN_FILE", &token)]));
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    ok(&run(&["--cert-file", &cert, "--key-file", &key], &[]));

    let out = run(&[], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("credentials required"), "{err}");
    // A server certificate the CA file does not vouch for is refused by fleetctl.
    let rogue_ca = pki.path("rogue-ca.pem");
    let out = fleetctl(
        &[
            "--endpoint",
            &endpoint,
            "--ca-file",
            &rogue_ca,
            "--token-file",
            &token,
            "list-machines",
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[test]
fn fleetd_refuses_a_tcp_api_without_tls_or_insecure() {
    let etcd = Etcd::shared();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("fleet.conf");
    std::fs::write(
        &conf,
        format!(
            "etcd_servers={}\napi_socket={}\napi_tcp={}\nmachine_id=abc\ngossip_insecure=true\n\
             runtime_dir={}\n",
            etcd.endpoint(),
            dir.path().join("s.sock").display(),
            support::free_loopback_addr(),
            dir.path().join("run").display(),
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetd"))
        .arg("--config")
        .arg(&conf)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api_tcp_insecure") && err.contains("api_tls_cert_file"),
        "{err}"
    );
}

// ---------------------------------------------------------------- systemd integration

/// A child process killed by PID on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_conf(dir: &Path, etcd: &Etcd, socket: &Path) -> PathBuf {
    let conf = dir.join("fleet.conf");
    std::fs::write(
        &conf,
        format!(
            "etcd_servers={}\netcd_key_prefix={}\napi_socket={}\nmachine_id={}\n\
             gossip_insecure=true\ngossip_listen=127.0.0.1:0\nstate_dir={}\nunits_directory={}\n\
             runtime_dir={}\n",
            etcd.endpoint(),
            etcd.prefix(),
            socket.display(),
            support::unique_token(),
            dir.join("state").display(),
            dir.join("units").display(),
            dir.join("run").display(),
        ),
    )
    .unwrap();
    conf
}

fn recv_notification(rx: &UnixDatagram, want: &str, log: &Path) -> String {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match rx.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == want) {
                    return msg;
                }
                seen.push(msg);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    panic!(
        "no {want} notification (got {seen:?}); log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
// long: one systemd-run scenario: the passed socket, readiness and the served API in turn
fn socket_activation_serves_the_passed_socket_and_notifies_readiness() {
    let Some(activate) = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists()) else {
        eprintln!("skipped: systemd-socket-activate is not installed");
        return;
    };
    let etcd = Etcd::shared();
    let dir = tempfile::tempdir().unwrap();
    // A socket path fleetd's configuration does not name: fleetd must serve what it is given.
    let passed = dir.path().join("activated.sock");
    let configured = dir.path().join("configured.sock");
    let conf = write_conf(dir.path(), &etcd, &configured);
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let log = dir.path().join("log");
    let child = Command::new(activate)
        .arg("-l")
        .arg(&passed)
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg(env!("CARGO_BIN_EXE_fleetd"))
        .arg("--config")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("run systemd-socket-activate");
    let mut child = Killed(child);
    // The socket exists before fleetd runs; the first connection starts it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !passed.exists() {
        assert!(Instant::now() < deadline, "socket not created");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut first = std::os::unix::net::UnixStream::connect(&passed).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    first
        .write_all(b"GET /fleet/v1/machines HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    first.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 503"),
        "first request answered: {answer}"
    );
    let ready = recv_notification(&notify, "READY=1", &log);
    assert!(ready.contains("STATUS="), "{ready}");
    assert!(
        !configured.exists(),
        "fleetd bound its configured socket too"
    );
    // systemd-socket-activate execs fleetd in its own process: signal that PID.
    let pid = child.0.id();
    let ok = Command::new("kill")
        .args(["-s", "TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    recv_notification(&notify, "STOPPING=1", &log);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "fleetd exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "fleetd did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The socket file belongs to the service manager: fleetd left it in place.
    assert!(passed.exists(), "fleetd removed the activated socket file");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("socket activation"), "{text}");
}

#[test]
fn logs_to_the_journal_have_no_timestamps_and_carry_priorities() {
    let etcd = Etcd::shared();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let conf = write_conf(dir.path(), &etcd, &socket);
    let log = dir.path().join("log");
    let file = std::fs::File::create(&log).unwrap();
    // JOURNAL_STREAM names the device and inode of stderr, as systemd sets it.
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_fleetd"))
        .arg("--config")
        .arg(&conf)
        .env_remove("RUST_LOG")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    let _child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let t = std::fs::read_to_string(&log).unwrap();
        if t.contains("fleetd starting") {
            break t;
        }
        assert!(Instant::now() < deadline, "no start line: {t}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let line = text
        .lines()
        .find(|l| l.contains("fleetd starting"))
        .unwrap();
    assert!(line.starts_with("<6>"), "{line:?}");
    assert!(!line.contains('\u{1b}'), "ANSI colours in {line:?}");
    // No leading timestamp such as 2026-01-01T00:00:00.
    assert!(
        !line[3..].starts_with(|c: char| c.is_ascii_digit()),
        "{line:?}"
    );
}

#[test]
fn an_activated_tcp_socket_serves_tls_with_credentials() {
    let Some(activate) = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists()) else {
        eprintln!("skipped: systemd-socket-activate is not installed");
        return;
    };
    let etcd = Etcd::shared();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let unix = dir.path().join("activated.sock");
    let addr = support::free_loopback_addr();
    let conf = write_conf(dir.path(), &etcd, &dir.path().join("configured.sock"));
    // TLS settings without api_tcp: the TCP socket comes from the service manager.
    let mut text = std::fs::read_to_string(&conf).unwrap();
    for (k, v) in [
        ("api_tls_cert_file", pki.path("server.pem")),
        ("api_tls_key_file", pki.path("server.key")),
        ("api_token_file", pki.path("token")),
    ] {
        text.push_str(&format!("{k}={v}\n"));
    }
    std::fs::write(&conf, text).unwrap();
    let log = dir.path().join("log");
    let child = Command::new(activate)
        .arg("-l")
        .arg(&unix)
        .arg("-l")
        .arg(&addr)
        .arg(env!("CARGO_BIN_EXE_fleetd"))
        .arg("--config")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("run systemd-socket-activate");
    let _child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !unix.exists() {
        assert!(Instant::now() < deadline, "socket not created");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first TLS connection starts fleetd, which serves both passed sockets.
    let good = [("Authorization", "Bearer s3cret-token")];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match https(&pki, &addr, None, &good, "/fleet/v1/units") {
            Ok(r) if r.status == 200 => break,
            other => assert!(
                Instant::now() < deadline,
                "{other:?}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_refused(
        &https(&pki, &addr, None, &[], "/fleet/v1/units").unwrap(),
        401,
        "credentials required",
    );
    assert_eq!(http_get(&unix, "/fleet/v1/units").status, 200);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("API on {addr} (socket activation)")),
        "{text}"
    );
    assert!(text.contains("API on https://"), "{text}");
}

#[test]
fn the_api_socket_gets_the_configured_group_and_mode() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let etcd = Etcd::shared();
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1);
    if uid != 0 {
        eprintln!("skipped: giving a socket to another group needs root");
        return;
    }
    let f = Fleetd::builder(&etcd)
        .config("api_socket_group", "4242")
        .config("api_socket_mode", "0640")
        .start();
    let meta = std::fs::metadata(f.socket()).unwrap();
    assert_eq!(meta.gid(), 4242);
    assert_eq!(meta.uid(), 0);
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    // An unknown group name stops fleetd with a message naming it.
    let dir = tempfile::tempdir().unwrap();
    let conf = write_conf(dir.path(), &etcd, &dir.path().join("s.sock"));
    let out = Command::new(env!("CARGO_BIN_EXE_fleetd"))
        .arg("--config")
        .arg(&conf)
        .arg("--api-socket-group=no-such-group-here")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-group-here"), "{err}");
}

/// A second fleetd given a runtime directory a running fleetd holds (its lease, witness files and
/// fence deadline live there) refuses to start, naming the directory and the holder; the first one
/// keeps serving. (Before the lock the two overwrote each other's fence deadline.)
#[test]
fn a_second_fleetd_on_a_held_runtime_directory_refuses_to_start() {
    let etcd = Etcd::shared();
    let first = Fleetd::start(&etcd);
    let run = first.dir().join("run");
    let dir = tempfile::tempdir().unwrap();
    let conf = write_conf(dir.path(), &etcd, &dir.path().join("s.sock"));
    let mut second = Command::new(env!("CARGO_BIN_EXE_fleetd"))
        .arg("--config")
        .arg(&conf)
        .arg(format!("--runtime-dir={}", run.display()))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = second.kill();
            let _ = second.wait();
            panic!("the second fleetd still runs after 20 s on a held runtime directory");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    second
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "the second fleetd exited 0: {err}");
    assert!(
        err.contains(&format!(
            "the runtime directory {} is in use by another fleetd (pid {})",
            run.display(),
            first.pid().unwrap()
        )),
        "{err}"
    );
    // The first one is untouched: its lock file still names it, and it still answers.
    assert_eq!(
        std::fs::read_to_string(run.join("fleetd.lock"))
            .unwrap()
            .trim(),
        first.pid().unwrap().to_string()
    );
    first.wait_ready();
}
