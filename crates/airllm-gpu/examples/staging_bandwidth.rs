//! Staging bandwidth per [`StagingKind`]: CPU threads fill a staging buffer
//! from a RAM source (as io workers do from the page cache), then the GPU
//! copies it into a device-local buffer. Prints one line per kind (JSON with
//! `--json`, for `scripts/device-check.sh`):
//!
//! - `fill_gbs`: the threads' memcpy into the staging memory;
//! - `copy_gbs`: `copy_buffer_to_buffer` into VRAM, submit to finished;
//! - `serial_gbs`: one buffer, fill then copy, repeated;
//! - `pipelined_gbs`: two buffers, filling one while the other is copied
//!   (the streaming ring's steady state).
//!
//! ```text
//! cargo run --release -p airllm-gpu --example staging_bandwidth -- \
//!     [--size-mib 256] [--threads N] [--iters 6] [--kinds mapped,host-imported,host-visible] [--json]
//! ```
//!
//! The adapter is the best one, or the one `AIRLLM_BACKEND` / `AIRLLM_ADAPTER`
//! name. On a software device (lavapipe) "VRAM" is host RAM too, so the kinds
//! measure alike there: the PCIe effect the host kinds aim at (CPU stores into
//! BAR-mapped VRAM, ARCHITECTURE.md) shows only on a discrete card.

use std::time::{Duration, Instant};

use airllm_gpu::testing::test_options;
use airllm_gpu::{GpuContext, GpuOptions, MappedPtr, Staging, StagingKind};
use anyhow::{Context, bail};

struct Args {
    size: usize,
    threads: usize,
    iters: usize,
    kinds: Vec<StagingKind>,
    json: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        size: 256 << 20,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        iters: 6,
        kinds: vec![StagingKind::Mapped, StagingKind::HostImported, StagingKind::HostVisible],
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--size-mib" => a.size = value()?.parse::<usize>().context("--size-mib")? << 20,
            "--threads" => a.threads = value()?.parse().context("--threads")?,
            "--iters" => a.iters = value()?.parse().context("--iters")?,
            "--kinds" => {
                a.kinds = value()?.split(',').map(|k| k.parse::<StagingKind>()).collect::<Result<_, _>>()?;
            }
            "--json" => a.json = true,
            "-h" | "--help" => {
                println!(
                    "staging_bandwidth [--size-mib N] [--threads N] [--iters N] [--kinds mapped,host-imported,host-visible] [--json]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if a.size == 0 || a.threads == 0 || a.iters == 0 {
        bail!("--size-mib, --threads and --iters must be positive");
    }
    Ok(a)
}

/// memcpy of `src` into the staging bytes, split over `threads`.
fn fill(ptr: MappedPtr, src: &[u8], threads: usize) {
    let chunk = src.len().div_ceil(threads).div_ceil(4096) * 4096;
    std::thread::scope(|s| {
        for (i, part) in src.chunks(chunk).enumerate() {
            s.spawn(move || {
                // SAFETY: the staging buffer is writable until release (after
                // this scope); the chunks are disjoint.
                unsafe { ptr.write(i * chunk, part) }.expect("chunk in bounds");
            });
        }
    });
}

fn gbs(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e9
}

struct Figures {
    fill: Duration,
    copy: Duration,
    serial: Duration,
    pipelined: Duration,
}

fn measure(ctx: &GpuContext, kind: StagingKind, a: &Args, src: &[u8]) -> anyhow::Result<Figures> {
    let n = a.size as u64;
    let dst = ctx.create_storage_buffer("bench.vram", n);
    let mut bufs =
        [Staging::with_kind(ctx, "bench.staging0", n, kind)?, Staging::with_kind(ctx, "bench.staging1", n, kind)?];
    let copy = |st: &mut Staging| -> anyhow::Result<()> {
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        st.encode_copy(&mut enc, 0, &dst, 0, n)?;
        ctx.queue().submit([enc.finish()]);
        st.submitted(ctx);
        Ok(())
    };
    // warm-up: first touches of every page and of the destination
    for st in bufs.iter_mut() {
        fill(st.writable(ctx)?, src, a.threads);
        st.release();
        copy(st)?;
    }
    ctx.wait(None)?;
    let (mut f, mut c) = (Duration::ZERO, Duration::ZERO);
    let t_serial = Instant::now();
    for _ in 0..a.iters {
        let st = &mut bufs[0];
        let ptr = st.writable(ctx)?;
        let t = Instant::now();
        fill(ptr, src, a.threads);
        f += t.elapsed();
        st.release();
        let t = Instant::now();
        copy(st)?;
        ctx.wait(None)?;
        c += t.elapsed();
    }
    let serial = t_serial.elapsed();
    let t_pipe = Instant::now();
    for i in 0..a.iters {
        let st = &mut bufs[i % 2];
        fill(st.writable(ctx)?, src, a.threads);
        st.release();
        copy(st)?;
    }
    ctx.wait(None)?;
    let pipelined = t_pipe.elapsed();
    Ok(Figures { fill: f, copy: c, serial, pipelined })
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    let (base, _) = test_options()?;
    // the source: RAM already touched, like a page-cache-hot shard
    let src: Vec<u8> = (0..a.size).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3]).collect();
    for &kind in &a.kinds {
        let ctx = match GpuContext::new(&GpuOptions { staging: kind, ..base.clone() }) {
            Ok(c) => c,
            Err(e) => {
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({"bench": "staging", "kind": kind.name(), "skipped": e.to_string()})
                    );
                } else {
                    println!("{kind}: skipped: {e}");
                }
                continue;
            }
        };
        let r = measure(&ctx, kind, &a, &src).with_context(|| format!("{kind} staging"))?;
        let total = a.size * a.iters;
        let caps = ctx.caps();
        if a.json {
            println!(
                "{}",
                serde_json::json!({
                    "bench": "staging",
                    "kind": kind.name(),
                    "adapter": caps.adapter_name,
                    "backend": format!("{:?}", caps.backend),
                    "device_type": format!("{:?}", caps.device_type),
                    "bytes": a.size,
                    "iters": a.iters,
                    "threads": a.threads,
                    "fill_gbs": gbs(total, r.fill),
                    "copy_gbs": gbs(total, r.copy),
                    "serial_gbs": gbs(total, r.serial),
                    "pipelined_gbs": gbs(total, r.pipelined),
                })
            );
        } else {
            println!(
                "{kind:>13} on {} ({:?}), {} MiB x {}, {} threads: fill {:.2} GB/s, copy {:.2} GB/s, \
                 fill+copy {:.2} GB/s, pipelined {:.2} GB/s",
                caps.adapter_name,
                caps.backend,
                a.size >> 20,
                a.iters,
                a.threads,
                gbs(total, r.fill),
                gbs(total, r.copy),
                gbs(total, r.serial),
                gbs(total, r.pipelined)
            );
        }
    }
    Ok(())
}
