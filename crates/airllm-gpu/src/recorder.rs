//! [`Recorder`]: a command encoder plus what the kernels need while recording
//! (per-dispatch uniform parameters, optional GPU timestamps). Every kernel
//! launcher records into one; the caller may also record its own copies
//! through [`Recorder::encoder`], then submits.

use std::num::NonZeroU64;

use crate::bind_cache::BindKey;
use crate::device::GpuContext;
use crate::error::{GpuError, Result};
use crate::pipeline::PipelineKey;
use crate::pool::{BufView, UniformLease};
use crate::timing::{PassTimer, TimerReadback};

/// Records kernel launches for one submission.
///
/// Kernel parameters live in pooled uniform buffers that are uploaded when
/// the recorder submits and given back afterwards, so a recorder must be
/// submitted through [`Recorder::submit`] (dropping it discards the work).
pub struct Recorder<'a> {
    ctx: &'a GpuContext,
    label: String,
    encoder: wgpu::CommandEncoder,
    /// The compute pass consecutive dispatches share (ended by
    /// [`Recorder::encoder`] and [`Recorder::finish`]); wgpu places the
    /// barriers between dispatches that one of them needs. Without profiling
    /// a whole pass over resident units is one compute pass; with profiling
    /// each dispatch gets its own, for its timestamps.
    pass: Option<wgpu::ComputePass<'static>>,
    uniforms: UniformLease<'a>,
    timer: Option<PassTimer>,
}

impl std::fmt::Debug for Recorder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("label", &self.label).finish_non_exhaustive()
    }
}

/// Workgroup grid for `groups` workgroups, split over two dimensions when it
/// exceeds the per-dimension limit (the kernels flatten it back).
pub(crate) fn grid(ctx: &GpuContext, groups: u64) -> Result<(u32, u32)> {
    let max = u64::from(ctx.caps().max_workgroups_per_dim.max(1));
    if groups <= max {
        return Ok((groups as u32, 1));
    }
    let y = groups.div_ceil(max);
    if y > max {
        return Err(GpuError::arg("dispatch", "size", format!("{groups} workgroups exceed {max} x {max}")));
    }
    Ok((max as u32, y as u32))
}

impl<'a> Recorder<'a> {
    /// A new recording on `ctx`. Timestamps are written when profiling is on
    /// ([`GpuContext::set_profiling`]).
    pub fn new(ctx: &'a GpuContext, label: &str) -> Self {
        let encoder = ctx.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        let timer = (ctx.profiling() && ctx.caps().timestamps).then(PassTimer::default);
        Recorder {
            ctx,
            label: label.to_string(),
            encoder,
            pass: None,
            uniforms: UniformLease::new(&ctx.uniforms),
            timer,
        }
    }

    /// The context.
    pub fn ctx(&self) -> &'a GpuContext {
        self.ctx
    }

    /// The command encoder, for the caller's own copies and passes (ends the
    /// open compute pass, so they land after the dispatches recorded so far).
    pub fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        &mut self.encoder
    }

    /// Records one dispatch of `key` with `params` at binding 0 and `binds`
    /// (binding number, view) over a `groups` grid.
    pub(crate) fn dispatch(
        &mut self,
        key: &PipelineKey,
        params: &[u8],
        binds: &[(u32, BufView<'_>)],
        groups: (u32, u32),
    ) -> Result<()> {
        if groups.0 == 0 || groups.1 == 0 {
            return Ok(());
        }
        if !key.supported_by(self.ctx.caps()) {
            return Err(GpuError::MissingFeature {
                op: "kernel launch",
                feature: "SUBGROUP",
                adapter: self.ctx.caps().adapter_name.clone(),
            });
        }
        let caps = self.ctx.caps();
        let device = self.ctx.device();
        let cached = self.ctx.pipelines.get(device, key)?;
        let (ci, off, size) = self.uniforms.push(device, caps.uniform_align, params);
        let mut entries = Vec::with_capacity(binds.len() + 1);
        entries.push((0, self.uniforms.buffer(ci).clone(), off, size));
        for (binding, view) in binds {
            let bsize = bind_size(self.ctx, key, *binding, view)?;
            entries.push((*binding, view.buffer.clone(), view.offset, bsize));
        }
        let bind_group = self.ctx.bind_groups.get(BindKey { pipeline: *key, entries }, |entries| {
            let entries: Vec<wgpu::BindGroupEntry<'_>> = entries
                .iter()
                .map(|(binding, buffer, offset, size)| wgpu::BindGroupEntry {
                    binding: *binding,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset: *offset,
                        size: NonZeroU64::new(*size),
                    }),
                })
                .collect();
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &cached.layout,
                entries: &entries,
            })
        });
        if let Some(timer) = self.timer.as_mut() {
            // One pass per dispatch, so its timestamps bracket this kernel alone.
            self.pass = None;
            let timestamp_writes = Some(timer.next(device, key.profile_label()));
            let mut pass = self.encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(cached.label.as_str()),
                timestamp_writes,
            });
            pass.set_pipeline(&cached.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, 1);
            return Ok(());
        }
        let label = &self.label;
        let encoder = &mut self.encoder;
        let pass = self.pass.get_or_insert_with(|| {
            encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(label.as_str()),
                    timestamp_writes: None,
                })
                .forget_lifetime()
        });
        pass.set_pipeline(&cached.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, 1);
        Ok(())
    }

    /// Uploads the parameters, submits, and returns the submission index
    /// (wait on it with [`GpuContext::wait`]). Validation errors of the
    /// recorded commands come back as [`GpuError::Submit`]. With profiling
    /// on, the kernel times are read later ([`GpuContext::collect_timings`],
    /// [`GpuContext::take_profile`]).
    pub fn submit(self) -> Result<wgpu::SubmissionIndex> {
        let ctx = self.ctx;
        ctx.submit_recorded(vec![self.finish()])
    }

    /// [`submit`](Self::submit), then wait for the GPU to finish it.
    pub fn submit_and_wait(self) -> Result<()> {
        let ctx = self.ctx;
        let index = self.submit()?;
        ctx.wait(Some(index))
    }

    /// Ends the recording without submitting, e.g. to submit several
    /// recordings at once with [`GpuContext::submit_recorded`].
    pub fn finish(self) -> Recorded<'a> {
        let Recorder { ctx, label, mut encoder, pass, uniforms, timer } = self;
        drop(pass);
        let readback = timer.map(|t| t.resolve(ctx.device(), &mut encoder));
        Recorded { label, encoder, uniforms, readback }
    }
}

