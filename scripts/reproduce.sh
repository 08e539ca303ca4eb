#!/usr/bin/env bash
# Build Veil's enclave image (EIF) from source, without Docker, bit for bit the same on any machine
# set up like the pins say; print its measurements.
#
#   scripts/reproduce.sh --blobs /usr/share/nitro_enclaves/blobs --output veil-enclave.eif > measurements.json
#
# Steps (progress on stderr; stdout is only the measurements JSON, in nitro-cli's shape):
#   1. check the build machine: the Rust toolchain of rust-toolchain.toml (scripts/toolchain.sh), and
#      the Debian 12 packages that take part in compiling and linking (BUILD_HOST_PINS in pins.sh);
#   2. build the production veil-enclave (no `dev` feature): release, --locked, no debug information,
#      symbols stripped, and the paths of the Cargo home and the target directory remapped (the
#      workspace's own files reach rustc as relative paths), then check that no path of this machine
#      is left in the binary;
#   3. take libonnxruntime.so from the pinned PyPI wheel (scripts/setup.sh), and the C runtime from
#      the pinned Debian packages (DEB_PINS; downloaded with apt-get download, checked by SHA-256):
#      exactly the files that the NEEDED entries of veil-enclave and libonnxruntime.so lead to, and
#      the program interpreter, found with readelf in the packages' own trees (not in this host's /lib);
#   4. check that the root is complete: the packaged loader runs veil-enclave --check-config on the
#      configuration, and resolves every library of libonnxruntime.so, from the staged root alone;
#   5. write the application ramdisk (`veil eif ramdisk`: rootfs/, cmd, env, as AWS's init reads them;
#      a deterministic cpio archive) and the EIF (`veil eif build --blobs`: the operator's kernel,
#      cmdline, and a bootstrap ramdisk of init and nsm.ko), and print the measurements.
#
# What the image holds and runs is docker/Dockerfile.enclave's (same binary build, same files at the same
# paths, same entrypoint and environment; tests/tests/reproducible.rs compares them), so this script and
# scripts/build-eif.sh describe one image; only this one is reproducible without Docker. The EIF depends
# on the commit (the source), the configuration file (--config), the pins, and the blobs: PCR2 on the
# first three alone, PCR0 and PCR1 also on the blobs (AWS's kernel and init). See docs/AUDITING.md.
#
# Needs: a Debian 12 x86_64 machine (apt-get, dpkg-deb, readelf), rustup or Rust 1.95.0, python3 with pip.
set -euo pipefail
# readelf and apt-cache are parsed below: their messages must be the untranslated ones.
export LC_ALL=C

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=scripts/pins.sh
source "$root/scripts/pins.sh"

# What the image runs: the same entrypoint and environment as docker/Dockerfile.enclave's final stage.
IMAGE_BIN=/usr/local/bin/veil-enclave
IMAGE_CONFIG=/etc/veil/enclave.toml
IMAGE_ORT_DIR=/opt/onnxruntime
IMAGE_CMD=("$IMAGE_BIN" --nsm hardware --config "$IMAGE_CONFIG")
IMAGE_ENV=(
    "ORT_DYLIB_PATH=$IMAGE_ORT_DIR/$ORT_SO"
    "LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:$IMAGE_ORT_DIR"
    "VEIL_ENCLAVE_LISTEN=vsock://any:5000"
    "VEIL_PARENT_ADDR=vsock://3:5001"
    "VEIL_LOG_FORMAT=json"
)

