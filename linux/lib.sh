# shellcheck shell=bash
# shellcheck disable=SC2034 # HVKIT_LIB, DEB_SHA, RESUMED, ...: set here for the sourcing script
# What linux/build-kernel.sh and linux/build-rust-kernel.sh share, sourced by both (not run):
# tools via apt-get, the linux-source-6.12 download and extraction, configure (tinyconfig +
# fragments + olddefconfig), the verification of the final .config, the cache lock and the
# atomic publish. Both scripts put the sha256 of this file into their cache key, so a change here
# rebuilds.
#
# The caller sets before sourcing: LOG_TAG (prefix of log lines), SOURCE_PACKAGE, and before
# calling the functions: KCACHE, VARIANT, FRAGMENTS (array), PRINT_PATH, and for
# configure_build/publish: MAKE (array), BUILD, OUT, NAME, KEY_INPUT.

HVKIT_LIB=$(readlink -f "${BASH_SOURCE[0]}")

log() { printf '%s: %s\n' "$LOG_TAG" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$LOG_TAG" "$*" >&2
    exit 2
}

# The sha256 of a file (hex only).
file_sha256() { sha256sum "$1" | awk '{print $1}'; }

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

# Sets DEB and DEB_SHA for source version $1. With --print-path the .deb must already be in the
# cache: if it is not, prints the unknown-key path, logs "... not in the cache yet$2: not built"
# and exits 1. Otherwise it is downloaded when missing.
resolve_source_deb() {
    if [ "$PRINT_PATH" = 1 ]; then
        DEB=$KCACHE/src/${SOURCE_PACKAGE}_${1//:/%3a}_all.deb
        [ -s "$DEB.sha256" ] || {
            echo "$KCACHE/$VARIANT-unknown/vmlinux"
            log "$SOURCE_PACKAGE $1 is not in the cache yet${2-}: not built"
            exit 1
        }
    else
        DEB=$(fetch_source_deb "$1")
    fi
    DEB_SHA=$(cat "$DEB.sha256")
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
# Cache key lines and the cache itself.
# ---------------------------------------------------------------------------------------------
# "fragment NAME SHA256" for each of FRAGMENTS, in merge order.
fragment_key_lines() {
    local f
    for f in "${FRAGMENTS[@]}"; do
        printf 'fragment %s %s\n' "${f##*/}" "$(file_sha256 "$f")"
    done
}

# If $OUT is published (vmlinux and build-info.json), logs it, prints the vmlinux path and exits 0.
exit_if_published() {
    if [ -f "$OUT/vmlinux" ] && [ -f "$OUT/build-info.json" ]; then
        log "cached: $OUT"
        echo "$OUT/vmlinux"
        exit 0
    fi
}

# With --print-path: not published, so print the path it would have and exit 1.
exit_if_print_path() {
    if [ "$PRINT_PATH" = 1 ]; then
        log "not built yet: $OUT"
        echo "$OUT/vmlinux"
        exit 1
    fi
}

# Takes the flock on $1 (fd 9, held until the script exits), logging $2 if it has to wait; then
# exits as exit_if_published does if the output appeared while we waited.
lock_build() {
    mkdir -p "$KCACHE/build"
    exec 9>"$1"
    if ! flock -n 9; then
        log "$2"
        flock 9
    fi
    exit_if_published
}

# ---------------------------------------------------------------------------------------------
# Configure: tinyconfig + FRAGMENTS + olddefconfig in BUILD, with "${MAKE[@]}" (make -C <tree>
# O=$BUILD ...), unless BUILD is configured already (then it resumes). $1: the source tree,
# $2: what to log when resuming, $3: what to log when configuring; if the caller defines
# before_tinyconfig, it runs in the fresh BUILD first. Sets RESUMED; verifies the .config.
# ---------------------------------------------------------------------------------------------
configure_build() {
    local src=$1
    RESUMED=false
    if [ -f "$BUILD/.hvkit-configured" ]; then
        RESUMED=true
        log "$2"
    else
        log "$3"
        rm -rf "$BUILD"
        mkdir -p "$BUILD"
        if declare -F before_tinyconfig >/dev/null; then before_tinyconfig; fi
        "${MAKE[@]}" tinyconfig >&2
        (cd "$BUILD" && "$src/scripts/kconfig/merge_config.sh" -m -O "$BUILD" "$BUILD/.config" "${FRAGMENTS[@]}") >&2
        "${MAKE[@]}" olddefconfig >&2
    fi
    verify_config "$BUILD/.config" "$src" "${FRAGMENTS[@]}"
    touch "$BUILD/.hvkit-configured"
    log "config verified: ${#VERIFIED[@]} options as required"
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

# ---------------------------------------------------------------------------------------------
# Publish atomically: a complete directory appears under its final name, or nothing does.
# ---------------------------------------------------------------------------------------------
json_str() { # minimal JSON string escaping (no control characters are expected)
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

# The arguments as the items of a JSON list of strings (without the brackets).
json_list() {
    local v
    for v in "$@"; do
        json_str "$v"
        printf ','
    done | sed 's/,$//'
}

# Copies the outputs of BUILD (vmlinux, bzImage, .config, System.map), the fragments and
# KEY_INPUT (key-input.txt) to a new temp dir beside OUT and sets STAGE to it; the caller adds
# build-info.json, then calls publish.
stage_outputs() {
    STAGE=$(mktemp -d "$KCACHE/.$NAME.tmp.XXXXXX")
    cp "$BUILD/vmlinux" "$STAGE/vmlinux"
    cp "$BUILD/arch/x86/boot/bzImage" "$STAGE/bzImage"
    cp "$BUILD/.config" "$STAGE/.config"
    cp "$BUILD/System.map" "$STAGE/System.map"
    local f
    for f in "${FRAGMENTS[@]}"; do cp "$f" "$STAGE/"; done
    printf '%s\n' "$KEY_INPUT" >"$STAGE/key-input.txt"
}

# Renames STAGE to OUT (replacing a leftover without build-info.json: we hold the lock).
publish() {
    chmod 755 "$STAGE"
    rm -rf "$OUT"
    mv -T "$STAGE" "$OUT"
}
