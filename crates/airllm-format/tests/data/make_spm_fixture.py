"""Generate tests/data/spm_tiny.gguf and tests/data/spm_tiny.json: a tiny
SentencePiece-style ("llama" model) GGUF vocabulary, and the ids that
transformers' GGUF tokenizer conversion (`convert_gguf_tokenizer`) gives for a few
strings, to check airllm-format's tokenizer.json export against.

    python3 -m venv /tmp/ggufenv
    /tmp/ggufenv/bin/pip install gguf==0.19.0 transformers==5.24.0 tokenizers==0.23.3
    (no PyTorch needed)
    /tmp/ggufenv/bin/python crates/airllm-format/tests/data/make_spm_fixture.py

The GGUF holds only metadata (no tensors). Deterministic.
"""
import json
import tempfile
from pathlib import Path

import gguf
from gguf import GGUFReader
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

here = Path(__file__).parent
pieces = [
    "▁t", "he", "▁the", "▁a", "in", "▁in", "er", "▁h", "ll", "o", "▁w", "or", "ld", "▁wor",
    "▁world", "▁hello", "hel", "lo", "▁he", "ell", "▁hell", "an", "▁an", "nd", "▁and", "at",
    "▁th", "ing", "▁s", "en", "re", "▁re", "▁ing", "▁", "e", "t", "h", "a", "i", "n", "r", "l",
    "w", "d", "s", "g", ",", ".", "T", "H",
]
tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces + ["<|user|>"]
types = [2, 3, 3] + [6] * 256 + [1] * len(pieces) + [4]
# Scores: mostly decreasing with the id, with a few longer pieces ranked above shorter ones.
scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(pieces))] + [0.0]
scores[3 + 256 + pieces.index("▁world")] = 0.5
scores[3 + 256 + pieces.index("ing")] = -1.5

out = here / "spm_tiny.gguf"
w = gguf.GGUFWriter(str(out), "llama")
w.add_tokenizer_model("llama")
w.add_token_list(tokens)
w.add_token_scores(scores)
w.add_token_types(types)
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_unk_token_id(0)
w.add_add_bos_token(True)
w.add_add_eos_token(False)
w.add_add_space_prefix(True)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

# No text after a control token: there llama.cpp (and this crate) put a space
# prefix, transformers 5's Metaspace(prepend_scheme="first") does not.
strings = [
    "hello world", "the world and the rest", "Hello, World.", "leading and  double  spaces ",
    "singing in the rain", "thé ñ 日本", "the hello</s>", "theworld", "and, in the end.", "a<|user|>",
]
# transformers' own GGUF tokenizer conversion, called directly (AutoTokenizer's GGUF
# path imports PyTorch for the weights; the tokenizer part does not need it).
reader = GGUFReader(str(out))
tokenizer_dict = {}
for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items():
    field = reader.fields.get(f"tokenizer.{key}")
    if field is not None:
        tokenizer_dict[name] = field.contents()
backend, _ = convert_gguf_tokenizer("llama", tokenizer_dict)
cases = []
for s in strings:
    enc = backend.encode(s, add_special_tokens=False)
    cases.append({"text": s, "ids": enc.ids, "tokens": enc.tokens,
                  "decoded": backend.decode(enc.ids, skip_special_tokens=True)})
(here / "spm_tiny.json").write_text(json.dumps(
    {"generator": "make_spm_fixture.py", "transformers": "5.24.0", "cases": cases}, ensure_ascii=False, indent=1))
print(json.dumps(cases, ensure_ascii=False))
