//! End-to-end: gossip membership with mutual TLS.
//!
//! size: one test binary for gossip end to end (loopback and lab scenarios share the TLS and
//! fleetd helpers at the top); to be split by layer when no other change is editing it.
//!
//! - On loopback (needs etcd only, no root): certificates minted with `fleetctl gen-certs` let two
//!   fleetds see each other; a fleetd with a certificate of another CA is never seen.
//! - In a 5-machine cluster lab (root only; [`FleetLab::up_with_tls`]): a killed machine and a frozen
//!   one leave every survivor's `fleetctl list-machines`, a thawed one comes back, a new machine
//!   converges (membership both ways, and the unit states of others), and peers without a valid
//!   certificate (another CA, or the insecure mode) are refused and logged.
//! - On loopback too: a peer's state push carrying another machine's state that it did not sign is
//!   refused and logged, and changes nothing; forged refutations of a killed machine do not keep it
//!   listed, and the forger is named in a WARN.
//!
//! Times are printed, never asserted: `benches/gossip.rs` measures them.
// Both test support modules include `support/bins.rs` (where this build's fleetctl is).
#![allow(clippy::duplicate_mod)]

mod lab;
mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lab::{FleetLab, LAB_TLS_DIR};
use support::{http_get, Etcd, Fleetd};

/// Generous bound for membership changes in a loaded test machine (detection takes ~1 s).
const WAIT: Duration = Duration::from_secs(20);

// ---- loopback ----------------------------------------------------------------------------------

fn fleetctl_host(args: &[&str]) {
    let bin = support::bins::fleetctl();
    lab::host_fleetctl(bin.parent().expect("profile dir"), args);
}

/// Mints a CA into `dir/ca` and a certificate for `id` into `dir/certs` with `fleetctl gen-certs`;
/// returns the three config lines' values (CA certificate, certificate, key).
fn mint(dir: &Path, id: &str) -> [String; 3] {
    let ca = dir.join("ca");
    let certs = dir.join("certs");
    if !ca.join("ca.pem").exists() {
        fleetctl_host(&["gen-certs", "--dir", ca.to_str().unwrap(), "--ca"]);
    }
    fleetctl_host(&[
        "gen-certs",
        "--dir",
        certs.to_str().unwrap(),
        "--ca-dir",
        ca.to_str().unwrap(),
        "--machine-id",
        id,
    ]);
    [
        ca.join("ca.pem").display().to_string(),
        certs.join(format!("{id}.pem")).display().to_string(),
        certs.join(format!("{id}.key")).display().to_string(),
    ]
}

/// A fleetd with a certificate minted by the CA in `dir` (minted first if missing), joining
/// through `seed`'s gossip endpoint. (Seeds are explicit: agents announce their gossip address in
/// etcd only once systemd is reached, and test hosts may have none.)
fn start_tls(etcd: &Etcd, dir: &Path, seed: Option<&Fleetd>) -> Fleetd {
    let id = format!("{}{}", support::unique_token(), support::unique_token());
    let [ca, cert, key] = mint(dir, &id);
    let mut b = Fleetd::builder(etcd)
        .machine_id(&id)
        .config("gossip_insecure", "false")
        .config("gossip_ca_file", &ca)
        .config("gossip_cert_file", &cert)
        .config("gossip_key_file", &key);
    if let Some(seed) = seed {
        b = b.config("gossip_seeds", &gossip_addr(seed));
    }
    let f = b.start();
    f.wait_ready();
    f
}

