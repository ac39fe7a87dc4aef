#!/usr/bin/env bash
# Batching on a compute-bound model: the real all-MiniLM-L6-v2 (scripts/fetch_minilm.sh) on
# ~128-token texts from CLIENTS concurrent clients, with batching on (max_batch_size = 32) and
# off (max_batch_size = 1), interleaved ROUNDS times; prints medians of sequences per second.
#
#   scripts/bench_batching.sh          # CLIENTS=8 ROUNDS=3 SECONDS_PER_RUN=8
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
CLIENTS="${CLIENTS:-8}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-8}"
scripts/fetch_minilm.sh >/dev/null
cargo build --release --quiet --bin wick
WICK=target/release/wick
OUT="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT
TEXT="$(python3 -c 'print(" ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 9))')"

for mode in on off; do
    size=32; [ "$mode" = off ] && size=1
    cat > "$OUT/$mode.toml" <<TOML
[server]
listen = "127.0.0.1:18081"
repository = "$PWD/models"

[[models]]
name = "minilm"
architecture = "bert"
config = { vocab_size = 30522, hidden_size = 384, num_hidden_layers = 6, num_attention_heads = 12, intermediate_size = 1536, max_position_embeddings = 512, max_seq_length = 256 }
batching = { max_batch_size = $size, max_queue_delay_us = 0 }
TOML
done

for round in $(seq "$ROUNDS"); do
    for mode in on off; do
        "$WICK" serve --config "$OUT/$mode.toml" >/dev/null 2>&1 &
        SERVER=$!
        for _ in $(seq 200); do "$WICK" health --url http://127.0.0.1:18081 >/dev/null 2>&1 && break; sleep 0.05; done
        "$WICK" bench --url http://127.0.0.1:18081 --model minilm --clients "$CLIENTS" --text "$TEXT" \
            --duration "$SECONDS_PER_RUN" --warmup 2 --json >> "$OUT/$mode.jsonl"
        kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
    done
done

python3 - "$OUT" "$CLIENTS" <<'PY'
import json, statistics, sys
out, clients = sys.argv[1], sys.argv[2]
print(f"| MiniLM, ~128-token texts, {clients} clients | sequences/s | p50 ms | p99 ms | errors |")
print("|---|---|---|---|---|")
for mode, label in (("on", "batching on (32)"), ("off", "batching off (1)")):
    runs = [json.loads(l) for l in open(f"{out}/{mode}.jsonl") if l.strip()]
    med = lambda f: statistics.median(r[f] for r in runs)
    print(f"| {label} | {med('rows_per_second'):.1f} | {med('p50_us')/1000:.0f} | {med('p99_us')/1000:.0f} | {sum(r['errors'] for r in runs)} |")
print(f"\nmedians of {len(runs)} interleaved runs")
PY
