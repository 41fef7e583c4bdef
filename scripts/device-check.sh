#!/usr/bin/env bash
# The hardware measurement in one go, for a GPU machine where nothing can be fetched
# or built (README "Performance", docs/performance.md). Everything it runs is built
# beforehand and carried in --bin DIR:
#   airllm, xtask                     (cargo build --release -p airllm -p xtask; strip them)
#   staging_bandwidth                 (optional: cargo build --release -p airllm-gpu --example staging_bandwidth)
#   kernels                           (optional: the criterion bench binary, from
#                                      cargo bench --bench main --no-run; copy target/release/deps/main-*)
#
#   scripts/device-check.sh OUT_DIR [--bin DIR] [--work DIR] [--preset llama3-8b|tiny]
#                           [--layers N] [--limit SECONDS] [--spec-model GGUF [--spec-draft GGUF]]
#
# Writes JSON lines into OUT_DIR: info.json, staging.json, kernels.txt, results.jsonl
# (one object per bench run: codec, budget, prompt, batch, and airllm's bench JSON or
# the error), profile.txt (the --profile breakdown of one streamed step), machine.txt,
# and with --spec-model (e.g. SmolLM2-135M Q4_1, --spec-draft its q4_0 copy) spec.jsonl:
# speculative decoding fully streamed, with and without drafts (scripts/spec-bench.sh).
# Runs the cases in order of importance and skips the rest once --limit seconds
# (default 420) have passed, so it fits an 8-minute slot. Validate it with
# `--preset tiny` on any machine (lavapipe included) first.
set -uo pipefail

out="" bin="target/release" work="" preset=llama3-8b layers=() limit=420 spec_model="" spec_draft=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        --preset) preset=$2; shift 2 ;;
        --layers) layers=(--layers "$2"); shift 2 ;;
        --limit) limit=$2; shift 2 ;;
        --spec-model) spec_model=$2; shift 2 ;;
        --spec-draft) spec_draft=$2; shift 2 ;;
        -h|--help) sed -n 2,18p "$0"; exit 0 ;;
        -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
        *) out=$1; shift ;;
    esac
done
[ -n "$out" ] || { echo "usage: $0 OUT_DIR [options] (see --help)" >&2; exit 2; }
for b in airllm xtask; do
    [ -x "$bin/$b" ] || { echo "--bin $bin: no executable $b there (build it first: see --help)" >&2; exit 2; }
done
mkdir -p "$out" || exit 2
work=${work:-$out/work}
mkdir -p "$work"
airllm="$bin/airllm"
xtask="$bin/xtask"
start=$(date +%s)
left() { echo $((limit - ($(date +%s) - start))); }
log() { echo "[$(($(date +%s) - start)) s] $*" | tee -a "$out/progress.log" >&2; }
results="$out/results.jsonl"
: > "$results"

{
    date -u +%Y-%m-%dT%H:%M:%SZ
    lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)" || true
    free -g 2>/dev/null | head -2 || true
    nvidia-smi --query-gpu=name,memory.total,pcie.link.gen.current,pcie.link.width.current --format=csv 2>/dev/null || true
} > "$out/machine.txt"

log "airllm info"
timeout 60 "$airllm" info --json > "$out/info.json" 2> "$out/info.err" || log "info failed (see info.err)"

if [ -x "$bin/staging_bandwidth" ]; then
    log "staging bandwidth"
    timeout 90 "$bin/staging_bandwidth" --json > "$out/staging.json" 2> "$out/staging.err" || log "staging_bandwidth failed"
fi
if [ -x "$bin/kernels" ]; then
    log "kernel GB/s (criterion, gemv and gemm)"
    timeout 120 "$bin/kernels" --bench kernels/ --warm-up-time 1 --measurement-time 2 > "$out/kernels.txt" 2>&1 ||
        log "kernel bench stopped (see kernels.txt)"
fi

# One bench run: codec budget prompt batch [extra airllm options...]
bench() {
    local codec=$1 budget=$2 prompt=$3 batch=$4
    shift 4
    if [ "$(left)" -le 20 ]; then
        log "skipped $codec $budget prompt=$prompt batch=$batch: time limit"
        return
    fi
    local ctx=$((prompt + 24)) o
    if o=$(timeout "$(left)" "$airllm" bench --model "$work/$codec" --max-vram "$budget" --prompt-len "$prompt" \
        --new-tokens 16 --batch "$batch" --max-context "$ctx" --device gpu --json "$@" 2> "$work/last.err" | tr -d '\n'); then
        echo "{\"codec\":\"$codec\",\"budget\":\"$budget\",\"prompt\":$prompt,\"batch\":$batch,\"bench\":$o}" >> "$results"
    else
        local err
        err=$(tr '\n"\\' '   ' < "$work/last.err" | tail -c 400)
        echo "{\"codec\":\"$codec\",\"budget\":\"$budget\",\"prompt\":$prompt,\"batch\":$batch,\"error\":\"$err\"}" >> "$results"
    fi
    log "$codec $budget prompt=$prompt batch=$batch: $(tail -n 1 "$results" | grep -o '"per_token_s":[^,]*\|"prefill_s":[^,]*\|"error":.*' | tr '\n' ' ')"
}

for codec in none 4bit; do
    if [ ! -f "$work/$codec/manifest.json" ]; then
        log "synthesizing $preset shards ($codec)"
        timeout "$(left)" "$xtask" synth --preset "$preset" "${layers[@]}" --dtype bf16 --compression "$codec" \
            --out "$work/$codec" > /dev/null 2> "$work/synth.err" || { log "synth $codec failed (see $work/synth.err)"; continue; }
    fi
done

# In order of importance: batch-1 decode at each budget, then batches, a long prompt,
# and the profile of one streamed step.
for budget in 1.5GiB 4GiB unlimited; do
    bench none "$budget" 128 1
    bench 4bit "$budget" 128 1
done
bench none 4GiB 128 16
bench 4bit 4GiB 128 64
bench 4bit unlimited 2048 1
if [ "$(left)" -gt 30 ]; then
    log "profile of a streamed step (none, 1.5GiB)"
    timeout "$(left)" "$airllm" bench --model "$work/none" --max-vram 1.5GiB --prompt-len 16 --new-tokens 2 \
        --max-context 64 --device gpu --profile > "$out/profile.txt" 2>&1 || log "profile run failed (see profile.txt)"
fi
if [ -n "$spec_model" ] && [ "$(left)" -gt 60 ]; then
    log "speculative decoding, fully streamed ($spec_model)"
    here="$(cd "$(dirname "$0")" && pwd)"
    draft_args=()
    [ -n "$spec_draft" ] && draft_args=(--draft "$spec_draft")
    timeout "$(left)" "$here/spec-bench.sh" --model "$spec_model" "${draft_args[@]}" --airllm "$airllm" \
        --new-tokens 48 --out "$out/spec.jsonl" > "$out/spec.md" 2> "$out/spec.err" || log "spec runs stopped (see spec.err)"
fi
log "done: $results"
