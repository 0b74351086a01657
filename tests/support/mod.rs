//! Shared helpers of the end-to-end tests: a real etcd, a real fleetd, a tiny HTTP client.
//!
//! - [`Etcd::shared`]: the etcd named by `FLEET_TEST_ETCD` (set by `scripts/test.sh`), or else one
//!   etcd started for this test binary and shared by its tests (stopped when the last user drops).
//!   Every handle has its own key prefix (`/fleet-test-<random>/`), so tests never see each other.
//! - [`Etcd::private`]: an etcd of its own that the test can [`Etcd::stop`] and [`Etcd::restart`].
//! - [`Fleetd`]: the real `fleetd` binary on a temporary unix socket, killed (by PID) on drop.
//! - [`http`]: one HTTP/1.1 request over a unix socket, blocking, with the raw headers you give.
#![allow(dead_code)]

pub mod bins;
pub mod original;
pub mod own_etcd;
pub mod run;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// A registry on `etcd`'s prefix, once it reached etcd (its backoff capped at 500 ms, so that a test
/// sees it reconnect soon).
pub async fn registry(etcd: &Etcd) -> fleet::registry::Registry {
    let mut opts =
        fleet::registry::RegistryOptions::new(vec![etcd.endpoint().to_string()], etcd.prefix());
    opts.backoff_max = Duration::from_millis(500);
    let r = fleet::registry::Registry::start(opts);
    r.wait_available(Duration::from_secs(20))
        .await
        .expect("registry reaches etcd");
    r
}

/// The unit name `s` (which must be valid).
pub fn unit_name(s: &str) -> fleet_sched::UnitName {
    fleet_sched::UnitName::parse(s).unwrap()
}

/// A service unit that runs `exec`.
pub fn unit_file(exec: &str) -> fleet_sched::UnitFile {
    fleet_sched::UnitFile::parse(&format!(
        "[Unit]\nDescription=test\n\n[Service]\nExecStart={exec}\n"
    ))
    .unwrap()
}

/// A unique etcd key prefix for one test: `/fleet-test-<random>/`.
pub fn unique_prefix() -> String {
    format!("/fleet-test-{}/", unique_token())
}

/// A token unique across processes and calls (pid, time, counter, std's random hasher keys).
pub fn unique_token() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:016x}", h.finish())
}

/// A free loopback TCP port (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free loopback port")
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd process on loopback ports with a temporary data directory.
pub struct EtcdProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl EtcdProcess {
    /// Starts etcd on free ports and waits until it is healthy (panics after 20 s).
    pub fn start() -> EtcdProcess {
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir for etcd");
            let mut p = EtcdProcess {
                child: None,
                dir,
                client_port: free_port(),
                peer_port: free_port(),
            };
            if p.spawn_and_wait() {
                return p;
            }
            last_log = p.log();
        }
        panic!("etcd did not start; its log:\n{last_log}");
    }

    /// The client URL, e.g. `http://127.0.0.1:23790`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The PID of the running etcd, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn spawn_and_wait(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .arg("--name=fleet-test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=fleet-test={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn etcd (is it installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if etcd_healthy(self.client_port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        false
    }

    /// Kills etcd (SIGKILL by PID) and waits for it; the data directory stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        for _ in 0..3 {
            if self.spawn_and_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("etcd did not restart; its log:\n{}", self.log());
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn etcd_healthy(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"") || out.contains("\"health\": \"true\"")
}

/// An etcd for one test: an endpoint plus a key prefix of its own.
pub struct Etcd {
    endpoint: String,
    prefix: String,
    process: Option<Arc<Mutex<EtcdProcess>>>,
}

impl Etcd {
    /// `FLEET_TEST_ETCD` if set, else an etcd shared by the tests of this binary.
    pub fn shared() -> Etcd {
        if let Ok(ep) = std::env::var("FLEET_TEST_ETCD") {
            if !ep.trim().is_empty() {
                return Etcd {
                    endpoint: ep.trim().to_string(),
                    prefix: unique_prefix(),
                    process: None,
                };
            }
        }
        static SHARED: OnceLock<Mutex<Weak<Mutex<EtcdProcess>>>> = OnceLock::new();
        let slot = SHARED.get_or_init(|| Mutex::new(Weak::new()));
        let mut weak = slot.lock().unwrap_or_else(|e| e.into_inner());
        let process = match weak.upgrade() {
            Some(p) => p,
            None => {
                let p = Arc::new(Mutex::new(EtcdProcess::start()));
                *weak = Arc::downgrade(&p);
                p
            }
        };
        let endpoint = process.lock().unwrap_or_else(|e| e.into_inner()).endpoint();
        Etcd {
            endpoint,
            prefix: unique_prefix(),
            process: Some(process),
        }
    }

