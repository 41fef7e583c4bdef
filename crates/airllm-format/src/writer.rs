//! The shard writer: turns any [`TensorSource`] into a shard directory.
//!
//! Guarantees:
//! - **Atomic**: each shard is written to `<file>.tmp`, fsynced, renamed, and the
//!   directory fsynced; a crash or a full disk never leaves a file under a final
//!   name that is incomplete. `manifest.json` is written last, the same way.
//! - **Resumable**: `.progress.json` records every shard that is complete (with its
//!   checksum). A rerun keeps those whose plan is unchanged and whose bytes still
//!   verify, and redoes the rest.
//! - **Disk space checked first**, from the exact planned sizes (compression
//!   included), accounting for space freed by `--delete-original`.
//! - **`delete_original`** removes a source file only after every shard using any
//!   of its tensors is written, fsynced and read back with a matching checksum.
//! - **One writer at a time** per directory ([`DirLock`](crate::lock::DirLock)): a
//!   second process waits, then keeps the shards the first one finished.
//! - **Tied to its source**: the manifest and the journal record the source's
//!   [`SourceIdentity`]; shards of another or a changed source are never kept.
//! - **Vectors are f32**: norm weights and biases are widened to f32 whatever the
//!   source dtype (bf16 Qwen2 biases, f16 norms, GGUF), so every executor reads the
//!   same format for them; they are a tiny share of a model's bytes.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use airllm_quant::{Codec, Compression, Floats};
use serde::{Deserialize, Serialize};

use crate::dtype::{DType, StorageFormat, dense_to_f32};
use crate::error::{FormatError, IoContext, Result, human_bytes};
use crate::manifest::{
    CHECKSUM_ALGORITHM, FILE_ALIGN, FORMAT_VERSION, MANIFEST_FILE, Manifest, ShardEntry, TENSOR_ALIGN, TensorEntry,
    expected_units, hex64,
};
use crate::roles::{Role, Unit};
use crate::shard_file::{HEADER_LEN, ShardHeader, checksum, spec_hash, table_hash};
use crate::source::{SourceTensor, TensorSource};
use crate::source_identity::SourceIdentity;
use crate::verify::{VerifyCache, VerifyMode};

/// Name of the resume journal inside the output directory.
pub const JOURNAL_FILE: &str = ".progress.json";

/// Options of [`write_shards`].
#[derive(Clone, Debug)]
pub struct ShardOptions {
    /// Codec for 2-D weight matrices (`none` keeps the source dtype).
    pub compression: Compression,
    /// Delete each source file once everything it holds is written and verified.
    pub delete_original: bool,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// Skip the free-space check (tests).
    pub skip_space_check: bool,
    /// Split an lm_head larger than this into row parts (None: the largest decoder
    /// layer shard, so streaming slots never need to be bigger than a layer).
    pub lm_head_part_bytes: Option<u64>,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            compression: Compression::None,
            delete_original: false,
            progress: true,
            skip_space_check: false,
            lm_head_part_bytes: None,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct ShardReport {
    /// The manifest written.
    pub manifest: Manifest,
    /// Shards written in this run.
    pub written: usize,
    /// Shards kept from an earlier run.
    pub kept: usize,
    /// Bytes written in this run.
    pub bytes_written: u64,
    /// Bytes read from the source in this run.
    pub bytes_read: u64,
    /// Wall time.
    pub seconds: f64,
    /// Source files deleted.
    pub deleted: Vec<PathBuf>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Journal {
    format_version: u32,
    /// The source the complete shards were made from.
    #[serde(default)]
    identity: Option<SourceIdentity>,
    /// Complete shards by file name.
    complete: BTreeMap<String, ShardEntry>,
    /// Source files deleted by `--delete-original`.
    deleted: Vec<String>,
}

struct PlannedTensor<'a> {
    src: &'a SourceTensor,
    entry: TensorEntry,
    /// Rows `[a, b)` of the source tensor, when it is split into parts.
    rows: Option<(usize, usize)>,
}

struct PlannedShard<'a> {
    unit: Unit,
    file: String,
    file_len: u64,
    data_end: u64,
    plan_hash: u64,
    tensors: Vec<PlannedTensor<'a>>,
    source_files: BTreeSet<usize>,
}

