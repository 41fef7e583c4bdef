//! Every backend proven by translation: each [`PipelineKey`] variant is
//! preprocessed, validated by naga with the capabilities a backend offers, and
//! translated to that backend's language with the options wgpu 30 itself uses
//! (SPIR-V for Vulkan, MSL for Metal, HLSL for DX12, GLSL ES for GL). A shader
//! that only works on Vulkan fails here, on Linux, before a macOS or Windows
//! user sees it. `tests/translate.rs` and `cargo xtask shaders` run it over
//! every variant; `spirv-val` (Khronos SPIRV-Tools), when installed, checks
//! the SPIR-V as a Vulkan driver would ([`spirv_val`]).
//!
//! What this does not prove: that Apple's Metal compiler or DXC/FXC accept
//! the text (neither runs on Linux). naga's writers are the code wgpu runs on
//! those platforms, so an error they raise here is the error a user would see.

use std::fmt;

use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};

use crate::error::{GpuError, Result};
use crate::pipeline::PipelineKey;

/// A shading language naga writes for one wgpu backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// SPIR-V, for Vulkan.
    SpirV,
    /// Metal Shading Language, for Metal.
    Msl,
    /// HLSL, for DX12.
    Hlsl,
    /// GLSL ES, for wgpu's GL backend.
    Glsl,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 4] = [Target::SpirV, Target::Msl, Target::Hlsl, Target::Glsl];

    /// Short name, as printed in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::SpirV => "spirv",
            Target::Msl => "msl",
            Target::Hlsl => "hlsl",
            Target::Glsl => "glsl",
        }
    }

    /// The wgpu backend that consumes this language.
    pub fn backend(self) -> wgpu::Backend {
        match self {
            Target::SpirV => wgpu::Backend::Vulkan,
            Target::Msl => wgpu::Backend::Metal,
            Target::Hlsl => wgpu::Backend::Dx12,
            Target::Glsl => wgpu::Backend::Gl,
        }
    }

    /// The most the backend can offer a shader: naga's writer support,
    /// narrowed to what wgpu's backend ever enables (wgpu's GL backend
    /// offers neither subgroups nor SHADER_F16, whatever the GLSL writer
    /// could express).
    pub fn capabilities(self) -> Capabilities {
        match self {
            Target::SpirV => naga::back::spv::supported_capabilities(),
            Target::Msl => naga::back::msl::supported_capabilities(),
            Target::Hlsl => naga::back::hlsl::supported_capabilities(),
            Target::Glsl => {
                naga::back::glsl::supported_capabilities()
                    - Capabilities::SUBGROUP
                    - Capabilities::SUBGROUP_BARRIER
                    - Capabilities::SHADER_FLOAT16
            }
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A translated variant.
#[derive(Clone, Debug)]
pub struct Translation {
    /// The language.
    pub target: Target,
    /// Language version written, e.g. `SPIR-V 1.3`, `MSL 2.1`, `SM 6.0`.
    pub version: String,
    /// The output.
    pub output: Output,
}

/// Binary (SPIR-V words) or source text.
#[derive(Clone, Debug)]
pub enum Output {
    /// SPIR-V words.
    Words(Vec<u32>),
    /// MSL, HLSL or GLSL source.
    Text(String),
}

/// What happened to one variant on one target.
#[derive(Debug)]
pub enum Outcome {
    /// Validated and translated.
    Translated(Translation),
    /// The variant needs capabilities the target never offers (e.g.
    /// subgroups on GL); the caps fallbacks pick another variant there.
    NotOffered {
        /// The capabilities the target lacks.
        missing: Capabilities,
    },
    /// Validation or translation failed: a shader bug for that backend.
    Failed(GpuError),
}

/// The naga capabilities a variant needs: those its required wgpu features
/// enable, plus the downlevel `SHADER_F16_IN_F32` (`unpack2x16float`),
/// which every backend wgpu runs compute on has. Mapped through
/// `wgpu-naga-bridge`, as wgpu does when it creates a shader module, so a
/// variant that uses a feature its key does not declare fails validation.
pub fn required_capabilities(key: &PipelineKey) -> Capabilities {
    wgpu_naga_bridge::features_to_naga_capabilities(
        key.required_features(),
        wgpu::DownlevelFlags::SHADER_F16_IN_F32 | wgpu::DownlevelFlags::COMPUTE_SHADERS,
    )
}

/// Preprocesses and parses `key` once, then validates and translates it for
/// every target. `Err` only when the WGSL itself cannot be composed or parsed.
pub fn translate_key(key: &PipelineKey) -> Result<Vec<Outcome>> {
    let label = key.to_string();
    let src = key.wgsl()?;
    let module = naga::front::wgsl::parse_str(&src).map_err(|e| GpuError::ShaderInvalid {
        label: label.clone(),
        report: e.emit_to_string_with_path(&src, &label),
    })?;
    let needed = required_capabilities(key);
    let features = key.required_features();
    Ok(Target::ALL
        .into_iter()
        .map(|target| {
            let missing = needed - target.capabilities();
            if !missing.is_empty() {
                return Outcome::NotOffered { missing };
            }
            let fail = |report: String| {
                Outcome::Failed(GpuError::ShaderTranslate { label: label.clone(), target: target.name(), report })
            };
            let info = match Validator::new(ValidationFlags::all(), needed).validate(&module) {
                Ok(info) => info,
                Err(e) => return fail(e.emit_to_string_with_path(&src, &label)),
            };
            match write(&module, &info, target, features) {
                Ok(t) => Outcome::Translated(t),
                Err(report) => fail(report),
            }
        })
        .collect())
}

/// The entry point of every kernel.
const ENTRY: &str = "main";

fn write(
    module: &naga::Module,
    info: &ModuleInfo,
    target: Target,
    features: wgpu::Features,
) -> Result<Translation, String> {
    let subgroup = features.contains(wgpu::Features::SUBGROUP);
    let f16 = features.contains(wgpu::Features::SHADER_F16);
    let coop = features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
    // wgpu's defaults: runtime bounds checks on (Restrict), zeroed workgroup memory.
    let restrict = naga::proc::BoundsCheckPolicies {
        index: naga::proc::BoundsCheckPolicy::Restrict,
        buffer: naga::proc::BoundsCheckPolicy::Restrict,
        image_load: naga::proc::BoundsCheckPolicy::Restrict,
        binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
    };
    let bindings: Vec<(naga::ResourceBinding, naga::AddressSpace)> =
        module.global_variables.iter().filter_map(|(_, g)| g.binding.map(|b| (b, g.space))).collect();
    match target {
        Target::SpirV => {
            use naga::back::spv;
            // The lowest SPIR-V a Vulkan device with these features accepts:
            // subgroup operations arrived with Vulkan 1.1 (SPIR-V 1.3).
            let lang_version = if subgroup || coop { (1, 3) } else { (1, 0) };
            // wgpu-hal's always-on capability list, plus what the features add
            // (so a shader needing anything else is an error here, as on a device).
            let mut caps: naga::FastHashSet<spv::Capability> = [
                spv::Capability::Shader,
                spv::Capability::Matrix,
                spv::Capability::Sampled1D,
                spv::Capability::Image1D,
                spv::Capability::ImageQuery,
                spv::Capability::DerivativeControl,
                spv::Capability::StorageImageExtendedFormats,
            ]
            .into_iter()
            .collect();
            if subgroup {
                caps.extend([
                    spv::Capability::GroupNonUniform,
                    spv::Capability::GroupNonUniformVote,
                    spv::Capability::GroupNonUniformArithmetic,
                    spv::Capability::GroupNonUniformBallot,
                    spv::Capability::GroupNonUniformShuffle,
                    spv::Capability::GroupNonUniformShuffleRelative,
                    spv::Capability::GroupNonUniformQuad,
                ]);
            }
            if f16 {
                caps.insert(spv::Capability::Float16);
            }
            if coop {
                caps.extend([spv::Capability::CooperativeMatrixKHR, spv::Capability::VulkanMemoryModel]);
            }
            // wgpu-hal maps (group, binding) to (descriptor set, binding).
            let binding_map = bindings
                .iter()
                .map(|(b, _)| {
                    (*b, spv::BindingInfo { descriptor_set: b.group, binding: b.binding, binding_array_size: None })
                })
                .collect();
            let options = spv::Options {
                lang_version,
                binding_map,
                flags: spv::WriterFlags::LABEL_VARYINGS | spv::WriterFlags::FORCE_POINT_SIZE,
                capabilities: Some(caps),
                bounds_check_policies: restrict,
                zero_initialize_workgroup_memory: spv::ZeroInitializeWorkgroupMemoryMode::Polyfill,
                use_storage_input_output_16: f16,
                fake_missing_bindings: false,
                ..spv::Options::default()
            };
            let pipeline =
                spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: ENTRY.to_string() };
            let words = spv::write_vec(module, info, &options, Some(&pipeline)).map_err(|e| format!("{e}"))?;
            Ok(Translation {
                target,
                version: format!("SPIR-V {}.{}", lang_version.0, lang_version.1),
                output: Output::Words(words),
            })
        }
        Target::Msl => {
            use naga::back::msl;
            // macOS 10.13 (wgpu's floor) has MSL 2.0; simd-group reductions
            // need 2.1; simdgroup matrices 2.3.
            let lang_version = if coop {
                (2, 3)
            } else if subgroup {
                (2, 1)
            } else {
                (2, 0)
            };
            // Slots as wgpu-hal's Metal layout assigns them: buffers in binding
            // order, then the sizes buffer for runtime-sized arrays.
            let mut resources = msl::BindingMap::default();
            let mut sorted = bindings.clone();
            sorted.sort_by_key(|(b, _)| (b.group, b.binding));
            for (slot, (b, space)) in sorted.iter().enumerate() {
                let mutable = matches!(space, naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE));
                let slot = u8::try_from(slot).map_err(|_| "more than 255 buffer bindings".to_string())?;
                resources.insert(*b, msl::BindTarget { buffer: Some(slot), mutable, ..Default::default() });
            }
            let sizes_slot = u8::try_from(sorted.len()).map_err(|_| "more than 255 buffer bindings".to_string())?;
            let options = msl::Options {
                lang_version,
                per_entry_point_map: msl::EntryPointResourceMap::from([(
                    ENTRY.to_string(),
                    msl::EntryPointResources { resources, immediates_buffer: None, sizes_buffer: Some(sizes_slot) },
                )]),
                fake_missing_bindings: false,
                bounds_check_policies: restrict,
                zero_initialize_workgroup_memory: true,
                ..msl::Options::default()
            };
            let pipeline = msl::PipelineOptions {
                entry_point: Some((naga::ShaderStage::Compute, ENTRY.to_string())),
                ..Default::default()
            };
            let (text, tinfo) = msl::write_string(module, info, &options, &pipeline).map_err(|e| format!("{e}"))?;
            for r in tinfo.entry_point_names {
                r.map_err(|e| format!("entry point: {e}"))?;
            }
            Ok(Translation {
                target,
                version: format!("MSL {}.{}", lang_version.0, lang_version.1),
                output: Output::Text(text),
            })
        }
        Target::Hlsl => {
            use naga::back::hlsl;
            // FXC's SM 5.1 is wgpu's floor; wave intrinsics need SM 6.0 (DXC),
            // 16-bit types 6.2.
            let shader_model = if f16 {
                hlsl::ShaderModel::V6_2
            } else if subgroup {
                hlsl::ShaderModel::V6_0
            } else {
                hlsl::ShaderModel::V5_1
            };
            let mut binding_map = hlsl::BindingMap::default();
            for (b, _) in &bindings {
                let space = u8::try_from(b.group).map_err(|_| format!("bind group {} > 255", b.group))?;
                binding_map.insert(
                    *b,
                    hlsl::BindTarget {
                        space,
                        register: b.binding,
                        binding_array_size: None,
                        dynamic_storage_buffer_offsets_index: None,
                        restrict_indexing: true,
                    },
                );
            }
            let options = hlsl::Options {
                shader_model,
                binding_map,
                fake_missing_bindings: false,
                zero_initialize_workgroup_memory: true,
                restrict_indexing: true,
                ..hlsl::Options::default()
            };
            let pipeline = hlsl::PipelineOptions { entry_point: Some((naga::ShaderStage::Compute, ENTRY.to_string())) };
            let mut text = String::new();
            let mut w = hlsl::Writer::new(&mut text, &options, &pipeline);
            let r = w.write(module, info, None).map_err(|e| format!("{e}"))?;
            for ep in r.entry_point_names {
                ep.map_err(|e| format!("entry point: {e}"))?;
            }
            Ok(Translation { target, version: format!("{shader_model:?}"), output: Output::Text(text) })
        }
        Target::Glsl => {
            use naga::back::glsl;
            // GLES 3.1 is the first with compute shaders, wgpu GL's floor.
            let version = glsl::Version::new_gles(310);
            let mut binding_map = glsl::BindingMap::default();
            let (mut ubo, mut ssbo) = (0u8, 0u8);
            let mut sorted = bindings.clone();
            sorted.sort_by_key(|(b, _)| (b.group, b.binding));
            for (b, space) in &sorted {
                // wgpu-hal's GL layout numbers uniform and storage blocks separately.
                let counter = if matches!(space, naga::AddressSpace::Uniform) { &mut ubo } else { &mut ssbo };
                binding_map.insert(*b, *counter);
                *counter = counter.checked_add(1).ok_or("more than 255 bindings")?;
            }
            let options = glsl::Options {
                version,
                writer_flags: glsl::WriterFlags::empty(),
                binding_map,
                zero_initialize_workgroup_memory: true,
            };
            let pipeline = glsl::PipelineOptions {
                shader_stage: naga::ShaderStage::Compute,
                entry_point: ENTRY.to_string(),
                multiview: None,
            };
            let mut text = String::new();
            let mut w = glsl::Writer::new(&mut text, module, info, &options, &pipeline, restrict)
                .map_err(|e| format!("{e}"))?;
            w.write().map_err(|e| format!("{e}"))?;
            Ok(Translation { target, version: "GLSL ES 3.10".to_string(), output: Output::Text(text) })
        }
    }
}

