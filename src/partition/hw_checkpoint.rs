//! `replication-offset-checkpoint` (Kafka's name and format), in the broker's `topics/`
//! directory: the high watermark of every partition the broker holds, written every
//! `replica.high.watermark.checkpoint.interval.ms` and at a clean shutdown.
//!
//! A partition opens at min(checkpoint, log end) (DESIGN.md, "Replication"): the records a
//! leader appended but its ISR never had are not shown to consumers after a restart until the
//! replicas have them. A partition missing from the file (or a file that does not parse) opens
//! at its log start, as Kafka's 0; a stale file only hides records for a while, never shows one
//! too early, so the file is replaced atomically but a lost update is harmless.
//!
//! ASCII with `\n` line ends: line 1 the version `0`, line 2 the entry count `n`, then `n` lines
//! `{topic} {partition} {offset}` (topic names never hold a space).

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

pub const FILE: &str = "replication-offset-checkpoint";
const VERSION: &str = "0";
/// Bounds what is read; a real file is ~40 bytes per partition.
const MAX_BYTES: u64 = 64 << 20;

/// High watermarks by (topic, partition).
pub type HighWatermarks = BTreeMap<(String, i32), i64>;

/// The checkpoint in `dir`; empty when it is absent, and (logged) when it does not parse.
pub fn read(dir: &Path) -> HighWatermarks {
    let path = dir.join(FILE);
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return HighWatermarks::new(),
        Ok(m) if m.len() > MAX_BYTES => {
            tracing::warn!(file = %path.display(), bytes = m.len(), "high-watermark checkpoint too large; partitions open at their log start");
            return HighWatermarks::new();
        }
        _ => {}
    }
    match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| parse(&text))
    {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = e, "high-watermark checkpoint unreadable; partitions open at their log start");
            HighWatermarks::new()
        }
    }
}

fn parse(text: &str) -> Result<HighWatermarks, String> {
    let mut lines = text.lines();
    if lines.next() != Some(VERSION) {
        return Err("bad version line".into());
    }
    let count: usize = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or("bad count line")?;
    let mut entries = HighWatermarks::new();
    for line in lines.by_ref().take(count) {
        let mut parts = line.split(' ');
        let (Some(topic), Some(partition), Some(offset), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("bad entry line {line:?}"));
        };
        let (Ok(partition), Ok(offset)) = (partition.parse::<i32>(), offset.parse::<i64>()) else {
            return Err(format!("bad entry numbers {line:?}"));
        };
        if topic.is_empty() || partition < 0 || offset < 0 {
            return Err(format!("bad entry {line:?}"));
        }
        entries.insert((topic.to_string(), partition), offset);
    }
    if entries.len() != count || lines.next().is_some() {
        return Err("entry count mismatch".into());
    }
    Ok(entries)
}

/// Blocking: replaces the checkpoint in `dir` with `entries` (temp file, fsync, rename).
pub fn write(dir: &Path, entries: &HighWatermarks) -> io::Result<()> {
    let mut text = format!("{VERSION}\n{}\n", entries.len());
    for ((topic, partition), offset) in entries {
        text.push_str(&format!("{topic} {partition} {offset}\n"));
    }
    crate::fsutil::write_atomic(&dir.join(FILE), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_falls_back_to_nothing_on_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).is_empty());
        let entries: HighWatermarks = [(("a.b-c".to_string(), 0), 7), (("t".to_string(), 12), 0)]
            .into_iter()
            .collect();
        write(dir.path(), &entries).unwrap();
        assert_eq!(read(dir.path()), entries);
        for bad in [
            "",
            "1\n0\n",
            "0\n2\nt 0 5\n",
            "0\n1\nt 0 5\nt 1 6\n",
            "0\n1\nt x 5\n",
            "0\n1\nt 0 -5\n",
            "0\n1\nt 0 5 9\n",
        ] {
            std::fs::write(dir.path().join(FILE), bad).unwrap();
            assert!(read(dir.path()).is_empty(), "{bad:?}");
        }
    }
}
