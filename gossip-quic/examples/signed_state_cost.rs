//! What signed gossip state costs (docs/security.md, *Signed gossip state*): the bytes a signature
//! and a certificate add, and the CPU time of signing, checking a signature and checking a
//! certificate with fleetd's credentials (`gen-certs`' ECDSA P-256, ring). Prints figures, asserts
//! nothing. Run with `cargo run --release -p fleet-gossip-quic --example signed_state_cost [N]`.

use std::time::Instant;

use fleet_gossip::crypto::signed_message;
use fleet_gossip::{Credentials, Entry, MachineId, Stamp, UnitState, Update};
use fleet_gossip_quic::credentials::CertCredentials;
use fleet_gossip_quic::tls::{self, TlsConfig};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir().expect("temp dir");
    let p = |name: &str| dir.path().join(name);
    tls::mint_ca(&p("ca.pem"), &p("ca.key")).expect("CA");
    // fleetd's machine IDs: 32 hex characters.
    let ids = [format!("{:032x}", 1u128 << 100), format!("{:032x}", 7u128)];
    let creds: Vec<CertCredentials> = ids
        .iter()
        .map(|id| {
            tls::mint_machine_cert(
                &p("ca.pem"),
                &p("ca.key"),
                id,
                &p(&format!("{id}.pem")),
                &p(&format!("{id}.key")),
            )
            .expect("machine certificate");
            let tls = TlsConfig::Mutual {
                ca_cert: p("ca.pem"),
                cert: p(&format!("{id}.pem")),
                key: p(&format!("{id}.key")),
            };
            CertCredentials::load(&tls).expect("load").expect("mutual")
        })
        .collect();
    let origin = MachineId::parse(&ids[0]).expect("a machine ID");
    let update = |version: u64, signature: Vec<u8>| Update {
        origin: origin.clone(),
        stamp: Stamp {
            epoch: 1_765_000_000_000,
            version,
        },
        entry: Entry::Unit {
            // 30 characters, as the wire caps assume.
            name: "web-frontend-0001@8080.service".into(),
            state: Some(UnitState {
                load_state: "loaded".into(),
                active_state: "active".into(),
                sub_state: "running".into(),
                unit_hash: [9; 20],
            }),
        },
        signature,
    };
    let size = |u: &Update| postcard::to_allocvec(u).expect("encodes").len();
    let message = |u: &Update| signed_message(&u.origin, u.stamp, &u.entry);

    let unsigned = update(1, Vec::new());
    let signature = creds[0].sign(&message(&unsigned));
    let signed = update(1, signature.clone());
    println!(
        "one unit update: {} bytes unsigned, {} signed (signature {} bytes); certificate {} bytes",
        size(&unsigned),
        size(&signed),
        signature.len(),
        creds[0].certificate().len()
    );

    let updates: Vec<Update> = (1..=n as u64).map(|v| update(v, Vec::new())).collect();
    let t = Instant::now();
    let signatures: Vec<Vec<u8>> = updates.iter().map(|u| creds[0].sign(&message(u))).collect();
    let sign = t.elapsed();
    let t = Instant::now();
    let mut ok = 0;
    for (u, s) in updates.iter().zip(&signatures) {
        ok += usize::from(creds[1].verify(creds[0].certificate(), &message(u), s));
    }
    let verify = t.elapsed();
    assert_eq!(ok, n, "every signature checks");
    let t = Instant::now();
    for _ in 0..n / 10 {
        creds[1]
            .check_certificate(&origin, creds[0].certificate())
            .expect("valid certificate");
    }
    let check = t.elapsed();
    let per = |d: std::time::Duration, k: usize| d.as_secs_f64() * 1e6 / k as f64;
    println!(
        "{n} signatures: sign {:.1} µs each, check {:.1} µs each; certificate check {:.1} µs each ({} checks)",
        per(sign, n),
        per(verify, n),
        per(check, n / 10),
        n / 10
    );
}