/// Tallies of a whole run over [`PipelineKey::all_variants`].
#[derive(Debug, Default)]
pub struct TranslationReport {
    /// Variants preprocessed.
    pub variants: usize,
    /// Per target: (translated, not offered).
    pub per_target: Vec<(Target, usize, usize)>,
    /// Every failure, labelled with variant and target.
    pub failures: Vec<GpuError>,
}

/// Translates every variant for every target, calling `each` with each
/// successful translation (e.g. to run `spirv-val` on the SPIR-V). Returns
/// the tallies with every failure; `Err` only when a variant's WGSL cannot be
/// composed or parsed at all.
pub fn translate_all_shaders(mut each: impl FnMut(&PipelineKey, &Translation)) -> Result<TranslationReport> {
    let keys = PipelineKey::all_variants();
    let mut report = TranslationReport {
        variants: keys.len(),
        per_target: Target::ALL.iter().map(|&t| (t, 0, 0)).collect(),
        failures: Vec::new(),
    };
    for key in &keys {
        for (i, outcome) in translate_key(key)?.into_iter().enumerate() {
            match outcome {
                Outcome::Translated(t) => {
                    report.per_target[i].1 += 1;
                    each(key, &t);
                }
                Outcome::NotOffered { .. } => report.per_target[i].2 += 1,
                Outcome::Failed(e) => report.failures.push(e),
            }
        }
    }
    Ok(report)
}

