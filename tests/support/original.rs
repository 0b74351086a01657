//! The original fleetctl v1.0.0 (CoreOS fleet's own client), decompressed for interoperability tests
//! from `<repo>/../shared/interop/fleetctl-v1.0.0.xz`, else `$FLEET_SHARED/interop/`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// sha256 of the decompressed binary (from `../shared/interop/README.md`).
const SHA256: &str = "12f0db96921fac7403fb81d582006345b9b1e8356b92116d8674b74d1b6555a5";

/// The decompressed original fleetctl in a temp dir (removed on drop).
pub struct Original {
    pub dir: tempfile::TempDir,
}

impl Original {
    /// Finds and decompresses `fleetctl-v1.0.0.xz`; `None` (with a message) when it is not there.
    pub fn get() -> Option<Original> {
        let mut places: Vec<PathBuf> =
            vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")];
        if let Some(dir) = std::env::var_os("FLEET_SHARED") {
            places.push(PathBuf::from(dir));
        }
        let Some(xz) = places
            .iter()
            .map(|p| p.join("interop/fleetctl-v1.0.0.xz"))
            .find(|p| p.exists())
        else {
            eprintln!(
                "skipped: the original fleetctl is not in {} (set FLEET_SHARED to the directory holding interop/)",
                places
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("fleet-interop")
            .tempdir()
            .expect("temp dir for the original fleetctl");
        let bin = dir.path().join("fleetctl-v1.0.0");
        let out = Command::new("xz")
            .arg("-dc")
            .arg(&xz)
            .output()
            .expect("run xz (apt-get install xz-utils)");
        assert!(out.status.success(), "xz -dc {}: {:?}", xz.display(), out);
        std::fs::write(&bin, &out.stdout).expect("write the original fleetctl");
        std::fs::set_permissions(
            &bin,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
        )
        .unwrap();
        let sum = Command::new("sha256sum").arg(&bin).output().unwrap();
        let sum = String::from_utf8_lossy(&sum.stdout);
        assert!(sum.starts_with(SHA256), "unexpected binary: {sum}");
        Some(Original { dir })
    }
}

impl Original {
    /// The binary.
    pub fn bin(&self) -> PathBuf {
        self.dir.path().join("fleetctl-v1.0.0")
    }
}
