//! The one error type of `airllm-format`. Every variant names the file,
//! tensor or field at fault and says what to do about it.

use std::io;
use std::path::PathBuf;

/// Errors from reading checkpoints, parsing configs and writing or reading shards.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// An I/O operation on a named file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("reading", "creating", "renaming", ...).
        op: &'static str,
        /// The file at fault.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// `config.json` (or another JSON file) is not valid JSON or lacks a field.
    #[error("{path}: {}", cap(.message))]
    Config {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// The checkpoint names an architecture this engine has no graph for.
    #[error(
        "{path}: unsupported architecture {}; supported: {supported}. \
         Check `architectures` in config.json",
        quote(.found)
    )]
    UnsupportedArchitecture {
        /// The config file.
        path: PathBuf,
        /// What the config says.
        found: String,
        /// The supported class names, comma separated.
        supported: String,
    },
    /// A tensor has a dtype that cannot be read.
    #[error("{path}: tensor {} has dtype {dtype}; only F32, F16 and BF16 are supported", quote(.tensor))]
    UnsupportedDtype {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The dtype found.
        dtype: String,
    },
    /// A safetensors file's header could not be parsed.
    #[error("{path}: not a valid safetensors file ({}); re-download or re-convert it", cap(.reason))]
    Safetensors {
        /// The file at fault.
        path: PathBuf,
        /// The parser's reason.
        reason: String,
    },
    /// A tensor the model needs is missing from the checkpoint.
    #[error("{path}: tensor {} is missing ({why})", quote(.tensor))]
    MissingTensor {
        /// The checkpoint directory or manifest.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// Context.
        why: String,
    },
    /// A tensor has the wrong shape for the model spec.
    #[error("{path}: tensor {} has shape {found:?}, expected {expected:?}", quote(.tensor))]
    Shape {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// Shape in the file.
        found: Vec<usize>,
        /// Shape the spec implies.
        expected: Vec<usize>,
    },
    /// A tensor name that no role mapping knows.
    #[error(
        "{path}: tensor {} is not part of a {family} model; is the checkpoint for another architecture?",
        quote(.tensor)
    )]
    UnknownTensor {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The family being loaded.
        family: String,
    },
    /// The model path could not be resolved.
    #[error("model {} not found: {}", quote(.model), cap(.message))]
    ModelNotFound {
        /// What the user passed.
        model: String,
        /// Where we looked and what to do.
        message: String,
    },
    /// A shard file is damaged, truncated or from another model.
    #[error("shard {path}: {}", cap(.message))]
    BadShard {
        /// The shard file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// The manifest is missing, malformed or inconsistent.
    #[error("manifest {path}: {}", cap(.message))]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// Not enough free disk space for the shards.
    #[error(
        "not enough disk space in {path}: the shards need {needed} bytes ({needed_h}) more, \
         {available} bytes ({available_h}) are free. Free space, pick another --out directory, \
         or use --compression 8bit/4bit"
    )]
    DiskSpace {
        /// The output directory.
        path: PathBuf,
        /// Bytes still to write.
        needed: u64,
        /// Same, human readable.
        needed_h: String,
        /// Bytes free.
        available: u64,
        /// Same, human readable.
        available_h: String,
    },
    /// Encoding a tensor with a codec failed.
    #[error("tensor {}: {source}", quote(.tensor))]
    Quant {
        /// The tensor.
        tensor: String,
        /// The codec's reason.
        #[source]
        source: airllm_quant::QuantError,
    },
    /// A GGUF file could not be parsed.
    #[error("{path}: {}", cap(.message))]
    Gguf {
        /// The GGUF file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Longest excerpt of input (a tensor name, a JSON value) quoted in an error message.
pub const EXCERPT_CHARS: usize = 80;
/// Longest message shown in full; longer ones keep their start and end.
const MESSAGE_CHARS: usize = 2000;

/// `s` quoted for an error message, cut to [`EXCERPT_CHARS`] characters (with its full
/// length in bytes) so that a hostile file cannot make a message megabytes long.
pub fn quote(s: &str) -> String {
    if s.chars().count() <= EXCERPT_CHARS {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(EXCERPT_CHARS).collect();
        format!("{head:?}... ({} bytes)", s.len())
    }
}

/// Any displayable input value, cut like [`quote`] (unquoted).
pub fn excerpt(v: &dyn std::fmt::Display) -> String {
    let s = v.to_string();
    if s.chars().count() <= EXCERPT_CHARS {
        s
    } else {
        let head: String = s.chars().take(EXCERPT_CHARS).collect();
        format!("{head}... ({} bytes)", s.len())
    }
}

/// A message capped at [`MESSAGE_CHARS`] characters (a safety net behind [`quote`]):
/// the start and the end (which says what to do) are kept.
fn cap(m: &str) -> String {
    let n = m.chars().count();
    if n <= MESSAGE_CHARS {
        return m.to_owned();
    }
    let head: String = m.chars().take(MESSAGE_CHARS - 300).collect();
    let tail: String = m.chars().skip(n - 300).collect();
    format!("{head} [... {} characters cut ...] {tail}", n - MESSAGE_CHARS)
}

/// Result alias for this crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;

/// Extension to attach a path and an operation to `io::Result`s.
pub(crate) trait IoContext<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| FormatError::Io { op, path: path.into(), source })
    }
}

/// Human-readable byte count (binary units), for messages and progress.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.2} {}", UNITS[u]) }
}
