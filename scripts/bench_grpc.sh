#!/usr/bin/env bash
# gRPC beside HTTP in the README's Performance section: the digits MLP (one row of 64 FP32 per
# request) at 1 and 32 clients, and resnet18 (one 3x224x224 FP32 image per request, 602 KB of
# binary tensor) at 1 and 4 clients, through NVIDIA's tritonclient (grpc and http, binary
# tensors), runs interleaved in one window, medians of ROUNDS (scripts/bench_grpc.py). resnet18
# has random weights with torchvision's keys (scripts/random_checkpoint.py): speed does not
# depend on the values.
#
#   scripts/bench_grpc.sh                       # release build, ROUNDS=3 SECONDS_PER_RUN=4
#   PROFILE=debug scripts/bench_grpc.sh         # a dev build (dependencies at opt-level 3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-4}"
PROFILE="${PROFILE:-release}"
PYTHON="${WICK_TEST_PYTHON:-.venv-test/bin/python}"
if [ "$PROFILE" = release ]; then
    cargo build --release --quiet --bin wick
else
    cargo build --quiet --bin wick
fi
WICK="target/$PROFILE/wick"
OUT="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

mkdir -p "$OUT/repo/resnet18/1"
cp -r models/simple models/digits "$OUT/repo/"
"$PYTHON" scripts/random_checkpoint.py tests/fixtures/catalogue/manifests/resnet18.json \
    "$OUT/repo/resnet18/1/model.safetensors"
sed "s/127.0.0.1:8080\"/127.0.0.1:18080\"\ngrpc_listen = \"127.0.0.1:18001\"/; s|repository = \"models\"|repository = \"$OUT/repo\"|" \
    config.toml > "$OUT/grpc.toml"
printf '\n[[models]]\nname = "resnet18"\narchitecture = "resnet"\nconfig = { preset = "resnet18" }\n' \
    >> "$OUT/grpc.toml"
"$WICK" serve --config "$OUT/grpc.toml" >"$OUT/log" 2>&1 &
for _ in $(seq 200); do
    if "$WICK" health --url http://127.0.0.1:18080 >/dev/null 2>&1; then break; fi
    sleep 0.05
done
grep -m1 'model name' /proc/cpuinfo
echo "wick $PROFILE build; $ROUNDS rounds of $SECONDS_PER_RUN s"
"$PYTHON" scripts/bench_grpc.py 127.0.0.1:18080 127.0.0.1:18001 digits input 1x64 \
    "$ROUNDS" "$SECONDS_PER_RUN" 1 32
"$PYTHON" scripts/bench_grpc.py 127.0.0.1:18080 127.0.0.1:18001 resnet18 input 1x3x224x224 \
    "$ROUNDS" "$SECONDS_PER_RUN" 1 4
