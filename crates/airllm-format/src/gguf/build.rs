//! A minimal GGUF writer, for tests and tools that need small GGUF files
//! (tiny random models, malformed-input tests). It writes what
//! [`GgufMetadata::parse`](crate::gguf::GgufMetadata::parse) reads: any metadata,
//! tensors as raw bytes of any ggml type, version 2 or 3, any alignment.

use std::path::Path;

use half::f16;

use crate::error::{IoContext, Result};
use crate::gguf::parse::{DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufValue, GgufValueType};
use crate::gguf::types::GgmlType;

struct PendingTensor {
    name: String,
    ne: Vec<u64>,
    type_id: u32,
    data: Vec<u8>,
}

/// Builds a GGUF file in memory: any metadata, tensors as raw bytes of any
/// ggml type (PyTorch-order shapes, written reversed), version 2 or 3, any alignment.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use airllm_format::gguf::{GgufBuilder, GgufMetadata, GgufValue};
/// let mut b = GgufBuilder::new();
/// b.kv("general.architecture", GgufValue::String("llama".into()));
/// b.tensor_f32("output_norm.weight", &[4], &[1.0, 1.0, 1.0, 1.0]);
/// let bytes = b.to_bytes();
/// let meta = GgufMetadata::parse(&bytes, "tiny.gguf".as_ref())?;
/// assert_eq!(meta.architecture(), Some("llama"));
/// assert_eq!(meta.tensor("output_norm.weight").map(|t| t.shape()), Some(vec![4]));
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct GgufBuilder {
    version: u32,
    alignment: Option<u64>,
    kv: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
}

impl std::fmt::Debug for GgufBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufBuilder").field("kv", &self.kv.len()).field("tensors", &self.tensors.len()).finish()
    }
}

impl GgufBuilder {
    /// An empty version-3 file with the default alignment (32).
    pub fn new() -> GgufBuilder {
        GgufBuilder { version: 3, ..GgufBuilder::default() }
    }

    /// Set the version field (2 and 3 share the layout).
    pub fn version(&mut self, v: u32) -> &mut Self {
        self.version = v;
        self
    }

    /// Set the data alignment; also writes `general.alignment` (u32).
    pub fn alignment(&mut self, a: u64) -> &mut Self {
        self.alignment = Some(a);
        self.kv.retain(|(k, _)| k != "general.alignment");
        self.kv.push(("general.alignment".into(), GgufValue::U32(a as u32)));
        self
    }

    /// Add a metadata entry (appended; an existing key is replaced in place).
    pub fn kv(&mut self, key: &str, value: GgufValue) -> &mut Self {
        match self.kv.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => self.kv.push((key.to_owned(), value)),
        }
        self
    }

    /// Add a tensor from raw stored bytes. `shape` is in PyTorch order (`[out, in]`);
    /// it is written reversed, as GGUF stores it. The bytes are not checked.
    pub fn tensor_raw(&mut self, name: &str, ty: GgmlType, shape: &[usize], data: Vec<u8>) -> &mut Self {
        self.tensor_raw_id(name, ty.id(), shape, data)
    }

    /// Like [`tensor_raw`](Self::tensor_raw) with a numeric type id (unknown ids for tests).
    pub fn tensor_raw_id(&mut self, name: &str, type_id: u32, shape: &[usize], data: Vec<u8>) -> &mut Self {
        let ne = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensors.push(PendingTensor { name: name.to_owned(), ne, type_id, data });
        self
    }

    /// Add an F32 tensor.
    pub fn tensor_f32(&mut self, name: &str, shape: &[usize], data: &[f32]) -> &mut Self {
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensor_raw(name, GgmlType::F32, shape, bytes)
    }

    /// Add an F16 tensor (values rounded to f16).
    pub fn tensor_f16(&mut self, name: &str, shape: &[usize], data: &[f32]) -> &mut Self {
        let bytes = data.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect();
        self.tensor_raw(name, GgmlType::F16, shape, bytes)
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = self.alignment.unwrap_or(DEFAULT_ALIGNMENT).max(1);
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut out, k);
            out.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.type_id.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).div_ceil(align) * align;
        }
        let pad_to = |out: &mut Vec<u8>, n: u64| out.resize(n as usize, 0);
        let data_start = (out.len() as u64).div_ceil(align) * align;
        pad_to(&mut out, data_start);
        for (t, off) in self.tensors.iter().zip(offsets) {
            pad_to(&mut out, data_start + off);
            out.extend_from_slice(&t.data);
        }
        out
    }

    /// Write the file.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_bytes()).at("writing", path)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Array { elem, items } => {
            out.extend_from_slice(&elem.id().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            // Nested arrays carry their own element type and count.
            for it in items {
                put_value(out, it);
            }
        }
    }
}

impl GgufValue {
    /// An array of strings.
    pub fn strings<S: AsRef<str>>(items: &[S]) -> GgufValue {
        GgufValue::Array {
            elem: GgufValueType::String,
            items: items.iter().map(|s| GgufValue::String(s.as_ref().to_owned())).collect(),
        }
    }

    /// An array of f32.
    pub fn f32s(items: &[f32]) -> GgufValue {
        GgufValue::Array { elem: GgufValueType::F32, items: items.iter().map(|&x| GgufValue::F32(x)).collect() }
    }

    /// An array of i32.
    pub fn i32s(items: &[i32]) -> GgufValue {
        GgufValue::Array { elem: GgufValueType::I32, items: items.iter().map(|&x| GgufValue::I32(x)).collect() }
    }
}