    /// An etcd of this test's own, which it may stop and restart.
    pub fn private() -> Etcd {
        let p = EtcdProcess::start();
        Etcd {
            endpoint: p.endpoint(),
            prefix: unique_prefix(),
            process: Some(Arc::new(Mutex::new(p))),
        }
    }

    /// The client URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// This test's key prefix (`/fleet-test-<random>/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Stops a [`Etcd::private`] etcd (panics on a shared one).
    pub fn stop(&self) {
        self.own_process().lock().unwrap().stop();
    }

    /// Restarts a stopped [`Etcd::private`] etcd on the same port with the same data.
    pub fn restart(&self) {
        self.own_process().lock().unwrap().restart();
    }

    fn own_process(&self) -> &Arc<Mutex<EtcdProcess>> {
        let p = self
            .process
            .as_ref()
            .expect("stop/restart need Etcd::private()");
        assert_eq!(
            Arc::strong_count(p),
            1,
            "stop/restart need Etcd::private(), not a shared etcd"
        );
        p
    }

    /// A plain etcd client (to write or inspect keys behind fleet's back).
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint.as_str()], None)
            .await
            .expect("connect to test etcd")
    }

    /// Every key under this test's prefix (prefix stripped) with its value.
    pub async fn dump(&self) -> BTreeMap<String, String> {
        let mut c = self.client().await;
        let resp = c
            .get(
                self.prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .expect("read test prefix");
        resp.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap()[self.prefix.len()..].to_string(),
                    kv.value_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Writes unit `name` straight to etcd under this test's prefix, behind fleet's back: its unit
    /// file (`unit-files/<hash>`) and its record (`units/<name>`, desired state `desired`).
    pub async fn put_unit_behind(
        &self,
        c: &mut etcd_client::Client,
        name: &str,
        f: &fleet_sched::UnitFile,
        desired: &str,
    ) {
        let p = &self.prefix;
        c.put(format!("{p}unit-files/{}", f.hash()), f.serialize(), None)
            .await
            .unwrap();
        c.put(
            format!("{p}units/{name}"),
            format!(
                r#"{{"name":"{name}","hash":"{}","desiredState":"{desired}"}}"#,
                f.hash()
            ),
            None,
        )
        .await
        .unwrap();
    }

    /// The current etcd revision.
    pub async fn revision(&self) -> i64 {
        let mut c = self.client().await;
        let resp = c.get("/", None).await.expect("read revision");
        resp.header().expect("header").revision()
    }
}

/// An HTTP response read by [`http`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body (chunked encoding removed).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    /// The `error.message` of an error body.
    pub fn error_message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error body: {}", self.text()))
            .to_string()
    }
}

/// One HTTP/1.1 request over the unix socket `socket`; `headers` are sent as given (so a test can
/// send a header twice). `Host`, `Content-Length` and `Connection: close` are added.
pub fn http(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange(&mut s, method, path, headers, body)
}

/// One HTTP/1.1 request over TCP to `addr` (like [`http`]).
pub fn http_tcp(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange(&mut s, method, path, headers, body)
}

