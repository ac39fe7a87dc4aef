#!/usr/bin/env bash
# Makes, locally, the base images the Dockerfile's FROM lines name, for machines whose Docker
# Engine cannot pull them (this project's CI has no container registry). Elsewhere, do not run
# it: `docker build .` pulls the public images as usual.
#
#   runtime base (debian:bookworm-slim): a Debian bookworm root file system made by debootstrap
#     (variant minbase) from the Debian archive apt already uses on this machine
#     (/etc/apt/sources.list.d/debian.sources), slimmed the way the official slim image is (no
#     docs, man pages or locales, dpkg told to keep them out), then `docker import`ed;
#   builder (rust:<RUST_VERSION>-bookworm): that base plus gcc, libc6-dev, make, pkg-config and
#     ca-certificates from the same archive, and this machine's rustup toolchain (the one
#     `rustc` runs, which must be RUST_VERSION) laid out as the official image does
#     (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo on PATH), plus the crates.
#
# Idempotent and cached: each image carries a label with the sha256 of its inputs (its recipe
# in this script, the archive URL; for the builder also the base image's id, the toolchain's
# manifest and Cargo.lock). A tag
# whose label matches is kept; a changed input rebuilds it. A tag that exists without the label
# is a real image (pulled from a registry) and is left alone.
#
# Crates: the network here reaches crates.io through a TLS-inspecting proxy whose CA only the
# host trusts, so `cargo` inside `docker build` cannot fetch. The builder image therefore also
# carries `cargo vendor`'s copy of the crates in Cargo.lock (made on the host, which can fetch)
# and a $CARGO_HOME/config.toml that replaces crates.io with it; Cargo.lock is one of its inputs.
# The Dockerfile is untouched by this: with the public rust image it fetches from crates.io.
#
# Needs root (debootstrap), the Docker Engine, and debootstrap (installed with apt-get if missing).
#
#   scripts/base-images.sh          # make what is missing or stale, print the tags
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKERFILE="$ROOT/Dockerfile"
LABEL="org.wick.base-images.inputs"
SUITE=bookworm
export DOCKER_BUILDKIT=0   # the classic builder: BuildKit would try to pull its frontend image

die() { echo "base-images: error: $*" >&2; exit 1; }
log() { echo "base-images: $*" >&2; }

docker info >/dev/null 2>&1 || die "the Docker Engine is not reachable (docker info failed)"

# --- The tags, read from the Dockerfile's FROM lines -------------------------------------------
rust_version="$(sed -n 's/^ARG RUST_VERSION=\(.*\)$/\1/p' "$DOCKERFILE" | head -n1)"
[[ -n "$rust_version" ]] || die "no 'ARG RUST_VERSION=' in $DOCKERFILE"
from_of() { # the image of the FROM line of stage $1, with ${RUST_VERSION} substituted
    awk -v stage="$1" 'toupper($1) == "FROM" && tolower($3) == "as" && $4 == stage { print $2 }' \
        "$DOCKERFILE" | sed "s/\${RUST_VERSION}/$rust_version/g"
}
builder_tag="$(from_of build)"
runtime_tag="$(from_of runtime)"
[[ "$runtime_tag" == debian:${SUITE}-slim ]] || die "the runtime stage is FROM '$runtime_tag', expected debian:${SUITE}-slim"
[[ "$builder_tag" == rust:*-${SUITE} ]] || die "the build stage is FROM '$builder_tag', expected rust:<version>-${SUITE}"

# --- The archive apt uses here -------------------------------------------------------------------
mirror="${WICK_DEBIAN_MIRROR:-}"
if [[ -z "$mirror" && -f /etc/apt/sources.list.d/debian.sources ]]; then
    # deb822: the URIs of the stanza whose Suites name bookworm itself.
    mirror="$(awk -v suite="$SUITE" '
        /^[[:space:]]*$/ { if (uri != "" && hit) { print uri; exit } uri = ""; hit = 0; next }
        $1 == "URIs:" { uri = $2 }
        $1 == "Suites:" { for (i = 2; i <= NF; i++) if ($i == suite) hit = 1 }
        END { if (uri != "" && hit) print uri }' /etc/apt/sources.list.d/debian.sources | head -n1)"
fi
if [[ -z "$mirror" && -f /etc/apt/sources.list ]]; then
    mirror="$(awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }' /etc/apt/sources.list)"
