//! Host staging against lavapipe (or whatever Vulkan adapter exists): fill,
//! copy into a storage buffer, read back, reuse, for every kind the device
//! gives. Skipped (passing, with the reason printed) without a Vulkan adapter
//! or the extension.

use std::sync::Arc;

use super::*;
use crate::device::{GpuBackend, GpuOptions};
use crate::readback::read_buffer_bytes;

fn context(kind: StagingKind) -> Option<Arc<GpuContext>> {
    let opts = GpuOptions { backend: Some(GpuBackend::Vulkan), staging: kind, ..Default::default() };
    match GpuContext::new(&opts) {
        Ok(ctx) => Some(Arc::new(ctx)),
        Err(e) => {
            eprintln!("skipping {kind} staging: {e}");
            None
        }
    }
}

fn pattern(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Fills `st` with `data` from two threads (as io workers would), copies
/// `data.len()` bytes to `dst` at `dst_offset`, and checks them there.
fn round(ctx: &GpuContext, st: &mut Staging, dst: &wgpu::Buffer, dst_offset: u64, data: &[u8]) {
    let ptr = st.writable(ctx).expect("writable");
    assert!(ptr.len() >= data.len());
    let half = data.len() / 2 / 4 * 4;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: writable until release; the two threads write disjoint halves.
            unsafe { ptr.write(0, &data[..half]) }.expect("in bounds")
        });
        s.spawn(|| {
            // SAFETY: as above.
            unsafe { ptr.write(half, &data[half..]) }.expect("in bounds")
        });
    });
    st.release();
    let mut enc = ctx.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("copy") });
    st.encode_copy(&mut enc, 0, dst, dst_offset, data.len() as u64).expect("copy");
    ctx.queue().submit([enc.finish()]);
    st.submitted(ctx);
    let got = read_buffer_bytes(ctx, dst, dst_offset, data.len() as u64).expect("readback");
    let bad = got.iter().zip(data).position(|(a, b)| a != b);
    assert!(bad.is_none(), "{} staging: byte {:?} differs after the copy", st.kind(), bad);
}

fn check_kind(kind: StagingKind) {
    let Some(ctx) = context(kind) else { return };
    assert_eq!(ctx.caps().staging, kind);
    let n = (3 << 20) + 4 * 13; // not a multiple of the page size
    let mut st = Staging::new(&ctx, "test.staging", n as u64).expect("staging buffer");
    assert_eq!(st.kind(), kind);
    assert!(st.size() >= n as u64);
    if kind == StagingKind::HostImported {
        assert!(ctx.caps().host_import && ctx.caps().host_import_align > 0);
        assert!(st.size().is_multiple_of(ctx.caps().host_import_align));
    }
    let dst = ctx.create_storage_buffer("test.dst", (n + 4096) as u64);
    round(&ctx, &mut st, &dst, 0, &pattern(n, 1));
    // reuse: the second fill must wait for the first copy and land whole
    round(&ctx, &mut st, &dst, 4096, &pattern(n, 2));
    // many buffers created and dropped while copies may be in flight
    for i in 0..4 {
        let mut s = Staging::new(&ctx, "test.churn", 1 << 16).expect("staging buffer");
        round(&ctx, &mut s, &dst, 0, &pattern(1 << 16, 10 + i));
    }
    eprintln!("{kind} staging on {}: fill, copy, readback and reuse ok", ctx.caps().adapter_name);
}

#[test]
fn host_imported_fills_copy_and_read_back() {
    check_kind(StagingKind::HostImported);
}

#[test]
fn host_visible_fills_copy_and_read_back() {
    check_kind(StagingKind::HostVisible);
}

#[test]
fn mapped_fills_copy_and_read_back() {
    check_kind(StagingKind::Mapped);
}

#[test]
fn writing_before_the_copy_is_reported_submitted_is_an_error() {
    let Some(ctx) = context(StagingKind::HostImported) else { return };
    let mut st = Staging::new(&ctx, "test.contract", 4096).expect("staging buffer");
    let dst = ctx.create_storage_buffer("test.dst", 4096);
    st.writable(&ctx).expect("writable");
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    assert!(st.encode_copy(&mut enc, 0, &dst, 0, 64).is_err(), "copy while writable");
    st.release();
    st.encode_copy(&mut enc, 0, &dst, 0, 64).expect("copy");
    assert!(st.encode_copy(&mut enc, 2, &dst, 0, 64).is_err(), "misaligned");
    assert!(st.encode_copy(&mut enc, 0, &dst, 4096 - 60, 64).is_err(), "out of bounds");
    ctx.queue().submit([enc.finish()]);
    let e = st.writable(&ctx).err().map(|e| e.to_string());
    assert!(e.as_deref().is_some_and(|e| e.contains("submitted")), "{e:?}");
    st.submitted(&ctx);
    st.writable(&ctx).expect("writable after submitted");
}

#[test]
fn kinds_parse_and_auto_resolves() {
    for k in StagingKind::ALL {
        assert_eq!(k.name().parse::<StagingKind>().ok(), Some(k));
    }
    assert_eq!("HOST_IMPORTED".parse::<StagingKind>().ok(), Some(StagingKind::HostImported));
    assert!("pinned".parse::<StagingKind>().is_err());
    let Some(ctx) = context(StagingKind::Auto) else { return };
    assert_ne!(ctx.caps().staging, StagingKind::Auto);
    if ctx.caps().device_type != wgpu::DeviceType::DiscreteGpu {
        assert_eq!(ctx.caps().staging, StagingKind::Mapped, "only discrete cards stage in host RAM by default");
    }
}

#[test]
fn default_options_keep_mapped_staging() {
    let Some(ctx) = context(StagingKind::default()) else { return };
    assert_eq!(ctx.caps().staging, StagingKind::Mapped);
    // a host kind the device was not opened for is refused, not faked
    if !ctx.caps().host_import {
        assert!(Staging::with_kind(&ctx, "x", 64, StagingKind::HostImported).is_err());
    }
}
