//! A node that crashes (SIGKILL: no QUIC close, its peers keep their connections to the dead
//! process) and comes back on the same address, as fleetd on a machine that rebooted. Its peers
//! must not declare its new life down, and the new life must not declare them down: its first
//! probes go to peers whose connections, and whose view of its incarnation, belong to the old one.
//!
//! The crashing node runs in a child process (this test binary, run again for the ignored
//! `crash_child` test), so that the kill is a real one. With the driver keeping the first connection
//! to an address instead of the newest, a holds c's new life down within 5 s (checked once, with
//! the new life back after 300 ms and after 2.5 s).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use fleet_gossip::{Event, Liveness, MachineId};
use fleet_gossip_quic::tls::mint_ca;
use fleet_gossip_quic::transport::{Gossip, GossipConfig};

mod common;
use common::{config, sees, tls_for, wait_for};

/// The child's end: runs node `c` as the environment says and prints its events, one a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_crashed_node_back_on_its_address_makes_no_false_verdict as its child process"]
async fn crash_child() {
    let Ok(dir) = std::env::var("FLEET_CRASH_DIR") else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap();
    let addr: SocketAddr = var("FLEET_CRASH_ADDR").parse().unwrap();
    let mut config = GossipConfig::new(MachineId::parse("c").unwrap(), addr);
    config.tls = common::tls_files(Path::new(&dir), "ca", "c");
    config.seeds = var("FLEET_CRASH_SEEDS")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    config.incarnation = Some(var("FLEET_CRASH_INCARNATION").parse().unwrap());
    // Gone with the parent: its end of stdin closes when it exits, however it exits.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let (node, mut events) = Gossip::start(config).await.unwrap();
    println!("STARTED {}", node.local_addr());
    while let Some(e) = events.recv().await {
        match e {
            Event::MemberDown(id) => println!("DOWN {id}"),
            Event::MemberUp(id) => println!("UP {id}"),
            _ => {}
        }
    }
}

/// The child process, killed when dropped (a failed assertion included).
struct Killed(Child);

impl Killed {
    /// SIGKILL, and reaped.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the child node `c` on `addr` with `incarnation`; its event lines arrive on the receiver.
fn spawn_c(
    dir: &Path,
    addr: SocketAddr,
    seeds: &[SocketAddr],
    incarnation: u64,
) -> (Killed, std_mpsc::Receiver<String>) {
    let seeds: Vec<String> = seeds.iter().map(|s| s.to_string()).collect();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--ignored", "--nocapture"])
        .env("FLEET_CRASH_DIR", dir)
        .env("FLEET_CRASH_ADDR", addr.to_string())
        .env("FLEET_CRASH_SEEDS", seeds.join(","))
        .env("FLEET_CRASH_INCARNATION", incarnation.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Killed(child), rx)
}

/// Waits for the child's `STARTED` line.
fn started(lines: &std_mpsc::Receiver<String>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Ok(l) = lines.recv_timeout(Duration::from_millis(100)) {
            if l.starts_with("STARTED") {
                return;
            }
        }
    }
    panic!("the child node did not start");
}

/// The incarnation `observer` holds for `target`, if it holds it alive.
async fn alive_incarnation(
    observer: &fleet_gossip_quic::transport::GossipHandle,
    target: &str,
) -> Option<u64> {
    let v = observer.view().await.ok()?;
    let m = v.machines.get(&MachineId::parse(target).unwrap())?;
    (m.liveness == Liveness::Alive).then_some(m.identity.incarnation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_back_on_its_address_makes_no_false_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mint_ca(&d.join("ca.pem"), &d.join("ca.key")).unwrap();
    tls_for(d, "ca", "c"); // minted here, read by the child
    let start = |name: &str, seeds: Vec<SocketAddr>| {
        let mut config = config(name, tls_for(d, "ca", name), seeds);
        // Past this, a and b seal to a member without an open connection, as every fleetd does
        // 10 s after its start; the restarted c keeps the default.
        config.sealed_after = Duration::from_millis(500);
        Gossip::start(config)
    };
    let (a, _ea) = start("a", vec![]).await.unwrap();
    let (b, _eb) = start("b", vec![a.local_addr()]).await.unwrap();
    let seeds = [a.local_addr(), b.local_addr()];
    // A free port for c, kept across its restart.
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (mut child, lines) = spawn_c(d, addr, &seeds, 1);
    started(&lines);
    let formed = wait_for(Duration::from_secs(10), || async {
        alive_incarnation(&a, "c").await == Some(1)
            && alive_incarnation(&b, "c").await == Some(1)
            && sees(&a, "b", Liveness::Alive).await
    })
    .await;
    assert!(formed, "a, b and c did not form");
    // Long enough for a and b to seal, and for their connections to c to carry traffic.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The crash: no close reaches a or b. Back 300 ms later, before a verdict on the old life.
    child.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut child, lines) = spawn_c(d, addr, &seeds, 2);
    started(&lines);

    // For 12 s (past the restarted node's own `sealed_after`): nobody holds c's new life down, and
    // c's new life declares nobody down.
    let mut downs = Vec::new();
    let end = std::time::Instant::now() + Duration::from_secs(12);
    let mut back = false;
    while std::time::Instant::now() < end {
        for l in lines.try_iter() {
            if l.starts_with("DOWN") {
                downs.push(l);
            }
        }
        for (name, h) in [("a", &a), ("b", &b)] {
            let v = h.view().await.unwrap();
            let m = &v.machines[&MachineId::parse("c").unwrap()];
            if m.identity.incarnation == 2 {
                back |= name == "b";
                assert_ne!(
                    m.liveness,
                    Liveness::Down,
                    "{name} holds c's new life down: {m:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill();
    assert!(
        downs.is_empty(),
        "the restarted c declared members down: {downs:?}"
    );
    assert!(back, "b never learned c's new life");
    assert_eq!(alive_incarnation(&a, "c").await, Some(2), "a");
    a.leave().await.unwrap();
    b.leave().await.unwrap();
}
