//! The lab's etcd: the hub etcd or a member cluster, its faults and its endpoints for the host.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use crate::{etcd_member_ip, Lab, LabError, Netns, Result, HUB_IP};

impl Lab {
    /// Runs `etcdctl` (API v3) in the hub netns against the lab's etcd (every member of a member
    /// cluster, with the TLS client certificate when etcd uses TLS); returns its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let mut a = vec!["etcdctl"];
        a.extend_from_slice(args);
        self.script_stdout(&a)
    }

    /// Members of the lab's etcd cluster (0 when the lab runs the single hub etcd).
    pub fn etcd_members(&self) -> usize {
        self.etcd_members
    }

    /// The etcd client URLs as machines see them (the `FT_ETCD` of [`ENV_FILE`](crate::ENV_FILE), split).
    pub fn etcd_urls_in_lab(&self) -> Vec<String> {
        let scheme = if self.etcd_tls { "https" } else { "http" };
        if self.etcd_members == 0 {
            return vec![format!("{scheme}://{HUB_IP}:2379")];
        }
        (1..=self.etcd_members)
            .map(|k| format!("{scheme}://{}:2379", etcd_member_ip(k)))
            .collect()
    }

    fn check_member(&self, k: usize) -> Result<()> {
        if k == 0 || k > self.etcd_members {
            return Err(LabError::InvalidOption(format!(
                "no etcd member {k} (this lab has {} members)",
                self.etcd_members
            )));
        }
        Ok(())
    }

    fn member_script(&self, verb: &str, k: usize) -> Result<()> {
        self.check_member(k)?;
        self.script(&[verb, &k.to_string()])
    }

    /// SIGKILLs etcd member `k` (its data dir stays; [`Lab::etcd_start`] restarts it from there).
    pub fn etcd_kill(&self, k: usize) -> Result<()> {
        self.member_script("etcd-kill", k)
    }
    /// Starts etcd member `k` again from its data dir; returns once it answers `/health` (which
    /// needs a quorum).
    pub fn etcd_start(&self, k: usize) -> Result<()> {
        self.member_script("etcd-start", k)
    }
    /// Freezes etcd member `k` (cgroup freezer): it answers nothing, its sockets stay open.
    pub fn etcd_freeze(&self, k: usize) -> Result<()> {
        self.member_script("etcd-freeze", k)
    }
    /// Thaws a frozen etcd member.
    pub fn etcd_thaw(&self, k: usize) -> Result<()> {
        self.member_script("etcd-thaw", k)
    }
    /// Cuts etcd member `k` off from the other members (its peer port 2380, both ways) while its
    /// clients stay connected: a minority of one, which cannot serve linearizable requests.
    pub fn etcd_isolate(&self, k: usize) -> Result<()> {
        self.member_script("etcd-isolate", k)
    }
    /// Undoes [`Lab::etcd_isolate`].
    pub fn etcd_rejoin(&self, k: usize) -> Result<()> {
        self.member_script("etcd-rejoin", k)
    }
    /// The member (1-based) that reports itself the etcd leader right now.
    pub fn etcd_leader(&self) -> Result<usize> {
        if self.etcd_members == 0 {
            return Err(LabError::InvalidOption(
                "the hub etcd has no members to choose from".into(),
            ));
        }
        let out = self.script_stdout(&["etcd-leader"])?;
        out.trim()
            .parse()
            .map_err(|_| LabError::InvalidOption(format!("etcd-leader printed {out:?}")))
    }
    /// Host PID of etcd member `k`, while it runs.
    pub fn etcd_member_pid(&self, k: usize) -> Result<u32> {
        self.check_member(k)?;
        let file = self.state.join(format!("e{k}/pid"));
        fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
            .ok_or_else(|| LabError::InvalidOption(format!("etcd member {k} is not running")))
    }
    /// A host `127.0.0.1` port forwarded to etcd member `k`'s client port (`http(s)://127.0.0.1:<port>`).
    pub fn etcd_member_endpoint(&self, k: usize) -> Result<String> {
        self.check_member(k)?;
        let scheme = if self.etcd_tls { "https" } else { "http" };
        let addr = self.forward_tcp(Netns::Hub, SocketAddr::from((etcd_member_ip(k), 2379)))?;
        Ok(format!("{scheme}://{addr}"))
    }

    /// The hub etcd's client URL for the test process on the host: `http://127.0.0.1:<port>`, a
    /// TCP forwarder (threads of this process) whose outgoing connections are made inside the hub
    /// netns to `10.77.0.1:2379`. Started on first use, stopped with the lab. Machines use
    /// [`ETCD_IN_LAB`](crate::ETCD_IN_LAB) instead. Without a forwarder, run `etcdctl` in the hub: [`Lab::etcdctl`].
    /// In a member cluster this forwards to member 1 ([`Lab::etcd_member_endpoint`] reaches the others).
    pub fn etcd_endpoint(&self) -> Result<String> {
        if let Some(ep) = self.etcd_endpoint.get() {
            return Ok(ep.clone());
        }
        if self.etcd_members > 0 {
            let ep = self.etcd_member_endpoint(1)?;
            return Ok(self.etcd_endpoint.get_or_init(|| ep).clone());
        }
        let addr = self.forward_tcp(Netns::Hub, SocketAddr::from((HUB_IP, 2379)))?;
        Ok(self
            .etcd_endpoint
            .get_or_init(|| format!("http://{addr}"))
            .clone())
    }
}