usage() {
    cat << EOF
Usage: scripts/reproduce.sh --blobs DIR --output FILE.eif [options]

Builds veil-enclave from this checkout and assembles the enclave image without Docker, reproducibly;
prints the measurements (PCR0, PCR1, PCR2) as nitro-cli's JSON on stdout, progress on stderr.

  --blobs DIR          nitro-cli's blobs: bzImage, bzImage.config, cmdline, init, nsm.ko
                       (/usr/share/nitro_enclaves/blobs on Amazon Linux with aws-nitro-enclaves-cli)
  --output FILE.eif    where to write the image
  --config FILE        the enclave's configuration, baked in at $IMAGE_CONFIG
                       (default: \$VEIL_CONFIG or docker/enclave.toml, the example)
  --target-dir DIR     cargo's target directory (default: target/reproducible); the path does not
                       reach the binary
  --veil PATH          the veil CLI that writes the ramdisk and the EIF (default: built here with
                       cargo build -p veil-client; its version does not change the image)
  --debs DIR           where the pinned .deb files are, or are downloaded to
                       (default: \${VEIL_CACHE:-~/.cache/veil}/debs)
  --work-dir DIR       keep the staged root, the ramdisk and the logs there (default: a temporary
                       directory, removed at the end)
  --allow-dirty        build even with uncommitted changes (the image then matches no commit)
  --allow-host-mismatch  build on a machine whose compiler packages differ from the pins (the binary,
                       and so PCR2, will then most likely differ from everyone else's)
  --allow-newer-debs   when a pinned Debian package is no longer to be had, take the version apt has
                       now (PCR2 then differs from the pinned build; the script says which pin to move)
  --print-image        print what the image runs (command, environment, file paths) as JSON, and
                       build nothing
  -h, --help           this text

Environment: VEIL_CACHE, SOURCE_DATE_EPOCH (the EIF's build time, not measured; default: the commit's).
EOF
}

log() { printf 'reproduce: %s\n' "$*" >&2; }
print_image() {
    python3 - "$IMAGE_BIN" "$IMAGE_CONFIG" "$IMAGE_ORT_DIR/$ORT_SO" "${#IMAGE_CMD[@]}" "${IMAGE_CMD[@]}" "${IMAGE_ENV[@]}" << 'PY'
import json, sys
binary, config, ort, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cmd, env = sys.argv[5:5 + n], sys.argv[5 + n:]
print(json.dumps({"binary": binary, "config": config, "onnxruntime": ort, "cmd": cmd, "env": env}, indent=2))
PY
}
die() {
    log "error: $*"
    exit 1
}

blobs=""
output=""
config="${VEIL_CONFIG:-$root/docker/enclave.toml}"
target_dir="$root/target/reproducible"
veil=""
debs="${VEIL_CACHE:-$HOME/.cache/veil}/debs"
work=""
allow_dirty=0
allow_host=0
allow_newer_debs=0
while [ $# -gt 0 ]; do
    case "$1" in
        --blobs) blobs="${2:?--blobs needs a directory}"; shift 2 ;;
        --output | -o) output="${2:?--output needs a file}"; shift 2 ;;
        --config) config="${2:?--config needs a file}"; shift 2 ;;
        --target-dir) target_dir="${2:?--target-dir needs a directory}"; shift 2 ;;
        --veil) veil="${2:?--veil needs a path}"; shift 2 ;;
        --debs) debs="${2:?--debs needs a directory}"; shift 2 ;;
        --work-dir) work="${2:?--work-dir needs a directory}"; shift 2 ;;
        --allow-dirty) allow_dirty=1; shift ;;
        --allow-host-mismatch) allow_host=1; shift ;;
        --allow-newer-debs) allow_newer_debs=1; shift ;;
        --print-image) print_image; exit 0 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[ -n "$blobs" ] || { usage >&2; die "--blobs DIR is required (nitro-cli's blobs: kernel, cmdline, init, nsm.ko)"; }
[ -n "$output" ] || { usage >&2; die "--output FILE.eif is required"; }
for f in bzImage cmdline init nsm.ko; do
    [ -r "$blobs/$f" ] || die "$blobs/$f is missing: --blobs must name nitro-cli's blobs directory"
done
[ -r "$config" ] || die "cannot read the enclave configuration $config"
for tool in readelf sha256sum python3; do
    command -v "$tool" > /dev/null || die "$tool is needed (Debian: apt-get install binutils coreutils python3)"
done
blobs="$(cd "$blobs" && pwd -P)"
config="$(cd "$(dirname "$config")" && pwd -P)/$(basename "$config")"
mkdir -p "$(dirname "$output")" "$target_dir" "$debs"
output="$(cd "$(dirname "$output")" && pwd -P)/$(basename "$output")"
target_dir="$(cd "$target_dir" && pwd -P)"
debs="$(cd "$debs" && pwd -P)"
if [ -z "$work" ]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
else
    mkdir -p "$work"
    work="$(cd "$work" && pwd -P)"