/// The storage format a tensor gets in the shards. Vectors (norm weights, biases)
/// are always f32. With a codec asked for, 2-D weight matrices get it (a K-quant
/// falls back for rows that are not whole super-blocks, see [`Codec::for_row`]),
/// whatever their source stores; everything else, and everything with compression
/// `none`, keeps the source's format, so quantized sources (GGUF) stream as stored.
pub fn output_format(src: &SourceTensor, compression: Compression) -> StorageFormat {
    if src.shape.len() <= 1 {
        return StorageFormat::Dense(DType::F32);
    }
    match compression.codec() {
        Some(c) if src.role.is_compressible_matrix() && src.shape.len() == 2 => {
            StorageFormat::Quant(c.for_row(src.shape[1]))
        }
        _ => src.format,
    }
}

/// The quantized type a tensor's shard bytes are re-encoded from, if they
/// are (see [`TensorEntry::re_encoded_from`]).
fn re_encoded_from(source: &dyn TensorSource, src: &SourceTensor, out: StorageFormat) -> Option<String> {
    match (source.re_encoded_from(src), src.format) {
        (Some(t), _) => Some(t),
        (None, StorageFormat::Quant(c)) if out != src.format => Some(c.name().to_owned()),
        _ => None,
    }
}

/// The tensors [`write_shards`] would re-encode with `compression`: (tensor
/// name, source type, shard format). Nothing is read or written.
pub fn planned_re_encoded(source: &dyn TensorSource, compression: Compression) -> Vec<(String, String, StorageFormat)> {
    source
        .tensors()
        .iter()
        .filter_map(|t| {
            let out = output_format(t, compression);
            re_encoded_from(source, t, out).map(|from| (t.name.clone(), from, out))
        })
        .collect()
}

fn align(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Plan one shard per unit: formats, offsets, lengths and plan hashes.
fn plan<'a>(
    source: &'a dyn TensorSource,
    compression: Compression,
    part_limit: Option<u64>,
) -> Result<Vec<PlannedShard<'a>>> {
    let spec = source.spec();
    let units = expected_units(spec);
    let width = spec.num_layers.saturating_sub(1).to_string().len().max(2);
    let mut by_unit: BTreeMap<Unit, Vec<&SourceTensor>> = BTreeMap::new();
    for t in source.tensors() {
        by_unit.entry(t.unit).or_default().push(t);
    }
    let mut out = Vec::new();
    for unit in units {
        let tensors = by_unit.remove(&unit).unwrap_or_default();
        let mut off = HEADER_LEN as u64;
        let mut planned = Vec::new();
        let mut source_files = BTreeSet::new();
        for src in tensors {
            let format = output_format(src, compression);
            let bytes = format.byte_len(&src.shape) as u64;
            off = align(off, TENSOR_ALIGN);
            planned.push(PlannedTensor {
                src,
                entry: TensorEntry {
                    name: src.name.clone(),
                    role: src.role,
                    format,
                    shape: src.shape.clone(),
                    offset: off,
                    bytes,
                    row_start: None,
                    re_encoded_from: re_encoded_from(source, src, format),
                },
                rows: None,
            });
            off += bytes;
            if let Some(f) = src.file {
                source_files.insert(f);
            }
        }
        out.push(finish_shard(source, unit, width, off, planned, source_files));
    }
    split_lm_head(source, &mut out, width, part_limit);
    if let Some((unit, ts)) = by_unit.into_iter().next() {
        return Err(FormatError::UnknownTensor {
            path: PathBuf::from(source.describe()),
            tensor: ts.first().map(|t| t.name.clone()).unwrap_or_default(),
            family: format!("{} ({unit} is not a unit of this model)", spec.family),
        });
    }
    Ok(out)
}

