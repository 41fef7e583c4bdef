//! Loading a model for a command: resolve the argument (downloading a repo on
//! first use), say where first-use shards go and how large they are, warn about
//! compression settings that cost more than they give, then open the model.

use airllm::{AutoModel, Options};
use airllm_format::{ModelLocation, human_bytes};
use anyhow::Context;

use super::args::ModelArgs;

impl ModelArgs {
    pub fn options(&self, progress: bool) -> Options {
        let mut o = Options {
            compression: self.compression,
            shards_dir: self.shards_dir.clone(),
            profiling: self.profile,
            delete_original: self.delete_original,
            adapter: self.adapter.clone(),
            backend: self.backend,
            read_mode: self.read_mode,
            threads: self.threads,
            verify: self.verify,
            progress,
            ..Options::default()
        };
        self.engine.apply(&mut o);
        o
    }

    /// Load the model; `progress` prints what happens on stderr.
    pub fn load(&self, progress: bool) -> anyhow::Result<AutoModel> {
        let path = resolve_or_pull(&self.model, progress)?;
        let opts = self.options(progress);
        if let Ok(loc) = airllm_format::resolve_model(&path) {
            first_use_notes(&loc, &opts, progress);
        }
        if progress {
            eprintln!("loading {path} ...");
        }
        let m = AutoModel::from_pretrained(&path, opts).with_context(|| format!("loading {}", self.model))?;
        if progress {
            let e = m.engine();
            let p = e.plan();
            let cpu = p.placement.iter().filter(|x| **x == airllm::planner::Placement::Cpu).count();
            if cpu == p.placement.len() {
                match m.device_note() {
                    Some(why) => {
                        eprintln!("{} on {} (every unit on the CPU executor: {why})", e.spec().family, e.device_name())
                    }
                    None => eprintln!("{} on {} (every unit on the CPU executor)", e.spec().family, e.device_name()),
                }
            } else {
                eprintln!(
                    "{} on {} ({} of {} layers resident, {} streamed per pass{})",
                    e.spec().family,
                    e.device_name(),
                    p.resident_layers(),
                    e.spec().num_layers,
                    human_bytes(p.streamed_bytes()),
                    if cpu > 0 { format!(", {cpu} units on the CPU") } else { String::new() }
                );
            }
        }
        Ok(m)
    }
}

/// The path to load for a model argument: itself, or, for a repo id that is not in
/// the cache, the snapshot a pull just downloaded (a note on stderr says so).
pub fn resolve_or_pull(arg: &str, progress: bool) -> anyhow::Result<String> {
    if std::path::Path::new(arg).exists() {
        return Ok(arg.to_owned());
    }
    let (repo, tag) = airllm_format::hub::split_tag(arg);
    if !airllm_format::hub::looks_like_repo_id(repo) || airllm_format::resolve_model(arg).is_ok() {
        return Ok(arg.to_owned());
    }
    pull_on_first_use(arg, repo, tag, progress)
}

#[cfg(feature = "hub")]
fn pull_on_first_use(arg: &str, repo: &str, tag: Option<&str>, progress: bool) -> anyhow::Result<String> {
    let cfg = airllm::hub::HubConfig::from_env()?;
    if cfg.offline {
        // The resolver's message says where it looked; add why nothing was fetched.
        let e = airllm_format::resolve_model(arg).err().map(|e| e.to_string()).unwrap_or_default();
        anyhow::bail!("{e}\n(HF_HUB_OFFLINE is set, so {repo} was not downloaded)");
    }
    eprintln!(
        "{repo} is not in the Hugging Face cache ({}); downloading it from {} ...",
        cfg.cache_dir.display(),
        cfg.endpoint
    );
    let opts = airllm::hub::PullOptions { quant: tag.map(str::to_owned), progress, ..Default::default() };
    let pulled = airllm::hub::pull(&cfg, repo, &opts).with_context(|| format!("downloading {repo}"))?;
    let bytes: u64 = pulled.files.iter().map(|f| f.downloaded).sum();
    eprintln!("downloaded {} in {} files into {}", human_bytes(bytes), pulled.files.len(), pulled.snapshot.display());
    Ok(pulled.model_path().to_string_lossy().into_owned())
}

#[cfg(not(feature = "hub"))]
fn pull_on_first_use(arg: &str, _repo: &str, _tag: Option<&str>, _progress: bool) -> anyhow::Result<String> {
    Ok(arg.to_owned())
}

/// Before a checkpoint or GGUF is sharded on first use: where the shards go, how
/// large they will be, and warnings for compression settings that grow a GGUF or
/// re-quantize weights that are already quantized.
fn first_use_notes(loc: &ModelLocation, opts: &Options, progress: bool) {
    let (ModelLocation::HfDir(p) | ModelLocation::Gguf(p)) = loc else { return };
    let out = opts.shards_dir.clone().unwrap_or_else(|| airllm::model::default_shards_dir(p, opts));
    let ready =
        airllm_format::ShardDir::open(&out).is_ok_and(|d| d.manifest().compression == opts.compression.to_string());
    if ready {
        return;
    }
    let Ok((_, sizes)) = airllm::inspect::planned_shard_sizes(loc, opts.compression) else { return };
    let planned: u64 = sizes.iter().map(|s| s.2).sum();
    if progress {
        eprintln!(
            "first use: sharding {} into {} ({} of shards, compression {}; later runs reuse them)",
            p.display(),
            out.display(),
            human_bytes(planned),
            opts.compression
        );
    }
    if let ModelLocation::Gguf(g) = loc {
        for w in gguf_warnings(g, opts.compression, planned) {
            eprintln!("warning: {w}");
        }
    }
}

/// Warnings for sharding the GGUF `path` with `compression` into `planned` bytes.
pub fn gguf_warnings(path: &std::path::Path, compression: airllm_quant::Compression, planned: u64) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(meta) = airllm_format::gguf::read_metadata(path) else { return out };
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let quantized: Vec<&airllm_format::gguf::GgufTensorInfo> = meta
        .tensors
        .iter()
        .filter(|t| {
            t.ggml_type
                .is_some_and(|g| g.offered_as().is_some_and(|f| matches!(f, airllm_format::StorageFormat::Quant(_))))
        })
        .collect();
    let mut requant: std::collections::BTreeMap<String, usize> = Default::default();
    for t in &quantized {
        if let Some(g) = t.ggml_type.filter(|g| g.is_transcoded()) {
            let target = match g.offered_as() {
                Some(airllm_format::StorageFormat::Quant(c)) => c.to_string(),
                _ => "f32".into(),
            };
            *requant.entry(format!("{} -> {target}", g.name())).or_default() += 1;
        }
    }
    if !requant.is_empty() {
        let list: Vec<String> = requant.iter().map(|(k, n)| format!("{n} tensors {k}")).collect();
        out.push(format!(
            "{} stores weights in formats the engine has no kernel for; they are re-quantized on import ({}), which \
             adds a second rounding",
            path.display(),
            list.join(", ")
        ));
    }
    if compression != airllm_quant::Compression::None && !quantized.is_empty() {
        out.push(format!(
            "--compression {compression} does not re-quantize the {} tensors {} already stores quantized (they keep \
             their codec); it applies only to its f32/f16 matrices",
            quantized.len(),
            path.display()
        ));
    }
    if size > 0 && planned > size + size / 50 {
        out.push(format!(
            "the shards ({}) will be larger than the GGUF ({}){}",
            human_bytes(planned),
            human_bytes(size),
            if compression == airllm_quant::Compression::None && !quantized.is_empty() {
                ""
            } else {
                "; a smaller --compression keeps them closer"
            }
        ));
    }
    out
}
