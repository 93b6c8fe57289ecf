#!/usr/bin/env bash
# Installs the Python `eventsourcing` library (PyPI, https://github.com/pyeventsourcing/eventsourcing)
# with its PostgreSQL recorder and the `cryptography` package its AESCipher uses, into a venv,
# for lethe-bench's baseline (bench/eventsourcing_baseline.py).
#
#   bench/install-eventsourcing.sh
#
# The venv is target/bench-venv-eventsourcing (gitignored; EVENTSOURCING_VENV overrides it),
# made by scripts/pinned-venv.sh: created once with `python3` (PYTHON overrides it) and reused,
# pip running only when the pins below changed. On success the venv's interpreter is the one
# line on stdout; everything else goes to stderr.
# Exit status 3 means Python, venv or the packages are unavailable (the bench then skips the
# baseline).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv="${EVENTSOURCING_VENV:-$(dirname "$here")/target/bench-venv-eventsourcing}"
# Every package pinned (the whole resolved set), so every run measures the same code.
# psycopg[binary] is the C implementation, which a user who cares about speed installs.
pins=(
  "eventsourcing==9.5.6"
  "psycopg[binary,pool]==3.3.9"
  "psycopg-binary==3.3.9"
  "psycopg-pool==3.3.3"
  "cryptography==50.0.2"
  "cffi==2.1.1"
  "pycparser==3.12"
  "typing_extensions==4.16.0"
)
exec "$(dirname "$here")/scripts/pinned-venv.sh" "$venv" "${pins[@]}"
