//! A small record replaced atomically without opening a file: two slots, `{name}.0` and
//! `{name}.1`, opened once at start. Each write goes to the slot not holding the newest
//! version, in place, and is fdatasynced; a torn write leaves the other slot's version to read.
//!
//! The quorum's vote, commit mark and snapshot live in twins so that a broker out of file
//! descriptors (or a directory the broker can no longer create files in) keeps its metadata
//! quorum: openraft treats a failed vote or commit write as fatal.
//!
//! Slot layout: `[u64 BE version][u32 BE length][u32 BE crc32c of version and body][body]`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

const HEADER: usize = 16;
/// Largest body read back (a corrupt length is not an allocation).
const MAX_BODY: usize = 256 << 20;

pub struct Twin {
    slots: [File; 2],
    /// The slot holding the newest version, and that version (0: nothing written yet).
    newest: usize,
    version: u64,
}

fn checksum(version: u64, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&version.to_be_bytes()), body)
}

/// The version and body a slot holds, if whole.
fn read_slot(file: &mut File) -> io::Result<Option<(u64, Vec<u8>)>> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    if bytes.len() < HEADER {
        return Ok(None);
    }
    let version = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    let len = u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_be_bytes(bytes[12..16].try_into().expect("4 bytes"));
    if len > MAX_BODY || bytes.len() < HEADER + len {
        return Ok(None);
    }
    let body = &bytes[HEADER..HEADER + len];
    Ok((checksum(version, body) == crc).then(|| (version, body.to_vec())))
}

impl Twin {
    /// Opens (creating) both slots of `{dir}/{name}` and returns the newest whole body.
    pub fn open(dir: &Path, name: &str) -> io::Result<(Twin, Option<Vec<u8>>)> {
        let open = |slot: usize| {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(dir.join(format!("{name}.{slot}")))
        };
        let mut slots = [open(0)?, open(1)?];
        let found = [read_slot(&mut slots[0])?, read_slot(&mut slots[1])?];
        let newest = match (&found[0], &found[1]) {
            (Some((a, _)), Some((b, _))) => usize::from(b > a),
            (None, Some(_)) => 1,
            _ => 0,
        };
        let [first, second] = found;
        let (version, body) = match [first, second].into_iter().nth(newest).flatten() {
            Some((version, body)) => (version, Some(body)),
            None => (0, None),
        };
        let twin = Twin {
            slots,
            newest,
            version,
        };
        Ok((twin, body))
    }

    /// Whether neither slot of `{dir}/{name}` holds anything.
    pub fn is_empty(dir: &Path, name: &str) -> bool {
        (0..2).all(|slot| {
            std::fs::metadata(dir.join(format!("{name}.{slot}"))).map_or(true, |m| m.len() == 0)
        })
    }

    /// Replaces the body: written to the older slot and synced before this returns.
    pub fn write(&mut self, body: &[u8]) -> io::Result<()> {
        let version = self.version + 1;
        let slot = if self.version == 0 {
            self.newest
        } else {
            1 - self.newest
        };
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&checksum(version, body).to_be_bytes());
        out.extend_from_slice(body);
        let file = &self.slots[slot];
        file.write_all_at(&out, 0)?;
        file.set_len(out.len() as u64)?;
        file.sync_data()?;
        self.newest = slot;
        self.version = version;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_whole_version_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (mut twin, body) = Twin::open(dir.path(), "state").unwrap();
        assert!(body.is_none());
        assert!(Twin::is_empty(dir.path(), "state"));
        for i in 0..5u8 {
            twin.write(&vec![i; 100 - i as usize]).unwrap();
        }
        drop(twin);
        let (mut twin, body) = Twin::open(dir.path(), "state").unwrap();
        assert_eq!(body.unwrap(), vec![4u8; 96]);

        // A torn write of the next version leaves the one before it.
        twin.write(&[9; 10]).unwrap();
        let newest = dir.path().join(format!("state.{}", twin.newest));
        let len = std::fs::metadata(&newest).unwrap().len();
        File::options()
            .write(true)
            .open(&newest)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        drop(twin);
        let (mut twin, body) = Twin::open(dir.path(), "state").unwrap();
        assert_eq!(body.unwrap(), vec![4u8; 96]);

        // And writing on from there overwrites the torn slot, not the good one.
        twin.write(&[7; 3]).unwrap();
        drop(twin);
        let (_, body) = Twin::open(dir.path(), "state").unwrap();
        assert_eq!(body.unwrap(), vec![7u8; 3]);
    }

    #[test]
    fn a_corrupt_slot_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (mut twin, _) = Twin::open(dir.path(), "s").unwrap();
        twin.write(b"one").unwrap();
        twin.write(b"two").unwrap();
        let newest = dir.path().join(format!("s.{}", twin.newest));
        drop(twin);
        let mut bytes = std::fs::read(&newest).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&newest, bytes).unwrap();
        let (_, body) = Twin::open(dir.path(), "s").unwrap();
        assert_eq!(body.unwrap(), b"one");
    }
}
