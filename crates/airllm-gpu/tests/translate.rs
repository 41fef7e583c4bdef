//! Every backend proven by translation: every PipelineKey variant is
//! preprocessed, validated by naga with the capabilities each backend offers,
//! and translated to SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL ES
//! (GL); the SPIR-V also goes through Khronos `spirv-val` when it is
//! installed (Debian: `apt-get install spirv-tools`). With `CI` set, a
//! missing `spirv-val` fails the test instead of skipping that step.
//! No GPU needed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use airllm_gpu::PipelineKey;
use airllm_gpu::translate::{Outcome, Output, SpirvValUnavailable, Target, spirv_target_env, spirv_val, translate_key};

/// Splits the variants over the cores (the CI machines have two).
fn par_each(keys: &[PipelineKey], f: impl Fn(&PipelineKey) + Sync) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while let Some(k) = keys.get(next.fetch_add(1, Ordering::Relaxed)) {
                    f(k);
                }
            });
        }
    });
}

#[test]
fn every_variant_translates_for_every_backend() {
    let started = std::time::Instant::now();
    let keys = PipelineKey::all_variants();
    let translated: Vec<AtomicUsize> = Target::ALL.iter().map(|_| AtomicUsize::new(0)).collect();
    let not_offered: Vec<AtomicUsize> = Target::ALL.iter().map(|_| AtomicUsize::new(0)).collect();
    let spirv_checked = AtomicUsize::new(0);
    let spirv_missing = AtomicUsize::new(0);
    let spirv_too_old = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::<String>::new());
    let fail = |msg: String| failures.lock().unwrap_or_else(|p| p.into_inner()).push(msg);
    par_each(&keys, |key| {
        let outcomes = match translate_key(key) {
            Ok(o) => o,
            Err(e) => return fail(format!("{key}: {e}")),
        };
        assert_eq!(outcomes.len(), Target::ALL.len());
        for (i, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Outcome::Translated(t) => {
                    translated[i].fetch_add(1, Ordering::Relaxed);
                    match &t.output {
                        Output::Words(words) => {
                            assert_eq!(t.target, Target::SpirV);
                            assert_eq!(words.first(), Some(&0x0723_0203), "{key}: SPIR-V magic");
                            match spirv_val(words, spirv_target_env(&t.version)) {
                                Ok(Ok(())) => {
                                    spirv_checked.fetch_add(1, Ordering::Relaxed);
                                }
                                // SPV_KHR_cooperative_matrix (capability 6022) came with
                                // SPIRV-Tools 2023.4; older ones (Debian 12: 2023.1)
                                // cannot judge those modules at all.
                                Ok(Err(report))
                                    if key.uses_coop_matrix()
                                        && report.contains("Invalid capability operand: 6022") =>
                                {
                                    spirv_too_old.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(Err(report)) => fail(format!("{key} ({}): {report}", t.version)),
                                Err(SpirvValUnavailable::NotInstalled) => {
                                    spirv_missing.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Output::Text(text) => {
                            // the entry point survives (MSL and HLSL rename
                            // reserved words, `main` among them in MSL)
                            assert!(text.len() > 100 && text.contains("main"), "{key} ({}): empty output", t.target);
                        }
                    }
                }
                Outcome::NotOffered { missing } => {
                    not_offered[i].fetch_add(1, Ordering::Relaxed);
                    assert!(
                        may_be_unavailable(key, Target::ALL[i]),
                        "{key} is not offered on {} (missing {missing:?})",
                        Target::ALL[i]
                    );
                }
                Outcome::Failed(e) => fail(e.to_string()),
            }
        }
    });
    for (i, t) in Target::ALL.iter().enumerate() {
        eprintln!(
            "{t}: {} of {} variants translated, {} need features the backend never offers",
            translated[i].load(Ordering::Relaxed),
            keys.len(),
            not_offered[i].load(Ordering::Relaxed)
        );
    }
    let missing = spirv_missing.load(Ordering::Relaxed);
    if missing > 0 {
        let msg = "spirv-val not installed: SPIR-V checked by naga only (apt-get install spirv-tools)";
        assert!(std::env::var_os("CI").is_none(), "{msg}; CI is set, so this is a failure");
        eprintln!("skipped spirv-val on {missing} modules: {msg}");
    } else {
        eprintln!("spirv-val accepted all {} SPIR-V modules", spirv_checked.load(Ordering::Relaxed));
    }
    let too_old = spirv_too_old.load(Ordering::Relaxed);
    if too_old > 0 {
        eprintln!(
            "spirv-val predates SPV_KHR_cooperative_matrix: {too_old} cooperative-matrix modules checked by naga only \
             (SPIRV-Tools 2023.4 or later checks them)"
        );
    }
    eprintln!("{} variants x {} targets in {:.1?}", keys.len(), Target::ALL.len(), started.elapsed());
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    assert!(failures.is_empty(), "{} translation failures:\n{}", failures.len(), failures.join("\n\n"));
    // every variant reaches every backend that can offer it
    for (i, t) in Target::ALL.iter().enumerate() {
        if *t != Target::Glsl {
            let offered = keys.iter().filter(|k| !may_be_unavailable(k, *t)).count();
            assert!(translated[i].load(Ordering::Relaxed) >= offered, "{t}");
        }
    }
    // the cooperative-matrix GEMM is among the variants and reaches Vulkan and Metal
    let coop = keys.iter().filter(|k| k.uses_coop_matrix()).count();
    assert!(coop > 0, "no cooperative-matrix variant");
    assert_eq!(translated[0].load(Ordering::Relaxed), keys.len(), "SPIR-V");
    assert_eq!(translated[1].load(Ordering::Relaxed), keys.len(), "MSL");
}

/// The backends a variant may legitimately not reach: subgroup variants on
/// GL (wgpu's GL backend offers no subgroups; the shared-memory variants
/// serve it), and cooperative-matrix variants on GL and DX12: naga 30's HLSL
/// writer has no cooperative-matrix support (`supported_capabilities` leaves
/// COOPERATIVE_MATRIX out, and its writer hits `unimplemented!()` /
/// `unreachable!()` on the load, store and multiply-add), and wgpu's DX12
/// backend never offers the feature, so the tiled gemm.wgsl serves DX12.
fn may_be_unavailable(key: &PipelineKey, target: Target) -> bool {
    match target {
        Target::Glsl => key.uses_subgroup() || key.uses_coop_matrix(),
        Target::Hlsl => key.uses_coop_matrix(),
        Target::SpirV | Target::Msl => false,
    }
}

/// The translation must be able to fail: a shader using a subgroup operation
/// without the key declaring SUBGROUP is rejected by the validator with the
/// capabilities the key implies (what wgpu does on a device without it).
#[test]
fn undeclared_subgroup_use_is_caught() {
    let src = "@group(0) @binding(0) var<storage, read_write> y: array<f32>;\n\
               @compute @workgroup_size(64) fn main(@builtin(local_invocation_id) l: vec3<u32>) {\n\
               y[l.x] = subgroupAdd(y[l.x]);\n}\n";
    let module = naga::front::wgsl::parse_str(src).expect("parses");
    let caps = wgpu_naga_bridge::features_to_naga_capabilities(
        airllm_gpu::wgpu::Features::empty(),
        airllm_gpu::wgpu::DownlevelFlags::SHADER_F16_IN_F32,
    );
    let r = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps).validate(&module);
    assert!(r.is_err(), "subgroupAdd validated without the SUBGROUP capability");
}

/// spirv-val must be able to fail too (when installed): feed it garbage.
#[test]
fn spirv_val_rejects_garbage() {
    match spirv_val(&[0x0723_0203, 0x0001_0000, 0, 99, 0, 0xdead_beef], "vulkan1.0") {
        Ok(r) => assert!(r.is_err(), "spirv-val accepted garbage"),
        Err(SpirvValUnavailable::NotInstalled) => {
            assert!(std::env::var_os("CI").is_none(), "spirv-val not installed and CI is set");
            eprintln!("spirv-val not installed: skipped (apt-get install spirv-tools)");
        }
    }
}
