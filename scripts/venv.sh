#!/usr/bin/env bash
# Makes (or reuses) a Python virtual environment with pinned requirements, and prints its interpreter.
#
#   scripts/venv.sh DIR REQUIREMENTS     e.g. scripts/venv.sh ~/.cache/veil/test-venv tests/python/requirements.txt
#
# The environment is remade only when REQUIREMENTS changes (its SHA-256 is kept in DIR). Progress goes to
# stderr; stdout is the interpreter's path alone.
set -euo pipefail
if [ "$#" -ne 2 ]; then
    sed -n '2,8p' "$0" >&2
    exit 2
fi
dir="$1"
requirements="$2"
stamp="$dir/.requirements.sha256"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ ! -x "$dir/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "venv.sh: making $dir from $requirements" >&2
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
    echo "$want" >"$stamp"
fi
echo "$dir/bin/python"
