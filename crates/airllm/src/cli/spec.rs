//! Speculative decoding options (`--prompt-lookup`, `--draft-model`,
//! `--self-draft`, `--draft-tree`), shared by generate, chat, bench and serve,
//! and loading the target together with its draft so that one `--max-vram`
//! covers both.

use airllm::spec::draft_model::DraftModel;
use airllm::spec::lookup::PromptLookup;
use airllm::spec::self_draft::SelfDraft;
use airllm::spec::{Drafter, SpecConfig, Speculator};
use airllm::{AutoModel, Device};
use anyhow::Context;

use super::args::ModelArgs;

/// Speculative decoding: a drafter proposes a tree of tokens, the model
/// verifies the whole tree in one pass over the weights and keeps what it
/// would have generated anyway (greedy output is unchanged; sampling keeps
/// the model's distribution). Pays most when layers stream.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SpecArgs {
    /// Draft with n-gram matches in the prompt and the output so far (no model;
    /// strong on edits, code and summaries).
    #[arg(long, conflicts_with_all = ["draft_model", "self_draft"], help_heading = "Speculative decoding")]
    pub prompt_lookup: bool,
    /// Draft with a small model that has the same tokenizer (path or repo, like
    /// --model; e.g. a 4-bit copy of a small sibling). Kept resident on the GPU
    /// (inside --max-vram) or on the CPU executor.
    #[arg(long, value_name = "MODEL", conflicts_with = "self_draft", help_heading = "Speculative decoding")]
    pub draft_model: Option<String>,
    /// Draft with the model's own resident layers and head (an early exit):
    /// nothing extra to load or stream; needs --resident-layers > 0.
    #[arg(long, help_heading = "Speculative decoding")]
    pub self_draft: bool,
    /// Layers before the early exit for --self-draft [default: the leading resident layers,
    /// at most half of the model's].
    #[arg(long, value_name = "N", requires = "self_draft", help_heading = "Speculative decoding")]
    pub self_draft_layers: Option<usize>,
    /// Draft tokens per sequence and pass (the tree's size, up to 255); with
    /// --adaptive-tree the most.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = parse_tree, help_heading = "Speculative decoding")]
    pub draft_tree: usize,
    /// Pick each pass's tree size between 0 and --draft-tree: the size that measured
    /// the most tokens per second so far. Extra rows cost little where weights stream
    /// (a GPU reading layers over PCIe) and nearly a pass each where arithmetic
    /// dominates (the CPU executor, a software rasterizer); this finds out.
    #[arg(long, help_heading = "Speculative decoding")]
    pub adaptive_tree: bool,
    /// Where the draft model runs: auto (GPU-resident on a real GPU, else the CPU
    /// executor, as --device auto decides), gpu or cpu.
    #[arg(long, default_value_t = Device::Auto, help_heading = "Speculative decoding")]
    pub draft_device: Device,
    /// Speculate only while a pass holds fewer token rows than this (a pass full of
    /// real work gains nothing from drafts).
    #[arg(long, value_name = "ROWS", default_value_t = 128, help_heading = "Speculative decoding")]
    pub draft_max_rows: usize,
}

fn parse_tree(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=airllm::engine::MAX_TREE_NODES).contains(&n) => Ok(n),
        _ => Err(format!("--draft-tree must be a whole number from 1 to {} (got {s})", airllm::engine::MAX_TREE_NODES)),
    }
}

impl SpecArgs {
    fn config(&self) -> SpecConfig {
        SpecConfig { tree: self.draft_tree, max_rows: self.draft_max_rows.max(2), adaptive: self.adaptive_tree }
    }
}

/// Loads the model and, when asked, its speculator (set on the model). A
/// draft model is loaded first; when it sits on the GPU its VRAM is taken
/// from the model's budget, so `--max-vram` bounds both.
pub fn load_with_speculation(m: &ModelArgs, s: &SpecArgs, progress: bool) -> anyhow::Result<AutoModel> {
    let mut draft = None;
    let mut m = m.clone();
    if let Some(name) = &s.draft_model {
        let d = load_draft(&m, s, name, progress)?;
        let dv = d.engine().vram_bytes();
        if dv > 0 {
            let budget = m
                .engine
                .max_vram
                .or_else(|| d.engine().ctx().and_then(|c| c.caps().vram_bytes).map(airllm::engine::default_budget));
            if let Some(b) = budget.filter(|&b| b != u64::MAX) {
                let left = b.checked_sub(dv).with_context(|| {
                    format!(
                        "the draft model {name} takes {} of VRAM, more than the budget of {} (raise --max-vram or use \
                         --draft-device cpu)",
                        airllm_format::human_bytes(dv),
                        airllm_format::human_bytes(b)
                    )
                })?;
                if progress {
                    eprintln!(
                        "draft model {name}: {} of VRAM; the model's budget is now {}",
                        airllm_format::human_bytes(dv),
                        airllm_format::human_bytes(left)
                    );
                }
                m.engine.max_vram = Some(left);
            }
        }
        draft = Some(d);
    }
    let mut model = m.load(progress)?;
    let drafter: Option<Box<dyn Drafter>> = if s.prompt_lookup {
        Some(Box::new(PromptLookup::default()))
    } else if let Some(d) = draft {
        let name = s.draft_model.clone().unwrap_or_default();
        let dm = DraftModel::new(d, model.tokenizer(), model.spec().vocab_size, &name)
            .with_context(|| format!("using {name} as the draft model"))?;
        Some(Box::new(dm))
    } else if s.self_draft {
        let sd = SelfDraft { layers: s.self_draft_layers };
        sd.check(model.engine())?;
        Some(Box::new(sd))
    } else {
        None
    };
    if let Some(d) = drafter {
        if progress {
            eprintln!("speculative decoding: {}, up to {} draft tokens per pass", d.name(), s.draft_tree);
        }
        model.set_speculation(Some(Speculator::new(d, s.config())));
    }
    Ok(model)
}

/// The draft model, all resident, on `--draft-device`.
fn load_draft(m: &ModelArgs, s: &SpecArgs, name: &str, progress: bool) -> anyhow::Result<AutoModel> {
    let mut d = m.clone();
    d.model = name.to_owned();
    d.shards_dir = None;
    d.engine.resident_layers = None;
    d.engine.cpu_layers = None;
    // auto: a real GPU when there is one, else the CPU executor (a software
    // rasterizer is far slower than it), whatever --device says for the model.
    d.engine.device = s.draft_device;
    if progress {
        eprintln!("draft model:");
    }
    let model = d.load(progress).with_context(|| format!("loading the draft model {name}"))?;
    let p = model.engine().plan();
    if p.resident_layers() < model.spec().num_layers
        && p.placement.iter().any(|x| *x == airllm::planner::Placement::Streamed)
    {
        anyhow::bail!(
            "the draft model {name} does not fit in VRAM whole (it would stream {} per pass, which defeats \
             drafting); use a smaller draft, --draft-device cpu, or raise --max-vram",
            airllm_format::human_bytes(p.streamed_bytes())
        );
    }
    Ok(model)
}
