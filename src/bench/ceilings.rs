//! The machine's ceilings, measured in the same run as the broker figures so that each figure can
//! be given as a ratio (shared machines drift; ratios hold): sequential disk write, loopback TCP,
//! memcpy and CRC32C.
//!
//! Disk: O_DIRECT writes of 1 MiB aligned blocks then one fdatasync; where the filesystem refuses
//! O_DIRECT (tmpfs, some overlays: EINVAL) buffered writes then fdatasync, and `disk_method` says
//! which. Loopback: one thread writes 256 KiB chunks to 127.0.0.1 for the given time, another
//! reads them. memcpy and CRC32C run over 16 MiB buffers (larger than the caches here).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const DISK_BLOCK_BYTES: usize = 1 << 20;
const DIRECT_ALIGN: usize = 4096;
const MEM_BUFFER_BYTES: usize = 16 << 20;
const TCP_CHUNK_BYTES: usize = 256 << 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ceilings {
    /// MB/s (10^6 bytes) of sequential writes, made durable by fdatasync.
    pub disk_write_mb_s: f64,
    /// "O_DIRECT" or "buffered+fdatasync".
    pub disk_method: String,
    pub disk_dir: PathBuf,
    pub loopback_tcp_mb_s: f64,
    /// GB/s (10^9 bytes) copied.
    pub memcpy_gb_s: f64,
    pub crc32c_gb_s: f64,
}

/// Measures all four; `seconds` bounds each of loopback, memcpy and CRC32C.
pub fn measure(dir: &Path, disk_bytes: u64, seconds: f64) -> io::Result<Ceilings> {
    let (disk_write_mb_s, disk_method) = disk_write_mb_s(dir, disk_bytes)?;
    let duration = Duration::from_secs_f64(seconds);
    Ok(Ceilings {
        disk_write_mb_s,
        disk_method: disk_method.into(),
        disk_dir: dir.to_path_buf(),
        loopback_tcp_mb_s: loopback_tcp_mb_s(duration)?,
        memcpy_gb_s: memcpy_gb_s(duration),
        crc32c_gb_s: crc32c_gb_s(duration),
    })
}

impl Ceilings {
    pub fn table(&self) -> String {
        format!(
            "sequential disk write ({}, {}): {:.0} MB/s\nloopback TCP: {:.0} MB/s\n\
             memcpy: {:.2} GB/s\nCRC32C: {:.2} GB/s\n",
            self.disk_method,
            self.disk_dir.display(),
            self.disk_write_mb_s,
            self.loopback_tcp_mb_s,
            self.memcpy_gb_s,
            self.crc32c_gb_s
        )
    }
}

/// A zeroed buffer aligned for O_DIRECT.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let layout = Layout::from_size_align(len, DIRECT_ALIGN).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation of {len} bytes failed");
        AlignedBuf { ptr, layout }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of layout.size() initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// Sequential write of `bytes` (rounded up to whole MiB) into a temp file in `dir`.
pub fn disk_write_mb_s(dir: &Path, bytes: u64) -> io::Result<(f64, &'static str)> {
    let path = dir.join(format!(".strata-bench-disk-{}", std::process::id()));
    let result = match write_file(&path, bytes, true) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            write_file(&path, bytes, false).map(|r| (r, "buffered+fdatasync"))
        }
        other => other.map(|r| (r, "O_DIRECT")),
    };
    let _ = std::fs::remove_file(&path);
    result
}

fn write_file(path: &Path, bytes: u64, direct: bool) -> io::Result<f64> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    let mut file = options.open(path)?;
    let mut buf = AlignedBuf::new(DISK_BLOCK_BYTES);
    for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    let blocks = bytes.div_ceil(DISK_BLOCK_BYTES as u64).max(1);
    let started = Instant::now();
    for _ in 0..blocks {
        file.write_all(buf.as_mut_slice())?;
    }
    file.sync_data()?;
    let elapsed = started.elapsed().as_secs_f64();
    Ok((blocks * DISK_BLOCK_BYTES as u64) as f64 / 1e6 / elapsed)
}

/// One sender, one receiver over 127.0.0.1 for `duration`.
pub fn loopback_tcp_mb_s(duration: Duration) -> io::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let receiver = std::thread::spawn(move || -> io::Result<(u64, Duration)> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; TCP_CHUNK_BYTES];
        let mut total = 0u64;
        let mut first = None;
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            first.get_or_insert_with(Instant::now);
            total += n as u64;
        }
        Ok((total, first.map(|t| t.elapsed()).unwrap_or_default()))
    });
    let mut stream = TcpStream::connect(addr)?;
    let chunk = vec![7u8; TCP_CHUNK_BYTES];
    let started = Instant::now();
    while started.elapsed() < duration {
        stream.write_all(&chunk)?;
    }
    drop(stream);
    let (total, elapsed) = receiver.join().expect("receiver thread")?;
    Ok(total as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9))
}

pub fn memcpy_gb_s(duration: Duration) -> f64 {
    let src = vec![1u8; MEM_BUFFER_BYTES];
    let mut dst = vec![0u8; MEM_BUFFER_BYTES];
    let mut copied = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration || copied == 0 {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        copied += MEM_BUFFER_BYTES as u64;
    }
    copied as f64 / 1e9 / started.elapsed().as_secs_f64()
}

pub fn crc32c_gb_s(duration: Duration) -> f64 {
    let buf: Vec<u8> = (0..MEM_BUFFER_BYTES).map(|i| (i % 253) as u8).collect();
    let mut done = 0u64;
    let mut crc = 0u32;
    let started = Instant::now();
    while started.elapsed() < duration || done == 0 {
        crc = crc32c::crc32c_append(crc, std::hint::black_box(&buf));
        done += MEM_BUFFER_BYTES as u64;
    }
    std::hint::black_box(crc);
    done as f64 / 1e9 / started.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_measurement_gives_positive_figures() {
        let dir = tempfile::tempdir().unwrap();
        let c = measure(dir.path(), 4 << 20, 0.05).unwrap();
        assert!(c.disk_write_mb_s > 0.0, "{c:?}");
        assert!(c.loopback_tcp_mb_s > 0.0, "{c:?}");
        assert!(c.memcpy_gb_s > 0.0 && c.crc32c_gb_s > 0.0, "{c:?}");
        assert!(["O_DIRECT", "buffered+fdatasync"].contains(&c.disk_method.as_str()));
        // The test file is removed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let back: Ceilings = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.disk_method, c.disk_method);
        assert!((back.loopback_tcp_mb_s / c.loopback_tcp_mb_s - 1.0).abs() < 1e-12);
    }
}
