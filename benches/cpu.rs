//! CPU kernel benches (airllm-quant's `dot` and `pool`): their own bench
//! target, so they run without a GPU adapter or the other stages' setup:
//! `cargo bench -p airllm-benches --bench cpu [-- FILTER]`.
//!
//! Ids and throughput (`{mode}` is `{precision}-` for quantized formats, the
//! activation precision of the kernels: `precise-` (16-bit activations) or
//! `fast-` (8-bit, ggml's scheme); empty for dense formats, whose
//! activations stay f32):
//! - `cpu/gemv/{format}/{n}x{k}/{mode}{threads}t`: one token; `Throughput::Bytes`
//!   of weights read. The weights cycle through copies totalling at least
//!   [`STREAM_BYTES`], so they come from DRAM as in a real decode step (one
//!   matrix alone would sit in the L2/L3 cache after the first iteration).
//! - `cpu/gemm/{format}/{n}x{k}-t{t}/{mode}{threads}t`: a prompt of `t` tokens;
//!   `Throughput::Elements` counts flops (`2 t n k`), so criterion's
//!   "elem/s" reads as FLOP/s.
//! - `cpu/token/smollm2-135m-q4_1/{precision}-{threads}t`: the matmuls of one SmolLM2-135M
//!   decode step (30 layers of q, k, v, o, gate, up, down in q4_1, then the
//!   49152x576 q8_0 lm_head, as the GGUF stores them), weights 96 MB;
//!   `Throughput::Bytes` of weights.
//! - `cpu/pool/{spin|rayon}/{empty|gemv-q4_1-576x576}/{threads}t`: the per-op
//!   cost of this crate's pool against rayon's: an empty `parallel_for` of
//!   36 items (what a 576-row matmul hands out), and a real 576x576 q4_1
//!   GEMV on cache-resident weights.
//!
//! Shapes: SmolLM2-135M (hidden 576, intermediate 1536, vocab 49152) and
//! Llama-3-8B (4096, 14336); threads 1 and 2.
//!
//! Criterion reports medians; on a shared machine the fastest sample says
//! more about the code (every sample is in
//! `target/criterion/<id>/new/sample.json`: `times[i] / iters[i]`).

use std::hint::black_box;
use std::time::Duration;

use airllm_quant::dot::{Kernels, Matmul, MatmulShape, Precision, Scratch, WeightFormat};
use airllm_quant::pool::{Parallel, ThreadPool};
use airllm_quant::{Codec, Floats};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::{bf16, f16};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Weights streamed per GEMV group at least (beyond the 32 MiB L3).
const STREAM_BYTES: usize = 96 << 20;

const FORMATS: [WeightFormat; 7] = [
    WeightFormat::Quant(Codec::Q4_1),
    WeightFormat::Quant(Codec::Q4_0),
    WeightFormat::Quant(Codec::Q8_0),
    WeightFormat::Quant(Codec::Nf4),
    WeightFormat::F16,
    WeightFormat::Bf16,
    WeightFormat::F32,
];

/// Whether a group can match the positional filters given to the bench
/// binary (criterion matches substrings of the full id), so that setting up
/// large weights is skipped for groups the filter excludes.
fn wanted(group: &str) -> bool {
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    filters.is_empty() || filters.iter().any(|f| group.contains(f.as_str()) || f.starts_with(group))
}

fn values(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * 0.05).collect()
}

fn encode(format: WeightFormat, w: &[f32], n: usize, k: usize) -> Vec<u8> {
    match format {
        WeightFormat::F32 => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        WeightFormat::F16 => w.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        WeightFormat::Bf16 => w.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        WeightFormat::Quant(c) => match c.encode_matrix(Floats::F32(w), n, k) {
            Ok(b) => b,
            Err(e) => panic!("encoding {c}: {e}"),
        },
    }
}

fn pools() -> Vec<(usize, ThreadPool)> {
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    [1, 2].into_iter().filter(|&n| n <= all.max(2)).filter_map(|n| ThreadPool::new(n).ok().map(|p| (n, p))).collect()
}

/// The precisions worth measuring for `format` (dense formats have one) and
/// the id prefix of each.
fn modes(format: WeightFormat) -> Vec<(Precision, String)> {
    match format {
        WeightFormat::Quant(_) => Precision::ALL.into_iter().map(|p| (p, format!("{p}-"))).collect(),
        _ => vec![(Precision::default(), String::new())],
    }
}

