#!/usr/bin/env bash
# Compiles hvkit guest crates (and their crates.io dependencies) for the Linux kernel, with the
# kernel's own target spec and rustc flags, and merges their objects into one relocatable object
# that links into the kernel like any other built-in object.
#
#   linux/rust/build-crates.sh KERNEL_BUILD_DIR CARGO_TARGET_DIR "FEATURES" CRATE...
#
# KERNEL_BUILD_DIR is a kernel build tree (O=) with CONFIG_RUST=y in which `make rust/` has run.
# Prints two lines on stdout: the merged object, then the rustc flags a kernel crate needs to use
# the crates (`--extern name=rlib` for each CRATE, `-L dependency=` for the rest, and a
# `-Cmetadata` that changes when any of them does). Build noise goes to stderr.
#
# The recipe (see README.md, "Rust-for-Linux"):
# - a fake sysroot holding the kernel's libcore.rmeta and libcompiler_builtins.rmeta, so the
#   crates are compiled against the very `core` that is linked into vmlinux;
# - the kernel's rustc flags, read from the Kbuild command of rust/compiler_builtins.o, minus
#   lints, edition, emit/output and crate options (cargo sets those), plus
#   `--cfg no_fp_fmt_parse` (the kernel's core is built with it);
# - `cargo build --target <build>/scripts/target.json` with RUSTC_BOOTSTRAP=1 (a JSON target);
#   proc macros (zerocopy-derive, bitfield-struct) are host crates and build normally;
# - the objects of every target rlib merged with `ld.lld -r`.
set -euo pipefail

