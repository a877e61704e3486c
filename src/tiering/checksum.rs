//! Block checksums of a remote file's data, so that damage in the bucket is found before a cold
//! read serves it.
//!
//! Parquet's own page CRC is optional and parquet-rs does not write it; zstd frames carry no
//! checksum there either. A flipped bit in a page can therefore decode into a wrong key or value
//! without any error. So the offload computes CRC32C over every block of `BLOCK_BYTES` of the
//! file as it streams out, up to the end of the last data page (everything but the page index and
//! the footer, which the Parquet reader parses and checks itself), and stores the list in the
//! footer's key-value metadata under [`KEY`]: `crc32c/{block bytes}/{covered bytes}/{hex crcs}`.
//! Readers check every block they fetch whole (the cold-read cache's chunks are whole blocks);
//! a mismatch makes the file corrupt. Files without the key (written before it existed) are
//! read unchecked.

use parquet::file::metadata::ParquetMetaData;

/// Bytes per checksummed block of the files written now (files written before 2026-12-06 have
/// 1 MiB; the footer says which). The cold-read cache's chunks are a multiple of both. A
/// point query reads whole blocks around the pages it needs ([`super::sparse`]), so smaller
/// blocks read less; 256 KiB costs 4 KiB of footer per GiB of file.
pub const BLOCK_BYTES: u64 = 256 << 10;
const _: () = assert!(super::cache::CHUNK_BYTES.is_multiple_of(BLOCK_BYTES));

/// The footer key holding the checksums.
pub const KEY: &str = "strata.crc32c";

/// CRC32C of blocks of a stream as it is written.
#[derive(Debug, Default)]
pub struct Summer {
    written: u64,
    crc: u32,
    sums: Vec<u32>,
}

impl Summer {
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = (BLOCK_BYTES - self.written % BLOCK_BYTES) as usize;
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.crc = crc32c::crc32c_append(self.crc, now);
            self.written += now.len() as u64;
            if self.written.is_multiple_of(BLOCK_BYTES) {
                self.sums.push(std::mem::take(&mut self.crc));
            }
            bytes = rest;
        }
    }

    /// The checksums of everything written so far (the last block may be short).
    pub fn sums(&self) -> BlockSums {
        let mut crcs = self.sums.clone();
        if !self.written.is_multiple_of(BLOCK_BYTES) {
            crcs.push(self.crc);
        }
        BlockSums {
            block: BLOCK_BYTES,
            covered: self.written,
            crcs,
        }
    }
}

/// The checksums of the first `covered` bytes of a file, one per `block` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSums {
    block: u64,
    covered: u64,
    crcs: Vec<u32>,
}

impl BlockSums {
    pub fn block_bytes(&self) -> u64 {
        self.block
    }

    pub fn encode(&self) -> String {
        let mut s = format!("crc32c/{}/{}/", self.block, self.covered);
        for crc in &self.crcs {
            s.push_str(&format!("{crc:08x}"));
        }
        s
    }

