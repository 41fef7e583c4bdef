//! [`PipelineKey`]: the typed variant of a kernel (shader + format + flags +
//! sizes), from which the WGSL defines are derived and whose `Display` is the
//! pipeline label; and the [`PipelineCache`] that compiles each key once.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use airllm_quant::Codec;

use crate::caps::Caps;
use crate::error::{GpuError, Result};
use crate::kernels::WeightFormat;
use crate::shaders::{Define, Shader, preprocess};

/// Output tile of the GEMM kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GemmTile {
    /// 64 tokens x 128 rows per workgroup of 128 threads, 8 x 8 per
    /// thread, k step 16.
    T64,
    /// 128 x 128 outputs per workgroup of 256 threads, 8 x 8 per thread,
    /// k step 16.
    T128,
}

impl GemmTile {
    /// Tokens covered by one workgroup.
    pub fn size(self) -> u32 {
        match self {
            GemmTile::T64 => 64,
            GemmTile::T128 => 128,
        }
    }

    /// Weight rows covered by one workgroup.
    pub fn rows(self) -> u32 {
        128
    }

    /// Threads per workgroup (16 along rows, size / 8 along tokens).
    pub fn threads(self) -> u32 {
        16 * self.size() / 8
    }
}

/// Gated activation of [`act_mul`](crate::kernels::act_mul).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Activation {
    /// `x * sigmoid(x)` (Llama, Mistral, Qwen ...).
    Silu,
    /// PyTorch `gelu(approximate='tanh')` (Gemma).
    GeluTanh,
}

impl Activation {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_tanh",
        }
    }
}

/// Token buckets of the GEMV kernel: a variant for T tokens handles up to
/// `tokens` at once.
pub const GEMV_TOKEN_BUCKETS: [u8; 4] = [1, 2, 4, 8];

/// Team sizes of the GEMV kernel: threads that share one group of rows
/// (a workgroup holds `WG_DEFAULT / team` teams).
pub const GEMV_TEAMS: [u16; 5] = [16, 32, 64, 128, 256];

/// A compiled kernel variant. Built from [`Caps`] by the launchers; hashable
/// (the cache key), and its `Display` is the pipeline label, e.g.
/// `gemv/q4_0/t4/sg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PipelineKey {
    /// Matrix-vector product for up to `tokens` tokens.
    Gemv {
        /// Weight format.
        format: WeightFormat,
        /// Token bucket (1, 2, 4, 8).
        tokens: u8,
        /// 16-byte loads (dense formats with 16-byte aligned rows).
        wide: bool,
        /// Activations read as vec4 (row stride a multiple of 4).
        x_vec4: bool,
        /// Subgroup reduction.
        subgroup: bool,
        /// Threads per row group (one of [`GEMV_TEAMS`]).
        team: u16,
    },
    /// Tiled matrix-matrix product.
    Gemm {
        /// Weight format.
        format: WeightFormat,
        /// Tile shape.
        tile: GemmTile,
        /// 16-byte loads (dense formats with 16-byte aligned rows).
        wide: bool,
        /// Activations read as vec4 (row stride a multiple of 4).
        x_vec4: bool,
    },
    /// RMSNorm.
    RmsNorm {
        /// Weight format (dense only).
        weight: WeightFormat,
        /// Gemma's `(1 + w)` scaling.
        gemma: bool,
        /// Overwrite the input.
        in_place: bool,
        /// Subgroup reduction.
        subgroup: bool,
    },
    /// Rotary embedding.
    Rope {
        /// Adjacent pairs (2i, 2i+1) instead of rotate_half.
        interleaved: bool,
    },
    /// KV-cache append.
    KvAppend {
        /// The cache holds f16 (packed pairs) instead of f32.
        f16: bool,
        /// Only k is stored (latent attention; [`KvLayout::k_only`](crate::KvLayout)).
        k_only: bool,
    },
    /// KV-cache slot moves (any dtype: copied as words).
    KvCompact {
        /// Only k is stored (latent attention): no v cache binding.
        k_only: bool,
    },
    /// Attention.
    Attention {
        /// Subgroup reductions.
        subgroup: bool,
        /// The cache holds f16 (packed pairs) instead of f32.
        f16: bool,
        /// Head dimensions up to 1024 instead of 256 (latent attention's cached
        /// row, DeepSeek-V3: 576), at four times the per-thread accumulators.
        wide_head: bool,
    },
    /// Gated activation.
    ActMul {
        /// Activation.
        act: Activation,
    },
    /// Residual add.
    Add,
    /// Bias add.
    BiasAdd,
    /// Scale.
    Scale,
    /// Soft-cap `cap * tanh(x / cap)`.
    Softcap,
    /// MoE routing.
    MoeRoute,
    /// MoE combine.
    MoeCombine,
    /// MoE routing, DeepSeek-V3's variant (sigmoid scores, correction bias,
    /// group-limited top-k, scaled weights): `moe_route.wgsl` with `SIGMOID_GROUPED`.
    MoeRouteGrouped,
}

