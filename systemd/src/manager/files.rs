//! Writing unit files: atomically (a temporary file in the same directory, then a rename), so that
//! systemd never reads a half-written unit.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `contents` to `dir/name` through a temporary file and a rename.
pub(super) async fn write_atomic(dir: &Path, name: &str, contents: &str) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".fleet-{}-{n}.tmp", std::process::id()));
    let path = dir.join(name);
    if let Err(e) = tokio::fs::write(&tmp, contents).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(io(&tmp)(e));
    }
    if let Err(e) = tokio::fs::rename(&tmp, &path).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(io(&path)(e));
    }
    Ok(())
}
