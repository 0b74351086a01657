//! sshd in lab machines for tests of SSH-based verbs: keys made on the host, a transient sshd unit on
//! [`SSH_PORT`] that accepts root with the client key.

use std::time::Duration;

use super::FleetLab;

/// Port of the test sshd in the machines (the distribution's ssh.service, if any, keeps 22).
pub const SSH_PORT: &str = "2222";

const WAIT: Duration = Duration::from_secs(20);

/// Keys made on the host with ssh-keygen: the machines' host key and root's client key.
pub struct Keys {
    dir: std::path::PathBuf,
}

impl Keys {
    pub fn new() -> Option<Keys> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("fleet-lab-ssh-keys-{}-{k}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["host", "client"] {
            let path = dir.join(name);
            let ok = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(&path)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                eprintln!("skipped: ssh-keygen failed (apt-get install openssh-client)");
                return None;
            }
        }
        Some(Keys { dir })
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts sshd on [`SSH_PORT`] in machine `i` (a transient unit), accepting root with the client
/// key, and installs the client key as root's default identity there.
pub fn start_sshd(fl: &FleetLab, i: usize, keys: &Keys) {
    fl.write_file(i, "/etc/ssh/fleet-lab/host_key", &keys.read("host"));
    fl.write_file(i, "/root/.ssh/id_ed25519", &keys.read("client"));
    fl.write_file(i, "/root/.ssh/authorized_keys", &keys.read("client.pub"));
    for cmd in [
        &[
            "chmod",
            "600",
            "/etc/ssh/fleet-lab/host_key",
            "/root/.ssh/id_ed25519",
        ][..],
        &["mkdir", "-p", "-m", "755", "/run/sshd"],
        &[
            "systemd-run",
            "--unit=fleet-lab-sshd",
            "/usr/sbin/sshd",
            "-D",
            "-e",
            "-p",
            SSH_PORT,
            "-h",
            "/etc/ssh/fleet-lab/host_key",
            "-o",
            "AuthorizedKeysFile=/root/.ssh/authorized_keys",
            "-o",
            "PermitRootLogin=prohibit-password",
            "-o",
            "StrictModes=no",
            "-o",
            "UsePAM=no",
            "-o",
            "PidFile=none",
        ],
    ] {
        fl.lab.sh_ok(i, cmd).expect("sshd setup in the lab");
    }
    fl.wait_for(&format!("sshd listening in m{i}"), WAIT, |fl| {
        let out = fl.lab.sh(i, &["ss", "-Hltn", "sport", "=", ":2222"]).ok()?;
        (!out.stdout.is_empty()).then_some(())
    });
}
