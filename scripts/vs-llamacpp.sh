#!/usr/bin/env bash
# Side by side with llama.cpp on the same machine, in one run: prompt (pp) and
# decode (tg) tokens/s of `llama-bench` and `airllm bench` on the same GGUF, with
# the same prompt length, token count and threads, alternating ROUNDS times so
# both see the same machine state. Prints a table and the ratios (airllm / llama.cpp).
#
#   scripts/vs-llamacpp.sh --gguf FILE --llama-bench PATH/llama-bench [--threads 2]
#                          [--prompt 128] [--gen 32] [--rounds 3] [--airllm target/release/airllm]
#                          [-- extra airllm options, e.g. --device cpu]
#
# llama.cpp is not part of this project: build it once (CPU: cmake -B build &&
# cmake --build build -j --target llama-bench) and pass the binary.
set -euo pipefail

gguf="" llama="" threads=2 prompt=128 gen=32 rounds=3 airllm="target/release/airllm"
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --gguf) gguf="$2"; shift 2 ;;
        --llama-bench) llama="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --prompt) prompt="$2"; shift 2 ;;
        --gen) gen="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --airllm) airllm="$2"; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n 2,13p "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -f "$gguf" ] || { echo "--gguf FILE: not a file: '$gguf'" >&2; exit 2; }
[ -x "$llama" ] || { echo "--llama-bench PATH: not an executable: '$llama'" >&2; exit 2; }
[ -x "$airllm" ] || { echo "--airllm PATH: not an executable: '$airllm' (cargo build --release)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 is needed to read the JSON" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Shard once up front so no round pays for it.
"$airllm" bench --model "$gguf" --prompt-len 8 --new-tokens 2 --threads "$threads" --json "${extra[@]}" >/dev/null

for r in $(seq 1 "$rounds"); do
    "$llama" -m "$gguf" -p "$prompt" -n "$gen" -t "$threads" -r 1 -o json >"$work/llama-$r.json" 2>/dev/null
    "$airllm" bench --model "$gguf" --prompt-len "$prompt" --new-tokens "$gen" --threads "$threads" --json \
        "${extra[@]}" >"$work/airllm-$r.json" 2>/dev/null
    echo "round $r of $rounds done" >&2
done

python3 - "$work" "$rounds" "$prompt" "$gen" "$threads" "$gguf" <<'PY'
import json, os, platform, statistics, sys
work, rounds, prompt, gen, threads, gguf = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
lpp, ltg, app, atg = [], [], [], []
device = "?"
for r in range(1, rounds + 1):
    for t in json.load(open(f"{work}/llama-{r}.json")):
        (lpp if t["n_prompt"] > 0 and t["n_gen"] == 0 else ltg).append(t["avg_ts"])
    a = json.load(open(f"{work}/airllm-{r}.json"))
    app.append(a["prompt_tokens"] / a["prefill_s"])
    atg.append(a["tokens_per_s"])
    device = a["device"]
cpu = "?"
try:
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
except Exception:
    pass
med = statistics.median
print(f"machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}; {threads} threads")
print(f"model:   {os.path.basename(gguf)}; airllm on {device}; medians of {rounds} alternating rounds")
print()
print(f"| test | llama.cpp tokens/s | airllm tokens/s | airllm / llama.cpp |")
print(f"| --- | --- | --- | --- |")
print(f"| prompt {prompt} (pp{prompt}) | {med(lpp):.1f} | {med(app):.1f} | {med(app) / med(lpp):.2f} |")
print(f"| decode {gen} (tg{gen}) | {med(ltg):.1f} | {med(atg):.1f} | {med(atg) / med(ltg):.2f} |")
PY
