//! Reading a shard directory: the manifest, memory-mapped shard files, tensors by role.

use std::path::{Path, PathBuf};

use crate::dtype::{StorageFormat, dense_to_f32};
use crate::error::{FormatError, Result};
use crate::manifest::{Manifest, ShardEntry, TensorEntry};
use crate::roles::{Role, Unit};
use crate::shard_file::MappedShard;

/// A shard directory opened for reading.
#[derive(Debug, Clone)]
pub struct ShardDir {
    dir: PathBuf,
    manifest: Manifest,
}

impl ShardDir {
    /// Open `dir` and validate its manifest. Shard files are checked when opened.
    pub fn open(dir: &Path) -> Result<ShardDir> {
        let manifest = Manifest::load(dir)?;
        Ok(ShardDir { dir: dir.to_owned(), manifest })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Path of shard `i`.
    pub fn shard_path(&self, i: usize) -> PathBuf {
        self.manifest.shard_path(&self.dir, i)
    }

    /// Entry of shard `i`.
    pub fn entry(&self, i: usize) -> &ShardEntry {
        &self.manifest.shards[i]
    }

    /// Map shard `i` (length and every header field checked, the spec hash included;
    /// not the checksum: see [`ShardDir::verify`]).
    pub fn map(&self, i: usize) -> Result<MappedShard> {
        let spec_hash = crate::shard_file::spec_hash(&self.manifest.spec);
        MappedShard::open_checked(&self.shard_path(i), self.entry(i), Some(spec_hash))
    }

    /// Check every shard: present, right length, header matches, checksum matches
    /// (always hashed; [`ShardDir::verify`] with [`VerifyMode::Always`](crate::VerifyMode)).
    /// Returns the first problem found, naming the file.
    pub fn verify_all(&self) -> Result<()> {
        self.verify(crate::verify::VerifyMode::Always).map(|_| ())
    }

    /// Find a tensor (lm_head resolves to the embedding when tied).
    pub fn find(&self, unit: Unit, role: Role) -> Result<(usize, &TensorEntry)> {
        self.manifest.find(unit, role).ok_or_else(|| FormatError::Manifest {
            path: self.dir.join(crate::manifest::MANIFEST_FILE),
            message: format!("no tensor for {unit} {role}"),
        })
    }

    /// Read one tensor and widen it to f32 (decoding codecs). For tests and tools;
    /// the engine uploads raw bytes.
    pub fn tensor_f32(&self, unit: Unit, role: Role) -> Result<Vec<f32>> {
        let (i, t) = self.find(unit, role)?;
        let shard = self.map(i)?;
        decode_tensor(t, shard.tensor(t)?)
    }
}

/// Widen a stored tensor to f32.
pub fn decode_tensor(t: &TensorEntry, bytes: &[u8]) -> Result<Vec<f32>> {
    match t.format {
        StorageFormat::Dense(d) => Ok(dense_to_f32(d, bytes)),
        StorageFormat::Quant(c) => {
            let cols = t.shape.last().copied().unwrap_or(1);
            let rows = t.shape.iter().product::<usize>().checked_div(cols).unwrap_or(0);
            c.decode_matrix(bytes, rows, cols).map_err(|e| FormatError::Quant { tensor: t.name.clone(), source: e })
        }
    }
}
