//! The GGUF container: header, metadata key/values, tensor infos, alignment and
//! the data offset. Works on a byte slice (a memory map of the file), checks
//! every count and length against the bytes that are left before allocating,
//! and turns every malformed input into [`FormatError::Gguf`] naming the file.
//!
//! ```text
//! "GGUF" | version u32 (2 or 3) | tensor_count u64 | kv_count u64
//! kv_count x   { key: string, value_type u32, value }
//! tensor_count x { name: string, n_dims u32, ne[n_dims] u64, ggml_type u32, offset u64 }
//! padding to general.alignment (default 32)
//! tensor data (each tensor at data_offset + offset, offsets aligned)
//! string = len u64 + UTF-8 bytes; array = elem_type u32 + count u64 + elements
//! ```
//! All integers little-endian. `ne[0]` is the length of a row: the PyTorch shape
//! is `ne` reversed.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{FormatError, Result, quote};
use crate::gguf::types::GgmlType;

/// The four magic bytes at the start of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest nesting of arrays accepted (llama.cpp writes at most 2).
const MAX_ARRAY_DEPTH: usize = 8;
/// Most dimensions a ggml tensor has.
const MAX_DIMS: u32 = 4;
/// ggml's `GGML_MAX_NAME`: a tensor name and its terminating NUL fit in 64 bytes,
/// so names are at most 63 bytes (gguf.cpp refuses longer ones).
pub const MAX_TENSOR_NAME: u64 = 63;
/// The GGUF specification's limit on metadata key length.
pub const MAX_KEY_LEN: u64 = 65535;
/// Most tensor infos or metadata entries accepted (the largest released GGUF files
/// have a few thousand tensors and under a hundred keys).
pub const MAX_ENTRIES: u64 = 1 << 20;
/// Most metadata array elements accepted in one file, all arrays together (a
/// vocabulary of a million tokens needs about three million). Each parsed element
/// takes 32 bytes of memory whatever its size in the file, so this bounds memory too.
pub const MAX_ARRAY_ELEMENTS: u64 = 1 << 24;

/// The type tag of a metadata value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum GgufValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl GgufValueType {
    /// From the id stored in the file.
    pub fn from_id(id: u32) -> Option<GgufValueType> {
        use GgufValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The id stored in the file.
    pub const fn id(self) -> u32 {
        use GgufValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// The fewest bytes one value of this type takes in a file (arrays and strings:
    /// their headers). Used to bound counts before allocating.
    const fn min_bytes(self) -> u64 {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    /// Kept as stored: `layer_norm_rms_epsilon` must stay the exact f32.
    F32(f32),
    Bool(bool),
    /// Invalid UTF-8 is replaced by U+FFFD.
    String(String),
    /// Elements all of type `elem`.
    Array {
        /// Element type (kept so that empty arrays round-trip).
        elem: GgufValueType,
        /// The elements.
        items: Vec<GgufValue>,
    },
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// The type tag.
    pub fn value_type(&self) -> GgufValueType {
        match self {
            GgufValue::U8(_) => GgufValueType::U8,
            GgufValue::I8(_) => GgufValueType::I8,
            GgufValue::U16(_) => GgufValueType::U16,
            GgufValue::I16(_) => GgufValueType::I16,
            GgufValue::U32(_) => GgufValueType::U32,
            GgufValue::I32(_) => GgufValueType::I32,
            GgufValue::F32(_) => GgufValueType::F32,
            GgufValue::Bool(_) => GgufValueType::Bool,
            GgufValue::String(_) => GgufValueType::String,
            GgufValue::Array { .. } => GgufValueType::Array,
            GgufValue::U64(_) => GgufValueType::U64,
            GgufValue::I64(_) => GgufValueType::I64,
            GgufValue::F64(_) => GgufValueType::F64,
        }
    }

    /// Any integer type that holds a non-negative value, as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(x) => Some(x.into()),
            GgufValue::U16(x) => Some(x.into()),
            GgufValue::U32(x) => Some(x.into()),
            GgufValue::U64(x) => Some(x),
            GgufValue::I8(x) => u64::try_from(x).ok(),
            GgufValue::I16(x) => u64::try_from(x).ok(),
            GgufValue::I32(x) => u64::try_from(x).ok(),
            GgufValue::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    /// Any integer type, as i64 (u64 values above `i64::MAX` give None).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(x) => Some(x.into()),
            GgufValue::I16(x) => Some(x.into()),
            GgufValue::I32(x) => Some(x.into()),
            GgufValue::I64(x) => Some(x),
            _ => self.as_u64().and_then(|x| i64::try_from(x).ok()),
        }
    }

    /// A float or integer value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(x) => Some(x.into()),
            GgufValue::F64(x) => Some(x),
            _ => self.as_i64().map(|x| x as f64),
        }
    }

    /// A float value as f32: F32 exactly, F64 rounded, integers converted.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            GgufValue::F32(x) => Some(x),
            _ => self.as_f64().map(|x| x as f32),
        }
    }

    /// A boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements of an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array { items, .. } => Some(items),
            _ => None,
        }
    }
}

