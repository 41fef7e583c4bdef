//! codec benches: encode and decode throughput of every codec on a 4096x4096
//! f32 matrix, on one thread and on all threads.
//!
//! Ids: `codec/{encode|decode}/{codec}/{N}t`. Throughput is reported in
//! elements (weights); the matching byte rates are printed once when the
//! benches start (f32 input bytes per weight for encode, encoded bytes per
//! weight for decode), e.g. q8_0 encode at 300 Melem/s reads 1.2 GB/s of f32.

use std::hint::black_box;
use std::time::Duration;

use airllm_quant::{Codec, Floats};
use criterion::{BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng, rngs::StdRng};

const ROWS: usize = 4096;
const COLS: usize = 4096;

pub fn benches(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(7);
    // Sum of uniforms: bell-shaped, like trained weights.
    let x: Vec<f32> = (0..ROWS * COLS).map(|_| (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * 0.05).collect();
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = if all > 1 { vec![1, all] } else { vec![1] };
    let pools: Vec<(usize, rayon::ThreadPool)> = threads
        .into_iter()
        .filter_map(|n| rayon::ThreadPoolBuilder::new().num_threads(n).build().ok().map(|p| (n, p)))
        .collect();
    let elements = (ROWS * COLS) as u64;

    for codec in Codec::ALL {
        let bytes = codec.matrix_bytes(ROWS, COLS);
        eprintln!(
            "codec/{codec}: {ROWS}x{COLS}: encode reads {} MB of f32 (4 B/weight), writes {} MB ({:.4} B/weight)",
            ROWS * COLS * 4 / 1_000_000,
            bytes / 1_000_000,
            bytes as f64 / elements as f64
        );
        let mut encoded = vec![0u8; bytes];
        let mut decoded = vec![0.0f32; ROWS * COLS];
        if let Err(e) = codec.encode_matrix_into(Floats::F32(&x), ROWS, COLS, &mut encoded) {
            eprintln!("codec/{codec}: skipped: {e}");
            continue;
        }

        let mut g = c.benchmark_group(format!("codec/encode/{codec}"));
        g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
        g.throughput(Throughput::Elements(elements));
        for (n, pool) in &pools {
            g.bench_function(BenchmarkId::from_parameter(format!("{n}t")), |b| {
                b.iter(|| {
                    pool.install(|| codec.encode_matrix_into(Floats::F32(black_box(&x)), ROWS, COLS, &mut encoded))
                        .map_err(|e| e.to_string())
                })
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("codec/decode/{codec}"));
        g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
        g.throughput(Throughput::Elements(elements));
        for (n, pool) in &pools {
            g.bench_function(BenchmarkId::from_parameter(format!("{n}t")), |b| {
                b.iter(|| {
                    pool.install(|| codec.decode_matrix_into(black_box(&encoded), ROWS, COLS, &mut decoded))
                        .map_err(|e| e.to_string())
                })
            });
        }
        g.finish();
    }
}
