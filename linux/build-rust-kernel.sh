#!/usr/bin/env bash
# Build hvkit's Linux test kernel, variant "rust": CONFIG_RUST=y plus the built-in Rust driver
# hvkit_vmbus (linux/rust/hvkit_vmbus), which links hvkit's own guest crates (hypercall,
# vmbus-guest, ic-services) compiled with the kernel's target spec and rustc flags.
#
#   linux/build-rust-kernel.sh [--print-path] [--configure-only]
#
# The last line of stdout is the path of the vmlinux ELF. Everything else goes to stderr.
# A separate script (not a section of build-kernel.sh) so a change to the Rust steps does not
# change the base variant's cache key, which hashes build-kernel.sh. The tools, the source
# download/extraction, configure, the config verification, the lock and the publish are
# linux/lib.sh, shared with build-kernel.sh.
#
# Two cache levels:
#   tree key  = fragments + linux-source version + clang + exact rustc + exact bindgen
#               (+ SCAFFOLD_VERSION): names the private source tree and the O= build dir, which
#               are kept, so a change to the driver or the guest crates is an incremental make;
#   out key   = tree key + this script + linux/lib.sh + the sources of the driver and of the
#               guest crates (Cargo.toml/Cargo.lock too): names the published vmlinux.
#
# Environment: HVKIT_CACHE (default /var/cache/hvkit), HVKIT_KERNEL_NICE (default 0),
# HVKIT_KERNEL_JOBS (default nproc), HVKIT_R4L_RUSTC (default 1.95.0: the rustc the kernel and
# the crates are built with; it needs rust-src), HVKIT_R4L_BINDGEN (default 0.73.2).
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPT_DIR=$(dirname "$SCRIPT_PATH")
ROOT=$(dirname "$SCRIPT_DIR")
SOURCE_PACKAGE=linux-source-6.12
VARIANT=rust
# Bump when the private-tree scaffolding or the configure steps change meaning.
SCAFFOLD_VERSION=1
RUST_VERSION=${HVKIT_R4L_RUSTC:-1.95.0}
BINDGEN_VERSION=${HVKIT_R4L_BINDGEN:-0.73.2}
# The guest crates linked into vmlinux (cargo package names) and what they are built with; the
# driver uses the first three, vsc-storage is linked to show it builds and links for the kernel.
CRATES=(hypercall vmbus-guest ic-services vsc-storage)
CRATE_FEATURES="hypercall/bare-metal hypercall/kernel"

LOG_TAG=build-rust-kernel
# shellcheck source=linux/lib.sh
. "$SCRIPT_DIR/lib.sh"

PRINT_PATH=0
CONFIGURE_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
    --print-path) PRINT_PATH=1 ;;
    --configure-only) CONFIGURE_ONLY=1 ;;
    -h | --help)
        sed -n '2,23p' "$SCRIPT_PATH" >&2
        exit 0
        ;;
    *) die "unknown argument: $1" ;;
    esac
    shift
done

FRAGMENTS=("$SCRIPT_DIR/hvkit.config" "$SCRIPT_DIR/hvkit-$VARIANT.config")
DRIVER_DIR=$SCRIPT_DIR/rust/hvkit_vmbus
CACHE_ROOT=${HVKIT_CACHE:-/var/cache/hvkit}
KCACHE=$CACHE_ROOT/linux
TOOLS=$CACHE_ROOT/r4l-tools
NICE=${HVKIT_KERNEL_NICE:-0}
JOBS=${HVKIT_KERNEL_JOBS:-$(nproc)}
BINDGEN=$TOOLS/bindgen-$BINDGEN_VERSION/bin/bindgen
export RUSTUP_TOOLCHAIN=$RUST_VERSION

# ---------------------------------------------------------------------------------------------
# Rust toolchain pieces: the pinned rustc with rust-src, bindgen-cli in the cache, libclang.
# ---------------------------------------------------------------------------------------------
ensure_rust_tools() {
    command -v rustup >/dev/null 2>&1 || die "rustup is needed (https://rustup.rs)"
    if ! rustup component list --installed --toolchain "$RUST_VERSION" 2>/dev/null | grep -q '^rust-src'; then
        log "rustup toolchain install $RUST_VERSION --profile minimal --component rust-src"
        rustup toolchain install "$RUST_VERSION" --profile minimal --component rust-src >&2 ||
            die "installing rustc $RUST_VERSION with rust-src failed"
    fi
    if ! dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q 'install ok installed'; then
        [ "$(id -u)" = 0 ] || die "libclang-dev is missing; run as root or: sudo apt-get install libclang-dev"
        apt_update_once
        log "apt-get install libclang-dev"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >&2 ||
            die "apt-get install libclang-dev failed"
    fi
    if [ ! -x "$BINDGEN" ]; then
        log "cargo install bindgen-cli $BINDGEN_VERSION --locked (about 2 min)"
        mkdir -p "$TOOLS"
        nice -n "$NICE" cargo install bindgen-cli --version "$BINDGEN_VERSION" --locked \
            --root "$TOOLS/bindgen-$BINDGEN_VERSION" >&2 || die "cargo install bindgen-cli failed"
    fi
}

