#!/usr/bin/env bash
# Issue 10's latency figure: `/v2/health/live` on a release build while hostile clients keep
# sending large bodies, beside the same probe on the idle server, interleaved ROUNDS times.
# Attackers: two loops posting a gzip bomb (a 1 MiB body that inflates to 1 GiB of spaces and
# stops at the body limit with 413) and one posting a 60 MiB text to a BERT model (cut to its
# byte budget before tokenising, answered 200). The probe is one keep-alive connection sending
# PROBES requests PROBE_GAP_MS apart; it prints p50, p99 and max per round, the CPU model, and
# the server's peak RSS (VmHWM).
#
#   scripts/bench_hostile.sh          # ROUNDS=3 PROBES=500 PROBE_GAP_MS=10
#   WICK=path/to/wick scripts/bench_hostile.sh   # measure a binary already built
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
PROBES="${PROBES:-500}"
PROBE_GAP_MS="${PROBE_GAP_MS:-10}"
PORT=18090
if [ -z "${WICK:-}" ]; then
    cargo build --release --quiet --bin wick
    WICK=target/release/wick
fi
OUT="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

# The demo repository plus the small BERT of the test fixtures as model `text`.
cp -r models "$OUT/models"
mkdir -p "$OUT/models/text/1"
cp tests/fixtures/arch/bert_small/model.safetensors tests/fixtures/arch/bert_small/tokenizer.json \
    "$OUT/models/text/1/"
sed "s|127.0.0.1:8080|127.0.0.1:$PORT|; s|repository = \"models\"|repository = \"$OUT/models\"|" \
    config.toml > "$OUT/config.toml"
cat >> "$OUT/config.toml" <<'TOML'

[[models]]
name = "text"
architecture = "bert"
config = { vocab_size = 132, hidden_size = 64, num_hidden_layers = 2, num_attention_heads = 4, intermediate_size = 128, max_position_embeddings = 64 }
load = { strip_prefix = "bert.", ignore = ["classifier.*"] }
TOML

python3 - "$OUT" <<'PY'
import gzip, sys
out = sys.argv[1]
with gzip.open(f"{out}/bomb.gz", "wb", compresslevel=9) as f:
    f.write(b'{"id": "bomb", "inputs": [')
    spaces = b" " * (8 << 20)
    for _ in range(128):
        f.write(spaces)
with open(f"{out}/text.json", "wb") as f:
    f.write(b'{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["')
    f.write(b"word " * (12 << 20))
    f.write(b'"]}]}')
PY

"$WICK" serve --config "$OUT/config.toml" >"$OUT/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 200); do
    if "$WICK" health --url "http://127.0.0.1:$PORT" >/dev/null 2>&1; then break; fi
    sleep 0.05
done
"$WICK" health --url "http://127.0.0.1:$PORT" >/dev/null

# One attacker: posts its body in a loop until the flag file disappears (at most 10 minutes).
attack() {
    local deadline=$((SECONDS + 600))
    while [ -e "$OUT/attack" ] && [ $SECONDS -lt $deadline ]; do
        curl -s -o /dev/null -w '%{http_code}\n' "$@" >> "$OUT/attack-status" || true
    done
}

probe() {
    python3 - "$PORT" "$PROBES" "$PROBE_GAP_MS" "$1" >> "$OUT/probes.jsonl" <<'PY'
import http.client, json, sys, time
port, n, gap, label = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000, sys.argv[4]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
took = []
for _ in range(n):
    started = time.perf_counter()
    conn.request("GET", "/v2/health/live")
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
    took.append((time.perf_counter() - started) * 1000)
    time.sleep(gap)
took.sort()
print(json.dumps({"label": label, "p50": took[len(took) // 2], "p99": took[int(len(took) * 0.99) - 1], "max": took[-1]}))
PY
}

for round in $(seq "$ROUNDS"); do
    probe idle
    touch "$OUT/attack"
    for _ in 1 2; do
        attack -H 'Content-Encoding: gzip' -H 'Content-Type: application/json' \
            --data-binary "@$OUT/bomb.gz" "http://127.0.0.1:$PORT/v2/models/digits/infer" &
    done
    attack -H 'Content-Type: application/json' --data-binary "@$OUT/text.json" \
        "http://127.0.0.1:$PORT/v2/models/text/infer" &
    sleep 1
    probe attacked
    rm -f "$OUT/attack"
    wait $(jobs -p | grep -v "^$SERVER\$") 2>/dev/null || true
done
HWM=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER/status")
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true

python3 - "$OUT" "$HWM" <<'PY'
import collections, json, statistics, sys
out, hwm = sys.argv[1], int(sys.argv[2])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
runs = collections.defaultdict(list)
for line in open(f"{out}/probes.jsonl"):
    r = json.loads(line)
    runs[r["label"]].append(r)
statuses = collections.Counter(l.strip() for l in open(f"{out}/attack-status"))
print(f"CPU: {cpu}; {len(runs['idle'])} interleaved rounds; hostile answers {dict(statuses)}; server peak RSS {hwm / 1024:.0f} MiB")
print("| /v2/health/live | p50 ms median (min-max) | p99 ms median (min-max) | max ms |")
print("|---|---|---|---|")
for label in ("idle", "attacked"):
    rs = runs[label]
    def cell(field):
        values = [r[field] for r in rs]
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
    print(f"| {label} | {cell('p50')} | {cell('p99')} | {max(r['max'] for r in rs):.2f} |")
PY