/// A finished recording: commands plus the uniform chunks they read (held
/// until submitted).
pub struct Recorded<'a> {
    label: String,
    encoder: wgpu::CommandEncoder,
    uniforms: UniformLease<'a>,
    readback: Option<TimerReadback>,
}

impl std::fmt::Debug for Recorded<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorded").field("label", &self.label).finish_non_exhaustive()
    }
}

impl GpuContext {
    /// Submits finished recordings in one `queue.submit`, in order.
    pub fn submit_recorded(&self, recorded: Vec<Recorded<'_>>) -> Result<wgpu::SubmissionIndex> {
        let device = self.device();
        for r in &recorded {
            // lands at the start of the submit below, before any of its commands
            r.uniforms.flush(self.queue());
        }
        let labels = recorded.iter().map(|r| r.label.as_str()).collect::<Vec<_>>().join("+");
        let mut leases = Vec::with_capacity(recorded.len());
        let mut readbacks = Vec::new();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut buffers = Vec::with_capacity(recorded.len());
        for r in recorded {
            buffers.push(r.encoder.finish());
            leases.push(r.uniforms);
            readbacks.extend(r.readback);
        }
        let index = self.queue().submit(buffers);
        if let Some(source) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Submit { label: labels, source });
        }
        // the uniform chunks go back only now, after the submit
        drop(leases);
        // Timestamps are read when the profile is collected (after the caller's
        // own wait), so profiling does not make every submit wait for the GPU.
        for rb in readbacks {
            self.profiler.defer(rb, index.clone());
        }
        Ok(index)
    }
}

/// Size to bind for `view`, after the alignment and limit checks.
fn bind_size(ctx: &GpuContext, key: &PipelineKey, binding: u32, view: &BufView<'_>) -> Result<u64> {
    let caps = ctx.caps();
    let fail = |reason: String| GpuError::InvalidArgument {
        op: "kernel launch",
        arg: "binding",
        reason: format!("{key}, binding {binding}: {reason}"),
    };
    if !view.offset.is_multiple_of(caps.storage_align) {
        return Err(fail(format!(
            "offset {} is not a multiple of the adapter's storage alignment {}",
            view.offset, caps.storage_align
        )));
    }
    // storage bindings are whole u32s; round a ragged tail up inside the buffer
    if !view.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(fail("the buffer was not created with BufferUsages::STORAGE".to_string()));
    }
    let mut size = view.size.max(4).div_ceil(4) * 4;
    if view.offset + size > view.buffer.size() {
        size = view.buffer.size().saturating_sub(view.offset) / 4 * 4;
    }
    if size == 0 || view.offset + size > view.buffer.size() {
        return Err(fail(format!(
            "{}+{} bytes do not fit the {}-byte buffer",
            view.offset,
            view.size,
            view.buffer.size()
        )));
    }
    if size > caps.max_binding {
        return Err(fail(format!(
            "{size} bytes exceed the adapter's largest storage binding ({} bytes)",
            caps.max_binding
        )));
    }
    Ok(size)
}