# sha256 over the driver and the guest-crate sources (path + content), for the output key.
sources_hash() {
    (
        cd "$ROOT"
        {
            find linux/rust -type f
            for c in "${CRATES[@]}"; do find "$c/src" "$c/Cargo.toml" -type f; done
            printf '%s\n' Cargo.toml Cargo.lock
        } | LC_ALL=C sort | while IFS= read -r f; do
            printf '%s %s\n' "$(sha256sum "$f" | awk '{print $1}')" "$f"
        done
    ) | sha256sum | cut -c1-16
}

# Copies $1 to $2 unless they are equal (keeps mtimes of unchanged files: incremental make).
# --remove-destination: never write through a hard link into the shared source tree.
put() {
    if ! cmp -s "$1" "$2"; then
        mkdir -p "$(dirname "$2")"
        cp --remove-destination "$1" "$2"
    fi
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
if [ "$PRINT_PATH" = 0 ]; then
    ensure_tools
    ensure_rust_tools
    mkdir -p "$KCACHE/src" || die "cannot create the cache $KCACHE"
fi
command -v clang >/dev/null 2>&1 && [ -x "$BINDGEN" ] &&
    rustup component list --installed --toolchain "$RUST_VERSION" 2>/dev/null | grep -q '^rust-src' || {
    echo "$KCACHE/$VARIANT-unknown/vmlinux"
    log "toolchain not installed (clang, rustc $RUST_VERSION + rust-src, bindgen $BINDGEN_VERSION): run $0"
    exit 1
}

VERSION=$(source_version)
CC_VERSION=$(clang --version | head -1)
RUSTC_VV=$(rustc --version --verbose | grep -E '^(rustc|commit-hash|LLVM version)' | tr '\n' ' ')
BINDGEN_VV=$("$BINDGEN" --version | head -1)
case "$RUSTC_VV" in "rustc $RUST_VERSION "*) ;; *) die "rustc is '$RUSTC_VV', expected $RUST_VERSION (RUSTUP_TOOLCHAIN)" ;; esac
case "$BINDGEN_VV" in *" $BINDGEN_VERSION"*) ;; *) die "bindgen is '$BINDGEN_VV', expected $BINDGEN_VERSION" ;; esac
resolve_source_deb "$VERSION"

TREE_KEY_INPUT=$(
    printf 'variant %s\n' "$VARIANT"
    printf 'scaffold %s\n' "$SCAFFOLD_VERSION"
    fragment_key_lines
    printf 'fragment Kconfig %s\n' "$(file_sha256 "$DRIVER_DIR/Kconfig")"
    printf 'source %s %s %s\n' "$SOURCE_PACKAGE" "$VERSION" "$DEB_SHA"
    printf 'cc %s\n' "$CC_VERSION"
    printf 'rustc %s\n' "$RUSTC_VV"
    printf 'bindgen %s\n' "$BINDGEN_VV"
    printf 'make LLVM=1\n'
)
TREE_KEY=$(printf '%s\n' "$TREE_KEY_INPUT" | sha256sum | cut -c1-16)
SRC_HASH=$(sources_hash)
KEY_INPUT=$(
    printf '%s\n' "$TREE_KEY_INPUT"
    printf 'script %s\n' "$(file_sha256 "$SCRIPT_PATH")"
    printf 'lib %s\n' "$(file_sha256 "$HVKIT_LIB")"
    printf 'sources %s\n' "$SRC_HASH"
)
KEY=$(printf '%s\n' "$KEY_INPUT" | sha256sum | cut -c1-16)
NAME=$VARIANT-$KEY
OUT=$KCACHE/$NAME
BUILD=$KCACHE/build/$VARIANT-tree-$TREE_KEY
PTREE=$KCACHE/src/$VARIANT-tree-$TREE_KEY

exit_if_published
exit_if_print_path
lock_build "$BUILD.lock" "another build in $BUILD is running; waiting for it" # one build per tree at a time

SRC=$(extract_source "$VERSION" "$DEB")
START=$(date +%s)

