//! An etcd of a test's own started with flags of its choosing (TLS with client certificates, a small
//! backend quota), on free loopback ports with a temporary data directory; killed by PID on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A single-member etcd with extra flags (see the module's documentation).
pub struct OwnEtcd {
    child: Child,
    url: String,
    /// Flags every [`OwnEtcd::etcdctl`] passes after `--endpoints` (timeout, certificates).
    etcdctl_flags: Vec<String>,
    _data: tempfile::TempDir,
}

impl Drop for OwnEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OwnEtcd {
    /// Starts member `name` serving clients at `<scheme>://127.0.0.1:<free port>` with `flags` added,
    /// and waits (at most 20 s) until `etcdctl endpoint health` with `etcdctl_flags` succeeds.
    pub fn start(name: &str, scheme: &str, flags: &[String], etcdctl_flags: &[String]) -> OwnEtcd {
        let data = tempfile::tempdir().unwrap();
        let (cp, pp) = (free_port(), free_port());
        let url = format!("{scheme}://127.0.0.1:{cp}");
        let peer = format!("http://127.0.0.1:{pp}");
        let child = Command::new("etcd")
            .args(["--name", name, "--data-dir"])
            .arg(data.path().join("d"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("{name}={peer}")])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let e = OwnEtcd {
            child,
            url,
            etcdctl_flags: etcdctl_flags.to_vec(),
            _data: data,
        };
        let t0 = Instant::now();
        while e.etcdctl(&["endpoint", "health"]).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "etcd {name} did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        e
    }

    /// Its client URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `etcdctl` (API v3) against it: stdout, or stderr when it fails.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url])
            .args(&self.etcdctl_flags)
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}
