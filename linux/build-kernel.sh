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

log() { printf 'build-kernel: %s\n' "$*" >&2; }
die() {
    printf 'build-kernel: error: %s\n' "$*" >&2
    exit 2
}

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
# Tools. Install with apt-get only what is missing, so a warm run does not touch apt at all.
# ---------------------------------------------------------------------------------------------
APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed; check the network/apt sources"
        APT_UPDATED=1
    fi
}

ensure_tools() {
    local missing=() cmd pkg
    # command:package pairs.
    for pair in clang:clang ld.lld:lld llvm-ar:llvm llvm-objcopy:llvm llvm-nm:llvm flex:flex \
        bison:bison bc:bc cpio:cpio zstd:zstd xz:xz-utils make:make perl:perl flock:util-linux; do
        cmd=${pair%%:*}
        pkg=${pair#*:}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    for pkg in libelf-dev libssl-dev; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        # shellcheck disable=SC2207
        missing=($(printf '%s\n' "${missing[@]}" | sort -u))
        [ "$(id -u)" = 0 ] ||
            die "missing packages (${missing[*]}); run as root or: sudo apt-get install ${missing[*]}"
        apt_update_once
        log "apt-get install ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 ||
            die "apt-get install ${missing[*]} failed"
    fi
}

# ---------------------------------------------------------------------------------------------
# Source: the exact candidate version of linux-source-6.12, its .deb kept in the cache.
# ---------------------------------------------------------------------------------------------
source_version() {
    local v
    v=$(apt-cache policy "$SOURCE_PACKAGE" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$v" ] || [ "$v" = "(none)" ]; then
        [ "$(id -u)" = 0 ] || die "apt does not know $SOURCE_PACKAGE; run 'apt-get update' as root"
        apt_update_once
        v=$(apt-cache policy "$SOURCE_PACKAGE" 2>/dev/null | awk '/Candidate:/ {print $2}')
    fi
    [ -n "$v" ] && [ "$v" != "(none)" ] ||
        die "apt has no candidate for $SOURCE_PACKAGE (Debian 12 bookworm(-updates/-security) needed)"
    printf '%s\n' "$v"
}

# Downloads the .deb (once) and prints its path. Its sha256 is kept beside it.
fetch_source_deb() {
    local version=$1 dir=$KCACHE/src deb
    deb=$dir/${SOURCE_PACKAGE}_${version//:/%3a}_all.deb
    if [ ! -s "$deb" ] || [ ! -s "$deb.sha256" ]; then
        mkdir -p "$dir"
        local tmp
        tmp=$(mktemp -d "$dir/download.XXXXXX")
        # apt-get download writes as the _apt user when it can (else: a harmless warning).
        chmod 755 "$tmp"
        if id _apt >/dev/null 2>&1; then chown _apt "$tmp" 2>/dev/null || true; fi
        log "apt-get download $SOURCE_PACKAGE=$version"
        (cd "$tmp" && apt-get download "$SOURCE_PACKAGE=$version" >&2) || {
            rm -rf "$tmp"
            die "apt-get download $SOURCE_PACKAGE=$version failed (try: apt-get update)"
        }
        local got
        got=$(ls "$tmp"/*.deb)
        sha256sum "$got" | awk '{print $1}' >"$got.sha256"
        mv -f "$got" "$deb"
        mv -f "$got.sha256" "$deb.sha256"
        rm -rf "$tmp"
    fi
    printf '%s\n' "$deb"
}

# Extracts the kernel tarball from the .deb (once) and prints the source tree path.
extract_source() {
    local version=$1 deb=$2 tree
    tree=$KCACHE/src/linux-source-${version//:/_}
    if [ ! -f "$tree/.hvkit-extracted" ]; then
        local tmp
        tmp=$(mktemp -d "$KCACHE/src/extract.XXXXXX")
        log "extracting $SOURCE_PACKAGE $version"
        local tarball
        tarball=$(dpkg-deb -c "$deb" | awk '{print $NF}' | grep -E '/usr/src/linux-source-[^/]*\.tar\.(xz|zst|gz|bz2)$' | head -1)
        [ -n "$tarball" ] || die "no kernel tarball found inside $deb"
        local decompress
        case "$tarball" in
        *.xz) decompress=--xz ;;
        *.zst) decompress=--zstd ;;
        *.gz) decompress=--gzip ;;
        *.bz2) decompress=--bzip2 ;;
        esac
        dpkg-deb --fsys-tarfile "$deb" | tar -xO "$tarball" | tar -x "$decompress" -f - -C "$tmp" ||
            die "extracting $tarball from $deb failed"
        # dpkg-deb -c prints ./usr/src/..., tar -xO wants the same; the tarball has one top dir.
        local top
        top=$(find "$tmp" -mindepth 1 -maxdepth 1 -type d | head -1)
        [ -f "$top/Makefile" ] || die "unexpected layout of $tarball (no top-level Makefile)"
        touch "$top/.hvkit-extracted"
        rm -rf "$tree"
        mv "$top" "$tree"
        rm -rf "$tmp"
    fi
    printf '%s\n' "$tree"
}

# ---------------------------------------------------------------------------------------------
# Verification: every line of the fragments must hold in the final .config.
# ---------------------------------------------------------------------------------------------
verify_config() {
    local config=$1 src=$2
    shift 2
    local missing=() line sym want have
    declare -A final=()
    while IFS= read -r line; do
        case "$line" in
        CONFIG_*=*) final[${line%%=*}]=${line#*=} ;;
        esac
    done <"$config"
    declare -A required=()
    local order=()
    for frag in "$@"; do
        while IFS= read -r line; do
            if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
                sym=${BASH_REMATCH[1]}
                want=${BASH_REMATCH[2]}
            elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
                sym=${BASH_REMATCH[1]}
                want=n
            else
                continue
            fi
            [ -n "${required[$sym]+x}" ] || order+=("$sym")
            required[$sym]=$want # a later fragment overrides an earlier one
        done <"$frag"
    done
    for sym in "${order[@]}"; do
        want=${required[$sym]}
        have=${final[$sym]-n}
        if [ "$want" != "$have" ]; then
            missing+=("$sym (want $want, got $have)")
        fi
    done
    if [ ${#missing[@]} -gt 0 ]; then
        local known
        known=$(grep -rhoE '^[[:space:]]*(menu)?config [A-Za-z0-9_]+' --include='Kconfig*' "$src" |
            awk '{print "CONFIG_" $2}' | sort -u)
        log "the final .config does not match the fragment(s) ${*##*/}:"
        for m in "${missing[@]}"; do
            sym=${m%% *}
            if ! grep -qx "$sym" <<<"$known"; then
                log "  MISSING $m: no such Kconfig symbol in this kernel source"
            else
                log "  MISSING $m: Kconfig dropped it; see its 'depends on' with:"
                log "      grep -rn -A8 '^\\s*config ${sym#CONFIG_}\$' --include='Kconfig*' $src"
            fi
        done
        die "${#missing[@]} required option(s) not as required in $config; fix linux/*.config"
    fi
    VERIFIED=("${order[@]}")
    VERIFIED_VALUES=()
    for sym in "${order[@]}"; do VERIFIED_VALUES+=("$sym=${required[$sym]}"); done
}

json_str() { # minimal JSON string escaping (no control characters are expected)
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

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
if [ "$PRINT_PATH" = 1 ]; then
    DEB=$KCACHE/src/${SOURCE_PACKAGE}_${VERSION//:/%3a}_all.deb
    [ -s "$DEB.sha256" ] || {
        echo "$KCACHE/$VARIANT-unknown/vmlinux"
        log "$SOURCE_PACKAGE $VERSION is not in the cache yet, so the key is unknown: not built"
        exit 1
    }
else
    DEB=$(fetch_source_deb "$VERSION")
fi
DEB_SHA=$(cat "$DEB.sha256")

# The cache key: everything that decides the kernel's bytes.
KEY_INPUT=$(
    printf 'variant %s\n' "$VARIANT"
    printf 'script %s\n' "$(sha256sum "$SCRIPT_PATH" | awk '{print $1}')"
    for f in "${FRAGMENTS[@]}"; do
        printf 'fragment %s %s\n' "${f##*/}" "$(sha256sum "$f" | awk '{print $1}')"
    done
    printf 'source %s %s %s\n' "$SOURCE_PACKAGE" "$VERSION" "$DEB_SHA"
    printf 'cc %s\n' "$CC_VERSION"
    printf 'make LLVM=1\n'
)
KEY=$(printf '%s\n' "$KEY_INPUT" | sha256sum | cut -c1-16)
NAME=$VARIANT-$KEY
OUT=$KCACHE/$NAME
BUILD=$KCACHE/build/$NAME

if [ -f "$OUT/vmlinux" ] && [ -f "$OUT/build-info.json" ]; then
    log "cached: $OUT"
    echo "$OUT/vmlinux"
    exit 0
fi
if [ "$PRINT_PATH" = 1 ]; then
    log "not built yet: $OUT"
    echo "$OUT/vmlinux"
    exit 1
fi

mkdir -p "$KCACHE/build"
exec 9>"$KCACHE/build/$NAME.lock"
if ! flock -n 9; then
    log "another build of $NAME is running; waiting for it"
    flock 9
fi
if [ -f "$OUT/vmlinux" ] && [ -f "$OUT/build-info.json" ]; then # built while we waited
    log "cached: $OUT"
    echo "$OUT/vmlinux"
    exit 0
fi

SRC=$(extract_source "$VERSION" "$DEB")
START=$(date +%s)
MAKE=(nice -n "$NICE" make -C "$SRC" O="$BUILD" LLVM=1 ARCH=x86_64)

RESUMED=false
if [ -f "$BUILD/.hvkit-configured" ]; then
    RESUMED=true
    log "resuming the build in $BUILD"
else
    log "configuring $NAME in $BUILD (tinyconfig + ${FRAGMENTS[*]##*/})"
    rm -rf "$BUILD"
    mkdir -p "$BUILD"
    "${MAKE[@]}" tinyconfig >&2
    (cd "$BUILD" && "$SRC/scripts/kconfig/merge_config.sh" -m -O "$BUILD" "$BUILD/.config" "${FRAGMENTS[@]}") >&2
    "${MAKE[@]}" olddefconfig >&2
fi
verify_config "$BUILD/.config" "$SRC" "${FRAGMENTS[@]}"
touch "$BUILD/.hvkit-configured"
log "config verified: ${#VERIFIED[@]} options as required"

log "make LLVM=1 -j$JOBS (nice $NICE); this takes 15-30 min on 2 cores"
"${MAKE[@]}" -j"$JOBS" vmlinux bzImage >&2
verify_config "$BUILD/.config" "$SRC" "${FRAGMENTS[@]}" # the build must not have changed it
END=$(date +%s)
SECONDS_TAKEN=$((END - START))

# Publish atomically: a complete directory appears under its final name, or nothing does.
TMP_OUT=$(mktemp -d "$KCACHE/.$NAME.tmp.XXXXXX")
cp "$BUILD/vmlinux" "$TMP_OUT/vmlinux"
cp "$BUILD/arch/x86/boot/bzImage" "$TMP_OUT/bzImage"
cp "$BUILD/.config" "$TMP_OUT/.config"
cp "$BUILD/System.map" "$TMP_OUT/System.map"
for f in "${FRAGMENTS[@]}"; do cp "$f" "$TMP_OUT/"; done
printf '%s\n' "$KEY_INPUT" >"$TMP_OUT/key-input.txt"
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
    printf '  "fragments": [%s],\n' "$(for f in "${FRAGMENTS[@]}"; do json_str "${f##*/}"; printf ','; done | sed 's/,$//')"
    printf '  "build_seconds": %s,\n' "$SECONDS_TAKEN"
    printf '  "resumed": %s,\n' "$RESUMED"
    printf '  "built_at": %s,\n' "$(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
    printf '  "vmlinux_bytes": %s,\n' "$(stat -c %s "$TMP_OUT/vmlinux")"
    printf '  "verified": [%s]\n' "$(for v in "${VERIFIED_VALUES[@]}"; do json_str "$v"; printf ','; done | sed 's/,$//')"
    printf '}\n'
} >"$TMP_OUT/build-info.json"
sync -f "$TMP_OUT/vmlinux" 2>/dev/null || true
chmod 755 "$TMP_OUT"
rm -rf "$OUT" # only a leftover without build-info.json can be here (we hold the lock)
mv -T "$TMP_OUT" "$OUT"
log "built $NAME in ${SECONDS_TAKEN}s; vmlinux $(stat -c %s "$OUT/vmlinux") bytes"
echo "$OUT/vmlinux"