    pub fn decode(s: &str) -> Result<BlockSums, String> {
        let bad = |why: &str| format!("{KEY} in the footer is malformed: {why}");
        let mut parts = s.splitn(4, '/');
        if parts.next() != Some("crc32c") {
            return Err(bad("not crc32c"));
        }
        let mut number = || -> Result<u64, String> {
            parts
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| bad("no sizes"))
        };
        let (block, covered) = (number()?, number()?);
        if !block.is_power_of_two() || !(4096..=1 << 30).contains(&block) {
            return Err(bad("block size"));
        }
        let hex = parts.next().ok_or_else(|| bad("no checksums"))?;
        if hex.len() as u64 != covered.div_ceil(block) * 8 || !hex.is_ascii() {
            return Err(bad("checksum count"));
        }
        let crcs = (0..hex.len())
            .step_by(8)
            .map(|i| u32::from_str_radix(&hex[i..i + 8], 16).map_err(|_| bad("not hex")))
            .collect::<Result<_, _>>()?;
        Ok(BlockSums {
            block,
            covered,
            crcs,
        })
    }

    /// The checksums in a file's footer: `None` for a file written without them.
    pub fn from_metadata(metadata: &ParquetMetaData) -> Result<Option<BlockSums>, String> {
        let kv = metadata.file_metadata().key_value_metadata();
        match kv.and_then(|kv| kv.iter().find(|e| e.key == KEY)) {
            None => Ok(None),
            Some(entry) => BlockSums::decode(entry.value.as_deref().unwrap_or_default()).map(Some),
        }
    }

    /// Checks the blocks that lie wholly within `bytes`, which start at `offset` of the file.
    pub fn verify(&self, offset: u64, bytes: &[u8]) -> Result<(), String> {
        let end = offset + bytes.len() as u64;
        let mut index = offset.div_ceil(self.block);
        loop {
            let start = index * self.block;
            let stop = (start + self.block).min(self.covered);
            if start >= self.covered || stop > end {
                return Ok(());
            }
            let got = crc32c::crc32c(&bytes[(start - offset) as usize..(stop - offset) as usize]);
            let want = self.crcs[index as usize];
            if got != want {
                return Err(format!(
                    "bytes {start}..{stop} have CRC32C {got:08x}, the footer says {want:08x}"
                ));
            }
            index += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn written_in_any_pieces_the_sums_are_the_same_and_round_trip() {
        let body = data(3 * BLOCK_BYTES as usize + 1234);
        let mut whole = Summer::default();
        whole.update(&body);
        let mut pieces = Summer::default();
        for piece in body.chunks(77_777) {
            pieces.update(piece);
        }
        let sums = whole.sums();
        assert_eq!(sums, pieces.sums());
        assert_eq!(sums.crcs.len(), 4);
        assert_eq!(BlockSums::decode(&sums.encode()).unwrap(), sums);
        for bad in [
            "",
            "md5/1048576/0/",
            "crc32c/1000/10/00000000",
            "crc32c/1048576/10/0000000",
            "crc32c/1048576/10/0000000g",
            "crc32c/1048576/2097153/0000000000000000",
        ] {
            assert!(BlockSums::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn whole_blocks_are_checked_and_a_flipped_bit_is_found() {
        let block = BLOCK_BYTES as usize;
        let mut body = data(2 * block + 500);
        let mut summer = Summer::default();
        summer.update(&body);
        // Bytes past the covered part (the footer) are not checked.
        body.extend_from_slice(b"footer");
        let sums = summer.sums();
        assert!(sums.verify(0, &body).is_ok());
        // Block-aligned pieces, the short last block included.
        for start in [0, block, 2 * block] {
            assert!(sums.verify(start as u64, &body[start..]).is_ok());
        }
        body[block + 10] ^= 0x04;
        let e = sums.verify(0, &body).unwrap_err();
        assert!(e.contains(&format!("bytes {block}..{}", 2 * block)), "{e}");
        assert!(sums.verify(block as u64, &body[block..2 * block]).is_err());
        // A piece holding no whole block checks nothing.
        assert!(sums
            .verify(block as u64 + 1, &body[block + 1..2 * block])
            .is_ok());
        body[2 * block + 499] ^= 0x01;
        assert!(sums
            .verify(2 * block as u64, &body[2 * block..])
            .unwrap_err()
            .contains(&format!("bytes {}..{}", 2 * block, 2 * block + 500)));
    }

    /// End to end: a file written by the offload carries its checksums, and one flipped byte in
    /// a data page is found by a read through the cache and by a read without it, before any
    /// decoding (the error names the checksum, not a decoder).
    #[tokio::test]
    async fn a_flipped_byte_in_a_data_page_is_corrupt_with_or_without_the_cache() {
        use crate::record::batch::Codec;
        use crate::record::builder::BatchBuilder;
        use crate::store::Store;
        use crate::tiering::cache::ChunkCache;
        use crate::tiering::file::{write_test_file, FileError};
        use crate::tiering::reader::read_rows;

        let store = Store::from_url("memory://").unwrap();
        // Values that zstd cannot shrink: the file spans several checksummed blocks.
        let mut x = 1u64;
        let batches: Vec<Vec<u8>> = (0..40)
            .map(|b| {
                let mut batch = BatchBuilder::new(Codec::None);
                batch.base_offset(b * 100);
                for _ in 0..100 {
                    let value: Vec<u8> = (0..1000)
                        .map(|_| {
                            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                            (x >> 56) as u8
                        })
                        .collect();
                    batch.record(1, None, Some(&value), &[]);
                }
                batch.build()
            })
            .collect();
        let written =
            write_test_file(&store, "good.parquet", batches.iter().map(Vec::as_slice)).await;
        let body = store.get(&store.path("good.parquet")).await.unwrap();
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(body.clone());
        let metadata = parquet::file::reader::FileReader::metadata(&reader.unwrap()).clone();
        let sums = BlockSums::from_metadata(&metadata)
            .unwrap()
            .expect("checksums");
        assert!(sums.crcs.len() >= 3, "{} blocks", sums.crcs.len());
        assert!(sums.verify(0, &body).is_ok());

        let mut flipped = body.to_vec();
        flipped[(sums.covered / 2) as usize] ^= 0x10;
        store
            .put_if_absent(&store.path("flip.parquet"), flipped.into())
            .await
            .unwrap();
        let size = written.size_bytes;
        let cache = ChunkCache::new(None, 1 << 30).unwrap();
        for cache in [None, Some(&cache)] {
            let rows = read_rows(&store, cache, "good.parquet", size, 0, 4000)
                .await
                .unwrap();
            assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 4000);
            match read_rows(&store, cache, "flip.parquet", size, 0, 4000).await {
                Err(FileError::Corrupt { reason, .. }) => {
                    assert!(reason.contains("CRC32C"), "{reason}")
                }
                other => panic!("{:?}", other.map(|b| b.len())),
            }
        }
    }
}