fi
[[ -n "$mirror" ]] || die "cannot find the Debian archive apt uses (set WICK_DEBIAN_MIRROR)"

label_of() { docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }
exists() { docker image inspect "$1" >/dev/null 2>&1; }

# Returns 0 when tag $1 must be (re)made for inputs $2.
stale() {
    local tag="$1" inputs="$2" have
    if ! exists "$tag"; then return 0; fi
    have="$(label_of "$tag")"
    if [[ -z "$have" || "$have" == "<no value>" ]]; then
        log "$tag exists and was not made by this script (a pulled image): keeping it"
        return 1
    fi
    if [[ "$have" == "$inputs" ]]; then
        log "$tag is up to date"
        return 1
    fi
    log "$tag was made from other inputs: remaking it"
}

WORK=""
cleanup() {
    [[ -n "$WORK" && -d "$WORK" ]] || return 0
    # debootstrap mounts /proc and /sys inside the target; never rm -rf through a mount.
    local m
    for m in $(awk -v w="$WORK" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
workdir() { [[ -n "$WORK" ]] || WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/wick-base-images.XXXXXX")"; }

# --- Runtime base: debootstrap, slimmed, imported ------------------------------------------------
make_runtime() { # $1: the inputs label
    [[ "$(id -u)" == 0 ]] || die "debootstrap needs root"
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap from Debian's packages"
        apt-get install -y -q debootstrap >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; }
    fi
    workdir
    local rootfs="$WORK/rootfs" started=$SECONDS
    log "debootstrap $SUITE (minbase) from $mirror"
    if ! nice -n 5 debootstrap --variant=minbase --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
        "$SUITE" "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1; then
        tail -n 30 "$WORK/debootstrap.log" >&2
        die "debootstrap failed"
    fi
    # What the official slim image leaves out, and dpkg/apt told to keep it out (the settings
    # debuerreotype, which makes the official images, writes).
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' 'path-exclude /usr/share/groff/*' \
        'path-exclude /usr/share/info/*' 'path-exclude /usr/share/lintian/*' \
        'path-exclude /usr/share/linda/*' 'path-exclude /usr/share/locale/*' \
        'path-include /usr/share/locale/locale.alias' >"$rootfs/etc/dpkg/dpkg.cfg.d/docker"
    local clean='rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true'
    printf '%s\n' "DPkg::Post-Invoke { \"$clean\"; };" "APT::Update::Post-Invoke { \"$clean\"; };" \
        'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' >"$rootfs/etc/apt/apt.conf.d/docker-clean"
    printf 'Acquire::Languages "none";\n' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
    printf 'APT::AutoRemove::SuggestsImportant "false";\n' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    # apt inside the image uses what apt uses here.
    rm -f "$rootfs/etc/apt/sources.list"
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/debian.sources"
    else
        echo "deb $mirror $SUITE main" >"$rootfs/etc/apt/sources.list"
    fi
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,linda}/* \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* \
        "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old \
        "$rootfs"/etc/hostname "$rootfs"/etc/resolv.conf
    log "importing as $runtime_tag"
    tar -C "$rootfs" --numeric-owner --one-file-system -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        --change "LABEL $LABEL=$1" \
        --message "debootstrap --variant=minbase $SUITE $mirror (scripts/base-images.sh)" \
        - "$runtime_tag" >/dev/null
    cleanup
    WORK=""
    log "$runtime_tag made in $((SECONDS - started)) s"
}

# --- Builder: the base, a C toolchain, this machine's Rust toolchain -----------------------------
make_builder() { # $1: the inputs label
    workdir
    local ctx="$WORK/builder" started=$SECONDS part
    mkdir -p "$ctx/toolchain"
    # Hard links where possible (same file system): the context costs no copy. share/ is the
    # offline documentation (0.8 GB), which a build does not need. Nothing here may change the
    # linked files' modes: they are the host toolchain's own inodes.
    for part in bin lib libexec etc; do
        [[ -e "$sysroot/$part" ]] || continue
        cp -al "$sysroot/$part" "$ctx/toolchain/" 2>/dev/null || cp -a "$sysroot/$part" "$ctx/toolchain/"
    done
    cp "$rustup_bin" "$ctx/rustup"
    # The crates of Cargo.lock, for builds without network (see the header).
    if ! cargo vendor --quiet --locked --versioned-dirs --manifest-path "$ROOT/Cargo.toml" "$ctx/vendor" \
        >/dev/null 2>"$WORK/vendor.log"; then
        cat "$WORK/vendor.log" >&2
        die "cargo vendor failed"
    fi
    # As the official rust image: rustup proxies in CARGO_HOME/bin on PATH, the toolchain in
    # RUSTUP_HOME. Only the directories are made world-writable (a chmod -R of the toolchain would
    # copy 0.6 GB into another layer).
    cat >"$ctx/Dockerfile" <<EOF
FROM $runtime_tag
RUN apt-get update \\
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev make pkg-config \\
    && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup \\
    CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=$rustc_version
COPY rustup /usr/local/cargo/bin/rustup
RUN printf 'version = "12"\\ndefault_toolchain = "$toolchain"\\nprofile = "minimal"\\nauto_self_update = "disable"\\n' \\
        > /tmp/settings.toml \\
    && mkdir -p "\$RUSTUP_HOME/toolchains" && mv /tmp/settings.toml "\$RUSTUP_HOME/" \\
    && for tool in cargo cargo-clippy cargo-fmt clippy-driver rustc rustdoc rustfmt; do \\
        ln -s rustup "/usr/local/cargo/bin/\$tool"; done \\
    && chmod -R a+w "\$CARGO_HOME" \\
    && chmod a+w "\$RUSTUP_HOME" "\$RUSTUP_HOME/toolchains"
COPY toolchain /usr/local/rustup/toolchains/$toolchain
RUN rustc --version && cargo --version && cc --version | head -n1
COPY vendor /usr/local/cargo/vendor
RUN printf '[source.crates-io]\nreplace-with = "vendored"\n\n[source.vendored]\ndirectory = "/usr/local/cargo/vendor"\n' \
        > "\$CARGO_HOME/config.toml"
LABEL $LABEL=$1
EOF
    log "building $builder_tag (rustc $rustc_version from $sysroot)"
    if ! nice -n 5 docker build -t "$builder_tag" "$ctx" >"$WORK/build.log" 2>&1; then
        tail -n 30 "$WORK/build.log" >&2
        die "building $builder_tag failed"
    fi
    cleanup
    WORK=""
    log "$builder_tag made in $((SECONDS - started)) s"
}

# Removes the image a remade tag replaced, unless something still uses it.
forget() {
    [[ -n "$1" ]] && docker rmi "$1" >/dev/null 2>&1 || true
}

# --- What to make -------------------------------------------------------------------------------
# Each image's inputs: its own recipe (the function's text) and what it is made from.
runtime_inputs="$( { declare -f make_runtime; echo "$mirror $SUITE"; } | sha256sum | cut -d' ' -f1)"
if stale "$runtime_tag" "$runtime_inputs"; then
    old="$(docker image inspect --format '{{.Id}}' "$runtime_tag" 2>/dev/null || true)"
    make_runtime "$runtime_inputs"
    forget "$old"
fi

sysroot="$(rustc --print sysroot)"
rustc_version="$(rustc --version | awk '{print $2}')"
[[ "$rustc_version" == "$rust_version" || "$rustc_version" == "$rust_version".* ]] \
    || die "this machine's rustc is $rustc_version, the Dockerfile asks for $rust_version"
rustup_bin="$(command -v rustup || true)"
[[ -n "$rustup_bin" ]] || die "rustup not found: the builder image mirrors a rustup installation"
toolchain="$rustc_version-$(rustc -vV | sed -n 's/^host: //p')"
builder_inputs="$( {
    declare -f make_builder
    docker image inspect --format '{{.Id}}' "$runtime_tag"
    rustc -vV
    "$rustup_bin" --version 2>/dev/null
    cat "$sysroot/lib/rustlib/multirust-channel-manifest.toml" "$sysroot/lib/rustlib/components"
    cat "$ROOT/Cargo.lock"
} | sha256sum | cut -d' ' -f1)"
if stale "$builder_tag" "$builder_inputs"; then
    old="$(docker image inspect --format '{{.Id}}' "$builder_tag" 2>/dev/null || true)"
    make_builder "$builder_inputs"
    forget "$old"
fi

echo "$runtime_tag"
echo "$builder_tag"
