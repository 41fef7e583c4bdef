#!/usr/bin/env bash
# Speculative decoding figures: the same model and prompt with and without a
# drafter, in one run, as JSON lines (one `airllm bench --json` per line, with
# "case" and "drafter" added). Defaults: SmolLM2 fully streamed on the GPU path.
#
#   scripts/spec-bench.sh --model M [--draft D] [--new-tokens 40] [--out FILE]
#                         [-- extra airllm options, default: --device gpu --resident-layers 0]
#
# Cases: code-edit prompt (scripts/prompts/code-edit.txt) without speculation,
# with --prompt-lookup (fixed tree of 32, then adaptive); chat prompt
# (scripts/prompts/chat.txt, --chat) without speculation and with --draft-model D
# (fixed tree of 32, then adaptive), when --draft is given.
set -euo pipefail
model="" draft="" new=40 out="spec-bench.jsonl" airllm="target/release/airllm"
extra=(--device gpu --resident-layers 0)
while [ $# -gt 0 ]; do
    case "$1" in
        --model) model="$2"; shift 2 ;;
        --draft) draft="$2"; shift 2 ;;
        --new-tokens) new="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --airllm) airllm="$2"; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n 2,12p "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$model" ] || { echo "--model M is required" >&2; exit 2; }
[ -x "$airllm" ] || { echo "not an executable: $airllm (cargo build --release)" >&2; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"
: > "$out"
run() { # case drafter args...
    local case="$1" drafter="$2"; shift 2
    echo "== $case / $drafter" >&2
    "$airllm" bench --model "$model" --new-tokens "$new" --json "${extra[@]}" "$@" \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); d["case"]=sys.argv[1]; d["drafter"]=sys.argv[2]; print(json.dumps(d))' "$case" "$drafter" >> "$out"
}
code=(-f "$here/prompts/code-edit.txt")
chat=(-f "$here/prompts/chat.txt" --chat)
run code-edit none "${code[@]}"
run code-edit prompt-lookup-32 "${code[@]}" --prompt-lookup --draft-tree 32
run code-edit prompt-lookup-adaptive "${code[@]}" --prompt-lookup --draft-tree 32 --adaptive-tree
run chat none "${chat[@]}"
if [ -n "$draft" ]; then
    run chat draft-model-32 "${chat[@]}" --draft-model "$draft" --draft-tree 32
    run chat draft-model-adaptive "${chat[@]}" --draft-model "$draft" --draft-tree 32 --adaptive-tree
fi
python3 - "$out" <<'PY'
import json, sys
print("| case | drafter | tokens per verify pass | s/token | s/pass | prefill s |")
print("| --- | --- | --- | --- | --- | --- |")
for line in open(sys.argv[1]):
    d = json.loads(line)
    s = d.get("speculation") or {}
    print(f"| {d['case']} | {d['drafter']} | {s.get('tokens_per_pass', 1.0):.2f} | {d['per_token_s']:.3f} | {d['per_pass_s']:.3f} | {d['prefill_s']:.1f} |")
PY
