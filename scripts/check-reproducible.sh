#!/usr/bin/env bash
# Prove that scripts/reproduce.sh is reproducible: build the enclave image twice, from two clones of
# this repository at different paths, at different times, with different umasks, time zones and
# working directories, and compare the two EIFs byte for byte and PCR by PCR. Any difference fails and
# names the first differing section and, in a ramdisk, the first differing file (`veil eif diff`).
#
#   scripts/check-reproducible.sh            # the short variant (what scripts/test.sh runs in CI)
#   scripts/check-reproducible.sh --full     # the full variant (or VEIL_REPRODUCE_FULL=1)
#
# The short variant (2 to 4.6 minutes on the two-core machine once the dependencies are compiled, about
# 13 on a machine where they are not): both clones build with ONE cargo target directory, so the registry
# dependencies (aws-sdk-kms, tokio, ring, ...) are compiled once (and kept in ${VEIL_CACHE:-~/.cache/veil},
# so a second run on the same machine compiles none of them), while each clone compiles Veil's own crates
# (veil-protocol, veil-runtime, veil-enclave) from its own path: the script removes their artifacts
# before each build and checks that cargo compiled them from that clone. It proves that Veil's code
# and the whole assembly (the C runtime from the .deb files, ONNX Runtime, the cpio ramdisks, the EIF)
# do not depend on the checkout's path, the time, the umask or the time zone. It does not prove that
# the dependencies compile the same way twice, nor that the build does not depend on the target
# directory's path.
#
# The full variant: each clone has its own target directory, so everything is compiled twice from
# scratch (twice a cold release build of veil-enclave: 21 minutes on the two-core machine). It also
# proves the two points above. Run it before a release, and when dependencies change.
#
# The images use stand-in blobs (a fake kernel, init and nsm.ko): PCR2, the application, does not
# depend on them, and PCR0/PCR1 are compared all the same. Only committed files are built (the clones
# are of HEAD).
#
# Options: --full, --keep (keep the work directory), --work-dir DIR, --veil PATH (the veil CLI;
# default: built with cargo build -p veil-client).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
full="${VEIL_REPRODUCE_FULL:-0}"
keep=0
work=""
veil=""
while [ $# -gt 0 ]; do
    case "$1" in
        --full) full=1; shift ;;
        --keep) keep=1; shift ;;
        --work-dir) work="${2:?--work-dir needs a directory}"; shift 2 ;;
        --veil) veil="${2:?--veil needs a path}"; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "check-reproducible: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
