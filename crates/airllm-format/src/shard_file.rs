//! One shard file on disk.
//!
//! ```text
//! offset 0    +---------------------------------------------+
//!             | header (256 bytes, little endian)            |
//!             |   0  magic      "AIRLSHRD"                   |
//!             |   8  version    u32                          |
//!             |  12  header_len u32 (256)                    |
//!             |  16  file_len   u64 (multiple of 4096)       |
//!             |  24  data_end   u64 (end of the last tensor) |
//!             |  32  plan_hash  u64 (also in manifest.json)  |
//!             |  40  tensors    u32                          |
//!             |  44  unit kind  u32 (0 emb,1 layer,2 norm,3 head)
//!             |  48  unit index u32                          |
//!             |  52.. zero                                   |
//! offset 256  +---------------------------------------------+
//!             | tensor 0 bytes, then zero padding to 256     |
//!             | tensor 1 bytes (offset multiple of 256) ...  |
//!             | zero padding to a multiple of 4096           |
//!             +---------------------------------------------+
//! ```
//!
//! The tensor table lives in `manifest.json`; the header makes a file
//! self-identifying (which plan, which unit, how long it must be) so a truncated
//! file, or a file from another model or another compression, is caught before use.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{FormatError, IoContext, Result};
use crate::manifest::{FORMAT_VERSION, ShardEntry, TensorEntry};
use crate::roles::Unit;

/// Header length; the first tensor starts here.
pub const HEADER_LEN: usize = 256;
/// Magic bytes at offset 0.
pub const MAGIC: &[u8; 8] = b"AIRLSHRD";

/// The fixed header of a shard file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    /// Total file length.
    pub file_len: u64,
    /// End of the last tensor.
    pub data_end: u64,
    /// Plan hash.
    pub plan_hash: u64,
    /// Number of tensors.
    pub tensors: u32,
    /// The unit.
    pub unit: Unit,
}

impl ShardHeader {
    /// Encode to 256 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.file_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.data_end.to_le_bytes());
        b[32..40].copy_from_slice(&self.plan_hash.to_le_bytes());
        b[40..44].copy_from_slice(&self.tensors.to_le_bytes());
        let (kind, idx) = match self.unit {
            Unit::Embedding => (0u32, 0u32),
            Unit::Layer(i) => (1, i),
            Unit::FinalNorm => (2, 0),
            Unit::LmHead => (3, 0),
            Unit::LmHeadPart(k) => (4, k),
        };
        b[44..48].copy_from_slice(&kind.to_le_bytes());
        b[48..52].copy_from_slice(&idx.to_le_bytes());
        b
    }

    /// Decode and check magic and version.
    pub fn parse(b: &[u8], path: &Path) -> Result<ShardHeader> {
        let bad = |m: String| FormatError::BadShard { path: path.to_owned(), message: m };
        if b.len() < HEADER_LEN {
            return Err(bad(format!(
                "only {} bytes, shorter than the {HEADER_LEN}-byte header; the file is truncated, re-run `airllm shard`",
                b.len()
            )));
        }
        if &b[0..8] != MAGIC {
            return Err(bad("not an airllm shard file (bad magic); re-run `airllm shard`".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {version}, this build reads {FORMAT_VERSION}; re-run `airllm shard`"
            )));
        }
        let unit = match (u32_at(44), u32_at(48)) {
            (0, _) => Unit::Embedding,
            (1, i) => Unit::Layer(i),
            (2, _) => Unit::FinalNorm,
            (3, _) => Unit::LmHead,
            (4, k) => Unit::LmHeadPart(k),
            (k, _) => return Err(bad(format!("unknown unit kind {k} in header"))),
        };
        Ok(ShardHeader { file_len: u64_at(16), data_end: u64_at(24), plan_hash: u64_at(32), tensors: u32_at(40), unit })
    }
}

/// A shard file mapped into memory and checked against its manifest entry.
pub struct MappedShard {
    path: PathBuf,
    map: Mmap,
}

impl std::fmt::Debug for MappedShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedShard").field("path", &self.path).finish()
    }
}

impl MappedShard {
    /// Map `path` and check length, header and plan hash against `entry`
    /// (not the checksum: see [`MappedShard::verify`]).
    pub fn open(path: &Path, entry: &ShardEntry) -> Result<MappedShard> {
        let file = File::open(path).at("opening shard", path)?;
        let len = file.metadata().at("reading metadata of", path)?.len();
        if len != entry.bytes {
            return Err(FormatError::BadShard {
                path: path.to_owned(),
                message: format!(
                    "{len} bytes on disk, the manifest says {}; the file is truncated or from another run. \
                     Re-run `airllm shard` (complete shards are kept)",
                    entry.bytes
                ),
            });
        }
        // SAFETY: read-only map of a file we just checked; shard files are immutable once
        // renamed into place (the writer never modifies a complete shard in place).
        let map = unsafe { Mmap::map(&file) }.at("memory-mapping shard", path)?;
        let h = ShardHeader::parse(&map, path)?;
        if h.file_len != len || Some(h.plan_hash) != entry.plan_hash_u64() || h.unit != entry.unit {
            return Err(FormatError::BadShard {
                path: path.to_owned(),
                message: "header does not match manifest.json (another model, compression or run?); \
                          re-run `airllm shard`"
                    .into(),
            });
        }
        Ok(MappedShard { path: path.to_owned(), map })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// One tensor's bytes.
    pub fn tensor(&self, t: &TensorEntry) -> Result<&[u8]> {
        let b = t.offset as usize;
        let e = b.saturating_add(t.bytes as usize);
        self.map.get(b..e).ok_or_else(|| FormatError::BadShard {
            path: self.path.clone(),
            message: format!("tensor {:?} at {}..{} lies outside the file", t.name, b, e),
        })
    }

    /// Check the xxh3-64 checksum of the whole file.
    pub fn verify(&self, entry: &ShardEntry) -> Result<()> {
        let got = checksum(&self.map);
        if Some(got) != entry.checksum_u64() {
            return Err(FormatError::BadShard {
                path: self.path.clone(),
                message: format!(
                    "checksum mismatch (file {got:016x}, manifest {}); the file is corrupted. \
                     Delete it and re-run `airllm shard`",
                    entry.checksum
                ),
            });
        }
        Ok(())
    }
}

/// xxh3-64 of a whole shard file (one pass; xxh3 runs at memory speed, so
/// verification costs about as much as reading the file).
pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}
