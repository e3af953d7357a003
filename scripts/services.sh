#!/usr/bin/env bash
# Install (Debian packages) and start PostgreSQL and Redis on 127.0.0.1 for the integration tests.
# Prints `export ...` lines with the URLs the tests read; use as: eval "$(bash scripts/services.sh)".
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# Chinese labels on the /stats chart (bot/charts.py falls back to English without a CJK font)
[[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ]] || need+=(fonts-wqy-microhei)
if ((${#need[@]})); then
    { apt-get update -qq && apt-get install -y -qq "${need[@]}"; } >&2
fi

# PostgreSQL: the Debian cluster, loopback only, a password for the postgres role, a test database.
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
    pg_createcluster "$version" main >&2
fi
# pg_conftool writes the value unquoted (a syntax error for an address); a conf.d file does not.
pg_conftool "$version" main remove listen_addresses >&2 2>/dev/null || true
echo "listen_addresses = '127.0.0.1'" >"/etc/postgresql/$version/main/conf.d/listen.conf"
pg_ctlcluster "$version" main start >&2 2>/dev/null || true
for _ in $(seq 30); do pg_isready -h 127.0.0.1 -q && break; sleep 0.5; done
su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >&2
su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='digitbot_test'\"" | grep -q 1 \
    || su postgres -c "createdb digitbot_test" >&2

# Redis: a throwaway server on 127.0.0.1:6379.
if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
    redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes >&2
fi
for _ in $(seq 30); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 0.2; done

echo "export DIGITBOT_TEST_POSTGRES_URL=postgresql+psycopg://postgres:postgres@127.0.0.1:5432/digitbot_test"
echo "export DIGITBOT_TEST_REDIS_URL=redis://127.0.0.1:6379/0"
echo "export DIGITBOT_TEST_CHROMIUM=$(command -v chromium || true)"
