#!/usr/bin/env bash
# Makes a local PostgreSQL ready for the store tests and prints its SQLAlchemy URL on stdout.
# As root it installs the Debian package when missing, creates and starts a cluster, and creates the
# role and database voicebot_test (password voicebot_test, on 127.0.0.1 only). Exits non-zero with a
# message on stderr when it cannot; scripts/test.sh then lets the PostgreSQL tests fail saying so.
set -euo pipefail
ROLE=voicebot_test
DB=voicebot_test
PASSWORD=voicebot_test

say() { echo "test_postgres: $*" >&2; }

if ! command -v pg_lsclusters >/dev/null 2>&1 || ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    say "installing PostgreSQL (Debian package postgresql)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    say "PostgreSQL is not installed (no Debian postgresql package) and this is not root with apt-get"
    exit 1
  fi
fi

# The first cluster, created if the package made none (it may not, in a container).
read -r VERSION CLUSTER PORT STATUS _ < <(pg_lsclusters -h | head -n 1) || true
if [ -z "${VERSION:-}" ]; then
  VERSION=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  say "creating cluster $VERSION main"
  pg_createcluster "$VERSION" main >&2
  read -r VERSION CLUSTER PORT STATUS _ < <(pg_lsclusters -h | head -n 1)
fi
if [ "$STATUS" != "online" ]; then
  say "starting cluster $VERSION $CLUSTER on port $PORT"
  pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi

psql_admin() {
  if [ "$(id -u)" = "0" ]; then
    runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PORT" -d postgres -tA "$@"
  else
    psql -X -q -v ON_ERROR_STOP=1 -p "$PORT" -d postgres -tA "$@"
  fi
}

for _ in $(seq 1 30); do
  psql_admin -c "select 1" >/dev/null 2>&1 && break
  sleep 1
done
if [ "$(psql_admin -c "select 1 from pg_roles where rolname = '$ROLE'")" != "1" ]; then
  psql_admin -c "create role $ROLE login password '$PASSWORD'" >&2
fi
if [ "$(psql_admin -c "select 1 from pg_database where datname = '$DB'")" != "1" ]; then
  psql_admin -c "create database $DB owner $ROLE" >&2
fi

echo "postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