/// Close a planned shard: file length and plan hash. The plan hash covers
/// everything that determines the bytes: layout, formats, row ranges, and the
/// identity (name, size) of the source files read.
fn finish_shard<'a>(
    source: &dyn TensorSource,
    unit: Unit,
    width: usize,
    data_end: u64,
    planned: Vec<PlannedTensor<'a>>,
    source_files: BTreeSet<usize>,
) -> PlannedShard<'a> {
    let files = source.files();
    let fingerprint: Vec<(String, u64)> = source_files
        .iter()
        .map(|&f| {
            let sf = &files[f];
            (sf.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), sf.size)
        })
        .collect();
    let entries: Vec<&TensorEntry> = planned.iter().map(|p| &p.entry).collect();
    let key = serde_json::json!({
        "v": FORMAT_VERSION, "unit": unit, "tensors": entries, "files": fingerprint,
        "source": source_kind(source), "perm": planned.iter().map(|p| format!("{:?}", p.src.row_perm)).collect::<Vec<_>>(),
        "spec": format!("{:016x}", spec_hash(source.spec())),
    });
    let plan_hash = xxhash_rust::xxh3::xxh3_64(key.to_string().as_bytes());
    PlannedShard {
        unit,
        file: unit.file_name(width),
        file_len: align(data_end, FILE_ALIGN),
        data_end,
        plan_hash,
        tensors: planned,
        source_files,
    }
}

/// Replace an lm_head shard larger than the limit (default: the largest layer
/// shard) by row parts no larger than it. A tied model whose embedding is much
/// larger than a layer gets parts too, copied from the embedding (the embedding
/// shard stays for the host-side row gather): disk for a layer-sized streaming slot.
fn split_lm_head<'a>(
    source: &dyn TensorSource,
    out: &mut Vec<PlannedShard<'a>>,
    width: usize,
    part_limit: Option<u64>,
) {
    let tied = source.spec().tie_word_embeddings;
    let head_unit = if tied { Unit::Embedding } else { Unit::LmHead };
    let Some(hi) = out.iter().position(|p| p.unit == head_unit) else { return };
    let layer_max = out.iter().filter(|p| matches!(p.unit, Unit::Layer(_))).map(|p| p.file_len).max().unwrap_or(0);
    let limit = part_limit.unwrap_or(layer_max);
    let head = &out[hi];
    // Copying a tied embedding costs disk; by default only when it would otherwise
    // inflate every streaming slot a lot (over 4 layers and 256 MiB).
    if tied && part_limit.is_none() && head.file_len <= (4 * limit).max(256 << 20) {
        return;
    }
    if limit == 0 || head.file_len <= limit || head.tensors.len() != 1 || head.tensors[0].entry.shape.len() != 2 {
        return;
    }
    let t = &head.tensors[0];
    let (rows, cols) = (t.entry.shape[0], t.entry.shape[1]);
    let row_bytes = t.entry.format.byte_len(&[1, cols]) as u64;
    let room = limit.saturating_sub(HEADER_LEN as u64).max(row_bytes);
    let per_part = ((room / row_bytes.max(1)) as usize).max(1);
    let src = t.src;
    let source_files = head.source_files.clone();
    let format = t.entry.format;
    let name = t.entry.name.clone();
    let from = t.entry.re_encoded_from.clone();
    let mut parts = Vec::new();
    let mut start = 0;
    let mut k = 0u32;
    while start < rows {
        let end = (start + per_part).min(rows);
        let bytes = (end - start) as u64 * row_bytes;
        let off = HEADER_LEN as u64;
        let pt = PlannedTensor {
            src,
            entry: TensorEntry {
                name: name.clone(),
                role: Role::LmHead,
                format,
                shape: vec![end - start, cols],
                offset: off,
                bytes,
                row_start: Some(start),
                re_encoded_from: from.clone(),
            },
            rows: Some((start, end)),
        };
        parts.push(finish_shard(source, Unit::LmHeadPart(k), width, off + bytes, vec![pt], source_files.clone()));
        start = end;
        k += 1;
    }
    if tied {
        out.extend(parts);
    } else {
        out.splice(hi..=hi, parts);
    }
}

/// The kind of source for the plan hash ("safetensors", "gguf", "synthetic"), not its
/// path: moving a checkpoint keeps its shards valid.
fn source_kind(source: &dyn TensorSource) -> String {
    source.describe().split_whitespace().next().unwrap_or("").to_owned()
}

/// The shards `write_shards` would write: (unit, file name, file bytes, tensor count),
/// without writing anything (for `airllm inspect` and the disk-space estimate).
pub fn dry_run(source: &dyn TensorSource, compression: Compression) -> Result<Vec<(Unit, String, u64, usize)>> {
    Ok(plan(source, compression, None)?.into_iter().map(|p| (p.unit, p.file, p.file_len, p.tensors.len())).collect())
}

