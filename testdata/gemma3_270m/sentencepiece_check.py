# Checks airllm's tokenizer export for a Gemma 3 GGUF against SentencePiece itself:
# a SentencePiece BPE model is rebuilt from the GGUF vocabulary (pieces, scores,
# types; user-defined whitespace pieces back in their escaped form) with Gemma's
# settings (byte fallback, split digits, no dummy prefix), and both tokenize the
# same strings. Usage (pip install gguf sentencepiece protobuf tokenizers):
#   python sentencepiece_check.py MODEL.gguf SHARDS/tokenizer.json /tmp/out.model
import gguf, sys
from sentencepiece import sentencepiece_model_pb2 as pb
import sentencepiece as spm
from tokenizers import Tokenizer
r=gguf.GGUFReader(sys.argv[1])
f=r.fields['tokenizer.ggml.tokens']; toks=[bytes(f.parts[i]).decode('utf-8') for i in f.data]
tt=r.fields['tokenizer.ggml.token_type']; types=[int(tt.parts[i][0]) for i in tt.data]
sc=r.fields['tokenizer.ggml.scores']; scores=[float(sc.parts[i][0]) for i in sc.data]
m=pb.ModelProto()
m.trainer_spec.model_type = pb.TrainerSpec.BPE
m.trainer_spec.byte_fallback = True
m.trainer_spec.split_digits = True
m.trainer_spec.unk_id=3; m.trainer_spec.bos_id=2; m.trainer_spec.eos_id=1; m.trainer_spec.pad_id=0
m.normalizer_spec.name='identity'; m.normalizer_spec.add_dummy_prefix=False; m.normalizer_spec.remove_extra_whitespaces=False; m.normalizer_spec.escape_whitespaces=True
seen=set()
for t,ty,s in zip(toks,types,scores):
    p=m.pieces.add()
    piece = t.replace(' ', '\u2581') if ty==4 else t
    if piece in seen: piece = piece + '<dup%d>' % len(seen)
    seen.add(piece)
    p.piece=piece; p.score=s; p.type=ty
open(sys.argv[3],'wb').write(m.SerializeToString())
sp=spm.SentencePieceProcessor(model_file=sys.argv[3])
ours = Tokenizer.from_file(sys.argv[2])
texts = ["The capital of France is", "What is the capital of France?", "Hello,  world!\n\n  indented\tcode()",
 "On 12 March 2024 we met at the café in 日本; it was 7:30!", "naïve   spaces    and\n\n\nnewlines", "emoji 🤖🎉 and ünïcödé",
 "def f(x):\n    return x**2  # square", "<table><tr><td>1</td></tr></table>", "   leading spaces", "trailing   ", "a\u00a0b",
 "Übermäßig große Straße", "Привет, мир!", "数学は楽しい。", "The quick brown fox jumps over the lazy dog.", "It's 3.14159, isn't it?",
 "x" * 40, "\u0000\u0001 control", "https://example.com/path?q=1&r=2", "Supercalifragilisticexpialidocious antidisestablishmentarianism"]
bad=0
for t in texts:
    a = ours.encode(t, add_special_tokens=False).ids
    b = sp.encode(t)
    ok = a==b; bad += not ok
    print('OK ' if ok else 'BAD', repr(t)[:45], a[:16], '' if ok else b[:16])
    if ours.decode(a) != t: print('   decode:', repr(ours.decode(a)))
print('mismatches', bad, 'of', len(texts))
