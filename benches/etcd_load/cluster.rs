//! The processes of a run: the etcd members and the proxy, and the sampler of their CPU and memory.

use super::*;

/// etcd members (and the proxy) started by this run; killed by PID and their data removed on drop.
pub(crate) struct Cluster {
    pub(crate) members: Vec<(Child, String)>, // (process, client URL)
    pub(crate) proxy: Option<(Child, String)>,
    pub(crate) dir: std::path::PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (c, _) in self.members.iter_mut().chain(self.proxy.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `etcd` with the arguments to come, killed by the kernel if this process dies first
/// (`PR_SET_PDEATHSIG`), so that an interrupted run leaves no etcd behind.
pub(crate) fn etcd_command() -> Command {
    use std::os::unix::process::CommandExt;
    extern "C" {
        fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    }
    const PR_SET_PDEATHSIG: i32 = 1;
    const SIGKILL: u64 = 9;
    let mut c = Command::new("etcd");
    // SAFETY: prctl is async-signal-safe; called in the child between fork and exec.
    unsafe {
        c.pre_exec(|| {
            prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    c
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    pub(crate) fn start(proxy: bool) -> Cluster {
        // (proxy: start one grpc-proxy in front of the members)
        let dir =
            std::path::PathBuf::from(format!("/dev/shm/fleet-etcd-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("l{i}=http://127.0.0.1:{p}"))
            .collect();
        let mut c = Cluster {
            members: Vec::new(),
            proxy: None,
            dir: dir.clone(),
        };
        for (i, (cp, pp)) in ports.iter().enumerate() {
            let url = format!("http://127.0.0.1:{cp}");
            let child = etcd_command()
                .args(["--name", &format!("l{i}"), "--data-dir"])
                .arg(dir.join(format!("l{i}")))
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{pp}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{pp}"),
                ])
                .args(["--initial-cluster", &initial.join(",")])
                .args([
                    "--initial-cluster-token",
                    "fleet-load",
                    "--log-level",
                    "error",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start etcd");
            c.members.push((child, url));
        }
        let t0 = Instant::now();
        for (_, url) in &c.members {
            while !http_get(url, "/health").is_some_and(|b| b.contains("true")) {
                assert!(t0.elapsed() < Duration::from_secs(30), "etcd did not start");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if proxy {
            let port = free_port();
            let eps: Vec<String> = c.members.iter().map(|(_, u)| u.clone()).collect();
            let child = etcd_command()
                .args(["grpc-proxy", "start", "--endpoints", &eps.join(",")])
                .args(["--listen-addr", &format!("127.0.0.1:{port}"), "--data-dir"])
                .arg(dir.join("proxy"))
                .args(["--max-send-bytes", &(64 * 1024 * 1024).to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start etcd grpc-proxy");
            let url = format!("http://127.0.0.1:{port}");
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "proxy did not start"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            c.proxy = Some((child, url));
        }
        c
    }

    /// The members' client URLs.
    pub(crate) fn member_endpoints(&self) -> Vec<String> {
        self.members.iter().map(|(_, u)| u.clone()).collect()
    }

    pub(crate) fn pids(&self) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, (c, _))| (format!("etcd{i}"), c.id()))
            .collect();
        if let Some((c, _)) = &self.proxy {
            v.push(("proxy".into(), c.id()));
        }
        v
    }
}

pub(crate) fn http_get(url: &str, path: &str) -> Option<String> {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// CPU seconds (user + system) and RSS bytes of a process, from /proc.
pub(crate) fn proc_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // after the comm field: state is [0], utime [11], stime [12]; USER_HZ = 100
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    (cpu, rss)
}

/// A counter from a member's /metrics.
pub(crate) fn metric(url: &str, name: &str) -> f64 {
    http_get(url, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Samples CPU and RSS of the processes every 500 ms between [`Sampler::mark`]s.
pub(crate) struct Sampler {
    pub(crate) pids: Vec<(String, u32)>,
    pub(crate) max_rss: Arc<Mutex<BTreeMap<String, u64>>>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub(crate) fn start(pids: Vec<(String, u32)>) -> Sampler {
        let max_rss = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s, p) = (max_rss.clone(), stop.clone(), pids.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for (name, pid) in &p {
                    let (_, rss) = proc_usage(*pid);
                    let mut g = m.lock().unwrap();
                    let e = g.entry(name.clone()).or_insert(0);
                    *e = (*e).max(rss);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Sampler {
            pids,
            max_rss,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn cpu(&self) -> BTreeMap<String, f64> {
        let mut m: BTreeMap<String, f64> = self
            .pids
            .iter()
            .map(|(n, p)| (n.clone(), proc_usage(*p).0))
            .collect();
        m.insert("harness".into(), proc_usage(std::process::id()).0);
        m
    }

    /// Resets the RSS maxima; returns the previous ones.
    pub(crate) fn take_rss(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.max_rss.lock().unwrap())
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
