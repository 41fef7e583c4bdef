#!/usr/bin/env bash
# The benchmark procedure of airllm-rs (README "Performance", docs/performance.md).
#
#   scripts/bench.sh [--preset llama3-8b] [--work DIR] [--codecs "none 8bit 4bit"]
#                    [--budgets "1.5GiB 4GiB 8GiB unlimited"] [--prompts "128 2048"]
#                    [--batches "1 16 64"] [--new-tokens 16] [--cold]
#
# 1. `cargo xtask synth` writes a random-weight checkpoint with the preset's exact
#    shapes (weights values do not change streaming speed);
# 2. `airllm shard` makes one shard directory per codec;
# 3. `airllm bench --json` runs every (codec, budget, prompt length, batch) with the
#    page cache warm (a first pass reads every shard once), and with --cold also
#    with O_DIRECT reads (`--read-mode direct`, the page cache bypassed);
# 4. `airllm bench --io-only` compares the reader with a plain sequential read.
# Every result is one JSON object per line in $WORK/results.jsonl, with the
# machine (GPU, CPU, date) in $WORK/machine.txt.
#
# For the 70B preset use --codecs 4bit: the shards are then synthesized directly
# (`synth --compression 4bit`), so the 141 GB bf16 form never touches the disk.
set -euo pipefail
cd "$(dirname "$0")/.."

preset=llama3-8b
work=bench-work
codecs="none 8bit 4bit"
budgets="1.5GiB 4GiB 8GiB unlimited"
prompts="128 2048"
batches="1 16 64"
new_tokens=16
cold=0
layers=()
while [ $# -gt 0 ]; do
    case "$1" in
        --preset) preset=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        --codecs) codecs=$2; shift 2 ;;
        --budgets) budgets=$2; shift 2 ;;
        --prompts) prompts=$2; shift 2 ;;
        --batches) batches=$2; shift 2 ;;
        --new-tokens) new_tokens=$2; shift 2 ;;
        --layers) layers=(--layers "$2"); shift 2 ;;
        --cold) cold=1; shift ;;
        -h|--help) sed -n 2,22p "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

cargo build --release -p airllm -p xtask
airllm=target/release/airllm
xtask=target/release/xtask
mkdir -p "$work"
results="$work/results.jsonl"
: > "$results"
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    $airllm info | head -8
    lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)" || true
    free -g 2>/dev/null | head -2 || true
} > "$work/machine.txt"

for codec in $codecs; do
    shards="$work/$preset-$codec"
    if [ ! -f "$shards/manifest.json" ]; then
        if [ "$codec" = none ]; then
            [ -f "$work/$preset/config.json" ] || $xtask synth --preset "$preset" "${layers[@]}" --out "$work/$preset"
            $airllm shard "$work/$preset" --out "$shards"
        elif [ -f "$work/$preset/config.json" ]; then
            $airllm shard "$work/$preset" --out "$shards" --compression "$codec"
        else
            $xtask synth --preset "$preset" "${layers[@]}" --compression "$codec" --out "$shards"
        fi
    fi
    echo "{\"codec\":\"$codec\",\"io\":$($airllm bench --model "$shards" --io-only --json | tr -d '\n')}" >> "$results"
    if [ "$cold" = 1 ]; then
        echo "{\"codec\":\"$codec\",\"cold\":true,\"io\":$($airllm bench --model "$shards" --io-only --read-mode direct --json | tr -d '\n')}" >> "$results"
    fi
    for budget in $budgets; do
        for prompt in $prompts; do
            for batch in $batches; do
                ctx=$((prompt + new_tokens + 8))
                for mode in warm cold; do
                    [ "$mode" = cold ] && [ "$cold" = 0 ] && continue
                    extra=()
                    [ "$mode" = cold ] && extra=(--read-mode direct)
                    if out=$($airllm bench --model "$shards" --max-vram "$budget" --prompt-len "$prompt" \
                            --new-tokens "$new_tokens" --batch "$batch" --max-context "$ctx" "${extra[@]}" --json 2>"$work/last.err" | tr -d '\n'); then
                        echo "{\"codec\":\"$codec\",\"budget\":\"$budget\",\"prompt\":$prompt,\"batch\":$batch,\"cache\":\"$mode\",\"bench\":$out}" >> "$results"
                    else
                        err=$(tr '\n"' ' ' < "$work/last.err" | tail -c 400)
                        echo "{\"codec\":\"$codec\",\"budget\":\"$budget\",\"prompt\":$prompt,\"batch\":$batch,\"cache\":\"$mode\",\"error\":\"$err\"}" >> "$results"
                    fi
                    echo "$codec $budget prompt=$prompt batch=$batch $mode: $(tail -n 1 "$results" | grep -o '"per_token_s":[^,]*\|"prefill_s":[^,]*\|"error":.*' | tr '\n' ' ')"
                done
            done
        done
    done
done
echo "results: $results"
