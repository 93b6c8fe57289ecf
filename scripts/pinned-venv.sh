#!/usr/bin/env bash
# A Python venv holding pinned packages, created once and reused:
#
#   scripts/pinned-venv.sh VENV PIN...
#
# creates VENV with `python3` (PYTHON overrides it) if needed and runs pip only when the pins
# differ from the ones it last installed, so that later runs need no network. On success the
# venv's interpreter is the one line on stdout; everything else goes to stderr. Exit status 3:
# Python, venv or the packages are unavailable. Used by bench/install-eventsourcing.sh and
# clients/python/install-test-venv.sh.
set -euo pipefail

venv="$1"
shift
pins=("$@")
python="${PYTHON:-python3}"
stamp="$venv/.lethe-pins"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${pins[*]}" ]; then
  echo "$venv/bin/python"
  exit 0
fi
if ! command -v "$python" >/dev/null; then
  echo "pinned-venv: $python not found" >&2
  exit 3
fi
if [ ! -x "$venv/bin/python" ] && ! "$python" -m venv "$venv" >&2; then
  echo "pinned-venv: $python -m venv $venv failed (python3-venv missing?)" >&2
  rm -rf "$venv"
  exit 3
fi
if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${pins[@]}" >&2; then
  echo "pinned-venv: pip install ${pins[*]} failed (offline?)" >&2
  exit 3
fi
echo "${pins[*]}" >"$stamp"
echo "$venv/bin/python"
