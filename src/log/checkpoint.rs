//! Small metadata files in the partition directory, each replaced atomically
//! (write `{name}.tmp`, fsync it, rename over `{name}`, fsync the directory).
//!
//! All are ASCII text with `\n` line ends, in the style of Kafka's checkpoint files:
//!
//! - `recovery-point-offset-checkpoint` and `log-start-offset-checkpoint`: line 1 the format
//!   version `0`, line 2 one decimal i64 offset.
//! - `leader-epoch-checkpoint`: line 1 version `0`, line 2 the entry count `n`, then `n` lines
//!   `{epoch} {start_offset}` (decimal i32 and i64, one space), epochs and offsets increasing.
//! - `.clean-shutdown`: empty; its presence means the last `Log::close` completed.
//!
//! A file that does not parse is reported as `Corrupt`; callers fall back to a safe default
//! (recovery point 0 = scan everything, log start = first segment, epochs rebuilt by recovery).
//! Leftover `*.tmp` files are deleted when the log opens.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use super::LogError;

pub(crate) const RECOVERY_POINT_FILE: &str = "recovery-point-offset-checkpoint";
pub(crate) const LOG_START_FILE: &str = "log-start-offset-checkpoint";
pub(crate) const LEADER_EPOCH_FILE: &str = "leader-epoch-checkpoint";
pub(crate) const CLEAN_SHUTDOWN_FILE: &str = ".clean-shutdown";
pub(crate) const TMP_SUFFIX: &str = ".tmp";
const VERSION: &str = "0";
/// Bounds what we read from a checkpoint; a real one is tiny.
const MAX_CHECKPOINT_BYTES: u64 = 16 << 20;

/// fsync a directory so that creates, renames and unlinks in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `dir/name` with `contents`. With `durable`, the data and the rename are fsynced;
/// without it the new file may be lost or empty after a crash, which is acceptable only for
/// files whose stale or missing value is safe (the recovery point: it just means more scanning).
pub(crate) fn write_atomic(
    dir: &Path,
    name: &str,
    contents: &[u8],
    durable: bool,
) -> io::Result<()> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let mut file = File::create(&tmp)?;
    file.write_all(contents)?;
    if durable {
        file.sync_all()?;
    }
    drop(file);
    fs::rename(&tmp, dir.join(name))?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

fn read_text(dir: &Path, name: &str) -> Result<Option<String>, LogError> {
    let path = dir.join(name);
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if meta.len() > MAX_CHECKPOINT_BYTES {
        return Err(LogError::Corrupt(format!(
            "{} is {} bytes",
            path.display(),
            meta.len()
        )));
    }
    let bytes = fs::read(&path)?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| LogError::Corrupt(format!("{} is not UTF-8", path.display())))
}

fn corrupt(dir: &Path, name: &str, what: &str) -> LogError {
    LogError::Corrupt(format!("{}: {what}", dir.join(name).display()))
}

pub(crate) fn write_offset(dir: &Path, name: &str, offset: i64, durable: bool) -> io::Result<()> {
    write_atomic(
        dir,
        name,
        format!("{VERSION}\n{offset}\n").as_bytes(),
        durable,
    )
}

pub(crate) fn read_offset(dir: &Path, name: &str) -> Result<Option<i64>, LogError> {
    let Some(text) = read_text(dir, name)? else {
        return Ok(None);
    };
    let mut lines = text.lines();
    if lines.next() != Some(VERSION) {
        return Err(corrupt(dir, name, "bad version line"));
    }
    let offset = lines
        .next()
        .and_then(|l| l.trim().parse::<i64>().ok())
        .filter(|&o| o >= 0)
        .ok_or_else(|| corrupt(dir, name, "bad offset line"))?;
    if lines.next().is_some() {
        return Err(corrupt(dir, name, "trailing lines"));
    }
    Ok(Some(offset))
}

pub(crate) fn write_epochs(dir: &Path, entries: &[(i32, i64)]) -> io::Result<()> {
    let mut text = format!("{VERSION}\n{}\n", entries.len());
    for (epoch, start) in entries {
        text.push_str(&format!("{epoch} {start}\n"));
    }
    write_atomic(dir, LEADER_EPOCH_FILE, text.as_bytes(), true)
}

pub(crate) fn read_epochs(dir: &Path) -> Result<Option<Vec<(i32, i64)>>, LogError> {
    let name = LEADER_EPOCH_FILE;
    let Some(text) = read_text(dir, name)? else {
        return Ok(None);
    };
    let mut lines = text.lines();
    if lines.next() != Some(VERSION) {
        return Err(corrupt(dir, name, "bad version line"));
    }
    let count = lines
        .next()
        .and_then(|l| l.trim().parse::<usize>().ok())
        .ok_or_else(|| corrupt(dir, name, "bad count line"))?;
    let mut entries: Vec<(i32, i64)> = Vec::new();
    for line in lines.by_ref().take(count) {
        let mut parts = line.split(' ');
        let (Some(epoch), Some(start), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(corrupt(dir, name, "bad entry line"));
        };
        let (Ok(epoch), Ok(start)) = (epoch.parse::<i32>(), start.parse::<i64>()) else {
            return Err(corrupt(dir, name, "bad entry numbers"));
        };
        if let Some(&(last_epoch, last_start)) = entries.last() {
            if epoch <= last_epoch || start < last_start {
                return Err(corrupt(dir, name, "entries not increasing"));
            }
        }
        if epoch < 0 || start < 0 {
            return Err(corrupt(dir, name, "negative entry"));
        }
        entries.push((epoch, start));
    }
    if entries.len() != count || lines.next().is_some() {
        return Err(corrupt(dir, name, "entry count mismatch"));
    }
    Ok(Some(entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_round_trip_and_rejects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        assert_eq!(read_offset(d, "x").expect("read"), None);
        write_offset(d, "x", 42, true).expect("write");
        assert_eq!(read_offset(d, "x").expect("read"), Some(42));
        let full = b"0\n42\n";
        for cut in 0..full.len() - 1 {
            fs::write(d.join("y"), &full[..cut]).expect("write");
            if let Ok(v) = read_offset(d, "y") {
                // "0\n4" is a valid (smaller) value only if the second line parses; that is a
                // torn write the atomic rename prevents, but it must never panic.
                assert!(v.is_none() || v == Some(4), "cut {cut}: {v:?}");
            }
        }
        assert!(!d.join("x.tmp").exists());
    }

    #[test]
    fn epochs_round_trip_and_rejects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let entries = vec![(0, 0), (3, 10), (5, 99)];
        write_epochs(d, &entries).expect("write");
        assert_eq!(read_epochs(d).expect("read"), Some(entries));
        fs::write(d.join(LEADER_EPOCH_FILE), "0\n2\n1 5\n0 9\n").expect("write");
        assert!(read_epochs(d).is_err());
        fs::write(d.join(LEADER_EPOCH_FILE), "0\n3\n1 5\n").expect("write");
        assert!(read_epochs(d).is_err());
    }
}
