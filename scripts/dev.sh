#!/usr/bin/env bash
# bolt's one entry point for developers and CI: it makes .venv on first use (and again whenever
# pyproject.toml changes), then runs the command asked for inside it.
#
#   bash scripts/dev.sh analyze [PATH] [bolt analyze options]   main job; PATH defaults to the
#                                                               interpreter's standard library
#   bash scripts/dev.sh test [pytest options]                   the whole test suite
#   bash scripts/dev.sh lint                                    ruff check and ruff format --check
#   bash scripts/dev.sh bolt ARGS...                            any bolt command
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${BOLT_VENV:-.venv}

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  echo "bolt needs Python 3.11: install it or point PYTHON at it" >&2
  exit 2
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$(find_python)" -m venv "$VENV"
  fi
  local stamp="$VENV/.bolt-installed" want
  want=$(cat pyproject.toml requirements.txt | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing bolt and its dependencies into $VENV ..." >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
    echo "$want" >"$stamp"
  fi
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  analyze)
    ensure_venv
    if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
      root=$1
      shift
    else
      root=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
    fi
    exec "$VENV/bin/bolt" analyze "$root" "$@"
    ;;
  test)
    ensure_venv
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  lint)
    ensure_venv
    "$VENV/bin/ruff" check .
    exec "$VENV/bin/ruff" format --check .
    ;;
  bolt)
    ensure_venv
    exec "$VENV/bin/bolt" "$@"
    ;;
  *)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