[ $# -ge 4 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
KBUILD=$(readlink -f "$1")
TARGET_DIR=$2
FEATURES=$3
shift 3
CRATES=("$@")
ROOT=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
log() { printf 'build-crates: %s\n' "$*" >&2; }
die() {
    printf 'build-crates: error: %s\n' "$*" >&2
    exit 2
}

CMD=$KBUILD/rust/.compiler_builtins.o.cmd
for f in "$KBUILD/scripts/target.json" "$KBUILD/rust/libcore.rmeta" \
    "$KBUILD/rust/libcompiler_builtins.rmeta" "$CMD" "$KBUILD/include/generated/rustc_cfg"; do
    [ -f "$f" ] || die "$f is missing: run 'make rust/' in the kernel build first (CONFIG_RUST=y)"
done
mkdir -p "$TARGET_DIR"

# Fake sysroot: rustc looks for the target's crates in <sysroot>/lib/rustlib/<target>/lib, and a
# JSON target is named after its file stem ("target").
SYSROOT=$TARGET_DIR/sysroot
mkdir -p "$SYSROOT/lib/rustlib/target/lib"
for c in core compiler_builtins; do
    cmp -s "$KBUILD/rust/lib$c.rmeta" "$SYSROOT/lib/rustlib/target/lib/lib$c.rmeta" ||
        cp "$KBUILD/rust/lib$c.rmeta" "$SYSROOT/lib/rustlib/target/lib/lib$c.rmeta"
done

# The kernel's codegen flags: the tokens of the rustc command between `rustc` and the first
# --emit, without lints (-D/-W/-A/-F), --edition, --target, @file, --sysroot, -Zbinary_dep_depinfo.
# shellcheck disable=SC2016
mapfile -t KFLAGS < <(sed -n 's/^savedcmd_[^ ]* := //p' "$CMD" | tr ' ' '\n' |
    awk '/^rustc$/ {on=1; next} /^--emit/ {exit} on && NF' |
    grep -vE '^(-[DWAF]|--edition|--target|@|--sysroot|-Zbinary_dep_depinfo)')
[ ${#KFLAGS[@]} -gt 5 ] || die "could not read the kernel's rustc flags from $CMD"
# The kernel's config cfgs (CONFIG_*), as the kernel's own crates get them.
mapfile -t KCFG < <(grep -v '^$' "$KBUILD/include/generated/rustc_cfg")
RUSTFLAGS_LIST=("${KFLAGS[@]}" "${KCFG[@]}" --cfg no_fp_fmt_parse "--sysroot=$SYSROOT")
# Cargo splits RUSTFLAGS on spaces; CARGO_ENCODED_RUSTFLAGS (0x1f-separated) keeps values with
# spaces (the CONFIG_ string cfgs) intact.
ENCODED=$(printf '%s\x1f' "${RUSTFLAGS_LIST[@]}")
ENCODED=${ENCODED%$'\x1f'}

PKGS=()
for c in "${CRATES[@]}"; do PKGS+=(-p "$c"); done
log "cargo build ${CRATES[*]} (features: $FEATURES) for $KBUILD/scripts/target.json"
# Profile: the kernel's flags decide opt-level, overflow checks and panics; no LTO, no debuginfo,
# one codegen unit (as Kbuild does).
JSON=$TARGET_DIR/cargo-messages.json
(
    cd "$ROOT"
    unset RUSTFLAGS
    env RUSTC_BOOTSTRAP=1 CARGO_ENCODED_RUSTFLAGS="$ENCODED" CARGO_TARGET_DIR="$TARGET_DIR" \
        CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_LTO=false \
        CARGO_PROFILE_RELEASE_PANIC=abort CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
        CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true \
        CARGO_PROFILE_RELEASE_INCREMENTAL=false \
        cargo build -Zjson-target-spec --release --locked --target "$KBUILD/scripts/target.json" \
        "${PKGS[@]}" --features "$FEATURES" --message-format=json-render-diagnostics >"$JSON"
) || die "cargo build for the kernel target failed (see above)"

# Every target-side library artifact: under target/ (the JSON target's name); the host side
# (proc macros and their dependencies: syn, quote, ...) lives in release/ and is not linked.
TDIR=$(cd "$TARGET_DIR" && pwd)/target/release
DEPS=$TDIR/deps
HOSTDEPS=$(cd "$TARGET_DIR" && pwd)/release/deps
mapfile -t ARTIFACTS < <(grep '"reason":"compiler-artifact"' "$JSON" |
    grep -o '"filenames":\[[^]]*\]' | grep -o '"[^"]*\.rlib"' | tr -d '"' |
    grep -F "$TDIR/" | sort -u)
[ ${#ARTIFACTS[@]} -gt 0 ] || die "cargo produced no rlibs for the kernel target"

# Merge: extract each rlib's objects (members *.o; lib.rmeta is metadata) and `ld -r` them.
OBJDIR=$TARGET_DIR/objs
rm -rf "$OBJDIR"
mkdir -p "$OBJDIR"
i=0
for rlib in "${ARTIFACTS[@]}"; do
    i=$((i + 1))
    mkdir -p "$OBJDIR/$i"
    (cd "$OBJDIR/$i" && llvm-ar x "$rlib" && rm -f lib.rmeta)
done
OUT=$TARGET_DIR/hvkit_crates.o
find "$OBJDIR" -name '*.o' | LC_ALL=C sort >"$OBJDIR/list"
ld.lld -r -o "$OUT.tmp" @"$OBJDIR/list"
mv -f "$OUT.tmp" "$OUT"
log "merged $(wc -l <"$OBJDIR/list") objects from ${#ARTIFACTS[@]} rlibs into $OUT ($(stat -c %s "$OUT") bytes)"

# Flags for the kernel crate that uses them.
FLAGS="-L dependency=$DEPS -L dependency=$HOSTDEPS"
for c in "${CRATES[@]}"; do
    name=${c//-/_}
    rlib=$(printf '%s\n' "${ARTIFACTS[@]}" | grep -E "/lib$name(-[0-9a-f]+)?\.rlib$" | head -1)
    [ -n "$rlib" ] || die "no rlib for $c among the artifacts"
    FLAGS="$FLAGS --extern $name=$rlib"
done
HASH=$(cat "${ARTIFACTS[@]}" | sha256sum | cut -c1-16)
FLAGS="$FLAGS -Cmetadata=hvkit$HASH"
echo "$OUT"
echo "$FLAGS"
