#!/usr/bin/env bash
# Installs Message DB (https://github.com/message-db/message-db, npm `@eventide/message-db`)
# into a fresh database of a PostgreSQL server, for lethe-bench's baseline.
#
#   bench/install-message-db.sh <database name>
#
# The server and user come from the libpq environment (PGHOST, PGPORT, PGUSER, PGPASSWORD);
# lethe-bench sets them from its --postgres-url. The npm package is installed once into
# bench/node_modules (gitignored) and reused. The database must not exist yet: Message DB's
# own install.sh creates it (and the cluster-wide `message_store` role, if missing).
# Exit status 3 means npm or the package is unavailable (the bench then skips the baseline).
set -euo pipefail

database="${1:?usage: $0 <database name>}"
version="${MESSAGE_DB_VERSION:-1.3.1}"
here="$(cd "$(dirname "$0")" && pwd)"
package="$here/node_modules/@eventide/message-db"

if [ ! -f "$package/database/install.sh" ] || ! grep -q "\"version\": \"$version\"" "$package/package.json"; then
  if ! command -v npm >/dev/null; then
    echo "install-message-db: npm not found" >&2
    exit 3
  fi
  # --prefix installs into bench/node_modules without a package.json of ours.
  if ! npm install --prefix "$here" --no-save --no-audit --no-fund --loglevel=error \
      "@eventide/message-db@$version" >&2; then
    echo "install-message-db: npm install @eventide/message-db@$version failed" >&2
    exit 3
  fi
fi
for tool in psql createdb; do
  if ! command -v "$tool" >/dev/null; then
    echo "install-message-db: $tool (PostgreSQL client) not found" >&2
    exit 3
  fi
done

# install.sh prints its progress on stdout; keep it out of the bench's output.
DATABASE_NAME="$database" bash "$package/database/install.sh" >/dev/null
