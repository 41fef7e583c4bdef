//! Offline shader validation: every PipelineKey variant is preprocessed and
//! validated with naga (f16, subgroup and cooperative-matrix capabilities
//! on). No GPU needed.

use airllm_gpu::{PipelineKey, validate_all_shaders};

#[test]
fn every_variant_validates() {
    let n = match validate_all_shaders() {
        Ok(n) => n,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(n, PipelineKey::all_variants().len());
    assert!(n > 100, "only {n} variants");
}

#[test]
fn labels_are_unique() {
    let keys = PipelineKey::all_variants();
    let mut labels: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    labels.sort();
    let before = labels.len();
    labels.dedup();
    assert_eq!(before, labels.len(), "two variants share a label");
}

#[test]
fn subgroup_variants_declare_the_feature() {
    use airllm_gpu::wgpu::Features;
    for k in PipelineKey::all_variants() {
        let src = k.wgsl().unwrap();
        // subgroup reductions, or the subgroup ids (the coop GEMM deals its
        // blocks out by subgroup)
        let subgroup = ["subgroupAdd(", "subgroupMax(", "ids.sg_id", "ids.n_sg"].iter().any(|p| src.contains(p));
        assert_eq!(subgroup, k.uses_subgroup(), "{k}");
        assert_eq!(k.required_features().contains(Features::SUBGROUP), k.uses_subgroup(), "{k}");
        let coop = src.contains("coopMultiplyAdd(");
        assert_eq!(coop, k.uses_coop_matrix(), "{k}");
        assert_eq!(k.required_features().contains(Features::EXPERIMENTAL_COOPERATIVE_MATRIX), coop, "{k}");
    }
}