fi
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# ---- 1. the build machine ------------------------------------------------------------------------------
cd "$root"
# shellcheck source=scripts/commit.sh
source "$root/scripts/commit.sh"
build_commit "$allow_dirty"

bash "$root/scripts/toolchain.sh"
# The pinned release, whatever else would choose one: rustup ranks RUSTUP_TOOLCHAIN and a directory
# override above rust-toolchain.toml, and RUSTC names a compiler outright.
channel="$(sed -n 's/^channel *= *"\([^"]*\)".*/\1/p' "$root/rust-toolchain.toml")"
unset RUSTC CARGO_BUILD_RUSTC CARGO_BUILD_RUSTC_WRAPPER
if command -v rustup > /dev/null; then export RUSTUP_TOOLCHAIN="$channel"; fi
have_release="$(rustc -vV | sed -n 's/^release: //p')"
[ "$have_release" = "$channel" ] || die "rustc is release ${have_release:-unknown}, rust-toolchain.toml pins $channel"
rustc_version="$(rustc -V)"
host_problems=()
os_id="$(. /etc/os-release 2> /dev/null && echo "${ID:-?} ${VERSION_ID:-?}")"
[ "$os_id" = "$BUILD_HOST_OS" ] || host_problems+=("this machine runs ${os_id:-an unknown system}, the pins are for $BUILD_HOST_OS")
[ "$(uname -m)" = x86_64 ] || host_problems+=("this machine is $(uname -m), the image is x86_64")
for pin in "${BUILD_HOST_PINS[@]}"; do
    read -r pkg want <<< "$pin"
    have="$(dpkg-query -W -f='${Version}' "$pkg" 2> /dev/null || true)"
    [ "$have" = "$want" ] || host_problems+=("$pkg is ${have:-not installed}, the pin is $want")
done
if [ "${#host_problems[@]}" -gt 0 ]; then
    for p in "${host_problems[@]}"; do log "build machine: $p"; done
    if [ "$allow_host" -eq 0 ]; then
        die "this machine does not build the pinned binary (above); use a Debian 12 machine or container with those packages (apt-get install gcc-12=VERSION ...), or pass --allow-host-mismatch to build anyway"
    fi
    log "WARNING: --allow-host-mismatch: veil-enclave, and so PCR2, will most likely differ from a build on the pinned machine"
fi
log "commit $commit, $rustc_version, configuration $config (SHA-384 $(sha384sum "$config" | cut -d' ' -f1))"

# ---- 2. veil-enclave, the production build -------------------------------------------------------------
cargo_home="$(cd "${CARGO_HOME:-$HOME/.cargo}" && pwd -P)"
rustup_home="$(cd "${RUSTUP_HOME:-$HOME/.rustup}" 2> /dev/null && pwd -P || echo "${RUSTUP_HOME:-$HOME/.rustup}")"
# The flags must not depend on where this checkout is (cargo hands the workspace's sources to rustc as
# paths relative to it), so that builds from two checkouts can share one target directory and its
# compiled dependencies (scripts/check-reproducible.sh). Any other absolute path is remapped.
# (Passed one flag per field of CARGO_ENCODED_RUSTFLAGS, so that a path with spaces stays one flag.)
rustflags=(-C strip=symbols "--remap-path-prefix=$cargo_home=/cargo" "--remap-path-prefix=$rustup_home=/rustup"
    "--remap-path-prefix=$target_dir=/target")
log "building veil-enclave (release, --locked, production: no dev feature) in $target_dir"
if ! (
    unset RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_BUILD_TARGET \
        CC CXX CFLAGS CXXFLAGS LDFLAGS AR CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER
    while read -r v; do unset "$v"; done < <(env | sed -n 's/^\(CARGO_PROFILE_RELEASE_[A-Z_]*\)=.*/\1/p')
    # The spelling remapped above: cargo hands rustc the registry's paths under CARGO_HOME as given.
    export CARGO_HOME="$cargo_home"
    CARGO_ENCODED_RUSTFLAGS="$(IFS=$'\x1f' && echo "${rustflags[*]}")"
    export CARGO_ENCODED_RUSTFLAGS CARGO_INCREMENTAL=0 \
        CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_TERM_COLOR=never
    cargo build --release --locked -p veil-enclave --bin veil-enclave --target-dir "$target_dir"
) 2>&1 | tee "$work/cargo.log" >&2; then
    die "cargo build failed (its output is above)"
fi
binary="$target_dir/release/veil-enclave"
[ -x "$binary" ] || die "cargo did not produce $binary"
# (The checkout's own crates, not its bare path, which may be as short as /src.)
for leak in "$root/enclave/" "$root/protocol/" "$root/runtime/" "$cargo_home/registry/" "$rustup_home/" "$target_dir/"; do
    if grep -qF -- "$leak" "$binary"; then
        die "$binary contains the path $leak: the build depends on where it ran (report this as a bug)"
    fi
done
log "veil-enclave: $(wc -c < "$binary") bytes, SHA-256 $(sha256_of "$binary")"

if [ -z "$veil" ]; then
    log "building the veil CLI (it writes the ramdisk and the EIF; not part of the image)"
    cargo build --locked -p veil-client --bin veil >&2
    veil="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/veil"
fi
[ -x "$veil" ] || die "the veil CLI $veil is not an executable"

# ---- 3. ONNX Runtime and the C runtime -------------------------------------------------------------------
bash "$root/scripts/setup.sh" >&2
ort="${VEIL_CACHE:-$HOME/.cache/veil}/onnxruntime-$ORT_VERSION/$ORT_SO"
[ "$(sha256_of "$ort")" = "$ORT_SO_SHA256" ] || die "$ort does not have the pinned SHA-256 $ORT_SO_SHA256"

# Every package is unpacked twice: alone (to say which package a file comes from) and into one tree
# (where links between packages resolve, like /lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/...).
debroot="$work/debs"
merged="$debroot/all"
rm -rf "$debroot"
mkdir -p "$merged"
deb_list=()
unpack() { # DEB DIR
    if command -v dpkg-deb > /dev/null; then
        dpkg-deb -x "$1" "$2"
    else
        (cd "$2" && ar x "$1" && tar -xf data.tar.* && rm -f data.tar.* control.tar.* debian-binary)
    fi
}
# fetch_deb PKG VERSION FILE: apt-get download PKG=VERSION to FILE; false when apt cannot get it.
fetch_deb() {
    local dl ok=0
    log "downloading $1=$2 (apt-get download)"
    command -v apt-get > /dev/null || die "$3 is missing and there is no apt-get: put the pinned .deb files in --debs (snapshot.debian.org has every version)"
    # A fresh directory that apt's unprivileged download user (_apt) may write to.
    dl="$(mktemp -d)"
    chmod 0755 "$dl"
    if [ "$(id -u)" -eq 0 ] && id _apt > /dev/null 2>&1; then chown _apt "$dl"; fi
    if (cd "$dl" && apt-get download -q "$1=$2" >&2); then
        ok=1
    elif [ "$(id -u)" -eq 0 ] && [ "${apt_updated:-0}" -eq 0 ]; then
        # A fresh machine may have no package lists yet, or old ones: update them once and try again.
        log "updating apt's package lists (apt-get update)"
        apt_updated=1
        apt-get update -qq >&2 || log "apt-get update failed; trying the download anyway"
        if (cd "$dl" && apt-get download -q "$1=$2" >&2); then ok=1; fi
    fi
    [ "$ok" -eq 1 ] && mv -f "$dl/"*.deb "$3"
    rm -rf "$dl"
    [ "$ok" -eq 1 ]
}
unpinned=()
for pin in "${DEB_PINS[@]}"; do
    read -r pkg version sha <<< "$pin"
    file="$debs/${pkg}_${version#*:}_amd64.deb"
    if { [ ! -f "$file" ] || [ "$(sha256_of "$file")" != "$sha" ]; } && ! fetch_deb "$pkg" "$version" "$file"; then
        if [ "$allow_newer_debs" -eq 0 ]; then
            die "apt-get download $pkg=$version failed: Debian's mirrors keep only current versions; fetch it from snapshot.debian.org into $debs, or move the pin (scripts/pins.sh)"
        fi
        candidate="$(apt-cache policy "$pkg" 2> /dev/null | sed -n 's/^ *Candidate: //p')"
        case "$candidate" in "" | "(none)") die "apt knows no version of $pkg" ;; esac
        log "WARNING: $pkg=$version is not to be had; --allow-newer-debs: using $candidate, so PCR2 is not the pinned build's (move the pin in scripts/pins.sh)"
        version="$candidate"
        file="$debs/${pkg}_${version#*:}_amd64.deb"
        # Not pinned, but still the archive's own: its SHA-256 must be the one apt's signed lists give.
        sha="$(apt-cache show "$pkg=$version" 2> /dev/null | sed -n 's/^SHA256: //p' | head -n 1)"
        [ -n "$sha" ] || die "apt's package lists give no SHA-256 for $pkg=$version"
        if [ ! -f "$file" ] || [ "$(sha256_of "$file")" != "$sha" ]; then
            fetch_deb "$pkg" "$version" "$file" || die "apt-get download $pkg=$version failed too"
        fi
        unpinned+=("$pkg $version $sha")
    fi
    got="$(sha256_of "$file")"
    [ "$got" = "$sha" ] || die "$file: SHA-256 $got, the pin is $sha"
    mkdir -p "$debroot/pkg/$pkg"
    unpack "$file" "$debroot/pkg/$pkg"
    unpack "$file" "$merged"
    deb_list+=("$pkg=$version")
done
for u in "${unpinned[@]}"; do log "unpinned Debian package (the pin to move to): \"$u\""; done

# Follows symbolic links inside the unpacked packages (never on this host); prints the real path.
resolve() {
    local path="$1" target n
    for n in 1 2 3 4 5 6 7 8 9; do
        if [ ! -L "$merged$path" ]; then
            [ -f "$merged$path" ] && printf '%s\n' "$path"
            return
        fi
        [ "$n" -lt 9 ] || return 1
        target="$(readlink "$merged$path")"
        case "$target" in
            /*) path="$target" ;;
            *) path="$(dirname "$path")/$target" ;;
        esac
    done
}
# A library by file name, in the packages' library directories: "IMAGE_PATH REAL_PATH PACKAGE".
find_lib() {
    local dir real pkg
    for dir in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64; do
        [ -e "$merged$dir/$1" ] || continue
        real="$(resolve "$dir/$1")"
        [ -n "$real" ] || return 1
        for pkg in "$debroot"/pkg/*; do
            if [ -f "$pkg$real" ] && [ ! -L "$pkg$real" ]; then
                printf '%s %s %s\n' "$dir/$1" "$real" "$(basename "$pkg")"
                return 0
            fi
        done
    done
    return 1
}

stage="$work/rootfs"
rm -rf "$stage"
mkdir -p "$stage"
stage_file() { # IMAGE_PATH SOURCE MODE
    mkdir -p "$stage$(dirname "$1")"
    cp -- "$2" "$stage$1"
    chmod "$3" "$stage$1"
}
stage_file "$IMAGE_BIN" "$binary" 0755
stage_file "$IMAGE_ORT_DIR/$ORT_SO" "$ort" 0755
stage_file "$IMAGE_CONFIG" "$config" 0644

# The program interpreter first: the NEEDED entries naming the loader are satisfied by it.
declare -A placed=()
libs_report=()
interp="$(readelf -l "$binary" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')"
[ -n "$interp" ] || die "$binary has no program interpreter: is it a dynamically linked glibc binary?"
real="$(resolve "$interp")" || die "the program interpreter $interp is a dangling or looping link in the pinned packages"
[ -n "$real" ] || die "no pinned Debian package provides the program interpreter $interp"
stage_file "$interp" "$merged$real" 0755
placed[$(basename "$interp")]="$interp"
libs_report+=("$interp (the program interpreter: $real)")
queue=("$binary" "$stage$IMAGE_ORT_DIR/$ORT_SO")
while [ "${#queue[@]}" -gt 0 ]; do
    elf="${queue[0]}"
    queue=("${queue[@]:1}")
    while read -r needed; do
        [ -n "${placed[$needed]:-}" ] && continue
        found="$(find_lib "$needed")" || die "no pinned Debian package provides $needed, which $(basename "$elf") needs: add its package to DEB_PINS in scripts/pins.sh"
        read -r image_path real pkg <<< "$found"
        stage_file "$image_path" "$merged$real" 0755
        placed[$needed]="$image_path"
        libs_report+=("$image_path (from $pkg$([ "$real" = "$image_path" ] || printf ': %s' "$real"), needed by $(basename "$elf"))")
        queue+=("$stage$image_path")
    done < <(readelf -d "$elf" | sed -n 's/.*(NEEDED).*Shared library: \[\(.*\)\]/\1/p')
done
for l in "${libs_report[@]}"; do log "C runtime: $l"; done

# ---- 4. the root is complete ---------------------------------------------------------------------------
libpath="$stage/lib/x86_64-linux-gnu:$stage/usr/lib/x86_64-linux-gnu:$stage$IMAGE_ORT_DIR"
ort_libs="$("$stage$interp" --library-path "$libpath" --list "$stage$IMAGE_ORT_DIR/$ORT_SO" 2>&1)" ||
    die "the staged loader cannot list the libraries of $ORT_SO: $ort_libs"
if grep -q 'not found' <<< "$ort_libs"; then
    printf '%s\n' "$ort_libs" >&2
    die "the staged root lacks a library of $ORT_SO (above)"
fi
version="$("$stage$interp" --library-path "$libpath" "$stage$IMAGE_BIN" --version)" ||
    die "veil-enclave does not start with the staged C runtime"
# A production build (docs/SECURITY.md, invariant 6): no mock NSM in it (tests/tests/production_build.rs
# looks for the same strings).
case "$version" in
    *development*) die "$binary is a development build ($version): the image must hold the production build" ;;
esac
if grep -qF "MOCK aws.nitro-enclaves root" "$binary"; then
    die "$binary contains the mock NSM: the image must hold the production build"
fi
config_check="$("$stage$interp" --library-path "$libpath" "$stage$IMAGE_BIN" --config "$stage$IMAGE_CONFIG" --check-config 2>&1)" ||
    die "veil-enclave refuses the configuration $config: $config_check"
log "veil-enclave --check-config, run by the staged loader and libraries: accepted ($config_check)"

# ---- 5. the ramdisk and the EIF ---------------------------------------------------------------------------
file_args=()
while IFS= read -r -d '' f; do
    file_args+=(--file "${f#"$stage"}=$f")
done < <(find "$stage" -type f -print0 | LC_ALL=C sort -z)
env_args=()
for e in "${IMAGE_ENV[@]}"; do env_args+=(--env "$e"); done
"$veil" eif ramdisk --output "$work/veil.cpio" "${file_args[@]}" "${env_args[@]}" -- "${IMAGE_CMD[@]}"

metadata="$work/metadata.json"
python3 - "$metadata" "$commit" "$rustc_version" "$(sha384sum "$config" | cut -d' ' -f1)" \
    "$ORT_VERSION" "${deb_list[*]}" << 'PY'
import json, sys
out, commit, rustc, config, ort, debs = sys.argv[1:]
json.dump({"source": "scripts/reproduce.sh", "commit": commit, "rustc": rustc, "config_sha384": config,
           "onnxruntime": ort, "debian_packages": debs.split()}, open(out, "w"), sort_keys=True)
PY
"$veil" eif build --blobs "$blobs" --ramdisk "$work/veil.cpio" --output "$output" \
    --name veil-enclave --image-version "${commit:0:12}" --metadata "$metadata" \
    --source-date-epoch "$source_date_epoch"
log "done: $output; PCR2 depends on the commit, the configuration and the pins; PCR0 and PCR1 also on the blobs"
