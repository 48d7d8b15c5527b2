#!/usr/bin/env bash
# docker-compose for the drsdb cluster, sized by flags:
#
#   deploy/compose.sh [--index-servers N] [--five-storage] COMPOSE-ARGS…
#
#   deploy/compose.sh up -d                        # 3 storage, 2 index servers
#   deploy/compose.sh --index-servers 4 up -d      # 4 index servers (7201-7204)
#   deploy/compose.sh --five-storage up -d         # 5 storage servers, 8 shards
#   deploy/compose.sh down -v                      # stop, delete the data
#
# Index servers beyond the two of docker-compose.yml are added as services
# index3, index4… (host ports 7203, 7204…, each advertising the port
# clients reach it on), written to a temporary compose file added to the
# command. The
# project is `drsdb` unless DRSDB_PROJECT says otherwise.
set -euo pipefail
cd "$(dirname "$0")"
index=2
files=(-f docker-compose.yml)
while [ $# -gt 0 ]; do
    case "$1" in
        --index-servers) index=$2; shift 2 ;;
        --five-storage) files+=(-f docker-compose.5.yml); shift ;;
        *) break ;;
    esac
done
if ! [[ "$index" =~ ^[0-9]+$ ]] || [ "$index" -lt 2 ] || [ "$index" -gt 99 ]; then
    echo "--index-servers takes a number from 2 to 99" >&2
    exit 2
fi
if command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
else
    compose=(docker compose)
fi
storage="storage1:7101,storage2:7102,storage3:7103"
if [[ " ${files[*]} " == *"docker-compose.5.yml"* ]]; then
    storage="$storage,storage4:7104,storage5:7105"
fi
extra() {
    echo "services:"
    for n in $(seq 3 "$index"); do
        port=$((7200 + n))
        cat <<YAML
  index$n:
    image: drsdb:local
    restart: unless-stopped
    depends_on:
      certs:
        condition: service_completed_successfully
    networks: [drsdb]
    hostname: index$n
    command: ["/drsdb-index", "--listen", "0.0.0.0:$port", "--advertise", "localhost:$port", "--certs", "/certs",
              "--storage", "$storage"]
    volumes: ["certs:/certs:ro"]
    ports: ["$port:$port"]
    healthcheck:
      interval: 5s
      timeout: 6s
      retries: 12
      start_period: 10s
      test: ["CMD", "/drsdb", "probe", "localhost:$port", "--certs", "/certs"]
YAML
    done
}
if [ "$index" -gt 2 ]; then
    more=$(mktemp --suffix=.yml)
    trap 'rm -f "$more"' EXIT
    extra > "$more"
    files+=(-f "$more")
fi
"${compose[@]}" -p "${DRSDB_PROJECT:-drsdb}" "${files[@]}" "$@"
