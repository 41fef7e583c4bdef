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
//!             |  44  unit kind  u32 (0 emb,1 layer,2 norm,3 head,4 head part)
//!             |  48  unit index u32 (0 for emb, norm, head)  |
//!             |  52  zero       u32                          |
//!             |  56  table_hash u64 (of the manifest's tensor table)
//!             |  64  spec_hash  u64 (of the manifest's model spec)
//!             |  72.. zero                                   |
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
//! Its two hashes tie the manifest to the shards: an edited or damaged tensor table
//! (a dtype swapped for another of the same size, a moved offset) or model spec (a
//! changed epsilon or embedding scale) no longer matches the headers, and is refused
//! instead of running with garbage output. Every field is checked
//! ([`ShardHeader::check`]): magic, version, header length, reserved bytes zero, unit
//! (index 0 for the embedding, final norm and lm_head), file length, data end, tensor
//! count, plan hash and both table hashes.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{FormatError, IoContext, Result};
use crate::manifest::{FILE_ALIGN, FORMAT_VERSION, ShardEntry, TensorEntry};
use crate::roles::Unit;
use crate::spec::ModelSpec;

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
    /// [`table_hash`] of the shard's tensor table.
    pub table_hash: u64,
    /// [`spec_hash`] of the model spec.
    pub spec_hash: u64,
}

/// xxh3-64 of a shard's tensor table as the manifest records it (canonical JSON).
pub fn table_hash(tensors: &[TensorEntry]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(serde_json::to_string(tensors).unwrap_or_default().as_bytes())
}

/// xxh3-64 of a model spec as the manifest records it (canonical JSON).
pub fn spec_hash(spec: &ModelSpec) -> u64 {
    xxhash_rust::xxh3::xxh3_64(serde_json::to_string(spec).unwrap_or_default().as_bytes())
}

/// Where the last tensor of a shard ends (the header's `data_end`), from its table.
pub fn data_end(tensors: &[TensorEntry]) -> u64 {
    tensors.iter().map(|t| t.offset.saturating_add(t.bytes)).max().unwrap_or(HEADER_LEN as u64)
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
        b[56..64].copy_from_slice(&self.table_hash.to_le_bytes());
        b[64..72].copy_from_slice(&self.spec_hash.to_le_bytes());
        b
    }

    /// Decode and check what the header alone can say: magic, version, header length,
    /// the unit (kind known, index 0 where the unit has none) and reserved bytes zero.
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
        let header_len = u32_at(12);
        if header_len as usize != HEADER_LEN {
            return Err(bad(format!(
                "header length {header_len}, this format's is {HEADER_LEN}; the file is damaged, re-run `airllm shard`"
            )));
        }
        let unit = match (u32_at(44), u32_at(48)) {
            (0, 0) => Unit::Embedding,
            (1, i) => Unit::Layer(i),
            (2, 0) => Unit::FinalNorm,
            (3, 0) => Unit::LmHead,
            (4, k) => Unit::LmHeadPart(k),
            (k @ 0..=3, i) => {
                return Err(bad(format!(
                    "unit kind {k} with unit index {i} in the header (only layers and lm_head parts have an \
                     index); the file is damaged, re-run `airllm shard`"
                )));
            }
            (k, _) => return Err(bad(format!("unknown unit kind {k} in the header; the file is damaged"))),
        };
        if u32_at(52) != 0 || b[72..HEADER_LEN].iter().any(|&x| x != 0) {
            return Err(bad("reserved header bytes are not zero; the file is damaged, re-run `airllm shard`".into()));
        }
        Ok(ShardHeader {
            file_len: u64_at(16),
            data_end: u64_at(24),
            plan_hash: u64_at(32),
            tensors: u32_at(40),
            unit,
            table_hash: u64_at(56),
            spec_hash: u64_at(64),
        })
    }

    /// Check every field against the shard's manifest entry, the file's length on disk
    /// and (when given) the manifest's [`spec_hash`]. The first difference is an error
    /// naming the field and both values.
    pub fn check(&self, entry: &ShardEntry, len_on_disk: u64, spec: Option<u64>, path: &Path) -> Result<()> {
        let bad = |field: &str, header: String, want: String| FormatError::BadShard {
            path: path.to_owned(),
            message: format!(
                "header {field} is {header}, manifest.json says {want}; the file is damaged or from another model, \
                 compression or run. Re-run `airllm shard`"
            ),
        };
        if self.unit != entry.unit {
            return Err(bad("unit", self.unit.to_string(), entry.unit.to_string()));
        }
        if self.file_len != entry.bytes || !self.file_len.is_multiple_of(FILE_ALIGN) {
            return Err(bad(
                "file length",
                self.file_len.to_string(),
                format!("{} (a multiple of {FILE_ALIGN})", entry.bytes),
            ));
        }
        if len_on_disk != self.file_len {
            return Err(FormatError::BadShard {
                path: path.to_owned(),
                message: format!(
                    "{len_on_disk} bytes on disk, the header says {}; the file is truncated or from another run. \
                     Re-run `airllm shard` (complete shards are kept)",
                    self.file_len
                ),
            });
        }
        if Some(self.plan_hash) != entry.plan_hash_u64() {
            return Err(bad("plan hash", format!("{:016x}", self.plan_hash), entry.plan_hash.clone()));
        }
        if self.tensors as usize != entry.tensors.len() {
            return Err(bad("tensor count", self.tensors.to_string(), entry.tensors.len().to_string()));
        }
        let end = data_end(&entry.tensors);
        if self.data_end != end || self.data_end > self.file_len {
            return Err(bad("data end", self.data_end.to_string(), end.to_string()));
        }
        let th = table_hash(&entry.tensors);
        if self.table_hash != th {
            return Err(bad(
                "tensor table hash",
                format!("{:016x}", self.table_hash),
                format!("{th:016x} (an edited tensor table?)"),
            ));
        }
        if let Some(sh) = spec {
            if self.spec_hash != sh {
                return Err(bad(
                    "model spec hash",
                    format!("{:016x}", self.spec_hash),
                    format!("{sh:016x} (an edited model spec?)"),
                ));
            }
        }
        Ok(())
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
    /// Map `path` and check its length and every header field against `entry`
    /// (not the checksum: see [`MappedShard::verify`]; not the spec hash: see
    /// [`MappedShard::open_checked`]).
    pub fn open(path: &Path, entry: &ShardEntry) -> Result<MappedShard> {
        MappedShard::open_checked(path, entry, None)
    }

    /// [`MappedShard::open`], also checking the header's spec hash against `spec_hash`.
    pub fn open_checked(path: &Path, entry: &ShardEntry, spec_hash: Option<u64>) -> Result<MappedShard> {
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
        h.check(entry, len, spec_hash, path)?;
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
