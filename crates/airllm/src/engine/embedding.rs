//! Embedding rows gathered on the host from the memory-mapped embedding shard:
//! only the rows of the tokens in the batch are read, never the whole table.

use airllm_format::shard_file::MappedShard;
use airllm_format::{DType, Role, ShardDir, StorageFormat, TensorEntry, Unit};

use crate::error::{EngineError, Result};

/// The embedding table.
pub struct EmbeddingTable {
    shard: MappedShard,
    entry: TensorEntry,
    rows: usize,
    cols: usize,
    scale: Option<f32>,
}

impl std::fmt::Debug for EmbeddingTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingTable").field("rows", &self.rows).field("cols", &self.cols).finish()
    }
}

impl EmbeddingTable {
    /// Map the embedding shard.
    pub fn open(dir: &ShardDir) -> Result<Self> {
        let (i, t) = dir.find(Unit::Embedding, Role::Embedding)?;
        let shard = dir.map(i)?;
        let cols = t.shape.last().copied().unwrap_or(0);
        let rows = t.shape.first().copied().unwrap_or(0);
        Ok(EmbeddingTable { shard, entry: t.clone(), rows, cols, scale: dir.manifest().spec.embedding_scale })
    }

    /// Append the (scaled) rows of `ids` to `out` as f32.
    pub fn gather(&self, ids: &[u32], out: &mut Vec<f32>) -> Result<()> {
        let bytes = self.shard.tensor(&self.entry)?;
        let row_bytes = match self.entry.format {
            StorageFormat::Dense(d) => self.cols * d.size(),
            StorageFormat::Quant(c) => c.row_bytes(self.cols),
        };
        for &id in ids {
            let r = id as usize;
            if r >= self.rows {
                return Err(EngineError::invalid(
                    "token id",
                    format!("{id} is outside the vocabulary ({} rows)", self.rows),
                ));
            }
            let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
            let start = out.len();
            match self.entry.format {
                StorageFormat::Dense(DType::F32) => {
                    out.extend(row.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                }
                StorageFormat::Dense(d) => out.extend(airllm_format::dtype::dense_to_f32(d, row)),
                StorageFormat::Quant(c) => {
                    out.resize(start + self.cols, 0.0);
                    c.decode_row(row, self.cols, &mut out[start..]).map_err(|e| airllm_format::FormatError::Quant {
                        tensor: self.entry.name.clone(),
                        source: e,
                    })?;
                }
            }
            if let Some(s) = self.scale {
                out[start..].iter_mut().for_each(|v| *v *= s);
            }
        }
        Ok(())
    }
}
