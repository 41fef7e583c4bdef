"""Generate tests/data/kquant_blocks.safetensors: random ggml blocks and their
dequantization by gguf-py (llama.cpp's Python reference, `gguf.quants.dequantize`).

    python3 -m venv /tmp/ggufenv && /tmp/ggufenv/bin/pip install gguf==0.19.0
    /tmp/ggufenv/bin/python crates/airllm-format/tests/data/make_kquant_fixture.py

For each type T in Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q5_0, Q5_1 the file holds
`T.raw` (U8, [rows, row_bytes]) and `T.dequant` (F32, [rows, row_values]).
Every byte is random except the f16 scale fields, which get finite values of
a realistic size (so that no block decodes to inf/NaN). Seeded: the output is
reproducible. The safetensors file is written by hand (no extra dependency).
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGML_QUANT_SIZES
from gguf.quants import dequantize

rng = np.random.default_rng(20261125)
ROWS = 3
# (type, values per row, offsets of f16 fields inside a block)
SPECS = [
    (T.Q2_K, 512, [80, 82]),
    (T.Q3_K, 512, [108]),
    (T.Q4_K, 512, [0, 2]),
    (T.Q5_K, 512, [0, 2]),
    (T.Q6_K, 512, [208]),
    (T.Q5_0, 96, [0]),
    (T.Q5_1, 96, [0, 2]),
]

tensors = {}
for qtype, cols, f16_fields in SPECS:
    block, size = GGML_QUANT_SIZES[qtype]
    nblocks = ROWS * cols // block
    raw = rng.integers(0, 256, size=(nblocks, size), dtype=np.uint8)
    for off in f16_fields:
        scale = (rng.standard_normal(nblocks) * 0.02).astype(np.float16)
        raw[:, off:off + 2] = scale.view(np.uint8).reshape(nblocks, 2)
    raw = raw.reshape(ROWS, cols // block * size)
    deq = dequantize(raw, qtype).astype(np.float32).reshape(ROWS, cols)
    assert np.isfinite(deq).all()
    tensors[f"{qtype.name}.raw"] = ("U8", list(raw.shape), raw.tobytes())
    tensors[f"{qtype.name}.dequant"] = ("F32", list(deq.shape), deq.astype("<f4").tobytes())

header, data, off = {}, b"", 0
for name, (dtype, shape, b) in tensors.items():
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(b)]}
    data += b
    off += len(b)
header["__metadata__"] = {"generator": "make_kquant_fixture.py", "gguf": "0.19.0"}
h = json.dumps(header, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
out = Path(__file__).with_name("kquant_blocks.safetensors")
out.write_bytes(struct.pack("<Q", len(h)) + h + data)
print(f"wrote {out} ({out.stat().st_size} bytes)", file=sys.stderr)