/// Threads per workgroup of the row/element kernels.
pub(crate) const WG_DEFAULT: u32 = 256;
/// Threads per workgroup of the attention kernel (also its key block).
pub(crate) const WG_ATTENTION: u32 = 64;
/// Threads per workgroup of the MoE router (one token per thread).
pub(crate) const WG_ROUTE: u32 = 64;

impl PipelineKey {
    /// The shader file.
    pub fn shader(&self) -> Shader {
        match self {
            PipelineKey::Gemv { .. } => Shader::Gemv,
            PipelineKey::Gemm { .. } => Shader::Gemm,
            PipelineKey::RmsNorm { .. } => Shader::RmsNorm,
            PipelineKey::Rope { .. } => Shader::Rope,
            PipelineKey::KvAppend { .. } => Shader::KvAppend,
            PipelineKey::KvCompact { .. } => Shader::KvCompact,
            PipelineKey::Attention { .. } => Shader::Attention,
            PipelineKey::ActMul { .. } => Shader::ActMul,
            PipelineKey::Add => Shader::Add,
            PipelineKey::BiasAdd => Shader::BiasAdd,
            PipelineKey::Scale => Shader::Scale,
            PipelineKey::Softcap => Shader::Softcap,
            PipelineKey::MoeRoute | PipelineKey::MoeRouteGrouped => Shader::MoeRoute,
            PipelineKey::MoeCombine => Shader::MoeCombine,
        }
    }

    /// Threads per workgroup.
    pub fn workgroup_size(&self) -> u32 {
        match self {
            PipelineKey::Gemm { tile, .. } => tile.threads(),
            PipelineKey::Attention { .. } => WG_ATTENTION,
            PipelineKey::MoeRoute | PipelineKey::MoeRouteGrouped => WG_ROUTE,
            _ => WG_DEFAULT,
        }
    }

    /// Rows per invocation (and per team) of a GEMV variant: the
    /// activations of a unit are read once for this many rows.
    pub(crate) fn gemv_rows(tokens: u8) -> u32 {
        match tokens {
            1 => 8,
            2 => 4,
            _ => 2,
        }
    }

    /// Rows per workgroup of a GEMV variant.
    pub(crate) fn gemv_rows_per_group(tokens: u8, team: u16) -> u32 {
        WG_DEFAULT / u32::from(team) * Self::gemv_rows(tokens)
    }

    /// Whether the variant uses subgroup operations.
    pub fn uses_subgroup(&self) -> bool {
        matches!(
            self,
            PipelineKey::Gemv { subgroup: true, .. }
                | PipelineKey::RmsNorm { subgroup: true, .. }
                | PipelineKey::Attention { subgroup: true, .. }
        )
    }

    /// Device features the variant needs.
    pub fn required_features(&self) -> wgpu::Features {
        if self.uses_subgroup() { wgpu::Features::SUBGROUP } else { wgpu::Features::empty() }
    }