/// Resolve a model argument (checkpoint directory, `.gguf` file, or cached repo id),
/// open it and write its shards into `out`. A rerun after an interrupted
/// `--delete-original` run accepts the source files that run already removed.
pub fn shard_model(model: &str, out: &Path, opts: &ShardOptions) -> Result<ShardReport> {
    use crate::hub::ModelLocation;
    match crate::hub::resolve_model(model)? {
        ModelLocation::HfDir(dir) => {
            let resumed_delete = !load_journal(out).deleted.is_empty();
            let ck = crate::Checkpoint::open_with(&dir, resumed_delete)?;
            write_shards(&ck, out, opts)
        }
        ModelLocation::Gguf(path) => {
            let src = crate::gguf::GgufSource::open(&path)?;
            write_shards(&src, out, opts)
        }
        ModelLocation::ShardDir(dir) => Err(FormatError::ModelNotFound {
            model: model.to_owned(),
            message: format!("{} is already a shard directory; pass the original checkpoint", dir.display()),
        }),
    }
}

impl ShardReport {
    /// A few lines for people: what was written, kept, deleted, how fast.
    pub fn summary(&self, out: &Path) -> String {
        let m = &self.manifest;
        let mut s = format!(
            "{} shards in {} ({} total, compression {}): {} written, {} kept from an earlier run",
            m.shards.len(),
            out.display(),
            human_bytes(m.total_bytes()),
            m.compression,
            self.written,
            self.kept
        );
        if self.written > 0 && self.seconds > 0.0 {
            s += &format!(
                "\nwrote {} in {:.1} s ({}/s)",
                human_bytes(self.bytes_written),
                self.seconds,
                human_bytes((self.bytes_written as f64 / self.seconds) as u64)
            );
        }
        for d in &self.deleted {
            s += &format!("\ndeleted {}", d.display());
        }
        s
    }
}

