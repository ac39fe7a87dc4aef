#!/usr/bin/env bash
# The container tests (part of scripts/test.sh and .ci/run): the real Dockerfile built with
# `docker build .` and run, one container and three replicas from deploy/compose.yaml.
#
#   1. scripts/base-images.sh makes the FROM images locally when no registry can provide them
#      (cached by tag and content);
#   2. `docker build` of the build stage, tagged wick-build:cache so its layers (the dependency
#      layer above all) survive as the cache of the next run, then of the image itself;
#   3. tests/containers/run.py runs the checks (Python standard library, no venv);
#   4. the run's image tag is removed, and the build chains the cache tag no longer points at.
#
# Without a reachable Docker Engine (or a compose tool) this FAILS; it never skips.
#
#   scripts/container-tests.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export DOCKER_BUILDKIT=0   # the classic builder: BuildKit would pull its frontend image

fail() { echo "container tests: FAILED: $*" >&2; exit 1; }
command -v docker >/dev/null || fail "no docker command"
docker info >/dev/null 2>&1 || fail "the Docker Engine is not reachable (docker info: $(docker info 2>&1 | tail -n1))"
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 \
    || fail "neither docker-compose nor \`docker compose\` (the replica tests run deploy/compose.yaml)"

run_id="$(date +%s)-$$"
image="wick-test:$run_id"
export WICK_CONTAINER_TEST_RUN="$run_id"
log="$(mktemp "${TMPDIR:-/tmp}/wick-container-build.XXXXXX")"
cleanup() {
    docker rmi "$image" >/dev/null 2>&1 || true
    # Build chains from earlier runs, untagged now that wick-build:cache moved: only images made
    # from this script's base images (their label) are touched.
    docker image prune -f --filter "label=org.wick.base-images.inputs" >/dev/null 2>&1 || true
    rm -f "$log"
}
trap cleanup EXIT

build() { # args: docker build options; the output goes to $log, its tail to stderr on failure
    if ! nice -n 5 docker build --force-rm "$@" . >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        fail "docker build $* failed"
    fi
}

started=$SECONDS
scripts/base-images.sh >/dev/null
bases=$SECONDS
build --target build -t wick-build:cache
build -t "$image"
built=$SECONDS
echo "container tests: base images $((bases - started)) s, docker build $((built - bases)) s" \
    "($(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1 / 1e6}'))"
status=0
python3 tests/containers/run.py "$image" || status=$?
echo "container tests: $((SECONDS - started)) s in all (tests $((SECONDS - built)) s)"
exit "$status"
