//! ARCHITECTURE.md's crate boundaries, checked by Cargo's own dependency graph: `cargo tree` for each
//! pure crate must not reach a crate that does I/O (an async runtime, sockets, TLS, etcd, D-Bus, HTTP).
//!
//! To add a boundary, add a row to [`RULES`]. The test also checks itself: the same query on a crate
//! that does link tokio must find it, so a broken query cannot pass silently.
//!
//! It also keeps rooms of a livable size ([`sizes`]): no file over 800 lines and no function over 80
//! without a reason written at its top.

#[path = "boundaries/sizes.rs"]
mod sizes;

use std::collections::BTreeSet;
use std::path::Path;
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

#[test]
fn rooms_are_of_a_livable_size() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let found = sizes::oversize(root);
    assert!(
        found.is_empty(),
        "{} rooms over their size without a reason (tests/boundaries/sizes.rs says how to give one):\n{}",
        found.len(),
        found
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Rows of the tables that excuse nothing any more are stale: say so (not a failure, so that
    // shortening someone else's function never breaks the suite).
    let all: Vec<(String, String)> = sizes::KNOWN_LONG_FNS
        .iter()
        .map(|(p, n, _)| (p.to_string(), n.to_string()))
        .collect();
    for (path, name) in all {
        let still = std::fs::read_to_string(root.join(&path))
            .map(|src| {
                sizes::functions(&sizes::code_only(&src))
                    .iter()
                    .any(|(n, a, b)| *n == name && b - a + 1 > sizes::MAX_FN_LINES)
            })
            .unwrap_or(false);
        if !still {
            eprintln!("stale row in sizes::KNOWN_LONG_FNS: {path} fn {name} is no longer long");
        }
    }
}

/// A function of `body` lines of statements, each holding braces the scan must not count.
fn planted_fn(name: &str, body: usize) -> String {
    let mut f = format!("pub fn {name}(x: [u8; 4]) -> Option<u8> {{\n");
    for i in 0..body {
        f.push_str(&format!(
            "    let _ = (\"{{ }}}}\", '{{', r#\"}}\"#, {i}); // }}}}\n    /* {{ */\n"
        ));
    }
    f.push_str("    x.first().copied()\n}\n");
    f
}

#[test]
fn the_size_check_finds_a_long_file_and_a_long_function() {
    // 45 statements of 2 lines: 93 lines from `fn` to its brace; braces in strings, a character
    // literal, a raw string and comments do not count.
    let long = planted_fn("planted", 45);
    let found = sizes::oversize_in("planted.rs", &long);
    assert_eq!(
        found,
        vec![sizes::Oversize::Function {
            path: "planted.rs".into(),
            name: "planted".into(),
            line: 1,
            lines: 93,
        }]
    );
    let with_reason = format!("// long: a planted reason\n#[inline]\n{long}");
    assert_eq!(sizes::oversize_in("planted.rs", &with_reason), vec![]);
    // A reason further up, past code, does not count.
    let far = format!("// long: not this one\nconst X: u8 = 1;\n{long}");
    assert_eq!(sizes::oversize_in("planted.rs", &far).len(), 1);
    // 39 statements: 81 lines, one over; 38: 79 lines, within. The next function does not count
    // toward the first one's length; declarations without a body and `fn` pointer types are no
    // functions.
    let edge = format!(
        "trait T {{ fn f(&self); }}\ntype P = fn(u8) -> u8;\n{}{}",
        planted_fn("over", 39),
        planted_fn("within", 38)
    );
    let found = sizes::oversize_in("edge.rs", &edge);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        matches!(&found[0], sizes::Oversize::Function { name, lines: 81, .. } if name == "over"),
        "{found:?}"
    );

    // A file of 801 lines of short functions: the file is too long, none of its functions is.
    let big: String = (0..267)
        .map(|i| format!("fn f{i}() {{\n    {i};\n}}\n"))
        .collect();
    assert_eq!(big.lines().count(), 801);
    assert_eq!(
        sizes::oversize_in("big.rs", &big),
        vec![sizes::Oversize::File {
            path: "big.rs".into(),
            lines: 801,
        }]
    );
    let with_reason =
        format!("//! A planted file.\n//! size: one table, read top to bottom\n{big}");
    assert_eq!(sizes::oversize_in("big.rs", &with_reason), vec![]);
    let at_800: String = big.lines().skip(1).map(|l| format!("{l}\n")).collect();
    assert!(sizes::oversize_in("big.rs", &at_800)
        .iter()
        .all(|o| !matches!(o, sizes::Oversize::File { .. })));
}