/// Write (or finish writing) a shard directory from `source`.
pub fn write_shards(source: &dyn TensorSource, out: &Path, opts: &ShardOptions) -> Result<ShardReport> {
    let start = Instant::now();
    std::fs::create_dir_all(out).at("creating directory", out)?;
    // One writer per directory: a second one waits here, then keeps what the first wrote.
    let _lock = crate::lock::DirLock::acquire(out)?;
    remove_stale_temporaries(out)?;
    let spec = source.spec();
    let plan = plan(source, opts.compression, opts.lm_head_part_bytes)?;
    let mut journal = load_journal(out);
    let earlier_files: BTreeSet<String> = journal.complete.keys().cloned().collect();

    // Shards of another source, or of this one before it changed, are never kept.
    let now = source.identity()?;
    let recorded = journal.identity.clone().map(|mut i| {
        i.deleted.clone_from(&journal.deleted);
        i
    });
    let same_source = match (&recorded, &now) {
        (Some(r), Some(n)) => match r.mismatch(n) {
            None => true,
            Some(why) => {
                tracing::info!("{}: not keeping earlier shards: {why}", out.display());
                false
            }
        },
        (None, None) => true,
        _ => false,
    };
    if !same_source {
        journal.complete.clear();
        journal.deleted.clear();
        journal.identity = now.clone();
    } else if journal.identity.is_none() {
        journal.identity = now.clone();
    }

    // Which planned shards can be kept from an earlier run?
    let sh = spec_hash(spec);
    let mut cache = VerifyCache::load(out);
    let mut keep = vec![false; plan.len()];
    for (i, p) in plan.iter().enumerate() {
        if let Some(e) = journal.complete.get(&p.file) {
            if e.plan_hash_u64() == Some(p.plan_hash) && verify_kept(out, e, sh, &mut cache).is_ok() {
                keep[i] = true;
            }
        }
    }
    // A unit whose tensors are gone (source files deleted by an earlier
    // --delete-original run) can only be kept, never rewritten.
    for (i, p) in plan.iter().enumerate() {
        if !keep[i] {
            if let Some(missing) = missing_tensor(spec, p) {
                let kept = journal.complete.get(&p.file).filter(|e| verify_kept(out, e, sh, &mut cache).is_ok());
                match kept {
                    Some(_) => keep[i] = true,
                    None => {
                        return Err(FormatError::MissingTensor {
                            path: PathBuf::from(source.describe()),
                            tensor: missing,
                            why: format!(
                                "needed for {}; if an earlier --delete-original run removed its file, restore it",
                                p.file
                            ),
                        });
                    }
                }
            }
        }
    }
    // Kept shards whose tensors are gone use the journal's entry as is.
    let entries: Vec<Option<ShardEntry>> =
        plan.iter().zip(&keep).map(|(p, &k)| if k { journal.complete.get(&p.file).cloned() } else { None }).collect();

    // Which source files can be deleted after which shard?
    let mut last_use: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, p) in plan.iter().enumerate() {
        for &f in &p.source_files {
            last_use.insert(f, i);
        }
    }

    let to_write: u64 = plan.iter().zip(&keep).filter(|(_, k)| !**k).map(|(p, _)| p.file_len).sum();
    if !opts.skip_space_check {
        check_space(source, out, &plan, &keep, &last_use, opts.delete_original)?;
    }

    let bar = progress_bar(opts.progress, to_write);
    let mut report = ShardReport {
        manifest: empty_manifest(source, opts),
        written: 0,
        kept: 0,
        bytes_written: 0,
        bytes_read: 0,
        seconds: 0.0,
        deleted: Vec::new(),
    };
    let mut final_entries = Vec::with_capacity(plan.len());
    for (i, p) in plan.iter().enumerate() {
        let entry = if let Some(e) = &entries[i] {
            report.kept += 1;
            e.clone()
        } else {
            bar.set_message(format!("{}", p.unit));
            let e = write_one(source, out, p, sh, opts.delete_original, &bar, &mut report.bytes_read)?;
            // The checksum was just computed from the bytes written: first use need not re-read them.
            cache.insert_written(&e.file, &e.checksum);
            report.written += 1;
            report.bytes_written += e.bytes;
            journal.complete.insert(p.file.clone(), e.clone());
            save_journal(out, &journal)?;
            e
        };
        final_entries.push(entry);
        if opts.delete_original {
            for (&f, &last) in &last_use {
                if last == i {
                    let path = &source.files()[f].path;
                    if path.exists() {
                        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        journal.deleted.push(name);
                        save_journal(out, &journal)?;
                        std::fs::remove_file(path).at("deleting original", path)?;
                        tracing::info!("deleted {} (all its tensors are in verified shards)", path.display());
                        report.deleted.push(path.clone());
                    }
                }
            }
        }
    }
    bar.finish_and_clear();

    let mut tokenizer_files = Vec::new();
    for (name, bytes) in source.tokenizer_files()? {
        write_atomic(&out.join(&name), &bytes)?;
        tokenizer_files.push(name);
    }
    let mut manifest = report.manifest.clone();
    manifest.tokenizer_files = tokenizer_files;
    manifest.shards = final_entries;
    manifest.source_identity = journal.identity.clone().map(|mut i| {
        i.deleted.clone_from(&journal.deleted);
        i
    });
    manifest.re_encoded = Some(manifest.re_encoded_tensors().count());
    manifest.validate(&out.join(MANIFEST_FILE))?;
    write_atomic(&out.join(MANIFEST_FILE), manifest.to_json().as_bytes())?;
    // Shard files of an earlier run that the new manifest does not list (another model
    // with more layers, or a split lm_head no longer split) are ours and now garbage.
    let listed: std::collections::HashSet<&str> = manifest.shards.iter().map(|s| s.file.as_str()).collect();
    for f in earlier_files.iter().filter(|f| !listed.contains(f.as_str())) {
        let p = out.join(f);
        if p.is_file() && std::fs::remove_file(&p).is_ok() {
            tracing::info!("removed {} (not part of the new shards)", p.display());
        }
    }
    cache.retain(&listed);
    cache.save();
    // The journal stays: if the manifest is lost or the directory is re-run with other
    // options, it still proves which shards are complete.
    report.manifest = manifest;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

fn empty_manifest(source: &dyn TensorSource, opts: &ShardOptions) -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        source: source.describe(),
        created_by: format!("airllm-format {}", env!("CARGO_PKG_VERSION")),
        compression: opts.compression.to_string(),
        re_encoded: None,
        checksum_algorithm: CHECKSUM_ALGORITHM.into(),
        spec: source.spec().clone(),
        tokenizer_files: Vec::new(),
        shards: Vec::new(),
        source_identity: None,
    }
}

