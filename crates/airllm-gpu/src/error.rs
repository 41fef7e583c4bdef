//! [`GpuError`]: every failure of this crate, with wgpu's own error kept as
//! the `source` (never replaced by a bare message).

/// Errors of device setup, shader compilation, kernel launches and buffer
/// mapping.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter matched the options.
    #[error(
        "no GPU adapter matches {wanted}; adapters found: {found}. Choose one with \
         GpuOptions::adapter (a case-insensitive name substring; the CLI reads AIRLLM_ADAPTER) \
         or GpuOptions::backend (vulkan, metal, dx12 or gl; AIRLLM_BACKEND). With no GPU, \
         install Mesa's software Vulkan driver lavapipe (e.g. apt-get install mesa-vulkan-drivers)"
    )]
    NoAdapter {
        /// What was asked for.
        wanted: String,
        /// Every adapter seen, `name (backend, type)`, or `none`.
        found: String,
    },

    /// The adapter refused the device request.
    #[error("requesting a device from adapter {adapter:?} failed")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// wgpu's reason.
        #[source]
        source: wgpu::RequestDeviceError,
    },

    /// A backend name that is not one of vulkan, metal, dx12, gl.
    #[error("unknown GPU backend {0:?}: expected vulkan, metal, dx12 or gl")]
    UnknownBackend(String),

    /// The preprocessor rejected a shader (unbalanced `#ifdef`, unknown include).
    #[error("shader {label}: preprocessing failed: {reason}")]
    Preprocess {
        /// Pipeline label (the key's Display).
        label: String,
        /// What is wrong, with the line.
        reason: String,
    },

    /// naga rejected a preprocessed shader (offline validation).
    #[error("shader {label} is invalid WGSL:\n{report}")]
    ShaderInvalid {
        /// Pipeline label.
        label: String,
        /// naga's report, with the source excerpt.
        report: String,
    },

    /// naga could not validate or translate a variant for one backend's
    /// language (offline; see [`crate::translate`]).
    #[error("shader {label} does not translate to {target}:\n{report}")]
    ShaderTranslate {
        /// Pipeline label.
        label: String,
        /// Target language (`spirv`, `msl`, `hlsl`, `glsl`).
        target: &'static str,
        /// naga's (or spirv-val's) report.
        report: String,
    },

    /// Creating a shader module or compute pipeline failed on the device.
    #[error("compiling pipeline {label} failed")]
    Pipeline {
        /// Pipeline label.
        label: String,
        /// wgpu's validation error.
        #[source]
        source: wgpu::Error,
    },

    /// A kernel argument is out of range, misaligned or inconsistent.
    #[error("{op}: argument `{arg}`: {reason}")]
    InvalidArgument {
        /// Kernel or helper name.
        op: &'static str,
        /// Argument name.
        arg: &'static str,
        /// What is wrong and the values involved.
        reason: String,
    },

    /// The adapter lacks a feature an operation needs.
    #[error("{op} needs the adapter feature {feature}, which {adapter:?} does not offer")]
    MissingFeature {
        /// Operation.
        op: &'static str,
        /// Feature name.
        feature: &'static str,
        /// Adapter name.
        adapter: String,
    },

    /// Commands recorded by a [`Recorder`](crate::Recorder) failed wgpu validation at submit.
    #[error("submitting {label:?} failed wgpu validation")]
    Submit {
        /// Recorder label.
        label: String,
        /// wgpu's error.
        #[source]
        source: wgpu::Error,
    },

    /// Mapping a buffer for reading or writing failed.
    #[error("mapping buffer {label:?} failed")]
    Map {
        /// Buffer label.
        label: String,
        /// wgpu's reason.
        #[source]
        source: wgpu::BufferAsyncError,
    },

    /// Getting the mapped range of a buffer failed.
    #[error("reading the mapped range of buffer {label:?} failed")]
    MapRange {
        /// Buffer label.
        label: String,
        /// wgpu's reason.
        #[source]
        source: wgpu::MapRangeError,
    },

    /// Writing a file failed (e.g. dumping shaders).
    #[error("writing {path}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },

    /// Host-memory staging (Vulkan import or host-visible allocation) could
    /// not be set up.
    #[error(
        "host-memory staging: {op} failed: {reason}. GpuOptions::staging = mapped (the default) \
         avoids it"
    )]
    HostStaging {
        /// What was being done.
        op: &'static str,
        /// Why it failed, with the Vulkan result.
        reason: String,
    },

    /// Waiting for submitted work failed (device lost, timeout).
    #[error("waiting for the GPU failed")]
    Poll(#[source] wgpu::PollError),

    /// The shard reader feeding the streaming ring failed.
    #[error(transparent)]
    Reader(Box<airllm_io::IoError>),

    /// The streaming ring got out of step with the pass (a unit delivered out of order).
    #[error("streaming: {0}")]
    Stream(String),
}

impl GpuError {
    pub(crate) fn arg(op: &'static str, arg: &'static str, reason: impl Into<String>) -> Self {
        GpuError::InvalidArgument { op, arg, reason: reason.into() }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = GpuError> = std::result::Result<T, E>;
