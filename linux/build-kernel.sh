#!/usr/bin/env bash
# Build hvkit's small Linux test kernel from Debian's linux-source-6.12, cached outside the clone.
#
#   linux/build-kernel.sh [--variant NAME] [--print-path]
#
# The last line of stdout is the path of the uncompressed vmlinux ELF, so
#   VMLINUX=$(linux/build-kernel.sh | tail -1)
# works. Everything else goes to stderr. See linux/README.md.
#
# Environment:
#   HVKIT_CACHE        cache root (default /var/cache/hvkit); the kernel lives in $HVKIT_CACHE/linux
#   HVKIT_KERNEL_NICE  nice level for the compile (default 0; use 10 on a shared machine)
#   HVKIT_KERNEL_JOBS  make -j value (default: nproc)
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPT_DIR=$(dirname "$SCRIPT_PATH")
SOURCE_PACKAGE=linux-source-6.12
LOG_TAG=build-kernel
# shellcheck source=linux/lib.sh
. "$SCRIPT_DIR/lib.sh"

usage() {
    cat >&2 <<EOF
usage: $0 [--variant NAME] [--print-path]

Builds (or finds in the cache) hvkit's Linux test kernel and prints the path of its vmlinux
as the last line of stdout.

  --variant NAME  which kernel: "base" (default) merges linux/hvkit.config onto tinyconfig;
                  another NAME merges linux/hvkit.config and then linux/hvkit-NAME.config.
  --print-path    print the vmlinux path this invocation would produce, without building;
                  exit 0 if it is built, 1 if it is not.
EOF
}

VARIANT=base
PRINT_PATH=0
while [ $# -gt 0 ]; do
    case "$1" in
    --variant)
        [ $# -ge 2 ] || die "--variant needs a name (e.g. --variant base)"
        VARIANT=$2
        shift 2
        ;;
    --variant=*)
        VARIANT=${1#--variant=}
        shift
        ;;
    --print-path)
        PRINT_PATH=1
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage
        die "unknown argument: $1"
        ;;
    esac
done

case "$VARIANT" in
'' | *[!a-z0-9_-]*) die "variant name '$VARIANT' must be lower-case letters, digits, '-' or '_'" ;;
esac

# Config fragments of this variant, merged in this order onto tinyconfig.
FRAGMENTS=("$SCRIPT_DIR/hvkit.config")
if [ "$VARIANT" != base ]; then
    FRAGMENTS+=("$SCRIPT_DIR/hvkit-$VARIANT.config")
fi
for f in "${FRAGMENTS[@]}"; do
    [ -f "$f" ] || die "variant '$VARIANT' needs the config fragment $f, which does not exist"
done

CACHE_ROOT=${HVKIT_CACHE:-/var/cache/hvkit}
KCACHE=$CACHE_ROOT/linux
NICE=${HVKIT_KERNEL_NICE:-0}
JOBS=${HVKIT_KERNEL_JOBS:-$(nproc)}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
if [ "$PRINT_PATH" = 0 ]; then
    ensure_tools
    mkdir -p "$KCACHE/src" || die "cannot create the cache $KCACHE (set HVKIT_CACHE to a writable directory)"
fi
command -v clang >/dev/null 2>&1 || {
    echo "$KCACHE/$VARIANT-unknown/vmlinux"
    log "clang is not installed, so the cache key is unknown; run $0 to build"
    exit 1
}

VERSION=$(source_version)
CC_VERSION=$(clang --version | head -1)
resolve_source_deb "$VERSION" ", so the key is unknown"

# The cache key: everything that decides the kernel's bytes.
KEY_INPUT=$(
    printf 'variant %s\n' "$VARIANT"
    printf 'script %s\n' "$(file_sha256 "$SCRIPT_PATH")"
    printf 'lib %s\n' "$(file_sha256 "$HVKIT_LIB")"
    fragment_key_lines
    printf 'source %s %s %s\n' "$SOURCE_PACKAGE" "$VERSION" "$DEB_SHA"
    printf 'cc %s\n' "$CC_VERSION"
    printf 'make LLVM=1\n'
)
KEY=$(printf '%s\n' "$KEY_INPUT" | sha256sum | cut -c1-16)
NAME=$VARIANT-$KEY
OUT=$KCACHE/$NAME
BUILD=$KCACHE/build/$NAME

exit_if_published
exit_if_print_path
lock_build "$KCACHE/build/$NAME.lock" "another build of $NAME is running; waiting for it"

SRC=$(extract_source "$VERSION" "$DEB")
START=$(date +%s)
MAKE=(nice -n "$NICE" make -C "$SRC" O="$BUILD" LLVM=1 ARCH=x86_64)

configure_build "$SRC" "resuming the build in $BUILD" \
    "configuring $NAME in $BUILD (tinyconfig + ${FRAGMENTS[*]##*/})"

log "make LLVM=1 -j$JOBS (nice $NICE); this takes 15-30 min on 2 cores"
"${MAKE[@]}" -j"$JOBS" vmlinux bzImage >&2
verify_config "$BUILD/.config" "$SRC" "${FRAGMENTS[@]}" # the build must not have changed it
END=$(date +%s)
SECONDS_TAKEN=$((END - START))

stage_outputs
KERNELRELEASE=$(cat "$BUILD/include/config/kernel.release" 2>/dev/null || echo unknown)
{
    printf '{\n'
    printf '  "variant": %s,\n' "$(json_str "$VARIANT")"
    printf '  "key": %s,\n' "$(json_str "$KEY")"
    printf '  "source_package": %s,\n' "$(json_str "$SOURCE_PACKAGE")"
    printf '  "source_version": %s,\n' "$(json_str "$VERSION")"
    printf '  "source_deb_sha256": %s,\n' "$(json_str "$DEB_SHA")"
    printf '  "kernelrelease": %s,\n' "$(json_str "$KERNELRELEASE")"
    printf '  "compiler": %s,\n' "$(json_str "$CC_VERSION")"
    printf '  "make": "make LLVM=1 ARCH=x86_64 -j%s",\n' "$JOBS"
    printf '  "fragments": [%s],\n' "$(json_list "${FRAGMENTS[@]##*/}")"
    printf '  "build_seconds": %s,\n' "$SECONDS_TAKEN"
    printf '  "resumed": %s,\n' "$RESUMED"
    printf '  "built_at": %s,\n' "$(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
    printf '  "vmlinux_bytes": %s,\n' "$(stat -c %s "$STAGE/vmlinux")"
    printf '  "verified": [%s]\n' "$(json_list "${VERIFIED_VALUES[@]}")"
    printf '}\n'
} >"$STAGE/build-info.json"
sync -f "$STAGE/vmlinux" 2>/dev/null || true
publish
log "built $NAME in ${SECONDS_TAKEN}s; vmlinux $(stat -c %s "$OUT/vmlinux") bytes"
echo "$OUT/vmlinux"
