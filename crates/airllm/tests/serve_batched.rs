//! [`BatchedBackend`] on the tiny llama fixture (CPU executor): concurrent requests share
//! passes and each gets exactly what a lone `AutoModel::generate` gives (the greedy one
//! of prompt 0 also what transformers gives); log-probabilities come with every token;
//! a request whose client goes away and one the server cancels leave no KV blocks and
//! no terminal event; the queue bound, the request checks and shutdown. Every wait is
//! bounded.

#![cfg(feature = "server")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use airllm::serve::{Backend, BatchedBackend, GenEvent, GenRequest, SubmitError};
use airllm::{AutoModel, Device, FinishReason, GenerateOptions, Options, Prompt};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(120);

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny/llama")
}

fn golden() -> Value {
    serde_json::from_slice(&std::fs::read(fixture().join("golden.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn options(shards: &Path, max_sequences: usize) -> Options {
    Options {
        shards_dir: Some(shards.to_path_buf()),
        max_context: Some(64),
        kv_tokens: Some(512),
        max_sequences,
        device: Device::Cpu,
        ..Options::default()
    }
}

fn load(shards: &Path, max_sequences: usize) -> AutoModel {
    AutoModel::from_pretrained(fixture().to_str().unwrap(), options(shards, max_sequences)).unwrap()
}

fn spawn(shards: &Path, max_sequences: usize, max_waiting: usize) -> BatchedBackend {
    let shards = shards.to_path_buf();
    BatchedBackend::spawn("tiny".into(), max_waiting, move || {
        AutoModel::from_pretrained(fixture().to_str().unwrap(), options(&shards, max_sequences))
    })
    .unwrap()
}

fn request(prompt: Vec<u32>, max_new_tokens: usize) -> GenRequest {
    GenRequest {
        prompt_ids: prompt,
        max_new_tokens,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        stop: vec![],
        top_logprobs: None,
    }
}

/// A sink that forwards every event; it answers `true` until `alive_for` tokens went out.
fn sink(alive_for: usize) -> (Box<dyn FnMut(GenEvent) -> bool + Send>, Receiver<GenEvent>) {
    let (tx, rx) = channel();
    let mut tokens = 0;
    let f = move |ev: GenEvent| {
        if matches!(ev, GenEvent::Token { .. }) {
            tokens += 1;
        }
        let _ = tx.send(ev);
        tokens < alive_for
    };
    (Box::new(f), rx)
}

/// Every event of a request until its terminal one; `None` for the terminal when the
/// backend dropped the sink without one (a cancelled request).
fn collect(rx: &Receiver<GenEvent>) -> (Vec<GenEvent>, Option<GenEvent>) {
    let t0 = Instant::now();
    let mut evs = Vec::new();
    loop {
        match rx.recv_timeout(LIMIT.saturating_sub(t0.elapsed())) {
            Ok(ev @ (GenEvent::Finished { .. } | GenEvent::Failed(_))) => {
                assert!(
                    matches!(rx.recv_timeout(Duration::from_millis(200)), Err(RecvTimeoutError::Disconnected)),
                    "an event after the terminal one"
                );
                return (evs, Some(ev));
            }
            Ok(ev) => evs.push(ev),
            Err(RecvTimeoutError::Disconnected) => return (evs, None),
            Err(RecvTimeoutError::Timeout) => panic!("no terminal event within {LIMIT:?}; got {evs:?}"),
        }
    }
}

/// What a lone `generate` gives: (ids, text, finish, per-token (logprob, top ids)).
struct Lone {
    ids: Vec<u32>,
    text: String,
    finish: FinishReason,
    completion_tokens: usize,
    logprobs: Vec<(f32, Vec<u32>)>,
}

fn lone(model: &mut AutoModel, req: &GenRequest) -> Lone {
    let o = GenerateOptions {
        max_new_tokens: req.max_new_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
        stop_strings: req.stop.clone(),
        logprobs: req.top_logprobs,
        ..GenerateOptions::default()
    };
    let mut toks = Vec::new();
    let mut logprobs = Vec::new();
    let eos = model.tokenizer().eos_ids().to_vec();
    let (gens, _) = model
        .generate(&[Prompt::Ids(req.prompt_ids.clone())], &o, |ev| {
            if ev.id != u32::MAX && !(ev.text.is_none() && eos.contains(&ev.id)) {
                toks.push(ev.id);
                if let Some(lp) = &ev.logprob {
                    logprobs.push((lp.logprob, lp.top.iter().map(|t| t.0).collect()));
                }
            }
        })
        .unwrap();
    let g = &gens[0];
    Lone { ids: toks, text: g.text.clone(), finish: g.finish, completion_tokens: g.new_ids.len(), logprobs }
}

/// Poll the backend's gauges (bounded) until nothing runs, waits or holds KV blocks.
fn wait_idle(b: &BatchedBackend) -> airllm::serve::BackendMetrics {
    let t0 = Instant::now();
    loop {
        let m = b.metrics();
        if m.running == 0 && m.waiting == 0 && m.kv_blocks_used == 0 {
            return m;
        }
        assert!(t0.elapsed() < LIMIT, "the backend did not go idle: {m:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn concurrent_requests_share_passes_and_match_lone_runs() {
    let g = golden();
    let tmp = tempfile::tempdir().unwrap();
    let p0 = ids(&g["prompts"][0]["input_ids"]);
    let p1 = ids(&g["prompts"][1]["input_ids"]);
    // The lone runs first (the first load shards the checkpoint, the backend reuses it).
    let mut model = load(tmp.path(), 8);
    let mut reqs = vec![
        request(p0.clone(), 24),
        GenRequest { top_logprobs: Some(3), ..request(p1.clone(), 12) },
        GenRequest { top_logprobs: Some(0), ..request(p0[..7].to_vec(), 10) },
        request(p1[..20].to_vec(), 16),
        // Sampled: the same seed gives the same tokens, batched or not.
        GenRequest { temperature: 0.8, seed: 7, ..request(p1[..9].to_vec(), 12) },
    ];
    let refs: Vec<Lone> = reqs.iter().map(|r| lone(&mut model, r)).collect();
    // Prompt 0 alone gives transformers' greedy tokens.
    assert_eq!(refs[0].ids, ids(&g["greedy"]["new_ids"]), "lone greedy run vs transformers");
    // A stop string from the middle of prompt 0's continuation.
    let full = &refs[0].text;
    let mid = full.char_indices().nth(full.chars().count() / 2).unwrap().0;
    let stop: String = full[mid..].chars().take(3).collect();
    reqs.push(GenRequest { stop: vec![stop.clone()], ..request(p0.clone(), 24) });
    let stop_ref = lone(&mut model, &reqs[5]);
    assert_eq!(stop_ref.finish, FinishReason::Stop, "{stop:?} must stop the lone run");
    assert!(stop_ref.text.len() < full.len() && !stop_ref.text.contains(&stop));
    drop(model);

    let b = spawn(tmp.path(), 8, 16);
    assert_eq!(b.context_len(), 64);
    // The first request's first token holds the engine (its sink blocks) until every
    // other request is submitted, so all of them join the running batch together.
    let (gate_tx, gate_rx) = channel::<()>();
    let (tx0, rx0) = channel();
    let mut first = true;
    let gated = move |ev: GenEvent| {
        if first {
            first = false;
            let _ = gate_rx.recv_timeout(LIMIT);
        }
        let _ = tx0.send(ev);
        true
    };
    b.submit(reqs[0].clone(), Box::new(gated)).unwrap();
    let mut rxs = vec![rx0];
    for r in &reqs[1..] {
        let (s, rx) = sink(usize::MAX);
        b.submit(r.clone(), s).unwrap();
        rxs.push(rx);
    }
    // A client that goes away after 3 tokens, and one the server cancels after its first.
    let (s, rx_gone) = sink(3);
    b.submit(request(p1.clone(), 30), s).unwrap();
    // Its first token's sink waits until the cancel is in, so it lands at the next boundary.
    let (ack_tx, ack_rx) = channel::<()>();
    let (tx, rx_cancel) = channel();
    let mut first = true;
    let acked = move |ev: GenEvent| {
        let _ = tx.send(ev);
        if first {
            first = false;
            let _ = ack_rx.recv_timeout(LIMIT);
        }
        true
    };
    let cancel_id = b.submit(request(p0.clone(), 40), Box::new(acked)).unwrap();
    gate_tx.send(()).unwrap();

    match rx_cancel.recv_timeout(LIMIT).unwrap() {
        GenEvent::Token { .. } => b.cancel(cancel_id),
        other => panic!("expected a token first, got {other:?}"),
    }
    b.cancel(cancel_id); // twice is fine
    ack_tx.send(()).unwrap();
    let mut completion_total = 0;
    for (i, (rx, want)) in rxs.iter().zip(refs.iter().chain([&stop_ref])).enumerate() {
        let (evs, end) = collect(rx);
        let Some(GenEvent::Finished { reason, text: tail, prompt_tokens, completion_tokens }) = end else {
            panic!("request {i}: {end:?}");
        };
        let mut text = String::new();
        let mut got_ids = Vec::new();
        for (k, ev) in evs.iter().enumerate() {
            let GenEvent::Token { id, text: t, logprob } = ev else { panic!("request {i}: {ev:?}") };
            text.push_str(t);
            got_ids.push(*id);
            match (&reqs[i].top_logprobs, logprob) {
                (None, None) => {}
                (Some(n), Some(lp)) => {
                    let (want_lp, want_top) = &want.logprobs[k];
                    assert_eq!(lp.chosen.id, *id);
                    assert!(lp.chosen.logprob <= 0.0 && (lp.chosen.logprob - want_lp).abs() < 1e-4, "request {i}");
                    assert_eq!(lp.top.len(), *n);
                    assert_eq!(&lp.top.iter().map(|t| t.id).collect::<Vec<_>>(), want_top, "request {i} token {k}");
                    // Greedy: the chosen token is the most likely one.
                    if let Some(t) = lp.top.first() {
                        assert_eq!(t.id, *id);
                        assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
                    }
                    assert!(!lp.chosen.bytes.is_empty());
                }
                other => panic!("request {i} token {k}: logprobs {other:?}"),
            }
        }
        text.push_str(&tail);
        assert_eq!(got_ids, want.ids, "request {i}: ids");
        assert_eq!(text, want.text, "request {i}: text");
        assert_eq!(reason, want.finish, "request {i}: finish reason");
        assert_eq!(completion_tokens, want.completion_tokens, "request {i}: completion tokens");
        assert_eq!(prompt_tokens, reqs[i].prompt_ids.len());
        if i == 5 {
            assert!(evs.iter().all(|e| !matches!(e, GenEvent::Token { text, .. } if text.contains(&stop))));
        }
        completion_total += got_ids.len();
    }
    let (evs, end) = collect(&rx_gone);
    assert!(end.is_none(), "a request whose client went away gets no terminal event: {end:?}");
    assert_eq!(evs.len(), 3);
    let (evs, end) = collect(&rx_cancel);
    assert!(end.is_none(), "a cancelled request gets no terminal event: {end:?}");
    assert!(evs.is_empty(), "the cancelled request kept generating after its first token: {evs:?}");

    let m = wait_idle(&b);
    assert_eq!(m.cancelled_total, 2, "{m:?}");
    assert!(m.kv_blocks_total > 0);
    // The two cancelled requests stopped at once (3 and 1 tokens of the 70 they asked for).
    assert_eq!(m.generated_tokens_total as usize, completion_total + 3 + 1, "{m:?}");
    assert!(m.generated_tokens_total as f64 / m.passes_total as f64 > 2.0, "requests did not share passes: {m:?}");
    let prompt_total: usize = reqs.iter().map(|r| r.prompt_ids.len()).sum::<usize>() + p1.len() + p0.len();
    assert_eq!(m.prompt_tokens_total as usize, prompt_total);
}

#[test]
fn queue_bound_request_checks_and_shutdown() {
    let g = golden();
    let tmp = tempfile::tempdir().unwrap();
    let p0 = ids(&g["prompts"][0]["input_ids"]);
    // One sequence at a time, two may wait.
    let b = spawn(tmp.path(), 1, 2);
    let e = b.submit(request(vec![5; 60], 10), sink(usize::MAX).0).unwrap_err();
    assert_eq!(e, SubmitError::PromptTooLong { prompt: 60, max_new_tokens: 10, context: 64 });
    let e = b.submit(request(vec![5, 9999], 4), sink(usize::MAX).0).unwrap_err();
    assert!(matches!(&e, SubmitError::Invalid { param, message } if param == "prompt" && message.contains("9999")));
    let e = b.submit(request(vec![5], 0), sink(usize::MAX).0).unwrap_err();
    assert!(matches!(&e, SubmitError::Invalid { param, .. } if param == "max_tokens"), "{e:?}");
    let e = b.submit(GenRequest { temperature: -1.0, ..request(vec![5], 4) }, sink(usize::MAX).0).unwrap_err();
    assert!(matches!(&e, SubmitError::Invalid { param, .. } if param == "temperature"), "{e:?}");
    let e = b.submit(GenRequest { top_p: 0.0, ..request(vec![5], 4) }, sink(usize::MAX).0).unwrap_err();
    assert!(matches!(&e, SubmitError::Invalid { param, .. } if param == "top_p"), "{e:?}");
    assert_eq!(b.metrics().waiting, 0, "refused requests allocate nothing");

    // The running request's second token holds the engine while the queue fills (after
    // one pass, so the gauges are settled: one running, none waiting).
    let (gate_tx, gate_rx) = channel::<()>();
    let (held_tx, held_rx) = channel::<()>();
    let (tx, rx_running) = channel();
    let mut n = 0;
    let gated = move |ev: GenEvent| {
        n += 1;
        if n == 2 {
            let _ = held_tx.send(());
            let _ = gate_rx.recv_timeout(LIMIT);
        }
        let _ = tx.send(ev);
        true
    };
    b.submit(request(p0.clone(), 40), Box::new(gated)).unwrap();
    held_rx.recv_timeout(LIMIT).unwrap();
    let waiting: Vec<(u64, Receiver<GenEvent>)> = (0..2)
        .map(|_| {
            let (s, rx) = sink(usize::MAX);
            (b.submit(request(p0.clone(), 8), s).unwrap(), rx)
        })
        .collect();
    let e = b.submit(request(p0.clone(), 8), sink(usize::MAX).0).unwrap_err();
    assert_eq!(e, SubmitError::QueueFull { waiting: 2 });
    assert_eq!(b.metrics().waiting, 2);
    // Cancelling a waiting request makes room for another.
    b.cancel(waiting[0].0);
    let (s, rx_third) = sink(usize::MAX);
    b.submit(request(p0.clone(), 8), s).unwrap();

    // Shutdown: new requests are refused; every accepted one ends with Failed.
    b.shutdown();
    gate_tx.send(()).unwrap();
    let e = b.submit(request(p0.clone(), 8), sink(usize::MAX).0).unwrap_err();
    assert_eq!(e, SubmitError::ShuttingDown);
    let (_, end) = collect(&waiting[0].1);
    assert!(end.is_none(), "the cancelled waiting request gets no event: {end:?}");
    for rx in [&rx_running, &waiting[1].1, &rx_third] {
        let (_, end) = collect(rx);
        assert!(matches!(&end, Some(GenEvent::Failed(m)) if m.contains("shutting down")), "{end:?}");
    }
    let m = wait_idle(&b);
    assert_eq!(m.cancelled_total, 4, "one cancelled, three failed by the shutdown: {m:?}");
    b.shutdown(); // idempotent
    drop(b); // joins the engine thread
}

/// With speculation on (prompt lookup), the server's greedy requests give the
/// same tokens as lone runs without it, for a lone request and for several
/// sharing passes, a stop string included; the drafts were verified (more
/// than one token per verify pass) and no KV block is left behind.
#[test]
fn speculation_in_the_server_keeps_greedy_tokens() {
    use airllm::spec::lookup::PromptLookup;
    use airllm::spec::{SpecConfig, Speculator};
    let g = golden();
    let tmp = tempfile::tempdir().unwrap();
    let p0 = ids(&g["prompts"][0]["input_ids"]);
    let p1 = ids(&g["prompts"][1]["input_ids"]);
    let mut model = load(tmp.path(), 4);
    let mut reqs = vec![request(p0.clone(), 24), request(p1[..20].to_vec(), 16), request(p0[..7].to_vec(), 20)];
    let refs: Vec<Lone> = reqs.iter().map(|r| lone(&mut model, r)).collect();
    let full = &refs[0].text;
    let mid = full.char_indices().nth(full.chars().count() / 2).unwrap().0;
    reqs.push(GenRequest { stop: vec![full[mid..].chars().take(3).collect()], ..request(p0.clone(), 24) });
    let stop_ref = lone(&mut model, &reqs[3]);
    drop(model);
    let shards = tmp.path().to_path_buf();
    let b = BatchedBackend::spawn("tiny".into(), 16, move || {
        let mut m = AutoModel::from_pretrained(fixture().to_str().unwrap(), options(&shards, 4))?;
        let spec =
            Speculator::new(Box::new(PromptLookup::default()), SpecConfig { tree: 16, max_rows: 64, adaptive: true });
        m.set_speculation(Some(spec));
        Ok::<_, airllm::EngineError>(m)
    })
    .unwrap();
    // Alone first (speculation certainly applies), then all together.
    for batch in [&reqs[..1], &reqs[..]] {
        let rxs: Vec<_> = batch
            .iter()
            .map(|r| {
                let (s, rx) = sink(usize::MAX);
                b.submit(r.clone(), s).unwrap();
                rx
            })
            .collect();
        for (i, rx) in rxs.iter().enumerate() {
            let (evs, end) = collect(rx);
            let Some(GenEvent::Finished { reason, .. }) = end else { panic!("request {i}: {end:?}") };
            let got: Vec<u32> =
                evs.iter().filter_map(|e| if let GenEvent::Token { id, .. } = e { Some(*id) } else { None }).collect();
            let want = if i == 3 { &stop_ref } else { &refs[i] };
            assert_eq!(got, want.ids, "request {i}: speculation changed the tokens");
            assert_eq!(reason, want.finish, "request {i}");
        }
    }
    let m = wait_idle(&b);
    assert!(m.passes_total > 0);
    assert!(
        m.generated_tokens_total as f64 / m.passes_total as f64 > 1.0,
        "prompt lookup must save passes on the tiny model's repetitive output: {m:?}"
    );
}