/// The gossip address a fleetd logged at start (`gossip endpoint up addr=...`).
/// A gossip member of the test's own: a fresh machine ID with a certificate minted under `dir`'s CA, and
/// a gossip config (any local port) seeded with `seed`'s address. Returns its ID, TLS settings and config.
fn own_member(
    dir: &Path,
    seed: &Fleetd,
) -> (
    String,
    fleet_gossip_quic::tls::TlsConfig,
    fleet_gossip_quic::transport::GossipConfig,
) {
    let id = format!("{}{}", support::unique_token(), support::unique_token());
    let [ca, cert, key] = mint(dir, &id);
    let tls = fleet_gossip_quic::tls::TlsConfig::Mutual {
        ca_cert: ca.into(),
        cert: cert.into(),
        key: key.into(),
    };
    let mut config = fleet_gossip_quic::transport::GossipConfig::new(
        fleet_gossip::MachineId::parse(&id).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.tls = tls.clone();
    config.seeds = vec![gossip_addr(seed).parse().unwrap()];
    (id, tls, config)
}

fn gossip_addr(f: &Fleetd) -> String {
    let log = f.log();
    log.lines()
        .find_map(|l| l.split("gossip endpoint up addr=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no gossip address in the log:\n{log}"))
}

fn machines_of(f: &Fleetd) -> BTreeSet<String> {
    let v = http_get(f.socket(), "/fleet/v1/machines").json();
    v["machines"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `ok` until it holds; after [`WAIT`] panics with `what` and the logs of `fleetds`.
fn wait_until(what: &str, fleetds: &[&Fleetd], mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        if t0.elapsed() > WAIT {
            let mut msg = format!("timed out after {WAIT:?}: {what}");
            for f in fleetds {
                msg += &format!(
                    "\n--- fleetd {} lists {:?}; its log:\n{}",
                    f.machine_id(),
                    machines_of(f),
                    f.log()
                );
            }
            panic!("{msg}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn fleetds_with_minted_certificates_see_each_other_and_a_foreign_ca_is_refused() {
    let etcd = Etcd::shared();
    let dir = tempfile::tempdir().unwrap();
    let a = start_tls(&etcd, &dir.path().join("cluster"), None);
    let b = start_tls(&etcd, &dir.path().join("cluster"), Some(&a));
    let both: BTreeSet<String> = [a.machine_id(), b.machine_id()]
        .into_iter()
        .map(str::to_string)
        .collect();
    wait_until("both fleetds list both machines", &[&a, &b], || {
        machines_of(&a) == both && machines_of(&b) == both
    });
    assert!(a.log().contains("gossip endpoint up"), "{}", a.log());
    assert!(!a.log().contains("INSECURE"), "{}", a.log());

    // Joins through `a` with a certificate of another CA.
    let rogue = start_tls(&etcd, &dir.path().join("other"), Some(&a));
    wait_until(
        "the cluster refuses the foreign certificate",
        &[&a, &b, &rogue],
        || {
            let log = a.log() + &b.log();
            log.contains("refused a gossip connection")
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(machines_of(&a), both);
    assert_eq!(machines_of(&b), both);
    let own: BTreeSet<String> = [rogue.machine_id().to_string()].into();
    assert_eq!(machines_of(&rogue), own);
}

/// The `/fleet/v1/machines` entry of `id` as `f` lists it.
fn machine_entry(f: &Fleetd, id: &str) -> Option<serde_json::Value> {
    let v = http_get(f.socket(), "/fleet/v1/machines").json();
    v["machines"]
        .as_array()?
        .iter()
        .find(|m| m["id"] == id)
        .cloned()
}

/// Issue 13 case 1: a second gossip node with `a`'s machine ID and `b`'s certificate (a patched
/// fleetd: fleetd itself refuses to start with a certificate of another machine). Both fleetds
/// refuse it with a clear log line; nothing about `a` changes; nobody rejoins.
#[test]
fn a_peer_claiming_another_machines_identity_is_refused_and_changes_nothing() {
    use fleet_gossip_quic::tls::TlsConfig;
    use fleet_gossip_quic::transport::{Gossip, GossipConfig};
    let etcd = Etcd::shared();
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster");
    let a = start_tls(&etcd, &cluster, None);
    let b = start_tls(&etcd, &cluster, Some(&a));
    wait_until("b lists a", &[&a, &b], || {
        machine_entry(&b, a.machine_id()).is_some()
    });

    let b_cert = cluster
        .join("certs")
        .join(format!("{}.pem", b.machine_id()));
    let mut config = GossipConfig::new(
        fleet_gossip::MachineId::parse(a.machine_id()).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.tls = TlsConfig::Mutual {
        ca_cert: cluster.join("ca").join("ca.pem"),
        cert: b_cert.clone(),
        key: b_cert.with_extension("key"),
    };
    config.seeds = vec![
        gossip_addr(&a).parse().unwrap(),
        gossip_addr(&b).parse().unwrap(),
    ];
    config.incarnation = Some(u64::MAX / 2);
    config.verify_own_certificate = false;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let impostor = rt.block_on(async {
        let (g, _events) = Gossip::start(config).await.unwrap();
        g.set_metadata(fleet_gossip::Metadata {
            public_ip: "203.0.113.66".into(),
            metadata: [("owner".to_string(), "impostor".to_string())].into(),
            ..Default::default()
        })
        .unwrap();
        g
    });
    const REFUSED: &str = "refused gossip from a peer that claims another machine's identity";
    wait_until("both fleetds refuse the impostor", &[&a, &b], || {
        a.log().contains(REFUSED) && b.log().contains(REFUSED)
    });
    // For 5 s, `a` stays listed everywhere and nothing the impostor published shows up.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        for f in [&a, &b] {
            let entry = machine_entry(f, a.machine_id())
                .unwrap_or_else(|| panic!("{} stopped listing a", f.machine_id()));
            assert_ne!(entry["primaryIP"], "203.0.113.66", "{entry}");
            assert!(entry["metadata"]["owner"].is_null(), "{entry}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let line = b
        .log()
        .lines()
        .find(|l| l.contains(REFUSED))
        .unwrap()
        .to_string();
    eprintln!("b logged: {line}");
    assert!(
        line.contains(&format!("certificate is for machine {}", b.machine_id()))
            && line.contains(&format!("claims to be {}", a.machine_id())),
        "{line}"
    );
    for f in [&a, &b] {
        assert!(!f.log().contains("rejoined"), "{}", f.log());
    }
    rt.block_on(impostor.abort()).unwrap();

    // The literal case 1: fleetd itself, given a's ID and b's certificate, refuses to start.
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("fleet.conf");
    std::fs::write(
        &conf,
        format!(
            "etcd_servers={}\netcd_key_prefix={}\napi_socket={}\nmachine_id={}\n\
             gossip_listen=127.0.0.1:0\nstate_dir={}\nunits_directory={}\n\
             gossip_ca_file={}\ngossip_cert_file={}\ngossip_key_file={}\nruntime_dir={}\n",
            etcd.endpoint(),
            etcd.prefix(),
            tmp.path().join("fleet.sock").display(),
            a.machine_id(),
            tmp.path().join("state").display(),
            tmp.path().join("units").display(),
            cluster.join("ca").join("ca.pem").display(),
            b_cert.display(),
            b_cert.with_extension("key").display(),
            tmp.path().join("run").display(),
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetd"))
        .arg("--config")
        .arg(&conf)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "is the certificate of machine {}, not of this machine {}",
            b.machine_id(),
            a.machine_id()
        )),
        "{text}"
    );
}

/// Issue 13 case 1, relayed state: a peer with its own valid certificate (machine `c`, honest
/// about itself) sends `b` a state push carrying an update of `a`'s metadata at `a`'s current
/// epoch, signed with `c`'s key. `b` refuses it with a clear log line and keeps listing `a` as `a`
/// published itself. (Before signed state, `b` took it and listed the forged metadata.)
#[test]
fn a_relayed_update_in_another_machines_name_is_refused() {
    use fleet_gossip::crypto::signed_message;
    use fleet_gossip::wire::StatePush;
    use fleet_gossip::{Credentials, Entry, MachineId, Metadata, Stamp, Update};
    use fleet_gossip_quic::credentials::CertCredentials;
    use fleet_gossip_quic::tls::{self, SERVER_NAME};
    use fleet_gossip_quic::transport::{quic_transport_config, Gossip};
    let etcd = Etcd::shared();
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster");
    let a = start_tls(&etcd, &cluster, None);
    let b = start_tls(&etcd, &cluster, Some(&a));
    wait_until("b lists a", &[&a, &b], || {
        machine_entry(&b, a.machine_id()).is_some()
    });
    let before = machine_entry(&b, a.machine_id()).unwrap();

    // `c`: a member with a certificate of its own, which learns `a`'s identity as everyone does.
    let (c_id, tls, config) = own_member(&cluster, &a);
    let a_machine = MachineId::parse(a.machine_id()).unwrap();
    let b_addr: std::net::SocketAddr = gossip_addr(&b).parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (c, a_identity) = rt.block_on(async {
        let (c, _events) = Gossip::start(config).await.unwrap();
        let t0 = Instant::now();
        loop {
            let view = c.view().await.unwrap();
            if let Some(m) = view.machines.get(&a_machine) {
                break (c, m.identity.clone());
            }
            assert!(t0.elapsed() < WAIT, "c never learnt a");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // The forged update: a's metadata at a's epoch, far ahead of its versions, signed by c.
    let stamp = Stamp {
        epoch: a_identity.incarnation,
        version: 1_000_000,
    };
    let entry = Entry::Metadata(Metadata {
        public_ip: "203.0.113.77".into(),
        metadata: [("owner".to_string(), "forged".to_string())].into(),
        ..Default::default()
    });
    let c_keys = CertCredentials::load(&tls).unwrap().unwrap();
    let signature = c_keys.sign(&signed_message(&a_machine, stamp, &entry));
    let push = StatePush::new(
        c.identity().clone(),
        vec![Update {
            origin: a_machine.clone(),
            stamp,
            entry,
            signature,
        }],
    )
    .to_datagram();
    rt.block_on(async {
        let (_, client) = tls::quic_configs(&tls).unwrap();
        let mut client = client;
        client.transport_config(std::sync::Arc::new(quic_transport_config(
            Duration::from_secs(10),
        )));
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(client);
        let conn = endpoint
            .connect(b_addr, SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        conn.send_datagram(bytes::Bytes::from(push)).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        conn.close(0u32.into(), b"done");
    });
    let refused = format!(
        "refused a gossip state update of machine {} relayed by {c_id}",
        a.machine_id()
    );
    wait_until("b refuses the forged update", &[&b], || {
        b.log().contains(&refused)
    });
    // For 3 s, b lists a as a published itself.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let entry = machine_entry(&b, a.machine_id()).unwrap();
        assert_eq!(entry["primaryIP"], before["primaryIP"], "{entry}");
        assert_eq!(entry["metadata"], before["metadata"], "{entry}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let line = b
        .log()
        .lines()
        .find(|l| l.contains(&refused))
        .unwrap()
        .to_string();
    eprintln!("b logged: {line}");
    assert!(line.contains("WARN"), "{line}");
    rt.block_on(c.abort()).unwrap();
}

/// Issue 13, rumours about others: a peer with its own valid certificate (`c`, honest about
/// itself, and declaring nobody down) sends `a` and `b` a forged refutation of `v` ("v alive", one incarnation higher each
/// time) every 50 ms while `v` is killed. `a` and `b` still drop `v` from their lists, and log a
/// WARN that names `c` as the relay of refutations `v` never vouched for. (Before vouched
/// incarnations, `v` stayed listed for as long as the forger ran.)
#[test]
fn forged_refutations_do_not_keep_a_killed_machine_listed() {
    use fleet_gossip::foca::{Codec, Header, Member, Message, PostcardCodec, State};
    use fleet_gossip::wire::DATAGRAM_SWIM;
    use fleet_gossip::{MachineId, NodeIdentity};
    use fleet_gossip_quic::tls::{self, SERVER_NAME};
    use fleet_gossip_quic::transport::{quic_transport_config, Gossip};
    let etcd = Etcd::shared();
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster");
    let a = start_tls(&etcd, &cluster, None);
    let b = start_tls(&etcd, &cluster, Some(&a));
    let mut v = start_tls(&etcd, &cluster, Some(&a));
    let v_id = v.machine_id().to_string();
    wait_until("a and b list v", &[&a, &b, &v], || {
        machines_of(&a).contains(&v_id) && machines_of(&b).contains(&v_id)
    });

    // `c`: a member with a certificate of its own, which learns everyone's identity.
    let (c_id, tls, config) = own_member(&cluster, &a);
    let ids: Vec<MachineId> = [&a, &b, &v]
        .iter()
        .map(|f| MachineId::parse(f.machine_id()).unwrap())
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (c, known) = rt.block_on(async {
        let (c, _events) = Gossip::start(config).await.unwrap();
        let t0 = Instant::now();
        loop {
            let view = c.view().await.unwrap();
            let known: Vec<NodeIdentity> = ids
                .iter()
                .filter_map(|id| view.machines.get(id).map(|m| m.identity.clone()))
                .collect();
            if known.len() == ids.len() {
                break (c, known);
            }
            assert!(t0.elapsed() < WAIT, "c never learnt a, b and v");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let (a_identity, b_identity, v_identity) =
        (known[0].clone(), known[1].clone(), known[2].clone());
    let c_identity = c.identity().clone();
    // From now on the test speaks for `c` (a patched fleetd would): its own node stops, so it
    // declares nobody down; each forged packet keeps `c` alive by speaking for itself at a higher
    // incarnation.
    rt.block_on(c.abort()).unwrap();
    let forged = |to: &NodeIdentity, incarnation: u16| {
        let mut packet = vec![DATAGRAM_SWIM];
        PostcardCodec
            .encode_header(
                &Header {
                    src: c_identity.clone(),
                    src_incarnation: incarnation,
                    dst: to.clone(),
                    message: Message::Gossip,
                },
                &mut packet,
            )
            .unwrap();
        packet.extend_from_slice(&1u16.to_be_bytes());
        PostcardCodec
            .encode_member(
                &Member::new(v_identity.clone(), incarnation, State::Alive),
                &mut packet,
            )
            .unwrap();
        bytes::Bytes::from(packet)
    };
    let gone = rt.block_on(async {
        let (_, client) = tls::quic_configs(&tls).unwrap();
        let mut client = client;
        client.transport_config(std::sync::Arc::new(quic_transport_config(
            Duration::from_secs(10),
        )));
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(client);
        let mut conns = Vec::new();
        for (f, identity) in [(&a, &a_identity), (&b, &b_identity)] {
            let addr: std::net::SocketAddr = gossip_addr(f).parse().unwrap();
            let conn = endpoint.connect(addr, SERVER_NAME).unwrap().await.unwrap();
            conns.push((conn, identity.clone()));
        }
        v.kill();
        let killed = Instant::now();
        let mut gone = None;
        let mut incarnation = 100u16;
        while killed.elapsed() < WAIT {
            for (conn, to) in &conns {
                let _ = conn.send_datagram(forged(to, incarnation));
            }
            incarnation = incarnation.wrapping_add(1).max(1);
            if gone.is_none()
                && !machines_of(&a).contains(&v_id)
                && !machines_of(&b).contains(&v_id)
            {
                gone = Some(killed.elapsed());
                // Forge on for a moment: the verdict holds.
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (conn, _) in &conns {
            conn.close(0u32.into(), b"done");
        }
        gone
    });
    let Some(gone) = gone else {
        panic!(
            "v was still listed {WAIT:?} after it was killed, with forged refutations\n--- a:\n{}\n--- b:\n{}",
            a.log(),
            b.log()
        );
    };
    eprintln!(
        "v left a's and b's lists {gone:?} after it was killed (forged refutations every 50 ms)"
    );
    assert!(!machines_of(&a).contains(&v_id) && !machines_of(&b).contains(&v_id));
    let refused = format!("refused a refutation of machine {v_id} relayed by {c_id}");
    wait_until("a or b names c as the forger", &[&a, &b], || {
        a.log().contains(&refused) || b.log().contains(&refused)
    });
    let line = [a.log(), b.log()]
        .into_iter()
        .flat_map(|l| l.lines().map(str::to_string).collect::<Vec<_>>())
        .find(|l| l.contains(&refused))
        .unwrap();
    eprintln!("logged: {line}");
    assert!(line.contains("WARN"), "{line}");
}

// ---- cluster lab -------------------------------------------------------------------------------

/// The running machines other than `except`.
fn others(fl: &FleetLab, except: usize) -> Vec<usize> {
    fl.running().filter(|i| *i != except).collect()
}

/// Waits until every running machine but `victim` no longer lists `victim_id` and lists every other
/// running machine; returns how long it took.
fn wait_gone_everywhere(fl: &FleetLab, victim: usize, victim_id: &str) -> Duration {
    let t0 = Instant::now();
    fl.wait_for(
        &format!("every survivor stops listing m{victim}"),
        WAIT,
        |fl| {
            let survivors = others(fl, victim);
            let want: BTreeSet<String> = survivors.iter().map(|i| fl.machine_id(*i)).collect();
            survivors
                .iter()
                .all(|i| {
                    fl.listed_machines(*i)
                        .is_some_and(|l| !l.contains(victim_id) && l == want)
                })
                .then_some(())
        },
    );
    t0.elapsed()
}

#[test]
fn a_killed_machine_leaves_every_survivors_view() {
    let Some(fl) = FleetLab::up_with_tls(5, &[]) else {
        return;
    };
    let victim = 3;
    let id = fl.machine_id(victim);
    fl.lab.kill(victim).unwrap();
    let took = wait_gone_everywhere(&fl, victim, &id);
    eprintln!("m{victim} (SIGKILL) left every survivor's list-machines after {took:?}");

    // It boots again with a new incarnation and comes back everywhere.
    fl.boot(victim);
    fl.wait_all_listed(WAIT);
}

#[test]
fn a_frozen_machine_leaves_the_views_and_comes_back_when_thawed() {
    let Some(fl) = FleetLab::up_with_tls(5, &[]) else {
        return;
    };
    let victim = 2;
    let id = fl.machine_id(victim);
    fl.lab.freeze(victim).unwrap();
    let took = wait_gone_everywhere(&fl, victim, &id);
    eprintln!("m{victim} (frozen) left every survivor's list-machines after {took:?}");
    fl.lab.thaw(victim).unwrap();
    let t0 = Instant::now();
    fl.wait_all_listed(WAIT);
    eprintln!(
        "m{victim} (thawed) back in every view after {:?}",
        t0.elapsed()
    );
}

#[test]
fn a_new_machine_converges_with_membership_and_unit_states() {
    let Some(fl) = FleetLab::up_with_tls(5, &[]) else {
        return;
    };
    // Pinned to m2, so that the joiner can only learn its state from m2 (by gossip).
    let m2 = fl.machine_id(2);
    fl.write_file(
        1,
        "/tmp/pinned.service",
        &format!("[Service]\nExecStart=/bin/sleep 100000\n\n[X-Fleet]\nMachineID={m2}\n"),
    );
    fl.fleetctl_ok(1, &["start", "/tmp/pinned.service"]);
    fl.wait_for("pinned.service running on m2", WAIT, |fl| {
        (fl.running_on("pinned.service") == [2]).then_some(())
    });

    let t0 = Instant::now();
    let new = fl.add_machine();
    assert_eq!(new, 6);
    fl.wait_all_listed(WAIT);
    eprintln!(
        "m{new} listed by all and listing all after {:?}",
        t0.elapsed()
    );

    // The joiner learnt the unit states others publish (gossip, not etcd).
    let line = fl.wait_for("the new machine lists pinned.service running", WAIT, |fl| {
        let out = fl.fleetctl(new, &["list-units", "--no-legend", "--full"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some("pinned.service"))
            .filter(|l| l.contains("running"))
            .map(str::to_string)
    });
    assert!(line.contains(&m2), "pinned.service runs on m2: {line}");
    assert_eq!(fl.running_on("pinned.service"), [2]);
}

/// A machine ID for a rogue fleetd called `name`.
fn rogue_id(name: &str) -> String {
    format!("{}{}", name.replace('-', ""), support::unique_token())
}

/// Starts a second fleetd with machine ID `id` in machine `i` as a transient unit `name`: gossip on
/// port 7480 of the machine's address, joining through m1 (`gossip_seeds`), with `extra` `FLEET_*`
/// settings for its TLS. Its etcd is unreachable on purpose: it must not announce itself there nor
/// claim anything; gossip is all it does.
fn start_rogue(fl: &FleetLab, i: usize, name: &str, id: &str, extra: &[(&str, &str)]) -> String {
    let ip = fleet_lab::machine_ip(i);
    let listen = format!("{ip}:7480");
    let seed = format!("{}:7479", fleet_lab::machine_ip(1));
    let mut cmd: Vec<String> = vec![
        "systemd-run".into(),
        format!("--unit={name}"),
        format!("--setenv=FLEET_MACHINE_ID={id}"),
        format!("--setenv=FLEET_GOSSIP_LISTEN={listen}"),
        format!("--setenv=FLEET_GOSSIP_SEEDS={seed}"),
        format!("--setenv=FLEET_API_SOCKET=/run/{name}.sock"),
        format!("--setenv=FLEET_STATE_DIR=/run/{name}-state"),
        format!("--setenv=FLEET_UNITS_DIRECTORY=/run/{name}-units"),
        // Its own fence file, lease and witness files (fleetd refuses a runtime directory another
        // fleetd holds), and no system systemd to drive: it must not rewrite the machine's fence
        // guard (`fleet-guard.service`) to watch its own deadline.
        format!("--setenv=FLEET_RUNTIME_DIR=/run/{name}-run"),
        "--setenv=FLEET_SYSTEMD_USER=true".into(),
    ];
    for (k, v) in extra {
        cmd.push(format!("--setenv={k}={v}"));
    }
    cmd.extend([
        "/opt/fleet/bin/fleetd".into(),
        "--etcd-servers=http://127.0.0.1:9".into(),
        format!("--public-ip={ip}"),
    ]);
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    fl.lab.sh_ok(i, &args).expect("start the rogue fleetd");
    listen
}

#[test]
fn peers_without_a_valid_certificate_are_refused() {
    let Some(fl) = FleetLab::up_with_tls(5, &[]) else {
        return;
    };
    let all: BTreeSet<String> = fl.running().map(|i| fl.machine_id(i)).collect();
    let foreign = format!("{LAB_TLS_DIR}/foreign");
    let foreign_id = rogue_id("rogue-foreign");
    fl.mint_foreign(&foreign_id);
    let rogues = [
        (
            5,
            "rogue-foreign",
            start_rogue(
                &fl,
                5,
                "rogue-foreign",
                &foreign_id,
                &[
                    ("FLEET_GOSSIP_CA_FILE", &format!("{foreign}/ca.pem")),
                    (
                        "FLEET_GOSSIP_CERT_FILE",
                        &format!("{foreign}/{foreign_id}.pem"),
                    ),
                    (
                        "FLEET_GOSSIP_KEY_FILE",
                        &format!("{foreign}/{foreign_id}.key"),
                    ),
                ],
            ),
        ),
        (
            4,
            "rogue-insecure",
            start_rogue(
                &fl,
                4,
                "rogue-insecure",
                &rogue_id("rogue-insecure"),
                &[("FLEET_GOSSIP_INSECURE", "true")],
            ),
        ),
    ];
    for (i, name, addr) in &rogues {
        // m1 (their seed) refuses them during the handshake and logs it with their address.
        let t0 = Instant::now();
        while !fl
            .journal(1, 1000)
            .lines()
            .any(|l| l.contains("refused a gossip connection") && l.contains(addr.as_str()))
        {
            if t0.elapsed() > WAIT {
                let unit = format!("{name}.service");
                let rogue = fl
                    .lab
                    .sh(*i, &["journalctl", "-u", &unit, "--no-pager", "-n", "30"])
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                panic!(
                    "m1 did not log refusing {name} ({addr}) within {WAIT:?}\n\
                     m1 journal:\n{}\n{name} journal:\n{rogue}",
                    fl.journal(1, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let state = fl.show(*i, &format!("{name}.service"), "ActiveState");
        assert_eq!(state, "active", "{name} keeps running (and retrying)");
    }
    // Let them retry for a while: nobody ever lists anything but the five machines. (A machine may list
    // fewer for a moment; that they are all listed again is checked below.)
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        for i in 1..=5 {
            if let Some(l) = fl.listed_machines(i) {
                assert!(
                    l.is_subset(&all),
                    "m{i} lists a machine it should not: {:?}",
                    l.difference(&all).collect::<Vec<_>>()
                );
                if l != all {
                    eprintln!("m{i} lists {} of the 5 machines for now", l.len());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    fl.wait_all_listed(WAIT);
}

/// Guard: the certificate files the lab binds are what `fleetctl gen-certs` wrote.
#[test]
fn the_tls_lab_binds_minted_files_read_only() {
    let Some(fl) = FleetLab::up_with_tls(1, &[]) else {
        return;
    };
    let mut names: Vec<String> = std::fs::read_dir(fl.certs.path().join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let id = fl.machine_id(1);
    let mut want = vec![
        "ca.pem".to_string(),
        "foreign".to_string(),
        format!("{id}.key"),
        format!("{id}.pem"),
    ];
    want.sort();
    assert_eq!(names, want);
    let out = fl
        .lab
        .sh(1, &["touch", &format!("{LAB_TLS_DIR}/x")])
        .unwrap();
    assert!(
        !out.status.success(),
        "the TLS dir is writable in the machine"
    );
    assert!(!fl.journal(1, 200).contains("INSECURE"));
}

/// Issue 13 case 1 in the lab: a second fleetd (in m3) with m1's machine ID and m2's certificate.
/// It refuses to start, saying why; m1 stays listed everywhere with its address. (A patched fleetd
/// that skips this check is refused by every peer: `a_peer_claiming_another_machines_identity...`
/// above, on loopback.)
#[test]
fn a_second_fleetd_with_another_machines_id_and_certificate_is_refused() {
    let Some(fl) = FleetLab::up_with_tls(3, &[]) else {
        return;
    };
    let (m1, m2) = (fl.machine_id(1), fl.machine_id(2));
    // The baseline once m2 lists every machine with its address (CI26 took it while m3's address was
    // still "-", and the comparison below then saw m3's arrival, not the impostor).
    let ips_before = fl.wait_for("m2 lists every machine with its address", WAIT, |fl| {
        let out = fl.fleetctl_ok(2, &["list-machines", "--no-legend", "--full"]);
        let addressed = out
            .lines()
            .filter(|l| {
                l.split('\t')
                    .nth(1)
                    .is_some_and(|ip| ip.starts_with("10.77."))
            })
            .count();
        (addressed == 3).then_some(out)
    });
    start_rogue(
        &fl,
        3,
        "impostor",
        &m1,
        &[
            ("FLEET_GOSSIP_CA_FILE", &format!("{LAB_TLS_DIR}/ca.pem")),
            ("FLEET_GOSSIP_CERT_FILE", &format!("{LAB_TLS_DIR}/{m2}.pem")),
            ("FLEET_GOSSIP_KEY_FILE", &format!("{LAB_TLS_DIR}/{m2}.key")),
        ],
    );
    let want = format!("is the certificate of machine {m2}, not of this machine {m1}");
    let line = fl.wait_for("the impostor refuses to start", WAIT, |fl| {
        let out = fl
            .lab
            .sh(
                3,
                &["journalctl", "-u", "impostor", "--no-pager", "-n", "50"],
            )
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains(&want))
            .map(str::to_string)
    });
    eprintln!("impostor: {line}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        fl.fleetctl_ok(2, &["list-machines", "--no-legend", "--full"]),
        ips_before
    );
    fl.wait_all_listed(WAIT);
    for i in 1..=3 {
        assert!(!fl.journal(i, 500).contains("rejoined"), "m{i}");
    }
}

/// A cgroup-v1 CPU quota (this host mounts cgroups hybrid: the cpu controller is not in the unified
/// tree the lab machines live in, so `cpu.max` is its v1 twin `cpu.cfs_quota_us`) for one process;
/// dropping it moves the process back and removes the cgroup.
struct CpuQuota {
    dir: std::path::PathBuf,
    pid: u32,
}

impl CpuQuota {
    /// Puts `pid` alone in a new CPU cgroup allowed `percent`% of one core (100 ms periods).
    fn new(pid: u32, percent: u32) -> std::io::Result<CpuQuota> {
        let root = Path::new("/sys/fs/cgroup/cpu");
        let root = if root.join("cpu.cfs_quota_us").exists() {
            root.to_path_buf()
        } else {
            Path::new("/sys/fs/cgroup/cpu,cpuacct").to_path_buf()
        };
        let dir = root.join(format!("fleetlab-starve-{pid}"));
        std::fs::create_dir_all(&dir)?;
        let q = CpuQuota { dir, pid };
        std::fs::write(q.dir.join("cpu.cfs_period_us"), "100000")?;
        std::fs::write(q.dir.join("cpu.cfs_quota_us"), (percent * 1000).to_string())?;
        // Every thread of the process.
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let tid = task?.file_name();
            let _ = std::fs::write(q.dir.join("tasks"), tid.to_string_lossy().as_bytes());
        }
        Ok(q)
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        let root = self.dir.parent().unwrap().to_path_buf();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) {
            for task in tasks.flatten() {
                let _ = std::fs::write(
                    root.join("tasks"),
                    task.file_name().to_string_lossy().as_bytes(),
                );
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The host PID of fleetd in lab machine `i` (a process named fleetd in the machine's PID
/// namespace).
fn fleetd_host_pid(fl: &FleetLab, i: usize) -> Option<u32> {
    let init = fl.lab.machine_pid(i).ok()?;
    let ns = std::fs::read_link(format!("/proc/{init}/ns/pid")).ok()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "fleetd" && std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()? == ns)
            .then_some(pid)
    })
}

/// For `for_`, every other machine keeps listing `victim` and `unit` runs nowhere else. (It may stop
/// on `victim`: the agent's guard stops the units of a machine frozen past its fencing deadline,
/// `docs/safety.md`; that is the agent's rule, not a gossip verdict.)
fn nothing_moves(fl: &FleetLab, victim: usize, unit: &str, for_: Duration) {
    let id = fl.machine_id(victim);
    let t0 = Instant::now();
    // A down verdict hides the victim for seconds; a single sample without it (seen twice in CI on
    // 2026-12-06, cause not found yet: see the closing note) is reported, two in a row fail.
    let mut missing: BTreeSet<usize> = BTreeSet::new();
    while t0.elapsed() < for_ {
        for i in others(fl, victim) {
            if let Some(listed) = fl.listed_machines(i) {
                if listed.contains(&id) {
                    missing.remove(&i);
                    continue;
                }
                assert!(
                    missing.insert(i),
                    "m{i} stopped listing m{victim} after {:?}\n{}",
                    t0.elapsed(),
                    fl.journals(30)
                );
                eprintln!(
                    "m{i} did not list m{victim} in one sample at {:?}",
                    t0.elapsed()
                );
            }
        }
        let on = fl.running_on(unit);
        assert!(
            on.iter().all(|m| *m == victim),
            "{unit} moved to {on:?} after {:?}",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(150));
    }
}

/// Issue 14.2 (Lifeguard): a machine starved to 5% of a core for 10 s (a CPU quota on its fleetd)
/// or frozen for `fence_after` (cgroup freezer; fleetd's default, the blip tolerance gossip's
/// suspicion derives from) is not declared down and its unit moves nowhere; a killed one loses its
/// unit to another machine.
#[test]
fn a_frozen_or_starved_machine_keeps_its_unit_and_a_killed_one_does_not() {
    // fleetd's default lease TTL (30 s), not the lab's 3 s: starved at 5% of a core under a loaded
    // suite, fleetd's lease renewals can fall behind 3 s, and the machine then leaves etcd's listing for
    // a reason that is not gossip's (what this test is about).
    let Some(fl) = FleetLab::up_with_tls(5, &[("FLEET_AGENT_TTL", "30s")]) else {
        return;
    };
    fl.write_file(
        1,
        "/tmp/steady.service",
        "[Service]\nExecStart=/bin/sleep 100000\n",
    );
    fl.fleetctl_ok(1, &["start", "/tmp/steady.service"]);
    let victim = fl.wait_for("steady.service runs somewhere", WAIT, |fl| {
        match fl.running_on("steady.service").as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    });

    // Starved: 5% of one core for 10 s; the unit keeps running there.
    let pid = fleetd_host_pid(&fl, victim).expect("fleetd's host PID");
    {
        let _quota = CpuQuota::new(pid, 5).expect("a CPU quota for fleetd");
        nothing_moves(&fl, victim, "steady.service", Duration::from_secs(10));
    }
    nothing_moves(&fl, victim, "steady.service", Duration::from_secs(3));
    assert_eq!(fl.running_on("steady.service"), [victim]);

    // Frozen for the whole blip tolerance (the lab's fleetds run the default `fence_after`): from
    // before the freeze's script returns to after the thaw's, so the machine is frozen for a little
    // less than this plus the thaw script's time.
    let tolerance = fleet::config::Config::default().fence_after;
    fl.lab.freeze(victim).unwrap();
    std::thread::sleep(tolerance);
    fl.lab.thaw(victim).unwrap();
    nothing_moves(&fl, victim, "steady.service", Duration::from_secs(5));
    assert!(
        !fl.journal(victim, 2000).contains("rejoined"),
        "{}",
        fl.journal(victim, 50)
    );

    // Killed: the unit runs elsewhere.
    let t0 = Instant::now();
    fl.lab.kill(victim).unwrap();
    let moved_to = fl.wait_for("steady.service runs on a survivor", WAIT, |fl| {
        match fl.running_on("steady.service").as_slice() {
            [one] if *one != victim => Some(*one),
            _ => None,
        }
    });
    eprintln!(
        "killed m{victim}: steady.service active on m{moved_to} after {:?}",
        t0.elapsed()
    );
}

/// Machine `i`'s `fleet_gossip_bytes_total` (in, out): UDP bytes of its QUIC endpoint.
fn gossip_bytes(fl: &FleetLab, i: usize) -> Option<(u64, u64)> {
    fl.lab.machine_pid(i).ok()?; // a machine that is down has no metrics
    let (_, text) = fl.api(i, "GET", "/metrics", None, 10);
    let value = |dir: &str| -> Option<u64> {
        let key = format!("fleet_gossip_bytes_total{{direction=\"{dir}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))?
            .trim()
            .parse()
            .ok()
    };
    Some((value("in")?, value("out")?))
}

/// CPU time (user + system, clock ticks) of a host process.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which ends with the last ')'): utime and stime are 12 and 13.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Issue 14.4, the lab's side of the calibration of `gossip/benches/scale.rs`: an idle cluster of
/// `LAB_GOSSIP_MACHINES` (5) machines with mutual TLS; per machine, over `LAB_GOSSIP_SECS` (30) after
/// 15 s of quiet, the UDP bytes of its gossip endpoint (`fleet_gossip_bytes_total`: payload, QUIC,
/// TLS, handshakes) and its fleetd's CPU (the whole process: agent, etcd and gossip; the profile this
/// test was built with). A benchmark: it prints, asserts nothing.
///
///     cargo test -p fleet --test lab_gossip -- --ignored --nocapture gossip_cost
#[test]
#[ignore = "a benchmark (prints figures); run it explicitly"]
fn gossip_cost_per_machine_in_the_lab() {
    let n: usize = std::env::var("LAB_GOSSIP_MACHINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let secs: u64 = std::env::var("LAB_GOSSIP_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let Some(fl) = FleetLab::up_with_tls(n, &[]) else {
        return;
    };
    fl.wait_all_listed(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(15));
    let sample = || -> Vec<Option<(u64, u64, u64)>> {
        (1..=n)
            .map(|i| {
                let (bin, bout) = gossip_bytes(&fl, i)?;
                Some((bin, bout, cpu_ticks(fleetd_host_pid(&fl, i)?)?))
            })
            .collect()
    };
    let t0 = Instant::now();
    let before = sample();
    std::thread::sleep(Duration::from_secs(secs));
    let after = sample();
    let s = t0.elapsed().as_secs_f64();
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut sums = (0.0, 0.0, 0.0, 0usize);
    println!(
        "{n} idle machines, mutual TLS, {s:.1} s (load average {}):",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split(' ')
            .next()
            .unwrap_or("?")
    );
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let (Some(b), Some(a)) = (b, a) else {
            println!("  m{}: no sample", i + 1);
            continue;
        };
        let bin = (a.0 - b.0) as f64 / s;
        let bout = (a.1 - b.1) as f64 / s;
        let cpu = 100.0 * (a.2 - b.2) as f64 / tick / s;
        println!(
            "  m{}: gossip UDP {bin:.0} B/s in, {bout:.0} B/s out; fleetd CPU {cpu:.2}% of a core",
            i + 1
        );
        sums = (sums.0 + bin, sums.1 + bout, sums.2 + cpu, sums.3 + 1);
    }
    let k = sums.3.max(1) as f64;
    println!(
        "  mean: {:.0} B/s in, {:.0} B/s out, fleetd CPU {:.2}%",
        sums.0 / k,
        sums.1 / k,
        sums.2 / k
    );
}