# The private source tree: a hard-linked copy of the extracted tree (seconds, little disk) with
# drivers/hvkit added and hooked into drivers/Kconfig and drivers/Makefile. Files that differ
# are always replaced (cp --remove-destination), never edited in place: the shared tree's inodes
# must not change.
if [ ! -f "$PTREE/.hvkit-tree" ]; then
    log "private source tree $PTREE (hard links to $SRC)"
    rm -rf "$PTREE" "$PTREE.tmp"
    cp -al "$SRC" "$PTREE.tmp"
    rm -f "$PTREE.tmp/.hvkit-extracted"
    for f in drivers/Kconfig drivers/Makefile; do
        cp --remove-destination "$SRC/$f" "$PTREE.tmp/$f"
    done
    # drivers/Kconfig ends with "endmenu": source ours just before it.
    sed -i '$ d' "$PTREE.tmp/drivers/Kconfig"
    tail -1 "$SRC/drivers/Kconfig" | grep -qx endmenu || die "drivers/Kconfig does not end with endmenu"
    printf 'source "drivers/hvkit/Kconfig"\n\nendmenu\n' >>"$PTREE.tmp/drivers/Kconfig"
    printf '\n# hvkit (linux/build-rust-kernel.sh)\nobj-$(CONFIG_HVKIT_VMBUS)\t+= hvkit/\n' >>"$PTREE.tmp/drivers/Makefile"
    mkdir -p "$PTREE.tmp/drivers/hvkit"
    cp "$DRIVER_DIR/Kconfig" "$PTREE.tmp/drivers/hvkit/Kconfig"
    touch "$PTREE.tmp/.hvkit-tree"
    mv "$PTREE.tmp" "$PTREE"
fi

MAKE=(nice -n "$NICE" make -C "$PTREE" O="$BUILD" LLVM=1 ARCH=x86_64 RUSTC=rustc BINDGEN="$BINDGEN")
before_tinyconfig() {
    "${MAKE[@]}" rustavailable >&2 || die "make rustavailable failed: the kernel cannot use rustc $RUST_VERSION / bindgen $BINDGEN_VERSION"
}
configure_build "$PTREE" "incremental build in $BUILD" \
    "configuring in $BUILD (tinyconfig + ${FRAGMENTS[*]##*/})"
if [ "$CONFIGURE_ONLY" = 1 ]; then
    log "--configure-only: stopping; build dir $BUILD, tree $PTREE"
    echo "$BUILD"
    exit 0
fi

# 1. The kernel's Rust crates (core, compiler_builtins, kernel, ...): what the guest crates are
#    compiled against.
log "make rust/ (nice $NICE, -j$JOBS)"
"${MAKE[@]}" -j"$JOBS" rust/ >&2

# 2. The guest crates, with cargo, for the kernel's target.json with the kernel's rustc flags.
CRATES_OBJ=$("$SCRIPT_DIR/rust/build-crates.sh" "$BUILD" "$BUILD/hvkit-cargo" "$CRATE_FEATURES" "${CRATES[@]}")
# build-crates.sh prints: the merged object, then the rustc flags for the driver crate.
CRATES_O=$(sed -n 1p <<<"$CRATES_OBJ")
DRIVER_RUSTFLAGS=$(sed -n 2p <<<"$CRATES_OBJ")

# 3. The driver into drivers/hvkit (sources only replaced when they changed).
for f in "$DRIVER_DIR"/*; do
    case "$f" in *.md) continue ;; esac
    put "$f" "$PTREE/drivers/hvkit/${f##*/}"
done
mkdir -p "$BUILD/drivers/hvkit"
put "$CRATES_O" "$BUILD/drivers/hvkit/hvkit_crates.o"

log "make vmlinux (nice $NICE, -j$JOBS)"
"${MAKE[@]}" -j"$JOBS" HVKIT_DRIVER_RUSTFLAGS="$DRIVER_RUSTFLAGS" vmlinux bzImage >&2
verify_config "$BUILD/.config" "$PTREE" "${FRAGMENTS[@]}"
grep -q ' hvkit_vmbus_init' "$BUILD/System.map" 2>/dev/null ||
    grep -q 'hvkit_vmbus' "$BUILD/System.map" || die "vmlinux has no hvkit_vmbus symbols"
END=$(date +%s)
SECONDS_TAKEN=$((END - START))

stage_outputs
{
    printf '{\n'
    printf '  "variant": %s,\n' "$(json_str "$VARIANT")"
    printf '  "key": %s,\n' "$(json_str "$KEY")"
    printf '  "tree_key": %s,\n' "$(json_str "$TREE_KEY")"
    printf '  "source_version": %s,\n' "$(json_str "$VERSION")"
    printf '  "compiler": %s,\n' "$(json_str "$CC_VERSION")"
    printf '  "rustc": %s,\n' "$(json_str "$RUSTC_VV")"
    printf '  "bindgen": %s,\n' "$(json_str "$BINDGEN_VV")"
    printf '  "sources_hash": %s,\n' "$(json_str "$SRC_HASH")"
    printf '  "build_seconds": %s,\n' "$SECONDS_TAKEN"
    printf '  "incremental": %s,\n' "$RESUMED"
    printf '  "built_at": %s,\n' "$(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
    printf '  "vmlinux_bytes": %s,\n' "$(stat -c %s "$STAGE/vmlinux")"
    printf '  "verified": [%s]\n' "$(json_list "${VERIFIED_VALUES[@]}")"
    printf '}\n'
} >"$STAGE/build-info.json"
publish
log "built $NAME in ${SECONDS_TAKEN}s (incremental: $RESUMED)"
echo "$OUT/vmlinux"
