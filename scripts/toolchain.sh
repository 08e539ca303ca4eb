#!/usr/bin/env bash
# Make sure the Rust toolchain that rust-toolchain.toml pins can run, without a download when the
# machine already has that release under another name.
#
#   bash scripts/toolchain.sh        # silent when the toolchain is there; says what it did otherwise
#
# rust-toolchain.toml names a release ("1.95.0"), and rustup then runs every cargo command of the
# repository with the toolchain of that name. These machines get their one toolchain from rustup as
# "stable", and reach no toolchain server: there rustup would fail every cargo command with "toolchain
# '1.95.0-...' is not installed". So, in this order:
#   1. the pinned toolchain is installed: nothing to do;
#   2. an installed toolchain (stable, say) is that very release: register it under the pinned name
#      (rustup refuses `toolchain link` for release names, so this is the same symbolic link rustup's
#      own directory layout uses: $RUSTUP_HOME/toolchains/<release>-<host> -> the installed one);
#   3. otherwise ask rustup to install it (works where the Rust servers are reachable);
#   4. else fail, saying which release is needed.
# Without rustup, the rustc on PATH must be the pinned release.
#
# scripts/test.sh, reproduce.sh, demo.sh, bench.sh and fuzz.sh run this first. Exit code: 0 when the
# pinned toolchain runs.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf 'toolchain: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

channel="$(sed -n 's/^channel *= *"\([^"]*\)".*/\1/p' "$root/rust-toolchain.toml")"
[ -n "$channel" ] || die "no channel = \"...\" line in $root/rust-toolchain.toml"
release_of() { sed -n 's/^release: //p'; }

if ! command -v rustup > /dev/null; then
    have="$(rustc -vV 2> /dev/null | release_of || true)"
    [ "$have" = "$channel" ] || die "rust-toolchain.toml pins Rust $channel, but the rustc on PATH is '${have:-missing}' and there is no rustup to switch"
    exit 0
fi

# rustup must not try to download while we look (it would hang or fail on a closed network).
export RUSTUP_AUTO_INSTALL=0
if rustup run "$channel" rustc --version > /dev/null 2>&1; then
    exit 0
fi

rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
while read -r name _; do
    [ -n "$name" ] || continue
    info="$(rustup run "$name" rustc -vV 2> /dev/null || true)"
    [ "$(release_of <<< "$info")" = "$channel" ] || continue
    host="$(sed -n 's/^host: //p' <<< "$info")"
    sysroot="$(rustup run "$name" rustc --print sysroot)"
    link="$rustup_home/toolchains/$channel-$host"
    log "registering the installed toolchain $name (Rust $channel) as $channel-$host, the name rust-toolchain.toml uses"
    ln -sfn "$sysroot" "$link"
    rustup run "$channel" rustc --version > /dev/null || die "rustup still cannot run $channel through $link"
    exit 0
done < <(rustup toolchain list 2> /dev/null)

log "Rust $channel is not installed; asking rustup for it"
if RUSTUP_AUTO_INSTALL=1 rustup toolchain install "$channel" --profile default >&2; then
    exit 0
fi
die "rust-toolchain.toml pins Rust $channel, which is not installed and could not be downloaded: install it with \`rustup toolchain install $channel\` where the Rust servers are reachable"