    /// Whether `caps` can run this variant.
    pub fn supported_by(&self, caps: &Caps) -> bool {
        !self.uses_subgroup() || caps.subgroup
    }

    /// The WGSL defines of this variant.
    pub fn defines(&self) -> Vec<Define> {
        let mut d = vec![Define::U32("WG", self.workgroup_size())];
        if self.uses_subgroup() {
            d.push(Define::Flag("SUBGROUP"));
        }
        if matches!(self, PipelineKey::KvAppend { f16: true, .. } | PipelineKey::Attention { f16: true, .. }) {
            d.push(Define::Flag("KV_F16"));
        }
        if matches!(self, PipelineKey::KvAppend { k_only: true, .. } | PipelineKey::KvCompact { k_only: true }) {
            d.push(Define::Flag("K_ONLY"));
        }
        if matches!(self, PipelineKey::Attention { wide_head: true, .. }) {
            d.push(Define::Flag("WIDE_HEAD"));
        }
        match *self {
            PipelineKey::Gemv { format, tokens, wide, x_vec4, team, .. } => {
                format_defines(format, wide, &mut d);
                if x_vec4 {
                    d.push(Define::Flag("X_VEC4"));
                }
                d.push(Define::U32("TEAM", u32::from(team)));
                d.push(Define::U32("TOKENS", u32::from(tokens)));
                d.push(Define::U32("ROWS", Self::gemv_rows(tokens)));
            }
            PipelineKey::Gemm { format, wide, x_vec4, .. } => {
                format_defines(format, wide, &mut d);
                if x_vec4 {
                    d.push(Define::Flag("X_VEC4"));
                }
                // the tile is WG (16 x WG / 16 threads, 8 x 8 outputs each);
                // BK * (BM + BN) f32 of shared memory stays within 16 KiB
                d.push(Define::U32("BK", 16));
            }
            PipelineKey::RmsNorm { weight, gemma, in_place, .. } => {
                format_defines(weight, false, &mut d);
                if gemma {
                    d.push(Define::Flag("GEMMA"));
                }
                if in_place {
                    d.push(Define::Flag("IN_PLACE"));
                }
            }
            PipelineKey::Rope { interleaved: true } => d.push(Define::Flag("INTERLEAVED")),
            PipelineKey::MoeRouteGrouped => d.push(Define::Flag("SIGMOID_GROUPED")),
            PipelineKey::ActMul { act } => d.push(Define::Flag(match act {
                Activation::Silu => "SILU",
                Activation::GeluTanh => "GELU_TANH",
            })),
            _ => {}
        }
        d
    }

    /// The composed WGSL of this variant.
    pub fn wgsl(&self) -> Result<String> {
        let label = self.to_string();
        preprocess(self.shader(), &self.defines(), &label).map_err(|reason| GpuError::Preprocess { label, reason })
    }

    /// A coarser label for profiles: op and weight format, e.g. `gemv/q4_0`.
    pub fn profile_label(&self) -> String {
        match self {
            PipelineKey::Gemv { format, .. } | PipelineKey::Gemm { format, .. } => {
                format!("{}/{}", self.shader().name(), format.name())
            }
            _ => self.shader().name().to_string(),
        }
    }

