#!/usr/bin/env bash
# The README's container figures: image size (uncompressed, and compressed as a registry stores
# it: each layer gzipped), the layers, and the time from `docker run` to ready (/v2/health/ready
# answers 200), for the demo models and with the real all-MiniLM-L6-v2 added. A measurement,
# never a test; run it on an idle machine.
#
#   scripts/container_figures.sh [IMAGE] [RUNS]      # default: wick:figures built from here, 5 runs
set -euo pipefail
cd "$(dirname "$0")/.."
export DOCKER_BUILDKIT=0
image="${1:-wick:figures}"
runs="${2:-5}"
if [[ $# -lt 1 ]]; then
    scripts/base-images.sh >/dev/null
    nice -n 5 docker build --force-rm -q -t "$image" . >/dev/null
fi
scripts/fetch_minilm.sh >/dev/null

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores;" \
    "Docker $(docker version --format '{{.Server.Version}}'), storage driver $(docker info --format '{{.Driver}}')"
echo
# What a registry stores: every layer tar gzipped (level 6, as docker push does).
compressed() {
    docker save "$1" | python3 -c '
import gzip, sys, tarfile
total = 0
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as t:
    for m in t:
        if m.isfile() and (m.name.endswith("layer.tar") or m.name.startswith("blobs/")):
            data = t.extractfile(m).read()
            total += len(data) if data[:2] == b"\x1f\x8b" else len(gzip.compress(data, 6))
print(total)'
}
size=$(docker image inspect --format '{{.Size}}' "$image")
base=$(docker image inspect --format '{{.Size}}' debian:bookworm-slim)
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }
echo "image $image: $(mb "$size") uncompressed, $(mb "$(compressed "$image")") compressed (layers gzipped)"
echo "of which debian:bookworm-slim: $(mb "$base") uncompressed, $(mb "$(compressed debian:bookworm-slim)") compressed"
docker history --format '{{.Size}}\t{{.CreatedBy}}' "$image" | cut -c1-110 | head -n 12
bin=$(docker run --rm --entrypoint stat "$image" -c %s /usr/local/bin/wick)
libs=$(docker run --rm --entrypoint sh "$image" -c \
    'ldd /usr/local/bin/wick | awk "/=>/ { print \$3 } /ld-linux/ { print \$1 }" | xargs stat -L -c %s' | awk '{ s += $1 } END { print s }')
echo "the wick binary: $(mb "$bin"); the shared libraries it loads (ldd): $(mb "$libs")"
echo

net="wick-figures-$$"
docker network create "$net" >/dev/null
cfg="$(mktemp -d)"
cleanup() {
    docker ps -aq --filter "label=wick-figures=$$" | xargs -r docker rm -f -v >/dev/null 2>&1 || true
    docker network rm "$net" >/dev/null 2>&1 || true
    rm -rf "$cfg"
}
trap cleanup EXIT
cp config.toml "$cfg/config.toml"
cat >>"$cfg/config.toml" <<'EOF'

[[models]]
name = "minilm"
architecture = "bert"
config = { vocab_size = 30522, hidden_size = 384, num_hidden_layers = 6, num_attention_heads = 12, intermediate_size = 1536, max_position_embeddings = 512, max_seq_length = 256 }
batching = { max_batch_size = 32 }
EOF
chmod -R a+rX "$cfg"

# Milliseconds from `docker run` to the first 200 of /v2/health/ready (polled every 5 ms), and
# wick's own part: from the process start (State.StartedAt) to its "serving" log line.
time_to_ready() {
    python3 - "$net" "$image" "$$" "$@" <<'PY'
import datetime, http.client, json, re, subprocess, sys, time
net, image, label, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
start = time.monotonic()
cid = subprocess.run(["docker", "run", "-d", "--read-only", "--network", net, "--label", f"wick-figures={label}",
                      *extra, image], capture_output=True, check=True, text=True).stdout.strip()
ip = subprocess.run(["docker", "inspect", "--format", "{{(index .NetworkSettings.Networks \"%s\").IPAddress}}" % net, cid],
                    capture_output=True, check=True, text=True).stdout.strip()
while time.monotonic() - start < 120:
    try:
        c = http.client.HTTPConnection(ip, 8080, timeout=1)
        c.request("GET", "/v2/health/ready")
        if c.getresponse().status == 200:
            break
    except OSError:
        pass
    time.sleep(0.005)
ready = time.monotonic() - start


def instant(text):  # RFC 3339 with nanoseconds -> seconds since the epoch
    return datetime.datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", text).replace("Z", "+00:00")).timestamp()


started = subprocess.run(["docker", "inspect", "--format", "{{.State.StartedAt}}", cid],
                         capture_output=True, check=True, text=True).stdout.strip()
logs = subprocess.run(["docker", "logs", cid], capture_output=True, text=True).stderr.splitlines()
lines = [json.loads(line) for line in logs if line.startswith("{")]
serving = next(line["timestamp"] for line in lines if line.get("message", "").endswith(" serving"))
process = instant(serving) - instant(started)
subprocess.run(["docker", "rm", "-f", "-v", cid], capture_output=True)
print(f"{ready * 1000:.0f} {process * 1000:.0f}")
PY
}

summary() { # label, then the samples ("total process" pairs)
    python3 - "$@" <<'PY'
import statistics, sys
label, samples = sys.argv[1], [tuple(map(int, a.split())) for a in sys.argv[2:]]
total, process = [t for t, _ in samples], [p for _, p in samples]
print(f"{label:36} median {statistics.median(total):5.0f} ms (min {min(total)}, max {max(total)}; "
      f"{len(total)} runs); wick's own start: median {statistics.median(process):.0f} ms")
PY
}

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
demo=(); minilm=()
for _ in $(seq "$runs"); do   # interleaved
    demo+=("$(time_to_ready)")
    minilm+=("$(time_to_ready -v "$PWD/models:/models:ro" -v "$cfg/config.toml:/etc/wick/config.toml:ro")")
done
echo "load average before: $load_before; after: $(cut -d' ' -f1-3 /proc/loadavg)"
summary "docker run -> ready, demo models" "${demo[@]}"
summary "docker run -> ready, demo + MiniLM" "${minilm[@]}"
