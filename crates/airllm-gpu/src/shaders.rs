//! The shader registry: the only file that names paths under `shaders/`
//! (moving them into the crate for publishing touches this file alone), and
//! the small preprocessor that composes a kernel with its `shaders/lib/*`
//! snippets and the defines of a [`PipelineKey`]; plus offline naga
//! validation of every variant ([`validate_all_shaders`]) and [`dump_wgsl`].
//!
//! Directives, each alone on a line:
//! - `#include NAME`: the lib snippet `NAME` (once per shader);
//! - `#ifdef NAME`, `#ifndef NAME`, `#else`, `#endif` (nestable).
//!
//! Defines come from the key as typed values ([`Define`]): a numeric define
//! becomes `const NAME: u32 = Vu;` at the top of the module and counts as
//! defined for `#ifdef`; a flag only counts for `#ifdef`.

use std::collections::HashSet;
use std::fmt::Write as _;

use crate::error::{GpuError, Result};
use crate::pipeline::PipelineKey;

/// One compute kernel source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shader {
    /// Matrix-vector product, 1-8 tokens (`shaders/gemv.wgsl`).
    Gemv,
    /// Tiled matrix-matrix product for prefill (`shaders/gemm.wgsl`).
    Gemm,
    /// RMSNorm (`shaders/rmsnorm.wgsl`).
    RmsNorm,
    /// Rotary embedding (`shaders/rope.wgsl`).
    Rope,
    /// KV-cache append (`shaders/kv_append.wgsl`).
    KvAppend,
    /// KV-cache slot moves after tree verification (`shaders/kv_compact.wgsl`).
    KvCompact,
    /// Attention over the KV cache (`shaders/attention.wgsl`).
    Attention,
    /// Gated activation (`shaders/act_mul.wgsl`).
    ActMul,
    /// Residual add (`shaders/add.wgsl`).
    Add,
    /// Bias add (`shaders/bias_add.wgsl`).
    BiasAdd,
    /// Scale (`shaders/scale.wgsl`).
    Scale,
    /// Soft-cap (`shaders/softcap.wgsl`).
    Softcap,
    /// MoE router (`shaders/moe_route.wgsl`).
    MoeRoute,
    /// MoE weighted combine (`shaders/moe_combine.wgsl`).
    MoeCombine,
    /// Sparse MoE: gather an expert's token rows (`shaders/moe_gather.wgsl`).
    MoeGather,
    /// Sparse MoE: weighted scatter-add of an expert's output rows (`shaders/moe_scatter.wgsl`).
    MoeScatter,
}

impl Shader {
    /// Every shader.
    pub const ALL: [Shader; 16] = [
        Shader::Gemv,
        Shader::Gemm,
        Shader::RmsNorm,
        Shader::Rope,
        Shader::KvAppend,
        Shader::KvCompact,
        Shader::Attention,
        Shader::ActMul,
        Shader::Add,
        Shader::BiasAdd,
        Shader::Scale,
        Shader::Softcap,
        Shader::MoeRoute,
        Shader::MoeCombine,
        Shader::MoeGather,
        Shader::MoeScatter,
    ];

    /// The op name, as in file names, labels and bench ids.
    pub fn name(self) -> &'static str {
        match self {
            Shader::Gemv => "gemv",
            Shader::Gemm => "gemm",
            Shader::RmsNorm => "rmsnorm",
            Shader::Rope => "rope",
            Shader::KvAppend => "kv_append",
            Shader::KvCompact => "kv_compact",
            Shader::Attention => "attention",
            Shader::ActMul => "act_mul",
            Shader::Add => "add",
            Shader::BiasAdd => "bias_add",
            Shader::Scale => "scale",
            Shader::Softcap => "softcap",
            Shader::MoeRoute => "moe_route",
            Shader::MoeCombine => "moe_combine",
            Shader::MoeGather => "moe_gather",
            Shader::MoeScatter => "moe_scatter",
        }
    }

    /// Path of the source, relative to the workspace root.
    pub fn path(self) -> String {
        format!("shaders/{}.wgsl", self.name())
    }

    /// The raw (unpreprocessed) source.
    pub fn source(self) -> &'static str {
        match self {
            Shader::Gemv => include_str!("../../../shaders/gemv.wgsl"),
            Shader::Gemm => include_str!("../../../shaders/gemm.wgsl"),
            Shader::RmsNorm => include_str!("../../../shaders/rmsnorm.wgsl"),
            Shader::Rope => include_str!("../../../shaders/rope.wgsl"),
            Shader::KvAppend => include_str!("../../../shaders/kv_append.wgsl"),
            Shader::KvCompact => include_str!("../../../shaders/kv_compact.wgsl"),
            Shader::Attention => include_str!("../../../shaders/attention.wgsl"),
            Shader::ActMul => include_str!("../../../shaders/act_mul.wgsl"),
            Shader::Add => include_str!("../../../shaders/add.wgsl"),
            Shader::BiasAdd => include_str!("../../../shaders/bias_add.wgsl"),
            Shader::Scale => include_str!("../../../shaders/scale.wgsl"),
            Shader::Softcap => include_str!("../../../shaders/softcap.wgsl"),
            Shader::MoeRoute => include_str!("../../../shaders/moe_route.wgsl"),
            Shader::MoeCombine => include_str!("../../../shaders/moe_combine.wgsl"),
            Shader::MoeGather => include_str!("../../../shaders/moe_gather.wgsl"),
            Shader::MoeScatter => include_str!("../../../shaders/moe_scatter.wgsl"),
        }
    }
}