impl fmt::Display for GgufValue {
    /// Scalars as they are, strings quoted (long ones shortened), arrays as
    /// `[type; n] [first few ...]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgufValue::U8(x) => write!(f, "{x}"),
            GgufValue::I8(x) => write!(f, "{x}"),
            GgufValue::U16(x) => write!(f, "{x}"),
            GgufValue::I16(x) => write!(f, "{x}"),
            GgufValue::U32(x) => write!(f, "{x}"),
            GgufValue::I32(x) => write!(f, "{x}"),
            GgufValue::F32(x) => write!(f, "{x:e}"),
            GgufValue::Bool(x) => write!(f, "{x}"),
            GgufValue::U64(x) => write!(f, "{x}"),
            GgufValue::I64(x) => write!(f, "{x}"),
            GgufValue::F64(x) => write!(f, "{x:e}"),
            GgufValue::String(s) => {
                const MAX: usize = 80;
                if s.chars().count() > MAX {
                    let short: String = s.chars().take(MAX).collect();
                    write!(f, "{short:?}... ({} bytes)", s.len())
                } else {
                    write!(f, "{s:?}")
                }
            }
            GgufValue::Array { elem, items } => {
                write!(f, "[{elem:?}; {}]", items.len())?;
                if !items.is_empty() {
                    f.write_str(" [")?;
                    for (i, v) in items.iter().take(5).enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        write!(f, "{v}")?;
                    }
                    if items.len() > 5 {
                        f.write_str(", ...")?;
                    }
                    f.write_str("]")?;
                }
                Ok(())
            }
        }
    }
}

/// One tensor's entry in the GGUF header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// Name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in GGUF order: `ne[0]` is the row length (the last PyTorch dim).
    pub ne: Vec<u64>,
    /// The ggml type id as stored.
    pub type_id: u32,
    /// The type, if known.
    pub ggml_type: Option<GgmlType>,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Absolute byte offset in the file.
    pub file_offset: u64,
    /// Stored byte length (0 when the type is unknown).
    pub byte_len: u64,
}

impl GgufTensorInfo {
    /// PyTorch-order shape (`ne` reversed), e.g. `[out, in]` for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.ne.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// The type's name ("Q4_K", or "type 99" when unknown).
    pub fn type_name(&self) -> String {
        match self.ggml_type {
            Some(t) => t.name(),
            None => format!("unknown type {}", self.type_id),
        }
    }
}

/// Everything in a GGUF file except the tensor data: header, metadata and
/// tensor infos, with typed accessors.
#[derive(Clone, Debug)]
pub struct GgufMetadata {
    /// The file (for errors).
    pub path: PathBuf,
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Metadata key/values in file order.
    pub kv: Vec<(String, GgufValue)>,
    /// Tensor infos in file order.
    pub tensors: Vec<GgufTensorInfo>,
    /// Data alignment (`general.alignment`, default 32).
    pub alignment: u64,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
    /// Size of the file (bytes parsed).
    pub file_size: u64,
    index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl GgufMetadata {
    /// Parse the header, metadata and tensor infos of a GGUF file held in `bytes`
    /// (the whole file; tensor extents are checked against its length). `path` is
    /// used in errors only.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<GgufMetadata> {
        GgufMetadata::parse_inner(bytes, None, path)
    }

    /// Parse from the first `bytes.len()` bytes of a GGUF file of `file_size` bytes
    /// (at least the header, metadata and tensor infos): the same checks as
    /// [`GgufMetadata::parse`], tensor extents checked against `file_size`. For tools
    /// that read only the start of a large file, and for fuzzing the metadata of real
    /// files whose tensor data is left out.
    pub fn parse_prefix(bytes: &[u8], file_size: u64, path: &Path) -> Result<GgufMetadata> {
        GgufMetadata::parse_inner(bytes, Some(file_size.max(bytes.len() as u64)), path)
    }

