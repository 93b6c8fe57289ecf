#!/usr/bin/env bash
# Prepares the venv the Python client's test suite runs in (tests/it/python_client.rs calls it):
# the pinned packages below, then this folder installed with pip, as a user installs it.
#
#   clients/python/install-test-venv.sh
#
# The venv is target/python-client-venv at the repository root (gitignored; LETHE_PY_VENV
# overrides it), made by scripts/pinned-venv.sh: created once with `python3` (PYTHON overrides
# it), pip fetching the pins only when they changed. The package itself is reinstalled every run, so the tests always see this
# checkout. On success the venv's interpreter is the one line on stdout; the rest goes to
# stderr. Exit status 3: Python, venv or the packages are unavailable.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${LETHE_PY_VENV:-$root/target/python-client-venv}"
# The whole resolved set, pinned: the recorder test cases come from this eventsourcing release.
pins=(
  "eventsourcing==9.5.6"
  "typing_extensions==4.16.0"
  "psycopg[binary]==3.3.9"
  "psycopg-binary==3.3.9"
  "pycryptodome==3.23.0"
  "setuptools==80.9.0"
)
python_bin="$("$root/scripts/pinned-venv.sh" "$venv" "${pins[@]}")"

# A copy, so that the build's own files (build/, *.egg-info) never land in the checkout.
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
cp -r "$here/pyproject.toml" "$here/README.md" "$here/lethe_eventsourcing" "$build/"
"$python_bin" -m pip install --quiet --disable-pip-version-check --no-input \
  --no-deps --no-build-isolation --force-reinstall "$build" >&2
echo "$python_bin"