/// If a planned shard lacks a tensor the spec needs, name it.
fn missing_tensor(spec: &crate::spec::ModelSpec, p: &PlannedShard<'_>) -> Option<String> {
    let have: BTreeSet<_> = p.tensors.iter().map(|t| t.entry.role).collect();
    crate::checkpoint::expected_tensors(spec)
        .into_iter()
        .filter(|(u, _, _)| *u == p.unit)
        .find(|(_, r, _)| !have.contains(r))
        .map(|(u, r, _)| format!("{u} {r}"))
}

/// Whether a shard of an earlier run is intact: header, length and checksum (hashed
/// unless the verification cache knows the file), its header's spec hash matching.
fn verify_kept(out: &Path, e: &ShardEntry, spec_hash: u64, cache: &mut VerifyCache) -> Result<()> {
    let bar = indicatif::ProgressBar::hidden();
    let (_, key) = crate::verify::verify_entry(out, e, spec_hash, VerifyMode::First, cache, &bar)?;
    if let Some(k) = key {
        cache.insert(&e.file, k, &e.checksum);
    }
    Ok(())
}

fn load_journal(out: &Path) -> Journal {
    let journal: Option<Journal> = std::fs::read(out.join(JOURNAL_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|j: &Journal| j.format_version == FORMAT_VERSION);
    let manifest = Manifest::load(out).ok();
    match (journal, manifest) {
        (Some(mut j), Some(m)) => {
            // A finished directory counts as a journal too, when it is the same source's.
            if j.identity == m.source_identity.as_ref().map(|i| SourceIdentity { deleted: Vec::new(), ..i.clone() })
                || j.identity.is_none()
            {
                j.identity = j.identity.or(m.source_identity.map(|i| SourceIdentity { deleted: Vec::new(), ..i }));
                for s in m.shards {
                    j.complete.entry(s.file.clone()).or_insert(s);
                }
            }
            j
        }
        (Some(j), None) => j,
        (None, Some(m)) => {
            let deleted = m.source_identity.as_ref().map(|i| i.deleted.clone()).unwrap_or_default();
            Journal {
                format_version: FORMAT_VERSION,
                identity: m.source_identity.map(|i| SourceIdentity { deleted: Vec::new(), ..i }),
                complete: m.shards.into_iter().map(|s| (s.file.clone(), s)).collect(),
                deleted,
            }
        }
        (None, None) => Journal { format_version: FORMAT_VERSION, ..Journal::default() },
    }
}

fn save_journal(out: &Path, j: &Journal) -> Result<()> {
    let text = serde_json::to_vec_pretty(j).unwrap_or_default();
    write_atomic(&out.join(JOURNAL_FILE), &text)
}

fn remove_stale_temporaries(out: &Path) -> Result<()> {
    for e in std::fs::read_dir(out).at("listing", out)?.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "tmp") {
            std::fs::remove_file(&p).at("removing stale temporary", &p)?;
        }
    }
    Ok(())
}

/// Write a small file atomically: temporary name (unique to this process and call, so
/// that concurrent writers never share one), fsync, rename, fsync directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let res = (|| {
        let mut f = File::create(&tmp).at("creating", &tmp)?;
        f.write_all(bytes).at("writing", &tmp)?;
        f.sync_all().at("syncing", &tmp)?;
        std::fs::rename(&tmp, path).at("renaming into place", path)?;
        sync_dir(path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn tmp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{}-{}.tmp", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    PathBuf::from(s)
}

