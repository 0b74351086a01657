//! ARCHITECTURE.md's crate boundaries, checked by Cargo's own dependency graph: `cargo tree` for each
//! pure crate must not reach a crate that does I/O (an async runtime, sockets, TLS, etcd, D-Bus, HTTP).
//!
//! To add a boundary, add a row to [`RULES`]. The test also checks itself: the same query on a crate
//! that does link tokio must find it, so a broken query cannot pass silently.

use std::collections::BTreeSet;
use std::process::Command;

/// Crates that do I/O: none may be in the normal (non-dev) dependency graph of a pure crate.
const IO_CRATES: &[&str] = &[
    "tokio",
    "quinn",
    "quinn-proto",
    "rustls",
    "rcgen",
    "etcd-client",
    "tonic",
    "zbus",
    "axum",
    "hyper",
];

/// (package, crates it must not depend on, why).
const RULES: &[(&str, &[&str], &str)] = &[
    (
        "fleet-gossip",
        IO_CRATES,
        "the gossip protocol core is sans-IO; the QUIC transport and TLS are fleet-gossip-quic",
    ),
    (
        "fleet-sched",
        IO_CRATES,
        "placement and reconcile are pure functions",
    ),
    (
        "fleet-sim",
        IO_CRATES,
        "the simulator is deterministic: it drives pure cores only",
    ),
    (
        "fleetctl",
        &["etcd-client", "tonic", "axum", "zbus", "fleet"],
        "fleetctl speaks only the HTTP API: it knows neither etcd, nor the server, nor D-Bus",
    ),
    (
        "fleet-api-types",
        IO_CRATES,
        "the API's wire types are plain data, shared by the server and the client",
    ),
];

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// The names of every crate in `package`'s normal dependency graph (itself included).
fn normal_deps(package: &str) -> BTreeSet<String> {
    let out = Command::new(cargo())
        .args([
            "tree",
            "--offline",
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
            "--package",
            package,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn forbidden_in(package: &str, forbidden: &[&str]) -> Vec<String> {
    let deps = normal_deps(package);
    forbidden
        .iter()
        .filter(|f| deps.contains(**f))
        .map(|f| f.to_string())
        .collect()
}

#[test]
fn pure_crates_link_no_io_crates() {
    let mut broken = Vec::new();
    for (package, forbidden, why) in RULES {
        let found = forbidden_in(package, forbidden);
        if !found.is_empty() {
            broken.push(format!(
                "{package} depends on {} ({why}); see `cargo tree -p {package} -i <crate>`",
                found.join(", ")
            ));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_query_finds_io_crates_where_they_are() {
    let found = forbidden_in("fleet-gossip-quic", IO_CRATES);
    for expected in ["tokio", "quinn", "rustls", "rcgen"] {
        assert!(
            found.iter().any(|f| f == expected),
            "cargo tree should show {expected} under fleet-gossip-quic; found {found:?}"
        );
    }
}
