//! The workspace's binaries for end-to-end tests. `fleetd` is this package's own
//! (`CARGO_BIN_EXE_fleetd`); `fleetctl` is a package of its own (`fleetctl/`: it links no etcd, axum or
//! zbus), so cargo only builds it for these tests in a workspace run (`cargo test --workspace`, as
//! `scripts/test.sh` does). [`fleetctl`] builds it on first use otherwise (`cargo test -p fleet --test
//! fleetctl`), into the same profile directory, which the lab binds into its machines. [`fleet_sim`]
//! does the same for the simulator (`tests/lab_simulate.rs`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The path of this build's `fleetctl`, built (once per test process) if needed.
pub fn fleetctl() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| build("fleetctl", "fleetctl", &[]))
        .clone()
}

/// The path of this build's `fleet-sim` (package `fleet-sim`), built (once per test process) if needed.
pub fn fleet_sim() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| build("fleet-sim", "fleet-sim", &["--features", "mutations"]))
        .clone()
}

/// Builds `bin_name` of `package` into this build's profile directory. `features`: the features the
/// package's own tests build it with, so that the binary they find there afterwards is still theirs
/// (fleet-sim's mutation tests run `target/<profile>/fleet-sim --mutation ...`: a plain build here
/// replaced it with one that has no `--mutation` in a workspace run).
fn build(package: &str, bin_name: &str, features: &[&str]) -> PathBuf {
    let dir = fleet_lab::cargo_profile_dir().expect("cargo profile dir");
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(p) => p.to_string(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--quiet", "--profile", &profile])
        .args(["--package", package, "--bin", bin_name])
        .args(features)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "cargo build -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = dir.join(bin_name);
    assert!(bin.exists(), "{} was not built", bin.display());
    bin
}
