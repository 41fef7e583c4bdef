//! A real Gemma 3 GGUF, when one is at `$AIRLLM_GEMMA3_GGUF`: Gemma 3 270M
//! Q4_K_M (the base model; see testdata/gemma3_270m/README.md for where it
//! comes from). The expected ids were computed outside this code base: token ids
//! by SentencePiece on the file's vocabulary, greedy ids by an independent numpy
//! forward on gguf-py's dequantized weights (testdata/gemma3_270m/*.py). Skipped
//! when the variable is unset.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use airllm::{AutoModel, GenerateOptions, Options, Prompt};

#[test]
fn gemma3_270m_gguf_matches_the_reference() {
    let Some(path) = std::env::var_os("AIRLLM_GEMMA3_GGUF") else {
        eprintln!("skipping: set AIRLLM_GEMMA3_GGUF to gemma-3-270m-q4_k_m.gguf");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let opts = Options {
        shards_dir: Some(tmp.path().to_path_buf()),
        max_context: Some(64),
        resident_layers: Some(0),
        ..Options::default()
    };
    let mut m = AutoModel::from_pretrained(path.to_str().unwrap(), opts).unwrap();
    let spec = m.spec().clone();
    assert_eq!(spec.family, airllm_format::Family::Gemma3);
    let global: Vec<usize> = (0..spec.num_layers).filter(|&l| spec.layer(l).attention.window.is_none()).collect();
    assert_eq!(global, vec![5, 11, 17]);
    assert!(spec.eos_token_ids.contains(&106), "<end_of_turn> ends generation");

    let plain = m.encode(&Prompt::Text("The capital of France is".into())).unwrap();
    assert_eq!(plain, vec![2, 818, 5279, 529, 7001, 563]);
    let chat =
        m.encode(&Prompt::Chat(vec![airllm::ChatMessage::new("user", "What is the capital of France?")])).unwrap();
    assert_eq!(chat, vec![2, 105, 2364, 107, 3689, 563, 506, 5279, 529, 7001, 236881, 106, 107, 105, 4368, 107]);

    let o = |n| GenerateOptions { max_new_tokens: n, stop_at_eos: false, ..Default::default() };
    let (g, _) = m.generate(&[Prompt::Ids(plain)], &o(12), |_| {}).unwrap();
    // " the capital of the country of France. It is the largest"
    assert_eq!(g[0].new_ids, vec![506, 5279, 529, 506, 2891, 529, 7001, 236761, 1030, 563, 506, 7488]);
    let (g, _) = m.generate(&[Prompt::Ids(chat)], &o(10), |_| {}).unwrap();
    // The base model echoes the question rather than answering it.
    assert_eq!(g[0].new_ids, vec![3689, 563, 506, 5279, 529, 7001, 236881, 217716, 107, 3689]);
}