/// Shared snippets in `shaders/lib/`, by include name.
const LIBS: &[(&str, &str)] = &[
    ("common", include_str!("../../../shaders/lib/common.wgsl")),
    ("reduce", include_str!("../../../shaders/lib/reduce.wgsl")),
    ("weights", include_str!("../../../shaders/lib/weights.wgsl")),
    ("weights_k", include_str!("../../../shaders/lib/weights_k.wgsl")),
    ("activations", include_str!("../../../shaders/lib/activations.wgsl")),
    ("xvec", include_str!("../../../shaders/lib/xvec.wgsl")),
    ("math", include_str!("../../../shaders/lib/math.wgsl")),
];

/// A preprocessor define derived from a pipeline key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Define {
    /// Defined for `#ifdef`, no value.
    Flag(&'static str),
    /// `const NAME: u32 = V;`, and defined for `#ifdef`.
    U32(&'static str, u32),
}

impl Define {
    fn name(self) -> &'static str {
        match self {
            Define::Flag(n) | Define::U32(n, _) => n,
        }
    }
}

/// Composes `shader` with its includes under `defines`. `label` heads the
/// output as a comment. Errors name the file and line.
pub fn preprocess(shader: Shader, defines: &[Define], label: &str) -> Result<String, String> {
    let mut out = String::with_capacity(shader.source().len() * 2);
    let _ = writeln!(out, "// {label} (airllm-gpu: {})", shader.path());
    for d in defines {
        if let Define::U32(name, v) = d {
            let _ = writeln!(out, "const {name}: u32 = {v}u;");
        }
    }
    let set: HashSet<&str> = defines.iter().map(|d| d.name()).collect();
    let mut included = HashSet::new();
    expand(&shader.path(), shader.source(), &set, &mut included, &mut out)?;
    Ok(out)
}

fn expand(
    file: &str,
    src: &str,
    defines: &HashSet<&str>,
    included: &mut HashSet<&'static str>,
    out: &mut String,
) -> Result<(), String> {
    // (branch active, any earlier branch taken, parent active, seen #else)
    let mut stack: Vec<(bool, bool, bool)> = Vec::new();
    let active = |stack: &Vec<(bool, bool, bool)>| stack.last().is_none_or(|s| s.0);
    for (i, line) in src.lines().enumerate() {
        let at = || format!("{file}:{}", i + 1);
        let t = line.trim();
        if let Some(rest) = t.strip_prefix('#') {
            let mut parts = rest.split_whitespace();
            let dir = parts.next().unwrap_or("");
            let arg = parts.next();
            match dir {
                "ifdef" | "ifndef" => {
                    let name = arg.ok_or_else(|| format!("{}: #{dir} without a name", at()))?;
                    // A misspelt flag would silently build another variant.
                    if !known_flags().contains(name) {
                        return Err(format!(
                            "{}: #{dir} {name}: no pipeline key defines {name:?} (known: {})",
                            at(),
                            sorted(known_flags())
                        ));
                    }
                    let cond = defines.contains(name) == (dir == "ifdef");
                    let parent = active(&stack);
                    stack.push((parent && cond, parent, false));
                }
                "else" => {
                    let top = stack.last_mut().ok_or_else(|| format!("{}: #else without #ifdef", at()))?;
                    if top.2 {
                        return Err(format!("{}: second #else", at()));
                    }
                    *top = (top.1 && !top.0, top.1, true);
                }
                "endif" => {
                    stack.pop().ok_or_else(|| format!("{}: #endif without #ifdef", at()))?;
                }
                "include" => {
                    if !active(&stack) {
                        continue;
                    }
                    let name = arg.ok_or_else(|| format!("{}: #include without a name", at()))?;
                    let (lib_name, lib_src) = LIBS
                        .iter()
                        .find(|(n, _)| *n == name)
                        .ok_or_else(|| format!("{}: unknown include {name:?}", at()))?;
                    if included.insert(lib_name) {
                        let path = format!("shaders/lib/{lib_name}.wgsl");
                        let _ = writeln!(out, "// ---- {path} ----");
                        expand(&path, lib_src, defines, included, out)?;
                        let _ = writeln!(out, "// ---- end {path} ----");
                    }
                }
                _ => return Err(format!("{}: unknown directive #{dir}", at())),
            }
            continue;
        }
        if active(&stack) {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err(format!("{file}: {} unclosed #ifdef", stack.len()));
    }
    Ok(())
}

/// Every define name some [`PipelineKey`] variant sets: the names an
/// `#ifdef` may test.
fn known_flags() -> &'static HashSet<&'static str> {
    static KNOWN: std::sync::OnceLock<HashSet<&'static str>> = std::sync::OnceLock::new();
    KNOWN.get_or_init(|| PipelineKey::all_variants().iter().flat_map(|k| k.defines()).map(|d| d.name()).collect())
}

fn sorted(set: &HashSet<&str>) -> String {
    let mut v: Vec<&str> = set.iter().copied().collect();
    v.sort_unstable();
    v.join(", ")
}

/// Preprocesses every [`PipelineKey`] variant and validates it with naga,
/// f16 and subgroup capabilities on, without a GPU. Returns how many were
/// checked. Used by `cargo xtask shaders` and `tests/shaders.rs`.
pub fn validate_all_shaders() -> Result<usize> {
    let keys = PipelineKey::all_variants();
    for key in &keys {
        validate_key(key)?;
    }
    Ok(keys.len())
}

/// Writes every variant's preprocessed WGSL to `dir/<label with / as .>.wgsl`
/// (the CLI's `--dump-wgsl DIR`). Returns how many files were written.
pub fn dump_wgsl(dir: &std::path::Path) -> Result<usize> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| GpuError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let keys = PipelineKey::all_variants();
    for key in &keys {
        let path = dir.join(format!("{}.wgsl", key.to_string().replace('/', ".")));
        std::fs::write(&path, key.wgsl()?).map_err(io(&path))?;
    }
    Ok(keys.len())
}

