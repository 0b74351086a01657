//! The lab's network, as text for a failure message: what a test prints when a machine cannot reach
//! etcd (bridge ports and forwarding database, addresses, neighbours, routes, nftables, and a TCP probe
//! from every machine to every etcd client address).

use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

use crate::{etcd_member_ip, Lab, HUB_IP};

/// Runs `cmd` in netns `ns` and returns its output (stdout, then stderr), or why it did not run.
fn in_netns(ns: &str, cmd: &[&str]) -> String {
    match Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
    {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            if !out.status.success() {
                let _ = writeln!(text, "({})", out.status);
            }
            text
        }
        Err(e) => format!("(not run: {e})\n"),
    }
}

/// `text` indented under a `title` line; empty output shows as `(none)`.
fn section(report: &mut String, title: &str, text: &str) {
    let _ = writeln!(report, "  {title}:");
    if text.trim().is_empty() {
        report.push_str("    (none)\n");
    }
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let _ = writeln!(report, "    {line}");
    }
}

/// `bridge fdb` without the multicast entries every port has (33:33:…, 01:00:5e:…).
fn unicast_fdb(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with("33:33:") && !l.starts_with("01:00:5e:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

impl Lab {
    /// The etcd client IPs the machines use (the hub's, or every member's), each with the netns and
    /// the interface that owns it.
    fn etcd_owners(&self) -> Vec<(String, (String, &'static str))> {
        if self.etcd_members == 0 {
            vec![(
                HUB_IP.to_string(),
                (format!("{}-hub", self.prefix), "ftbr0"),
            )]
        } else {
            (1..=self.etcd_members)
                .map(|k| {
                    let ns = format!("{}-e{k}", self.prefix);
                    (etcd_member_ip(k).to_string(), (ns, "eth0"))
                })
                .collect()
        }
    }

    /// The lab's network as text, for a failure message (~60 lines for 3 machines): the hub's
    /// bridge ports (state, MAC), its unicast forwarding database, addresses, neighbours and nftables
    /// ruleset; for each machine its links, addresses, neighbours, routes, nftables ruleset, the MAC
    /// it resolves each etcd client address to against the one that owns it (`STALE` when they
    /// differ) and a TCP connect (2 s at most) to each. Works on killed machines too (their netns
    /// stays).
    pub fn net_report(&self) -> String {
        let hub = format!("{}-hub", self.prefix);
        let mut r = format!("=== lab {} network ===\n", self.prefix);
        let _ = writeln!(r, "hub ({hub}):");
        section(
            &mut r,
            "ip -br link",
            &in_netns(&hub, &["ip", "-br", "link"]),
        );
        section(&mut r, "bridge link", &in_netns(&hub, &["bridge", "link"]));
        let fdb = in_netns(&hub, &["bridge", "fdb", "show", "br", "ftbr0"]);
        section(
            &mut r,
            "bridge fdb show br ftbr0 (unicast)",
            &unicast_fdb(&fdb),
        );
        section(
            &mut r,
            "ip -br addr",
            &in_netns(&hub, &["ip", "-br", "addr"]),
        );
        section(&mut r, "ip neigh", &in_netns(&hub, &["ip", "neigh"]));
        section(
            &mut r,
            "nft list ruleset",
            &in_netns(&hub, &["nft", "list", "ruleset"]),
        );
        for i in 1..=self.machines() {
            let ns = format!("{}-m{i}", self.prefix);
            let running = if self.machine_pid(i).is_ok() {
                "running"
            } else {
                "not running"
            };
            let _ = writeln!(r, "m{i} ({ns}, {running}):");
            section(
                &mut r,
                "ip -br link",
                &in_netns(&ns, &["ip", "-br", "link"]),
            );
            section(
                &mut r,
                "ip -br addr",
                &in_netns(&ns, &["ip", "-br", "addr"]),
            );
            let neigh = in_netns(&ns, &["ip", "neigh"]);
            section(&mut r, "ip neigh", &neigh);
            section(&mut r, "ip route", &in_netns(&ns, &["ip", "route"]));
            section(
                &mut r,
                "nft list ruleset",
                &in_netns(&ns, &["nft", "list", "ruleset"]),
            );
            for (ip, owner) in self.etcd_owners() {
                let mac = sys_mac(&owner.0, owner.1);
                let seen = resolved_mac(&neigh, &ip).unwrap_or("(unresolved)");
                let verdict = if seen == mac || seen == "(unresolved)" {
                    ""
                } else {
                    "  <- STALE"
                };
                let _ = writeln!(r, "  {ip} is at {mac}; m{i} resolves it to {seen}{verdict}");
                let addr = format!("{ip}:2379");
                let _ = writeln!(r, "  tcp connect {addr}: {}", tcp_probe(&ns, &addr));
            }
        }
        r
    }
}

/// The MAC address of interface `dev` in netns `ns` (or why it is unknown).
fn sys_mac(ns: &str, dev: &str) -> String {
    let text = in_netns(ns, &["cat", &format!("/sys/class/net/{dev}/address")]);
    text.lines()
        .next()
        .unwrap_or("(unknown)")
        .trim()
        .to_string()
}

/// The MAC that `ip neigh` output `neigh` gives for `ip`.
fn resolved_mac<'a>(neigh: &'a str, ip: &str) -> Option<&'a str> {
    neigh.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(ip)).then_some(())?;
        let mut words = words.skip_while(|w| *w != "lladdr");
        words.next()?;
        words.next()
    })
}

/// A TCP connect from netns `ns` to `addr` (`ip:port`), 2 s at most: `ok (N ms)` or what failed.
fn tcp_probe(ns: &str, addr: &str) -> String {
    let (ip, port) = addr.split_once(':').unwrap_or((addr, "2379"));
    let script = format!("exec 3<>/dev/tcp/{ip}/{port}");
    let t0 = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "2", "bash", "-c", &script])
        .output();
    let ms = t0.elapsed().as_millis();
    match out {
        Ok(o) if o.status.success() => format!("ok ({ms} ms)"),
        Ok(o) if o.status.code() == Some(124) => format!("TIMED OUT after {ms} ms"),
        Ok(o) => format!(
            "FAILED after {ms} ms: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("not run: {e}"),
    }
}