/// One HTTP/1.1 request on an open stream `s` (TLS, say); like [`http`].
pub fn exchange<S: Read + Write>(
    s: &mut S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "PUT" | "POST" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    // A server may answer (413) before reading the whole body and close: ignore write errors.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// A free loopback TCP address (`127.0.0.1:<port>`) for a test server.
pub fn free_loopback_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// `GET path` with no headers.
pub fn http_get(socket: &Path, path: &str) -> HttpResponse {
    http(socket, "GET", path, &[], b"").unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `PUT /fleet/v1/units/<name>`: an inactive unit running `/bin/true`.
pub fn put_inactive_unit(f: &Fleetd, name: &str) -> HttpResponse {
    http_put_json(
        f.socket(),
        &format!("/fleet/v1/units/{name}"),
        &serde_json::json!({
            "desiredState": "inactive",
            "options": [{"section": "Service", "name": "ExecStart", "value": "/bin/true"}]
        }),
    )
}

/// Asserts that `r` is a JSON error with `status` whose message contains `message_part`.
pub fn assert_error(r: &HttpResponse, status: u16, message_part: &str) {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let msg = r.error_message();
    assert!(
        msg.contains(message_part),
        "message {msg:?} does not contain {message_part:?}"
    );
}

/// `PUT path` with `Content-Type: application/json` and a JSON body.
pub fn http_put_json(socket: &Path, path: &str, body: &serde_json::Value) -> HttpResponse {
    http(
        socket,
        "PUT",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .unwrap_or_else(|e| panic!("PUT {path}: {e}"))
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("bad chunk"))?;
            let size_str = std::str::from_utf8(&rest[..nl]).map_err(|_| bad("bad chunk"))?;
            let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size + 2 {
                return Err(bad("short chunk"));
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Settings of a [`Fleetd`] to start.
pub struct FleetdBuilder {
    etcd_endpoint: String,
    prefix: String,
    machine_id: String,
    config: Vec<(String, String)>,
    env: Vec<(String, String)>,
}

impl FleetdBuilder {
    /// The machine ID (default: random 32 hex).
    pub fn machine_id(mut self, id: &str) -> Self {
        self.machine_id = id.to_string();
        self
    }

    /// A line `key=value` of the configuration file.
    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.config.push((key.to_string(), value.to_string()));
        self
    }

    /// An environment variable of the fleetd process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts fleetd and waits until its socket accepts connections (not until etcd is reached:
    /// see [`Fleetd::wait_ready`]).
    pub fn start(self) -> Fleetd {
        let dir = tempfile::tempdir().expect("temp dir for fleetd");
        let socket = dir.path().join("fleet.sock");
        let conf = dir.path().join("fleet.conf");
        let mut text = format!(
            "etcd_servers={}\netcd_key_prefix={}\napi_socket={}\nmachine_id={}\n\
             gossip_insecure=true\ngossip_listen=127.0.0.1:0\nstate_dir={}\n\
             units_directory={}\nruntime_dir={}\n",
            self.etcd_endpoint,
            self.prefix,
            socket.display(),
            self.machine_id,
            dir.path().join("state").display(),
            dir.path().join("units").display(),
            dir.path().join("run").display(),
        );
        for (k, v) in &self.config {
            text.push_str(&format!("{k}={v}\n"));
        }
        // Tests that ask for plain TCP (no TLS settings) get it explicitly.
        let has = |key: &str| self.config.iter().any(|(k, _)| k == key);
        if has("api_tcp") && !has("api_tls_cert_file") && !has("api_tcp_insecure") {
            text.push_str("api_tcp_insecure=true\n");
        }
        std::fs::write(&conf, text).expect("write fleet.conf");
        let log_path = dir.path().join("fleetd.log");
        let log = std::fs::File::create(&log_path).expect("fleetd log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetd"));
        cmd.arg("--config")
            .arg(&conf)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // Keep FLEET_* of the test environment out of fleetd's configuration.
        for (k, _) in std::env::vars() {
            if k.starts_with("FLEET_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn fleetd");
        let mut f = Fleetd {
            child: Some(child),
            dir,
            socket,
            conf,
            log: log_path,
            machine_id: self.machine_id,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if UnixStream::connect(&f.socket).is_ok() {
                return f;
            }
            if let Some(c) = f.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("fleetd exited ({status}); its log:\n{}", f.log());
                }
            }
            if Instant::now() > deadline {
                panic!("fleetd socket did not appear; its log:\n{}", f.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running fleetd process on a temporary unix socket; killed by PID on drop.
pub struct Fleetd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    socket: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    machine_id: String,
}

impl Fleetd {
    /// A builder for a fleetd on `etcd` (its endpoint and its prefix).
    pub fn builder(etcd: &Etcd) -> FleetdBuilder {
        FleetdBuilder {
            etcd_endpoint: etcd.endpoint().to_string(),
            prefix: etcd.prefix().to_string(),
            machine_id: format!("{}{}", unique_token(), unique_token()),
            config: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Starts a fleetd with default settings and waits until it has reached etcd.
    pub fn start(etcd: &Etcd) -> Fleetd {
        let f = Fleetd::builder(etcd).start();
        f.wait_ready();
        f
    }

    /// The unix socket of its API.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The endpoint for fleetctl: `unix:///tmp/.../fleet.sock`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Its machine ID.
    pub fn machine_id(&self) -> &str {
        &self.machine_id
    }

    /// Its configuration file (rewrite it and [`Fleetd::signal`] `HUP` to reload).
    pub fn config_path(&self) -> &Path {
        &self.conf
    }

    /// Its temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PID of the process (None once it exited and was reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 20 s) until `GET /fleet/v1/units` answers 200, i.e. fleetd reached etcd.
    pub fn wait_ready(&self) {
        self.wait_for_status(200);
    }

    /// Waits (up to 20 s) until `GET /fleet/v1/units` answers `status`.
    pub fn wait_for_status(&self, status: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = None;
        while Instant::now() < deadline {
            match http(&self.socket, "GET", "/fleet/v1/units", &[], b"") {
                Ok(r) if r.status == status => return,
                other => last = Some(other.map(|r| (r.status, r.text()))),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "fleetd did not answer {status} (last: {last:?}); its log:\n{}",
            self.log()
        );
    }

    /// Sends a signal (`"HUP"`, `"TERM"`, ...) to this fleetd by PID.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().expect("fleetd is running");
        let ok = Command::new("kill")
            .arg("-s")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -s {sig} {pid} failed");
    }

    /// Waits (up to `timeout`) for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return status.code();
                }
            } else {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills it now (SIGKILL by PID).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Fleetd {
    fn drop(&mut self) {
        self.kill();
    }
}