fn sync_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let d = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        File::open(d).and_then(|f| f.sync_all()).at("syncing directory", d)?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn check_space(
    source: &dyn TensorSource,
    out: &Path,
    plan: &[PlannedShard<'_>],
    keep: &[bool],
    last_use: &BTreeMap<usize, usize>,
    delete_original: bool,
) -> Result<()> {
    // Peak extra space: shards written so far minus sources already deleted
    // (only if they live on the same file system as the output).
    let same_fs = |p: &Path| same_filesystem(p, out);
    let mut live: i128 = 0;
    let mut peak: i128 = 0;
    for (i, p) in plan.iter().enumerate() {
        if !keep[i] {
            live += p.file_len as i128;
        }
        peak = peak.max(live);
        if delete_original {
            for (&f, &last) in last_use {
                let sf = &source.files()[f];
                if last == i && sf.path.exists() && same_fs(&sf.path) {
                    live -= sf.size as i128;
                }
            }
        }
    }
    let needed = peak.max(0) as u64 + (1 << 20); // + manifest and tokenizer files
    let available = fs4::available_space(out).at("checking free space in", out)?;
    if needed > available {
        return Err(FormatError::DiskSpace {
            path: out.to_owned(),
            needed,
            needed_h: human_bytes(needed),
            available,
            available_h: human_bytes(available),
        });
    }
    Ok(())
}

fn same_filesystem(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        false
    }
}

fn progress_bar(enabled: bool, total: u64) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Produce, write, fsync and rename one shard; returns its manifest entry.
fn write_one(
    source: &dyn TensorSource,
    out: &Path,
    p: &PlannedShard<'_>,
    spec_hash: u64,
    verify_after: bool,
    bar: &indicatif::ProgressBar,
    bytes_read: &mut u64,
) -> Result<ShardEntry> {
    let final_path = out.join(&p.file);
    let tmp = tmp_path(&final_path);
    let res = (|| -> Result<ShardEntry> {
        let file = File::create(&tmp).at("creating", &tmp)?;
        let mut w = HashingWriter::new(std::io::BufWriter::with_capacity(8 << 20, file), &tmp);
        let entries: Vec<TensorEntry> = p.tensors.iter().map(|t| t.entry.clone()).collect();
        let header = ShardHeader {
            file_len: p.file_len,
            data_end: p.data_end,
            plan_hash: p.plan_hash,
            tensors: p.tensors.len() as u32,
            unit: p.unit,
            table_hash: table_hash(&entries),
            spec_hash,
        };
        w.write(&header.to_bytes())?;
        for t in &p.tensors {
            w.pad_to(t.entry.offset)?;
            let src = source.read(t.src)?;
            *bytes_read += src.len() as u64;
            let data = convert(t.src, &src, t.entry.format)?;
            let data = match t.rows {
                // One part of a tensor split by rows: codec rows are independent, so
                // the part is a byte range of the converted tensor.
                Some((a, b)) => {
                    let rb = t.entry.format.byte_len(&[1, t.entry.shape[1]]);
                    Cow::Owned(data[a * rb..b * rb].to_vec())
                }
                None => data,
            };
            if data.len() as u64 != t.entry.bytes {
                return Err(FormatError::BadShard {
                    path: tmp.clone(),
                    message: format!(
                        "tensor {:?} produced {} bytes, planned {} (source data has the wrong size?)",
                        t.entry.name,
                        data.len(),
                        t.entry.bytes
                    ),
                });
            }
            w.write(&data)?;
            bar.inc(data.len() as u64);
        }
        w.pad_to(p.file_len)?;
        let (sum, file) = w.finish()?;
        file.sync_all().at("syncing", &tmp)?;
        drop(file);
        let entry = ShardEntry {
            unit: p.unit,
            file: p.file.clone(),
            bytes: p.file_len,
            checksum: hex64(sum),
            plan_hash: hex64(p.plan_hash),
            tensors: entries,
        };
        if verify_after {
            // Read back before anything may delete the source.
            let bytes = std::fs::read(&tmp).at("reading back", &tmp)?;
            if checksum(&bytes) != sum || bytes.len() as u64 != p.file_len {
                return Err(FormatError::BadShard {
                    path: tmp.clone(),
                    message: "read-back does not match what was written; the disk may be failing".into(),
                });
            }
        }
        std::fs::rename(&tmp, &final_path).at("renaming into place", &final_path)?;
        sync_dir(&final_path)?;
        Ok(entry)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Convert a source tensor's bytes to the output format (and undo any row permutation).
fn convert<'a>(src: &SourceTensor, bytes: &'a [u8], out: StorageFormat) -> Result<Cow<'a, [u8]>> {
    let qerr = |e| FormatError::Quant { tensor: src.name.clone(), source: e };
    let cols = src.shape.last().copied().unwrap_or(1);
    let rows = src.shape.iter().product::<usize>().checked_div(cols).unwrap_or(0);
    let permuted: Cow<'a, [u8]> = match src.row_perm {
        None => Cow::Borrowed(bytes),
        Some(perm) => {
            let row_bytes = bytes.len().checked_div(rows).unwrap_or(0);
            let mut v = vec![0u8; bytes.len()];
            for r in 0..rows {
                let s = perm.source_row(r, rows);
                v[r * row_bytes..(r + 1) * row_bytes].copy_from_slice(&bytes[s * row_bytes..(s + 1) * row_bytes]);
            }
            Cow::Owned(v)
        }
    };
    if out == StorageFormat::Dense(DType::F32) && src.shape.len() <= 1 {
        // A vector (norm weights, a bias): widened to f32, and checked, since one
        // non-finite value here turns every output into NaN.
        let v: Vec<f32> = match src.format {
            StorageFormat::Dense(d) => dense_to_f32(d, &permuted),
            StorageFormat::Quant(c) => c.decode_matrix(&permuted, 1, cols).map_err(qerr)?,
        };
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(FormatError::BadShard {
                path: PathBuf::from(&src.name),
                message: format!(
                    "element {i} of vector {} is {}; the checkpoint is damaged",
                    crate::error::quote(&src.name),
                    v[i]
                ),
            });
        }
        return Ok(Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    if src.format == out {
        return Ok(permuted);
    }
    let encode = |c: Codec, f: Floats<'_>| c.encode_matrix(f, rows, cols).map_err(qerr);
    match (src.format, out) {
        (StorageFormat::Dense(DType::F32), StorageFormat::Quant(c)) => {
            match bytemuck::try_cast_slice::<u8, f32>(&permuted) {
                Ok(x) => Ok(Cow::Owned(encode(c, Floats::F32(x))?)),
                Err(_) => Ok(Cow::Owned(encode(c, Floats::F32(&dense_to_f32(DType::F32, &permuted)))?)),
            }
        }
        (StorageFormat::Dense(d @ (DType::F16 | DType::Bf16)), StorageFormat::Quant(c)) => {
            let halves: Cow<'_, [u16]> = match bytemuck::try_cast_slice::<u8, u16>(&permuted) {
                Ok(x) => Cow::Borrowed(x),
                Err(_) => Cow::Owned(permuted.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect()),
            };
            let f = if d == DType::F16 {
                Floats::F16(bytemuck::cast_slice(&halves))
            } else {
                Floats::Bf16(bytemuck::cast_slice(&halves))
            };
            Ok(Cow::Owned(encode(c, f)?))
        }
        (StorageFormat::Quant(from), StorageFormat::Quant(to)) => {
            let x = from.decode_matrix(&permuted, rows, cols).map_err(qerr)?;
            Ok(Cow::Owned(encode(to, Floats::F32(&x))?))
        }
        (from, to) => Err(FormatError::BadShard {
            path: PathBuf::from(&src.name),
            message: format!("no conversion from {from} to {to}"),
        }),
    }
}