#[allow(clippy::too_many_arguments)]
fn matmul<P: Parallel>(
    pool: &P,
    scratch: &mut Scratch,
    format: WeightFormat,
    precision: Precision,
    weight: &[u8],
    x: &[f32],
    y: &mut [f32],
    shape: MatmulShape,
) {
    let m = Matmul { shape, format, weight, x, bias: None, precision };
    if let Err(e) = Kernels::best().matmul(&m, y, scratch, pool) {
        panic!("{e}");
    }
}

fn gemv(c: &mut Criterion, pools: &[(usize, ThreadPool)]) {
    let mut rng = StdRng::seed_from_u64(1);
    let shapes = [(576, 576), (1536, 576), (576, 1536), (49152, 576), (4096, 4096), (14336, 4096), (4096, 14336)];
    for &(n, k) in &shapes {
        // f32 at 8B shapes would take 235 MB per matrix; the dense formats are measured on bf16/f16 there.
        let formats: Vec<WeightFormat> = FORMATS
            .into_iter()
            .filter(|&f| !(f == WeightFormat::F32 && k >= 4096) && wanted(&format!("cpu/gemv/{f}/{n}x{k}")))
            .collect();
        if formats.is_empty() {
            continue;
        }
        let w = values(&mut rng, n * k);
        let x = values(&mut rng, k);
        let mut y = vec![0.0f32; n];
        for format in formats {
            let one = encode(format, &w, n, k);
            let copies = STREAM_BYTES.div_ceil(one.len()).max(2);
            let all: Vec<u8> = one.iter().copied().cycle().take(one.len() * copies).collect();
            drop(one);
            let bytes = all.len() / copies;
            let mut g = c.benchmark_group(format!("cpu/gemv/{format}/{n}x{k}"));
            g.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
            g.throughput(Throughput::Bytes(bytes as u64));
            for (precision, mode) in modes(format) {
                for (threads, pool) in pools {
                    let mut scratch = Scratch::new();
                    let mut i = 0;
                    g.bench_function(BenchmarkId::from_parameter(format!("{mode}{threads}t")), |b| {
                        b.iter(|| {
                            let wb = &all[i * bytes..(i + 1) * bytes];
                            i = (i + 1) % copies;
                            let shape = MatmulShape::new(1, n, k);
                            matmul(pool, &mut scratch, format, precision, black_box(wb), &x, &mut y, shape);
                        })
                    });
                }
            }
            g.finish();
        }
    }
}

fn gemm(c: &mut Criterion, pools: &[(usize, ThreadPool)]) {
    let mut rng = StdRng::seed_from_u64(2);
    let cases = [(1536, 576, 128), (576, 1536, 128), (4096, 4096, 128), (14336, 4096, 128)];
    for &(n, k, t) in &cases {
        // f32 at the 8B MLP shape would take 235 MB; the dense formats are measured on bf16/f16 there.
        let formats: Vec<WeightFormat> = FORMATS
            .into_iter()
            .filter(|&f| !(f == WeightFormat::F32 && n * k > 1 << 25) && wanted(&format!("cpu/gemm/{f}/{n}x{k}-t{t}")))
            .collect();
        if formats.is_empty() {
            continue;
        }
        let w = values(&mut rng, n * k);
        let x = values(&mut rng, t * k);
        let mut y = vec![0.0f32; t * n];
        for format in formats {
            let name = format!("cpu/gemm/{format}/{n}x{k}-t{t}");
            let weight = encode(format, &w, n, k);
            let mut g = c.benchmark_group(name);
            let slow = k >= 4096;
            g.sample_size(10)
                .warm_up_time(Duration::from_millis(if slow { 500 } else { 300 }))
                .measurement_time(Duration::from_secs(if slow { 3 } else { 1 }));
            g.throughput(Throughput::Elements((2 * t * n * k) as u64));
            for (precision, mode) in modes(format) {
                for (threads, pool) in pools {
                    let mut scratch = Scratch::new();
                    g.bench_function(BenchmarkId::from_parameter(format!("{mode}{threads}t")), |b| {
                        b.iter(|| {
                            let shape = MatmulShape::new(t, n, k);
                            matmul(pool, &mut scratch, format, precision, black_box(&weight), &x, &mut y, shape)
                        })
                    });
                }
            }
            g.finish();
        }
    }
}

