//! What the cost examples share: a machine's mutual TLS, minted as `fleetctl gen-certs` mints it.

use std::path::Path;

use fleet_gossip_quic::tls::{mint_machine_cert, TlsConfig};

/// Mutual TLS for `machine` (its ID, 32 hex digits), its certificate and key written to `dir` as
/// `<file>.pem`/`<file>.key` and signed by the CA `dir/ca.pem`/`ca.key`.
pub fn machine_tls(dir: &Path, file: &str, machine: &str) -> TlsConfig {
    let (cert, key) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    mint_machine_cert(
        &dir.join("ca.pem"),
        &dir.join("ca.key"),
        machine,
        &cert,
        &key,
    )
    .expect("mint machine cert");
    TlsConfig::Mutual {
        ca_cert: dir.join("ca.pem"),
        cert,
        key,
    }
}