/// The `--target-env` of `spirv-val` for SPIR-V version `lang`: the oldest
/// Vulkan that consumes it.
pub fn spirv_target_env(version: &str) -> &'static str {
    match version {
        "SPIR-V 1.0" => "vulkan1.0",
        "SPIR-V 1.3" => "vulkan1.1",
        "SPIR-V 1.5" => "vulkan1.2",
        _ => "vulkan1.3",
    }
}

/// Why `spirv-val` could not give a verdict.
#[derive(Debug)]
pub enum SpirvValUnavailable {
    /// The binary is not on `PATH` (Debian: `apt-get install spirv-tools`).
    NotInstalled,
}

/// Runs Khronos `spirv-val` on `words` (fed on stdin) for `target_env`.
/// `Ok(Ok(()))`: valid; `Ok(Err(report))`: rejected, with its report;
/// `Err(NotInstalled)`: no `spirv-val` on `PATH`.
pub fn spirv_val(
    words: &[u32],
    target_env: &str,
) -> std::result::Result<std::result::Result<(), String>, SpirvValUnavailable> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let child = Command::new("spirv-val")
        .args(["--target-env", target_env, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SpirvValUnavailable::NotInstalled),
        Err(e) => return Ok(Err(format!("starting spirv-val: {e}"))),
    };
    let bytes: &[u8] = bytemuck::cast_slice(words);
    let written = child.stdin.take().map(|mut s| s.write_all(bytes));
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return Ok(Err(format!("waiting for spirv-val: {e}"))),
    };
    if let Some(Err(e)) = written {
        return Ok(Err(format!("feeding spirv-val: {e}")));
    }
    if out.status.success() {
        Ok(Ok(()))
    } else {
        Ok(Err(format!(
            "spirv-val --target-env {target_env} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}