    fn parse_inner(bytes: &[u8], file_size: Option<u64>, path: &Path) -> Result<GgufMetadata> {
        let mut r = Reader { b: bytes, pos: 0, path, elements: 0 };
        let magic = r.take(4, "the magic bytes")?;
        if magic != GGUF_MAGIC {
            return Err(r.err_at(
                0,
                format!(
                    "not a GGUF file (starts with {:02x?}, expected \"GGUF\"); is it a safetensors or \
                     PyTorch file?",
                    magic
                ),
            ));
        }
        let version = r.u32("the version")?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(r.err(
                    "GGUF version 1 is obsolete and not supported; re-convert the model with a current llama.cpp",
                ));
            }
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(r.err("big-endian GGUF files are not supported; use a little-endian conversion"));
            }
            v => {
                return Err(r.err(&format!("unsupported GGUF version {v} (this reader knows versions 2 and 3)")));
            }
        }
        let tensor_count = r.u64("the tensor count")?;
        let kv_count = r.u64("the metadata count")?;
        // Bound counts by the bytes left (a kv takes at least 13 bytes: key length,
        // type and a one-byte value; a tensor info 33: a one-byte name, one dimension,
        // type and offset) and by sane maxima.
        r.check_count(kv_count, 13, "metadata entries")?;
        r.check_count(tensor_count, 33, "tensor infos")?;

        // Counts are bounded by the file size above; capacities are capped further so
        // that a damaged header cannot make us reserve much more than we parse.
        let mut kv = Vec::with_capacity(cap(kv_count));
        let mut index = HashMap::with_capacity(cap(kv_count));
        for i in 0..kv_count {
            let at = r.pos;
            let key = r.string_max("a metadata key", MAX_KEY_LEN)?;
            let ty = r.u32("a metadata value type")?;
            let ty = GgufValueType::from_id(ty).ok_or_else(|| {
                r.err_at(
                    at,
                    format!("metadata entry {i} ({}) has unknown value type {ty}; the file is damaged", quote(&key)),
                )
            })?;
            let value = r.value(ty, 0).map_err(|e| with_key(e, &key))?;
            if index.insert(key.clone(), kv.len()).is_some() {
                return Err(r.err_at(at, format!("metadata key {} appears twice; the file is damaged", quote(&key))));
            }
            kv.push((key, value));
        }

        let alignment = match kv.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= (1 << 30) => a,
                _ => {
                    return Err(
                        r.err(&format!("general.alignment is {v}; it must be a power of two (llama.cpp writes 32)"))
                    );
                }
            },
        };

        let mut tensors = Vec::with_capacity(cap(tensor_count));
        let mut tensor_index = HashMap::with_capacity(cap(tensor_count));
        for i in 0..tensor_count {
            let at = r.pos;
            let name = r.string_max("a tensor name", MAX_TENSOR_NAME)?;
            let n_dims = r.u32("a tensor's dimension count")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.err_at(
                    at,
                    format!("tensor {} has {n_dims} dimensions; ggml tensors have 1 to {MAX_DIMS}", quote(&name)),
                ));
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(r.u64("a tensor dimension")?);
            }
            let type_id = r.u32("a tensor type")?;
            let offset = r.u64("a tensor offset")?;
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(r.err_at(at, format!("tensor {} appears twice; the file is damaged", quote(&name))));
            }
            let ggml_type = GgmlType::from_id(type_id);
            let byte_len = match ggml_type {
                Some(t) => {
                    tensor_bytes(&ne, t).map_err(|m| r.err_at(at, format!("tensor {i} {}: {m}", quote(&name))))?
                }
                None => {
                    if ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).is_none() {
                        return Err(r.err_at(at, format!("tensor {i} {}: dimensions {ne:?} overflow", quote(&name))));
                    }
                    0
                }
            };
            tensors.push(GgufTensorInfo { name, ne, type_id, ggml_type, offset, file_offset: 0, byte_len });
        }

        let header_end = r.pos as u64;
        let data_offset =
            header_end.div_ceil(alignment).checked_mul(alignment).ok_or_else(|| r.err("data offset overflows"))?;
        let whole_file = file_size.is_none();
        let file_size = file_size.unwrap_or(bytes.len() as u64);
        if data_offset > file_size && !tensors.is_empty() {
            return Err(r.err(&format!(
                "the tensor data should start at byte {data_offset} but the file has only {file_size} bytes; it is truncated"
            )));
        }
        for t in &mut tensors {
            if t.offset % alignment != 0 {
                return Err(r.err(&format!(
                    "tensor {} starts at data offset {}, not a multiple of the alignment {alignment}; the file is damaged",
                    quote(&t.name),
                    t.offset
                )));
            }
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.byte_len));
            match (start, end) {
                (Some(s), Some(e)) if e <= file_size => t.file_offset = s,
                _ => {
                    return Err(r.err(&format!(
                        "tensor {} ({} bytes at data offset {}) extends past the end of the file ({file_size} bytes); \
                         the file is truncated (an interrupted download?)",
                        quote(&t.name),
                        t.byte_len,
                        t.offset
                    )));
                }
            }
        }
        // Extents must not overlap: two tensors sharing bytes means a damaged (or
        // hand-crafted) tensor table, and one of them would read the other's weights.
        let mut extents: Vec<(u64, u64, usize)> = tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| t.byte_len > 0)
            .map(|(i, t)| (t.offset, t.byte_len, i))
            .collect();
        extents.sort_unstable();
        for w in extents.windows(2) {
            let ((a_off, a_len, a), (b_off, _, b)) = (w[0], w[1]);
            if a_off + a_len > b_off {
                return Err(r.err(&format!(
                    "tensors {} (data offset {a_off}, {a_len} bytes) and {} (data offset {b_off}) overlap; \
                     the file is damaged",
                    quote(&tensors[a].name),
                    quote(&tensors[b].name)
                )));
            }
        }
        // Packed as llama.cpp writes and requires them (gguf.cpp refuses anything else):
        // in file order, each tensor starts where the previous one ends, padded to the
        // alignment, and the file ends there (plus at most the padding). A tensor whose
        // type or shape was changed to a smaller one leaves a gap or trailing bytes, and
        // would otherwise read the wrong bytes without an error.
        let mut expected = 0u64;
        let mut packed = true;
        for t in &tensors {
            if t.ggml_type.is_none() {
                // Unknown size: nothing after it can be checked (opening it fails anyway).
                packed = false;
                break;
            }
            if t.offset != expected {
                return Err(r.err(&format!(
                    "tensor {} starts at data offset {}, but the tensors before it end at {expected}; tensors \
                     must be packed in order (as llama.cpp writes them). The file is damaged",
                    quote(&t.name),
                    t.offset
                )));
            }
            expected = (t.offset + t.byte_len).div_ceil(alignment) * alignment;
        }
        if packed && whole_file && !tensors.is_empty() {
            let data_end = data_offset.saturating_add(expected);
            if file_size > data_end {
                return Err(r.err(&format!(
                    "{} bytes follow the last tensor's data (which ends at byte {data_end}); the tensor table does \
                     not describe this file. It is damaged",
                    file_size - data_end
                )));
            }
        }
        Ok(GgufMetadata {
            path: path.to_owned(),
            version,
            kv,
            tensors,
            alignment,
            data_offset,
            file_size,
            index,
            tensor_index,
        })
    }

    /// A value by key.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.index.get(key).map(|&i| &self.kv[i].1)
    }

    /// A string value (None if absent or not a string).
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(GgufValue::as_str)
    }

    /// A non-negative integer value of any integer type.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(GgufValue::as_u64)
    }

    /// A float value (F32 exactly as stored).
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key).and_then(GgufValue::as_f32)
    }

    /// A boolean value.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(GgufValue::as_bool)
    }

    /// An array value's elements.
    pub fn get_array(&self, key: &str) -> Option<&[GgufValue]> {
        self.get(key).and_then(GgufValue::as_array)
    }

    /// `general.architecture` ("llama", "qwen2", ...).
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// `general.name`.
    pub fn name(&self) -> Option<&str> {
        self.get_str("general.name")
    }

    /// A tensor info by name.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Count of tensors per ggml type name, most frequent first (for `inspect`).
    pub fn type_histogram(&self) -> Vec<(String, usize)> {
        let mut m: HashMap<String, usize> = HashMap::new();
        for t in &self.tensors {
            *m.entry(t.type_name()).or_default() += 1;
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    pub(crate) fn err(&self, message: impl Into<String>) -> FormatError {
        FormatError::Gguf { path: self.path.clone(), message: message.into() }
    }
}

/// Stored bytes of a tensor of type `t` with GGUF dims `ne`.
fn tensor_bytes(ne: &[u64], t: GgmlType) -> std::result::Result<u64, String> {
    let (block, size) = t.block();
    let row = ne.first().copied().unwrap_or(1);
    if row % block as u64 != 0 {
        return Err(format!("row length {row} is not a multiple of the {t} block size {block}"));
    }
    let mut numel: u64 = 1;
    for &d in ne {
        numel = numel.checked_mul(d).ok_or_else(|| format!("dimensions {ne:?} overflow"))?;
    }
    (numel / block as u64).checked_mul(size as u64).ok_or_else(|| format!("dimensions {ne:?} overflow"))
}

/// A capacity to reserve for `n` parsed items: at most 65536 up front.
fn cap(n: u64) -> usize {
    n.min(1 << 16) as usize
}

fn with_key(e: FormatError, key: &str) -> FormatError {
    match e {
        FormatError::Gguf { path, message } => {
            FormatError::Gguf { path, message: format!("metadata {}: {message}", quote(key)) }
        }
        other => other,
    }
}

/// A bounds-checked little-endian cursor.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// Metadata array elements parsed so far (bounded by [`MAX_ARRAY_ELEMENTS`]).
    elements: u64,
}

