#!/usr/bin/env bash
# Issue 14's scheduling figures: the digits model under 32 closed-loop clients (JSON) with
# `max_queue_delay_us` 0 and 2000, beside the HTTP floor (examples/noop_server.rs, a no-op axum
# handler that parses the same body), then an open loop (`wick bench --rate`) at half the rate
# the closed loop reached, whose latencies count from each request's intended send time.
# Runs are interleaved ROUNDS times; medians and the spread (min-max) are printed with the CPU.
#
#   scripts/bench_scheduling.sh          # ROUNDS=5 SECONDS_PER_RUN=4
#   WICK=path/wick NOOP_SERVER=path/noop_server scripts/bench_scheduling.sh   # binaries already built
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-4}"
if [ -z "${WICK:-}" ]; then
    cargo build --release --quiet --bin wick --example noop_server
    WICK=target/release/wick
    NOOP_SERVER=target/release/examples/noop_server
fi
OUT="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

for delay in 0 2000; do
    sed "s/max_queue_delay_us = 0/max_queue_delay_us = $delay/; s/127.0.0.1:8080/127.0.0.1:18080/" \
        config.toml > "$OUT/d$delay.toml"
    sed -i "s|repository = \"models\"|repository = \"$PWD/models\"|" "$OUT/d$delay.toml"
    grep -q "max_queue_delay_us = $delay" "$OUT/d$delay.toml"
done

wait_ready() {
    for _ in $(seq 100); do
        if "$WICK" health --url "http://127.0.0.1:$1" >/dev/null 2>&1; then return 0; fi
        sleep 0.05
    done
    echo "server on port $1 did not become ready" >&2
    exit 1
}

bench() { "$WICK" bench --model digits --duration "$SECONDS_PER_RUN" --json "$@"; }

"$NOOP_SERVER" 127.0.0.1:19000 >/dev/null 2>&1 &
NOOP=$!
for round in $(seq "$ROUNDS"); do
    bench --url http://127.0.0.1:19000 --clients 32 >> "$OUT/floor.jsonl"
    for delay in 0 2000; do
        "$WICK" serve --config "$OUT/d$delay.toml" >/dev/null 2>&1 &
        SERVER=$!
        wait_ready 18080
        bench --url http://127.0.0.1:18080 --clients 32 > "$OUT/last.json"
        cat "$OUT/last.json" >> "$OUT/closed-$delay.jsonl"
        half=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["requests_per_second"] / 2))' "$OUT/last.json")
        bench --url http://127.0.0.1:18080 --clients 32 --rate "$half" >> "$OUT/open-$delay.jsonl"
        kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
    done
done
kill "$NOOP"

python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
load = lambda name: [json.loads(l) for l in open(f"{out}/{name}.jsonl") if l.strip()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
floor = statistics.median(r["requests_per_second"] for r in load("floor"))
def spread(runs, field):
    values = [r[field] for r in runs]
    return statistics.median(values), min(values), max(values)
print(f"CPU: {cpu}; medians of {len(load('floor'))} interleaved rounds")
print("| load | max_queue_delay_us | requests/s median (min-max) | vs floor | p50 µs | p99 µs | errors |")
print("|---|---|---|---|---|---|---|")
rps, lo, hi = spread(load("floor"), "requests_per_second")
print(f"| no-op axum floor, 32 clients | | {rps:,.0f} ({lo:,.0f}-{hi:,.0f}) | 100% | | | |")
for delay in ("0", "2000"):
    for kind in ("closed", "open"):
        runs = load(f"{kind}-{delay}")
        rps, lo, hi = spread(runs, "requests_per_second")
        p50 = statistics.median(r["p50_us"] for r in runs)
        p99 = statistics.median(r["p99_us"] for r in runs)
        errors = sum(r["errors"] for r in runs)
        what = "32 clients, closed loop" if kind == "closed" else "open loop at half the closed rate"
        print(f"| {what} | {delay} | {rps:,.0f} ({lo:,.0f}-{hi:,.0f}) | {rps / floor:.0%} | {p50:.0f} | {p99:.0f} | {errors} |")
PY