    /// Every variant, for offline validation and `--dump-wgsl`.
    pub fn all_variants() -> Vec<PipelineKey> {
        let mut v = Vec::new();
        for format in WeightFormat::ALL {
            let wides: &[bool] = if format.is_dense() { &[false, true] } else { &[false] };
            for &wide in wides {
                for x_vec4 in [false, true] {
                    for tokens in GEMV_TOKEN_BUCKETS {
                        for subgroup in [false, true] {
                            for team in GEMV_TEAMS {
                                v.push(PipelineKey::Gemv { format, tokens, wide, x_vec4, subgroup, team });
                            }
                        }
                    }
                    for tile in [GemmTile::T64, GemmTile::T128] {
                        v.push(PipelineKey::Gemm { format, tile, wide, x_vec4 });
                    }
                }
            }
        }
        for weight in [WeightFormat::F32, WeightFormat::F16, WeightFormat::Bf16] {
            for gemma in [false, true] {
                for in_place in [false, true] {
                    for subgroup in [false, true] {
                        v.push(PipelineKey::RmsNorm { weight, gemma, in_place, subgroup });
                    }
                }
            }
        }
        v.push(PipelineKey::Rope { interleaved: false });
        v.push(PipelineKey::Rope { interleaved: true });
        for f16 in [false, true] {
            for k_only in [false, true] {
                v.push(PipelineKey::KvAppend { f16, k_only });
            }
            for wide_head in [false, true] {
                v.push(PipelineKey::Attention { subgroup: false, f16, wide_head });
                v.push(PipelineKey::Attention { subgroup: true, f16, wide_head });
            }
        }
        v.push(PipelineKey::KvCompact { k_only: false });
        v.push(PipelineKey::KvCompact { k_only: true });
        v.push(PipelineKey::ActMul { act: Activation::Silu });
        v.push(PipelineKey::ActMul { act: Activation::GeluTanh });
        v.extend([
            PipelineKey::Add,
            PipelineKey::BiasAdd,
            PipelineKey::Scale,
            PipelineKey::Softcap,
            PipelineKey::MoeRoute,
            PipelineKey::MoeCombine,
            PipelineKey::MoeRouteGrouped,
        ]);
        v
    }
}

fn format_defines(format: WeightFormat, wide: bool, d: &mut Vec<Define>) {
    d.push(Define::Flag(match format {
        WeightFormat::F32 => "FMT_F32",
        WeightFormat::F16 => "FMT_F16",
        WeightFormat::Bf16 => "FMT_BF16",
        WeightFormat::Quant(Codec::Q8_0) => "FMT_Q8_0",
        WeightFormat::Quant(Codec::Q4_0) => "FMT_Q4_0",
        WeightFormat::Quant(Codec::Q4_1) => "FMT_Q4_1",
        WeightFormat::Quant(Codec::Nf4) => "FMT_NF4",
        WeightFormat::Quant(Codec::Q5_0) => "FMT_Q5_0",
        WeightFormat::Quant(Codec::Q5_1) => "FMT_Q5_1",
        WeightFormat::Quant(Codec::Q4K) => "FMT_Q4_K",
        WeightFormat::Quant(Codec::Q5K) => "FMT_Q5_K",
        WeightFormat::Quant(Codec::Q6K) => "FMT_Q6_K",
    }));
    if format.is_dense() {
        d.push(Define::Flag("DENSE"));
        if wide {
            d.push(Define::Flag("WIDE"));
        }
    }
}

fn flags(f: &mut fmt::Formatter<'_>, wide: bool, x_vec4: bool) -> fmt::Result {
    if wide {
        f.write_str("/wide")?;
    }
    if x_vec4 {
        f.write_str("/xv4")?;
    }
    Ok(())
}

impl fmt::Display for PipelineKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shader().name())?;
        match *self {
            PipelineKey::Gemv { format, tokens, wide, x_vec4, team, .. } => {
                write!(f, "/{}/t{tokens}/w{team}", format.name())?;
                flags(f, wide, x_vec4)?;
            }
            PipelineKey::Gemm { format, tile, wide, x_vec4 } => {
                write!(f, "/{}/{}", format.name(), tile.size())?;
                flags(f, wide, x_vec4)?;
            }
            PipelineKey::RmsNorm { weight, gemma, in_place, .. } => {
                write!(f, "/{}", weight.name())?;
                if gemma {
                    f.write_str("/gemma")?;
                }
                if in_place {
                    f.write_str("/inplace")?;
                }
            }
            PipelineKey::Rope { interleaved } => {
                f.write_str(if interleaved { "/interleaved" } else { "/half" })?;
            }
            PipelineKey::ActMul { act } => write!(f, "/{}", act.name())?,
            PipelineKey::KvAppend { f16, k_only } => {
                if f16 {
                    f.write_str("/kv_f16")?;
                }
                if k_only {
                    f.write_str("/k_only")?;
                }
            }
            PipelineKey::Attention { f16, wide_head, .. } => {
                if f16 {
                    f.write_str("/kv_f16")?;
                }
                if wide_head {
                    f.write_str("/wide_head")?;
                }
            }
            PipelineKey::MoeRouteGrouped => f.write_str("/sigmoid_grouped")?,
            PipelineKey::KvCompact { k_only: true } => f.write_str("/k_only")?,
            _ => {}
        }
        if self.uses_subgroup() {
            f.write_str("/sg")?;
        }
        Ok(())
    }
}