impl<'a> Reader<'a> {
    fn err(&self, message: &str) -> FormatError {
        self.err_at(self.pos, message.to_owned())
    }

    fn err_at(&self, at: usize, message: String) -> FormatError {
        FormatError::Gguf { path: self.path.to_owned(), message: format!("at byte {at}: {message}") }
    }

    fn left(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        match self.pos.checked_add(n).and_then(|e| self.b.get(self.pos..e)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(self.err(&format!(
                "the file ends while reading {what} ({n} bytes needed, {} left); it is truncated",
                self.left()
            ))),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn check_count(&self, count: u64, min_each: u64, what: &str) -> Result<()> {
        if count > MAX_ENTRIES {
            return Err(self.err(&format!(
                "the header declares {count} {what}, more than any model has (at most {MAX_ENTRIES}); \
                 the file is damaged or not a GGUF file"
            )));
        }
        if count > self.left() / min_each {
            return Err(self.err(&format!(
                "the header declares {count} {what}, more than the {} bytes left in the file can hold; \
                 the file is damaged or not a GGUF file",
                self.left()
            )));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String> {
        self.string_max(what, u64::MAX)
    }

    /// A string of at most `max` bytes (checked before anything is read or quoted).
    fn string_max(&mut self, what: &str, max: u64) -> Result<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > max {
            return Err(
                self.err_at(at, format!("{what} claims {len} bytes, more than the {max} allowed; the file is damaged"))
            );
        }
        if len > self.left() {
            return Err(self.err_at(
                at,
                format!(
                    "{what} claims {len} bytes but only {} are left; the file is damaged or truncated",
                    self.left()
                ),
            ));
        }
        let s = self.take(len as usize, what)?;
        Ok(String::from_utf8_lossy(s).into_owned())
    }

    fn value(&mut self, ty: GgufValueType, depth: usize) -> Result<GgufValue> {
        use GgufValueType as T;
        Ok(match ty {
            T::U8 => GgufValue::U8(self.array::<1>("a u8")?[0]),
            T::I8 => GgufValue::I8(self.array::<1>("an i8")?[0] as i8),
            T::U16 => GgufValue::U16(u16::from_le_bytes(self.array("a u16")?)),
            T::I16 => GgufValue::I16(i16::from_le_bytes(self.array("an i16")?)),
            T::U32 => GgufValue::U32(self.u32("a u32")?),
            T::I32 => GgufValue::I32(i32::from_le_bytes(self.array("an i32")?)),
            T::F32 => GgufValue::F32(f32::from_le_bytes(self.array("an f32")?)),
            T::Bool => {
                let at = self.pos;
                match self.array::<1>("a bool")?[0] {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    b => return Err(self.err_at(at, format!("bool value {b} is neither 0 nor 1"))),
                }
            }
            T::String => GgufValue::String(self.string("a string value")?),
            T::U64 => GgufValue::U64(self.u64("a u64")?),
            T::I64 => GgufValue::I64(i64::from_le_bytes(self.array("an i64")?)),
            T::F64 => GgufValue::F64(f64::from_le_bytes(self.array("an f64")?)),
            T::Array => {
                let at = self.pos;
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err_at(at, format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels")));
                }
                let et = self.u32("an array element type")?;
                let elem = GgufValueType::from_id(et)
                    .ok_or_else(|| self.err_at(at, format!("array has unknown element type {et}")))?;
                let count = self.u64("an array length")?;
                if count > self.left() / elem.min_bytes() {
                    return Err(self.err_at(
                        at,
                        format!(
                            "array of {count} {elem:?} values does not fit in the {} bytes left; the file is damaged",
                            self.left()
                        ),
                    ));
                }
                self.elements = self.elements.saturating_add(count);
                if self.elements > MAX_ARRAY_ELEMENTS {
                    return Err(self.err_at(
                        at,
                        format!(
                            "array of {count} values brings the metadata to more than {MAX_ARRAY_ELEMENTS} array \
                             elements, more than any model has; the file is damaged"
                        ),
                    ));
                }
                let mut items = Vec::with_capacity(cap(count));
                for _ in 0..count {
                    items.push(self.value(elem, depth + 1)?);
                }
                GgufValue::Array { elem, items }
            }
        })
    }
}
