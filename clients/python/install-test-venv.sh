#!/usr/bin/env bash
# Prepares the venv the Python client's test suite runs in (tests/it/python_client.rs calls it):
# the pinned packages below, then this folder installed with pip, as a user installs it.
#
#   clients/python/install-test-venv.sh
#
# The venv is target/python-client-venv at the repository root (gitignored; LETHE_PY_VENV
# overrides it), created once with `python3` (PYTHON overrides it); pip fetches the pins only
# when they changed. The package itself is reinstalled every run, so the tests always see this
# checkout. On success the venv's interpreter is the one line on stdout; the rest goes to
# stderr. Exit status 3: Python, venv or the packages are unavailable.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${LETHE_PY_VENV:-$root/target/python-client-venv}"
python="${PYTHON:-python3}"
# The whole resolved set, pinned: the recorder test cases come from this eventsourcing release.
pins=(
  "eventsourcing==9.5.6"
  "typing_extensions==4.16.0"
  "psycopg[binary]==3.3.9"
  "psycopg-binary==3.3.9"
  "pycryptodome==3.23.0"
  "setuptools==80.9.0"
)
stamp="$venv/.lethe-pins"

if ! [ -x "$venv/bin/python" ] || ! [ -f "$stamp" ] || [ "$(cat "$stamp")" != "${pins[*]}" ]; then
  if ! command -v "$python" >/dev/null; then
    echo "install-test-venv: $python not found" >&2
    exit 3
  fi
  if [ ! -x "$venv/bin/python" ] && ! "$python" -m venv "$venv" >&2; then
    echo "install-test-venv: $python -m venv $venv failed (python3-venv missing?)" >&2
    rm -rf "$venv"
    exit 3
  fi
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${pins[@]}" >&2; then
    echo "install-test-venv: pip install ${pins[*]} failed (offline?)" >&2
    exit 3
  fi
  echo "${pins[*]}" >"$stamp"
fi

# A copy, so that the build's own files (build/, *.egg-info) never land in the checkout.
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
cp -r "$here/pyproject.toml" "$here/README.md" "$here/lethe_eventsourcing" "$build/"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
  --no-deps --no-build-isolation --force-reinstall "$build" >&2
echo "$venv/bin/python"