/// Compiled pipelines by key. Compilation happens once per key, under a
/// lock, inside a wgpu error scope: a shader the driver rejects is a
/// [`GpuError::Pipeline`], not a panic.
#[derive(Default)]
pub struct PipelineCache {
    map: Mutex<HashMap<PipelineKey, Arc<CachedPipeline>>>,
    /// Nanoseconds spent compiling, in total.
    compile_ns: std::sync::atomic::AtomicU64,
}

/// A compiled pipeline with its bind group layout and label.
#[derive(Debug)]
pub struct CachedPipeline {
    /// The pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// Its (automatic) bind group layout 0.
    pub layout: wgpu::BindGroupLayout,
    /// The key's label.
    pub label: String,
}

impl PipelineCache {
    /// The pipeline of `key`, compiled on first use.
    pub fn get(&self, device: &wgpu::Device, key: &PipelineKey) -> Result<Arc<CachedPipeline>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = map.get(key) {
            return Ok(p.clone());
        }
        let t = std::time::Instant::now();
        let label = key.to_string();
        let source = key.wgsl()?;
        let p = Arc::new(compile(device, label, source)?);
        self.compile_ns.fetch_add(t.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        map.insert(*key, p.clone());
        Ok(p)
    }

    /// Time spent compiling pipelines so far (first uses of each key), so
    /// that per-pass host times can leave it out.
    pub fn compile_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.compile_ns.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Number of compiled pipelines.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether nothing is compiled yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Compiles `source` (entry point `main`, automatic layout) inside a
/// validation error scope, so a shader the device rejects is an error.
pub(crate) fn compile(device: &wgpu::Device, label: String, source: String) -> Result<CachedPipeline> {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(&label),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&label),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    if let Some(source) = pollster::block_on(scope.pop()) {
        return Err(GpuError::Pipeline { label, source });
    }
    tracing::debug!(pipeline = %label, "compiled");
    let layout = pipeline.get_bind_group_layout(0);
    Ok(CachedPipeline { pipeline, layout, label })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_shader_is_an_error_not_a_panic() {
        let Some(ctx) = crate::testing::gpu_or_skip() else { return };
        let bad = "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }".to_string();
        let e = compile(ctx.device(), "bad".into(), bad).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("bad")), "{e:?}");
        // the device is still usable
        let ok = "@compute @workgroup_size(1) fn main() {}".to_string();
        assert!(compile(ctx.device(), "ok".into(), ok).is_ok());
    }

    #[test]
    fn keys_read_caps_and_label() {
        let k = PipelineKey::Gemv {
            format: WeightFormat::Quant(Codec::Q4_0),
            tokens: 4,
            wide: false,
            x_vec4: true,
            subgroup: true,
            team: 64,
        };
        assert_eq!(k.to_string(), "gemv/q4_0/t4/w64/xv4/sg");
        assert_eq!(k.profile_label(), "gemv/q4_0");
        assert!(k.defines().contains(&Define::U32("TOKENS", 4)));
        assert!(k.defines().contains(&Define::U32("TEAM", 64)));
        assert!(k.wgsl().unwrap().contains("const ROWS: u32 = 2u;"));
    }
}
