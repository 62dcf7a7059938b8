# Sourced by pipelines/demo.sh and tests/run.sh: make .venv and install dmask in it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${DMASK_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.dmask-installed"
HASH="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]"
    echo "$HASH" > "$STAMP"
fi
# Compile the numba kernels ahead into their on-disk cache (dmask/core/__pycache__,
# or NUMBA_CACHE_DIR), so that no first training waits for the compiler: once per
# install, and again when the kernels' source changes. A failure only warns.
KERNELS_STAMP="$VENV/.dmask-kernels"
KERNELS_HASH="$(grep -rl --include='*.py' numba "$ROOT/dmask" | LC_ALL=C sort \
    | xargs cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1) $ROOT ${NUMBA_CACHE_DIR:-}"
if [ "${DMASK_SKIP_WARMUP:-0}" != 1 ] && { [ ! -f "$KERNELS_STAMP" ] \
    || [ "$(cat "$KERNELS_STAMP")" != "$KERNELS_HASH" ]; }; then
    if (cd "$ROOT" && timeout 300 "$VENV/bin/python" -m dmask.cli.warmup); then
        echo "$KERNELS_HASH" > "$KERNELS_STAMP"
    else
        echo "warning: compiling dmask's kernels ahead failed;" \
            "the first training will compile them" >&2
    fi
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
