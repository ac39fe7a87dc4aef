#!/usr/bin/env bash
# The HTTP figures of the README's Performance section: the digits model at 1 and 32 clients,
# batching on (config.toml: max_batch_size = 64) and off (max_batch_size = 1), JSON and binary,
# beside the HTTP floor (examples/noop_server.rs: a no-op axum handler that parses the same JSON
# and returns ten floats). Runs are interleaved ROUNDS times and the medians printed, because a
# 2-core machine running server and load generator together is noisy.
#
#   scripts/bench_http.sh              # ROUNDS=5 SECONDS_PER_RUN=4
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-4}"
cargo build --release --quiet --bin wick --example noop_server
WICK=target/release/wick
OUT="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

sed 's/max_batch_size = 64/max_batch_size = 1/; s/127.0.0.1:8080/127.0.0.1:18080/' config.toml > "$OUT/off.toml"
sed 's/127.0.0.1:8080/127.0.0.1:18080/' config.toml > "$OUT/on.toml"
sed -i "s|repository = \"models\"|repository = \"$PWD/models\"|" "$OUT/on.toml" "$OUT/off.toml"
grep -q "max_batch_size = 1," "$OUT/off.toml"

wait_ready() {
    for _ in $(seq 100); do
        if "$WICK" health --url "http://127.0.0.1:$1" >/dev/null 2>&1; then return 0; fi
        sleep 0.05
    done
    echo "server on port $1 did not become ready" >&2
    exit 1
}

target/release/examples/noop_server 127.0.0.1:19000 >/dev/null 2>&1 &
NOOP=$!
for round in $(seq "$ROUNDS"); do
    for mode in on off; do
        "$WICK" serve --config "$OUT/$mode.toml" >/dev/null 2>&1 &
        SERVER=$!
        wait_ready 18080
        for clients in 1 32; do
            for encoding in json binary; do
                flag=""; [ "$encoding" = binary ] && flag="--binary"
                "$WICK" bench --url http://127.0.0.1:18080 --model digits --clients "$clients" \
                    --duration "$SECONDS_PER_RUN" $flag --json >> "$OUT/$mode-$clients-$encoding.jsonl"
            done
        done
        kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
    done
    "$WICK" bench --url http://127.0.0.1:19000 --model digits --clients 32 \
        --duration "$SECONDS_PER_RUN" --json >> "$OUT/noop-32-json.jsonl"
done
kill "$NOOP"

python3 - "$OUT" <<'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
rows = {}
for path in sorted(glob.glob(f"{out}/*.jsonl")):
    runs = [json.loads(l) for l in open(path) if l.strip()]
    key = os.path.basename(path)[:-6]
    med = lambda f: statistics.median(r[f] for r in runs)
    rows[key] = (med("requests_per_second"), med("p50_us"), med("p99_us"), sum(r["errors"] for r in runs), len(runs))
floor = rows["noop-32-json"][0]
print(f"| server | batching | clients | encoding | requests/s | p50 µs | p99 µs | errors | vs HTTP floor |")
print(f"|---|---|---|---|---|---|---|---|---|")
for key, (rps, p50, p99, errors, n) in sorted(rows.items()):
    mode, clients, encoding = key.split("-")
    server = "no-op axum" if mode == "noop" else "wick digits"
    batching = "" if mode == "noop" else ("on (64)" if mode == "on" else "off (1)")
    print(f"| {server} | {batching} | {clients} | {encoding} | {rps:,.0f} | {p50:.0f} | {p99:.0f} | {errors} | {rps / floor:.0%} |")
print(f"\nmedians of {n} interleaved runs of {os.environ.get('SECONDS_PER_RUN', '4')} s each")
PY