log() { printf 'check-reproducible: %s\n' "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}

if [ -z "$work" ]; then
    work="$(mktemp -d)"
    [ "$keep" -eq 1 ] || trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"
work="$(cd "$work" && pwd -P)"
start=$SECONDS

cd "$root"
if ! git diff --quiet HEAD -- 2> /dev/null; then
    log "note: uncommitted changes are not checked (the clones are of HEAD, $(git rev-parse --short HEAD))"
fi
bash scripts/toolchain.sh
if [ -z "$veil" ]; then
    cargo build --locked -p veil-client --bin veil >&2
    veil="${CARGO_TARGET_DIR:-$root/target}/debug/veil"
fi
veil="$(cd "$(dirname "$veil")" && pwd -P)/$(basename "$veil")"

# Stand-in blobs, laid out as nitro-cli's: the same bytes in both builds.
blobs="$work/blobs"
mkdir -p "$blobs"
python3 - "$blobs" << 'PY'
import hashlib, pathlib, sys
d = pathlib.Path(sys.argv[1])
def stream(label, n):
    out, i = b"", 0
    while len(out) < n:
        out += hashlib.sha256(b"%s %d" % (label, i)).digest()
        i += 1
    return out[:n]
(d / "bzImage").write_bytes(stream(b"stand-in kernel", 1 << 20))
(d / "bzImage.config").write_text("#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86_64 6.6.79 Kernel Configuration\n#\n")
(d / "cmdline").write_text("reboot=k panic=30 pci=off nomodules console=ttyS0 random.trust_cpu=on\n")
(d / "init").write_bytes(stream(b"stand-in init", 700_000))
(d / "nsm.ko").write_bytes(stream(b"stand-in nsm.ko", 20_000))
PY

if [ "$full" = 1 ]; then
    log "full variant: two clones, two target directories, everything compiled twice"
else
    shared_target="${VEIL_CACHE:-$HOME/.cache/veil}/reproducible-target"
    log "short variant: two clones, one target directory for the dependencies ($shared_target); Veil's crates compiled by each clone"
fi

# build NAME CLONE_DIR UMASK TZ: clone HEAD to CLONE_DIR and run reproduce.sh there.
build() {
    local name="$1" dir="$2" mask="$3" tz="$4" locale="$5" target
    rm -rf "$dir"
    mkdir -p "$(dirname "$dir")"
    git clone --quiet --no-hardlinks "$root" "$dir"
    git -C "$dir" checkout --quiet "$(git -C "$root" rev-parse HEAD)"
    if [ "$full" = 1 ]; then
        target="$dir/target/reproducible"
    else
        target="$shared_target"
        # Each clone compiles Veil's own crates itself.
        if ! (cd "$dir" && CARGO_TARGET_DIR="$target" cargo clean --release --quiet -p veil-enclave -p veil-protocol -p veil-runtime 2> /dev/null); then
            log "note: nothing of Veil's to clean in $target yet"
        fi
    fi
    log "build $name: $dir (umask $mask, TZ=$tz, LC_ALL=$locale)"
    (
        cd "$dir/docker" # a working directory other than the root, on purpose
        umask "$mask"
        # The two builds are compared with each other, so a machine whose compiler packages moved on, or
        # a pinned .deb that Debian's mirrors dropped, must not stop the check: both builds use the same.
        # reproduce.sh warns, and the warnings are shown below.
        TZ="$tz" LC_ALL="$locale" bash "$dir/scripts/reproduce.sh" --blobs "$blobs" --output "$work/$name.eif" \
            --target-dir "$target" --veil "$veil" --work-dir "$work/$name-work" \
            --allow-host-mismatch --allow-newer-debs
    ) > "$work/$name.measurements.json" 2> "$work/$name.log" || {
        tail -n 40 "$work/$name.log" >&2
        keep=1
        trap - EXIT
        die "build $name failed (log: $work/$name.log)"
    }
    grep -F "Compiling veil-enclave v" "$work/$name-work/cargo.log" | grep -qF "($dir/enclave)" ||
        die "build $name did not compile veil-enclave from $dir (see $work/$name-work/cargo.log): the check would prove nothing"
}

build first "$work/a/veil" 022 UTC C
if grep -E '^reproduce: (WARNING|build machine|unpinned)' "$work/first.log" >&2; then
    log "note: the lines above mean the pins no longer match this machine or Debian's mirrors: the builds are still compared, but their PCR2 is not the pinned build's (docs/OPERATING.md)"
fi
sleep 2 # and the second clone is made minutes after the first build: other mtimes everywhere
build second "$work/elsewhere/deeper/path/veil-clone" 077 Pacific/Chatham C.UTF-8

log "comparing"
if ! diff "$work/first.measurements.json" "$work/second.measurements.json" > /dev/null || ! cmp -s "$work/first.eif" "$work/second.eif"; then
    "$veil" eif diff "$work/first.eif" "$work/second.eif" >&2 || true
    diff "$work/first.measurements.json" "$work/second.measurements.json" >&2 || true
    keep=1
    trap - EXIT
    die "the two builds differ (above); both are kept in $work"
fi
cat "$work/first.measurements.json"
log "ok: two builds from $work/a/veil and $work/elsewhere/deeper/path/veil-clone are identical ($(wc -c < "$work/first.eif") bytes, SHA-256 $(sha256sum "$work/first.eif" | cut -d' ' -f1)), in $((SECONDS - start)) s"
