//! Unit tests of the launch-shape choices against the subgroup sizes real
//! adapters use: 32 lanes (NVIDIA), 64 (AMD GCN/CDNA), and a range of 4..=128
//! (Intel, Adreno, Apple and RDNA report ranges; the driver may pick any power
//! of two in it per pipeline). No GPU is needed: the choices are functions of
//! [`Caps`], and each chosen variant must be one that
//! [`PipelineKey::all_variants`] lists, so the translation test has proven it
//! on every backend.
//!
//! What must hold for each subgroup size `s` a device may use:
//! - gemv's subgroup variant: a team (TEAM consecutive invocations) holds
//!   whole subgroups (TEAM a multiple of `s`, so no subgroup spans two
//!   teams), the workgroup holds whole subgroups (WG a multiple of `s`: the
//!   shader divides `num_subgroups` evenly among the teams), and the
//!   per-subgroup partials fit their `WG / 4` slots (`s >= 4`);
//! - the workgroup reductions of rmsnorm and attention (`lib/reduce.wgsl`):
//!   one slot per subgroup in `red_scratch` (`ceil(WG / s) <= WG`: any `s`).

use std::collections::HashSet;

use airllm_quant::Codec;

use crate::caps::Caps;
use crate::kernels::WeightFormat;
use crate::kernels::matmul::gemv;
use crate::pipeline::{PipelineKey, WG_ATTENTION, WG_DEFAULT};

/// The subgroup sizes (powers of two) a device with `caps` may run.
fn sizes(caps: &Caps) -> Vec<u32> {
    (0..=8).map(|i| 1u32 << i).filter(|&s| s >= caps.subgroup_min && s <= caps.subgroup_max).collect()
}

fn variants() -> HashSet<PipelineKey> {
    PipelineKey::all_variants().into_iter().collect()
}

const CAPS: [(u32, u32); 3] = [(32, 32), (64, 64), (4, 128)];

/// Shapes from 8B/70B/MoE models and awkward small ones.
const SHAPES: [(u32, u32); 8] =
    [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336), (128, 64), (3, 40), (100_000, 8192), (8, 256)];

#[test]
fn gemv_teams_hold_whole_subgroups() {
    let all = variants();
    let formats =
        [WeightFormat::F32, WeightFormat::F16, WeightFormat::Quant(Codec::Q4_0), WeightFormat::Quant(Codec::Q6K)];
    for (min, max) in CAPS {
        let caps = Caps::for_tests(min, max);
        let mut subgroup_keys = 0;
        for format in formats {
            for (n, k) in SHAPES {
                for t in 1..=8 {
                    for (wide, x_vec4) in [(false, false), (format.is_dense(), true)] {
                        let (key, rows) = gemv::key(&caps, format, n, k, t, wide, x_vec4);
                        let what = format!("{} {n}x{k} t{t}: {key}", caps.adapter_name);
                        assert!(all.contains(&key), "{what} is not among the translated variants");
                        let PipelineKey::Gemv { subgroup, team, tokens, .. } = key else {
                            panic!("{what}: not a gemv key")
                        };
                        assert!(u32::from(tokens) >= t, "{what}: bucket too small");
                        assert_eq!(rows, PipelineKey::gemv_rows_per_group(tokens, team), "{what}");
                        // subgroups are available on these caps, so the fast path must be taken
                        assert!(subgroup, "{what}: subgroup reduction not used");
                        subgroup_keys += 1;
                        let team = u32::from(team);
                        for s in sizes(&caps) {
                            assert!(team.is_multiple_of(s), "{what}: a subgroup of {s} spans two teams of {team}");
                            assert!(WG_DEFAULT.is_multiple_of(s), "{what}: partial subgroup of {s}");
                            assert!(WG_DEFAULT / s <= WG_DEFAULT / 4, "{what}: {s}-lane partials overrun");
                        }
                    }
                }
            }
        }
        assert!(subgroup_keys > 0);
    }
}

/// Without subgroups (or with subgroups narrower than the kernel allows) the
/// shared-memory variant is chosen, and it exists too.
#[test]
fn gemv_falls_back_without_usable_subgroups() {
    let all = variants();
    for caps in [Caps { subgroup: false, ..Caps::for_tests(32, 32) }, Caps::for_tests(1, 64)] {
        for (n, k) in SHAPES {
            let (key, _) = gemv::key(&caps, WeightFormat::F16, n, k, 1, false, true);
            assert!(all.contains(&key), "{key}");
            assert!(!key.uses_subgroup(), "{}: {key} uses subgroups", caps.adapter_name);
        }
    }
    // A subgroup wider than the largest team cannot use the subgroup variant.
    let caps = Caps::for_tests(512, 512);
    assert_eq!(gemv::team(WeightFormat::F32, 4096, 4096, 1, &caps, true), None);
}

