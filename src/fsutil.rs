//! Small file helpers shared by every module that persists state.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

/// Writes `body` to `path` atomically: temp file, fsync, rename, fsync of the directory. A crash
/// leaves either the old or the new content, never a torn file.
pub fn write_atomic(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = File::create(&tmp).and_then(|mut file| {
        file.write_all(body)?;
        file.sync_all()
    });
    if let Err(e) = written {
        // A full disk leaves no half-written temp file behind.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}