/// A writer that hashes what it writes and tracks the position.
struct HashingWriter<'p, W: Write> {
    inner: W,
    hasher: xxhash_rust::xxh3::Xxh3,
    pos: u64,
    path: &'p Path,
}

impl<'p, W: Write> HashingWriter<'p, W> {
    fn new(inner: W, path: &'p Path) -> Self {
        HashingWriter { inner, hasher: xxhash_rust::xxh3::Xxh3::new(), pos: 0, path }
    }
    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.inner.write_all(b).at("writing", self.path)?;
        self.hasher.update(b);
        self.pos += b.len() as u64;
        Ok(())
    }
    fn pad_to(&mut self, target: u64) -> Result<()> {
        static ZEROS: [u8; 4096] = [0; 4096];
        while self.pos < target {
            let n = (target - self.pos).min(ZEROS.len() as u64) as usize;
            self.write(&ZEROS[..n])?;
        }
        Ok(())
    }
}

impl<W: Write> HashingWriter<'_, std::io::BufWriter<W>> {
    fn finish(self) -> Result<(u64, W)> {
        let sum = self.hasher.digest();
        let inner = self.inner.into_inner().map_err(|e| FormatError::Io {
            op: "writing",
            path: self.path.to_owned(),
            source: e.into_error(),
        })?;
        Ok((sum, inner))
    }
}
