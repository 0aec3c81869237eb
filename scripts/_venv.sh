# Shared by scripts/demo and scripts/test: make .venv if missing and (re)install the project
# when pyproject.toml changed since the last install. Sourced, not run.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
EXTRAS="${POOLRUN_EXTRAS:-dev,dask,bench,plot}"
if [ ! -x "$PY" ]; then
    echo "creating $VENV" >&2
    python3 -m venv "$VENV"
fi
STAMP="$VENV/.poolrun-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $EXTRAS"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "installing poolrun[$EXTRAS] into $VENV" >&2
    "$PY" -m pip install -q --upgrade pip >&2
    "$PY" -m pip install -q -e "$ROOT[$EXTRAS]" >&2
    echo "$WANT" > "$STAMP"
fi
# Byte-compile poolrun as pip does for an installed package (an editable install leaves that
# to the first import, which PYTHONDONTWRITEBYTECODE turns into a compile on every start).
"$PY" -m compileall -q "$ROOT/src/poolrun" >/dev/null || true
