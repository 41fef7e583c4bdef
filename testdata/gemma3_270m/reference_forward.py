# Independent float32 reference forward of Gemma 3 270M from its GGUF: weights
# dequantized by gguf-py (llama.cpp's reference decoders), the model written from
# transformers' Gemma3 modelling code (1 + w norms are already folded into the
# file by llama.cpp's converter; sliding layers 0-4, 6-10, 12-16 with window 512
# and RoPE base 10000; global layers 5, 11, 17 with base 1e6; q/k norm; sandwich
# norms; GELU-tanh; scores * 256^-0.5; embeddings * sqrt(640); tied head).
# Usage: python reference_forward.py gemma-3-270m-q4_k_m.gguf IDS N_NEW
#   (pip install gguf numpy); prints the top-1 per prompt position, the last
#   position's top-5 and N_NEW greedy ids. crates/airllm/tests/gemma3_gguf.rs
#   holds its output for two prompts.
import gguf, numpy as np, sys, json
r = gguf.GGUFReader(sys.argv[1])
W = {}
for t in r.tensors:
    W[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
H, L, NH, NKV, D, EPS, SW = 640, 18, 4, 1, 256, 1e-6, 512
def rms(x, w):
    return (x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + EPS)).astype(np.float32) * w
def rope(x, pos, theta):
    inv = 1.0 / theta ** (np.arange(0, D, 2, dtype=np.float32) / D)
    ang = pos[:, None].astype(np.float32) * inv[None, :]
    c, s = np.cos(ang), np.sin(ang)
    c = np.concatenate([c, c], -1)[:, None, :]; s = np.concatenate([s, s], -1)[:, None, :]
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    rot = np.concatenate([-x2, x1], -1)
    return x * c + rot * s
def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
def forward(ids):
    T = len(ids); pos = np.arange(T)
    x = W['token_embd.weight'][ids] * np.float32(np.sqrt(H))
    for l in range(L):
        p = f'blk.{l}.'
        sliding = (l + 1) % 6 != 0
        theta = 10000.0 if sliding else 1e6
        h = rms(x, W[p + 'attn_norm.weight'])
        q = (h @ W[p + 'attn_q.weight'].T).reshape(T, NH, D)
        k = (h @ W[p + 'attn_k.weight'].T).reshape(T, NKV, D)
        v = (h @ W[p + 'attn_v.weight'].T).reshape(T, NKV, D)
        q = rms(q, W[p + 'attn_q_norm.weight']); k = rms(k, W[p + 'attn_k_norm.weight'])
        q = rope(q, pos, theta); k = rope(k, pos, theta)
        mask = pos[None, :] <= pos[:, None]
        if sliding: mask &= pos[None, :] > pos[:, None] - SW
        out = np.zeros((T, NH, D), np.float32)
        for hh in range(NH):
            sc = (q[:, hh] @ k[:, 0].T) * np.float32(D ** -0.5)
            sc = np.where(mask, sc, -np.inf)
            sc = np.exp(sc - sc.max(-1, keepdims=True)); sc /= sc.sum(-1, keepdims=True)
            out[:, hh] = sc @ v[:, 0]
        o = out.reshape(T, NH * D) @ W[p + 'attn_output.weight'].T
        x = x + rms(o, W[p + 'post_attention_norm.weight'])
        h = rms(x, W[p + 'ffn_norm.weight'])
        g = gelu(h @ W[p + 'ffn_gate.weight'].T) * (h @ W[p + 'ffn_up.weight'].T)
        x = x + rms(g @ W[p + 'ffn_down.weight'].T, W[p + 'post_ffw_norm.weight'])
    x = rms(x, W['output_norm.weight'])
    return x @ W['token_embd.weight'].T
ids = [int(a) for a in sys.argv[2].split(',')]
n_new = int(sys.argv[3])
lg = forward(ids)
print('prompt top-1 per position', lg.argmax(-1).tolist())
print('last top-5', np.argsort(-lg[-1])[:5].tolist(), np.sort(lg[-1])[::-1][:5].round(3).tolist())

seq = list(ids)
for _ in range(n_new):
    nxt = int(forward(seq)[-1].argmax()); seq.append(nxt)
print('greedy', seq[len(ids):])