/// Validates one variant with naga (see [`validate_all_shaders`]).
pub fn validate_key(key: &PipelineKey) -> Result<()> {
    let label = key.to_string();
    let src = key.wgsl()?;
    let module = naga::front::wgsl::parse_str(&src).map_err(|e| GpuError::ShaderInvalid {
        label: label.clone(),
        report: e.emit_to_string_with_path(&src, &label),
    })?;
    let caps = naga::valid::Capabilities::default()
        | naga::valid::Capabilities::SHADER_FLOAT16
        // unpack2x16float: a downlevel flag every Vulkan/Metal/DX12 adapter has
        | naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32
        | naga::valid::Capabilities::SUBGROUP;
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps).validate(&module).map_err(|e| {
        GpuError::ShaderInvalid { label: label.clone(), report: e.emit_to_string_with_path(&src, &label) }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_conditionals() {
        let src = "a\n#ifdef SUBGROUP\nb\n#ifndef KV_F16\nc\n#else\nd\n#endif\n#else\ne\n#endif\nf\n";
        let set: HashSet<&str> = ["SUBGROUP"].into_iter().collect();
        let mut out = String::new();
        expand("t", src, &set, &mut HashSet::new(), &mut out).unwrap();
        assert_eq!(out, "a\nb\nc\nf\n");
        let set: HashSet<&str> = ["KV_F16"].into_iter().collect();
        let mut out = String::new();
        expand("t", src, &set, &mut HashSet::new(), &mut out).unwrap();
        assert_eq!(out, "a\ne\nf\n");
    }

    #[test]
    fn unknown_ifdef_name_is_an_error() {
        let src = "a\n#ifdef SUBGRUOP\nb\n#endif\n";
        let e = expand("t.wgsl", src, &HashSet::new(), &mut HashSet::new(), &mut String::new()).unwrap_err();
        assert!(e.contains("t.wgsl:2") && e.contains("SUBGRUOP") && e.contains("SUBGROUP"), "{e}");
    }

    #[test]
    fn errors_name_the_line() {
        let mut out = String::new();
        let e = expand("f.wgsl", "x\n#endif\n", &HashSet::new(), &mut HashSet::new(), &mut out).unwrap_err();
        assert!(e.contains("f.wgsl:2"), "{e}");
        let e = expand("f.wgsl", "#ifdef SUBGROUP\n", &HashSet::new(), &mut HashSet::new(), &mut out).unwrap_err();
        assert!(e.contains("unclosed"), "{e}");
        let e = expand("f.wgsl", "#include nope\n", &HashSet::new(), &mut HashSet::new(), &mut out).unwrap_err();
        assert!(e.contains("unknown include"), "{e}");
    }

    #[test]
    fn numeric_defines_become_consts() {
        let s = preprocess(Shader::Add, &[Define::U32("WG", 64)], "add").unwrap();
        assert!(s.contains("const WG: u32 = 64u;"));
        assert!(s.contains("struct Ids"));
    }
}
