# Sourced by the scripts: make sure .venv exists and holds the project (and its test extra
# when MODELPLEX_EXTRAS=test). Needs only a Python >= 3.11 on the machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
extras="${MODELPLEX_EXTRAS:-}"
stamp="$VENV/.modelplex-installed${extras:+-$extras}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "modelplex: creating $VENV" >&2
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 may lack ensurepip; install python3-venv once and retry.
    if command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    fi
    "$PY" -m venv "$VENV"
  fi
fi
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  echo "modelplex: installing the project into $VENV${extras:+ (with [$extras])}" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT${extras:+[$extras]}" 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c "import aiohttp, msgpack, yaml" || { echo "modelplex: install failed" >&2; exit 1; }
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