#[test]
fn workgroup_reductions_fit_every_subgroup_size() {
    let all = variants();
    for (min, max) in CAPS {
        let caps = Caps::for_tests(min, max);
        for f16 in [false, true] {
            for split in [false, true] {
                let key = crate::kernels::attention::key(&caps, f16, split);
                assert!(all.contains(&key) && key.uses_subgroup(), "{key}");
                assert_eq!(key.workgroup_size(), WG_ATTENTION);
            }
        }
        assert!(all.contains(&PipelineKey::AttentionCombine));
        for weight in [WeightFormat::F32, WeightFormat::F16, WeightFormat::Bf16] {
            for gemma in [false, true] {
                for in_place in [false, true] {
                    let key = crate::kernels::rmsnorm::key(&caps, weight, gemma, in_place);
                    assert!(all.contains(&key) && key.uses_subgroup(), "{key}");
                    assert_eq!(key.workgroup_size(), WG_DEFAULT);
                }
            }
        }
        for wg in [WG_ATTENTION, WG_DEFAULT] {
            for s in sizes(&caps) {
                // one red_scratch slot per subgroup (a workgroup narrower
                // than the subgroup is one partial subgroup)
                assert!(wg.div_ceil(s) <= wg, "WG {wg}, subgroup {s}");
                // subgroups never straddle the workgroup: either whole
                // subgroups or a single partial one
                assert!(wg.is_multiple_of(s) || wg < s, "WG {wg}, subgroup {s}");
            }
        }
    }
}

/// Split-K attention: one pass where rows x heads already fills the device
/// or the keys are few; chunks of at least MIN_KEYS_PER_SPLIT keys otherwise;
/// and the scratch bound holds for every shape.
#[test]
fn attention_split_choice() {
    use crate::kernels::attention::{
        MAX_SPLITS, MIN_KEYS_PER_SPLIT, SPLIT_TARGET_WORKGROUPS, Splits, choose_splits, split_scratch_bytes,
    };
    // 8B decode, batch 1: 32 heads, 4096 keys -> 8 chunks of 512 keys (256 workgroups)
    assert_eq!(choose_splits(1, 32, 4096), 8);
    // short context: one pass
    assert_eq!(choose_splits(1, 32, 300), 1);
    // a 64-row prefill chunk of 32 heads fills the device: one pass
    assert_eq!(choose_splits(64, 32, 100_000), 1);
    // MQA-sized head counts at long context stop at MAX_SPLITS
    assert_eq!(choose_splits(1, 1, 1 << 20), MAX_SPLITS);
    for rows in [1u32, 2, 3, 7, 8, 31, 64, 255, 256, 1000] {
        for heads in [1u32, 4, 8, 14, 32, 64, 128] {
            for keys in [0u32, 1, 255, 256, 511, 512, 4096, 32_768, 1 << 20] {
                let s = choose_splits(rows, heads, keys);
                let what = format!("{rows} rows x {heads} heads, {keys} keys: {s} splits");
                assert!((1..=MAX_SPLITS).contains(&s), "{what}");
                if s > 1 {
                    assert!(rows * heads < SPLIT_TARGET_WORKGROUPS, "{what}: already full");
                    assert!(keys / s >= MIN_KEYS_PER_SPLIT, "{what}: chunks too short");
                }
                let need = u64::from(rows) * u64::from(heads) * u64::from(s) * (128 + 2) * 4;
                let have = split_scratch_bytes(rows, heads, 128, Splits::Auto);
                assert!(s == 1 || need <= have, "{what}: scratch {have} < {need}");
                assert!(have <= 2 * u64::from(SPLIT_TARGET_WORKGROUPS) * 130 * 4, "{what}: scratch {have}");
            }
        }
    }
    assert_eq!(split_scratch_bytes(8, 4, 64, Splits::Force(1)), 0);
    assert_eq!(split_scratch_bytes(8, 4, 64, Splits::Force(5)), 8 * 4 * 5 * 66 * 4);
}

/// The cooperative-matrix GEMM is chosen only with the feature and subgroup
/// sizes whose subgroups tile its 64 invocations and deal out its 16 blocks
/// evenly; otherwise the tiled GEMM, and both choices are listed variants.
#[test]
fn gemm_coop_only_where_subgroups_fit() {
    use crate::kernels::matmul::gemm;
    use crate::pipeline::WG_GEMM_COOP;
    let all = variants();
    let blocks = (gemm::COOP_TILE / 8) * (gemm::COOP_TILE / 8);
    for ((min, max), usable) in
        [((32, 32), true), ((64, 64), true), ((8, 32), true), ((4, 128), false), ((1, 32), false)]
    {
        for coop_matrix in [false, true] {
            let caps = Caps { coop_matrix, ..Caps::for_tests(min, max) };
            for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Quant(Codec::Q4K)] {
                let (key, tokens, rows) = gemm::key(&caps, format, 100, false, true);
                let what = format!("{} coop {coop_matrix}: {key}", caps.adapter_name);
                assert!(all.contains(&key), "{what} is not among the translated variants");
                assert_eq!(key.uses_coop_matrix(), coop_matrix && usable, "{what}");
                assert!(key.supported_by(&caps), "{what}: chosen but not supported");
                if key.uses_coop_matrix() {
                    assert_eq!((tokens, rows), (gemm::COOP_TILE, gemm::COOP_TILE), "{what}");
                    for s in sizes(&caps) {
                        assert!(WG_GEMM_COOP.is_multiple_of(s), "{what}: partial subgroup of {s}");
                        assert!(blocks.is_multiple_of(WG_GEMM_COOP / s), "{what}: {s}-lane subgroups");
                    }
                }
            }
        }
    }
}