/// The matmuls of one SmolLM2-135M decode step over 30 distinct layers.
fn token(c: &mut Criterion, pools: &[(usize, ThreadPool)]) {
    const LAYERS: usize = 30;
    if !wanted("cpu/token/smollm2-135m-q4_1") {
        return;
    }
    let (h, f, vocab) = (576usize, 1536usize, 49152usize);
    // q, k, v, o, gate, up, down as [n, k]
    let mats = [(h, h), (192, h), (192, h), (h, h), (f, h), (f, h), (h, f)];
    let q41 = WeightFormat::Quant(Codec::Q4_1);
    let mut rng = StdRng::seed_from_u64(3);
    let layer: Vec<Vec<u8>> = mats.iter().map(|&(n, k)| encode(q41, &values(&mut rng, n * k), n, k)).collect();
    let layers: Vec<Vec<Vec<u8>>> = (0..LAYERS).map(|_| layer.clone()).collect();
    let q80 = WeightFormat::Quant(Codec::Q8_0);
    let head = encode(q80, &values(&mut rng, vocab * h), vocab, h);
    let total = LAYERS * layer.iter().map(Vec::len).sum::<usize>() + head.len();
    eprintln!("cpu/token/smollm2-135m-q4_1: {} MB of weights per step", total / 1_000_000);
    let x = values(&mut rng, f);
    let mut y = vec![0.0f32; vocab];
    let mut g = c.benchmark_group("cpu/token/smollm2-135m-q4_1");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(total as u64));
    for precision in Precision::ALL {
        for (threads, pool) in pools {
            let mut scratch = Scratch::new();
            g.bench_function(BenchmarkId::from_parameter(format!("{precision}-{threads}t")), |b| {
                b.iter(|| {
                    for l in &layers {
                        for (&(n, k), wb) in mats.iter().zip(l) {
                            let (x, y) = (&x[..k], &mut y[..n]);
                            matmul(pool, &mut scratch, q41, precision, wb, x, y, MatmulShape::new(1, n, k));
                        }
                    }
                    matmul(pool, &mut scratch, q80, precision, &head, &x[..h], &mut y, MatmulShape::new(1, vocab, h));
                })
            });
        }
    }
    g.finish();
}

fn pool_overhead(c: &mut Criterion) {
    if !wanted("cpu/pool") {
        return;
    }
    let mut rng = StdRng::seed_from_u64(4);
    let (n, k) = (576, 576);
    let q41 = WeightFormat::Quant(Codec::Q4_1);
    let weight = encode(q41, &values(&mut rng, n * k), n, k);
    let x = values(&mut rng, k);
    let mut y = vec![0.0f32; n];
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in [1, 2].into_iter().filter(|&t| t <= all.max(2)) {
        let (Ok(spin), Ok(ray)) =
            (ThreadPool::new(threads), rayon::ThreadPoolBuilder::new().num_threads(threads).build())
        else {
            continue;
        };
        let mut g = c.benchmark_group("cpu/pool");
        g.sample_size(30).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
        g.bench_function(BenchmarkId::new("spin/empty", format!("{threads}t")), |b| {
            b.iter(|| {
                spin.parallel_for(36, |r| {
                    black_box(r);
                })
            })
        });
        g.bench_function(BenchmarkId::new("rayon/empty", format!("{threads}t")), |b| {
            b.iter(|| {
                Parallel::parallel_for(&ray, 36, |r| {
                    black_box(r);
                })
            })
        });
        let mut scratch = Scratch::new();
        let p = Precision::default();
        g.bench_function(BenchmarkId::new("spin/gemv-q4_1-576x576", format!("{threads}t")), |b| {
            b.iter(|| matmul(&spin, &mut scratch, q41, p, &weight, &x, &mut y, MatmulShape::new(1, n, k)))
        });
        g.bench_function(BenchmarkId::new("rayon/gemv-q4_1-576x576", format!("{threads}t")), |b| {
            b.iter(|| matmul(&ray, &mut scratch, q41, p, &weight, &x, &mut y, MatmulShape::new(1, n, k)))
        });
        g.finish();
    }
}

fn benches(c: &mut Criterion) {
    eprintln!("cpu: kernels {:?}", Kernels::best().level());
    let pools = pools();
    pool_overhead(c);
    token(c, &pools);
    gemv(c, &pools);
    gemm(c, &pools);
}

criterion_group!(cpu, benches);
criterion_main!(cpu);
