#!/usr/bin/env bash
# The compose cluster's smoke test (CI runs it): builds the image, brings
# the cluster up under its own project name with three index servers
# (deploy/compose.sh --index-servers 3), writes and reads from the
# host with the shell, runs the fault suite's register and set workloads
# while storage and index servers are cut off by network partitions, and
# tears everything down (volumes included), also on failure.
#
# Needs Docker with docker-compose (v1 or v2), iptables and nsenter (the
# partitions are iptables rules inside the containers' namespaces), and
# root for those.
set -euo pipefail
cd "$(dirname "$0")/.."
project=${DRSDB_SMOKE_PROJECT:-drsdbsmoke}
# Three index servers: the third added by compose.sh's flag.
compose=(env DRSDB_PROJECT="$project" deploy/compose.sh --index-servers 3)
work=$(mktemp -d)
cleanup() {
    "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

deploy/build-image.sh
cargo build --release --bin drsdb --bin faults
"${compose[@]}" up -d

# Wait for every server's healthcheck.
for _ in $(seq 1 120); do
    unhealthy=0
    for c in $("${compose[@]}" ps -q storage1 storage2 storage3 index1 index2 index3); do
        [ "$(docker inspect -f '{{.State.Health.Status}}' "$c")" = healthy ] || unhealthy=1
    done
    [ "$unhealthy" = 0 ] && break
    sleep 1
done
if [ "$unhealthy" != 0 ]; then
    "${compose[@]}" ps
    "${compose[@]}" logs --tail 50
    echo "the compose cluster did not become healthy" >&2
    exit 1
fi

# The client's certificates, out of the certificates volume.
certs_container=$("${compose[@]}" ps -a -q certs)
mkdir -p "$work/certs"
for f in ca.pem client.pem client.key; do
    docker cp "$certs_container:/certs/$f" "$work/certs/"
done

shell=(./target/release/drsdb --connect localhost:7201,localhost:7202,localhost:7203 --certs "$work/certs")
"${shell[@]}" -e "CREATE TABLE smoke(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO smoke VALUES (1, 'one'), (2, 'two'), (3, 'three');"
answer=$("${shell[@]}" --mode list -e "SELECT count(*), group_concat(v, ',') FROM (SELECT v FROM smoke ORDER BY id)")
if [ "$answer" != "3|one,two,three" ]; then
    echo "unexpected answer from the compose cluster: $answer" >&2
    exit 1
fi
echo "wrote and read from the host: $answer"
# The third index server announced itself, and clients reach it.
for _ in $(seq 1 60); do
    servers=$("${shell[@]}" --mode list -e "SHOW INDEX SERVERS" | sort | tr '\n' ' ')
    [ "$servers" = "localhost:7201 localhost:7202 localhost:7203 " ] && break
    sleep 1
done
if [ "$servers" != "localhost:7201 localhost:7202 localhost:7203 " ]; then
    echo "expected three index servers, SHOW INDEX SERVERS says: $servers" >&2
    exit 1
fi
./target/release/drsdb --connect localhost:7203 --certs "$work/certs" -e "SELECT count(*) FROM smoke"

./target/release/faults --target compose --project "$project" --certs "$work/certs" \
    --connect localhost:7201,localhost:7202,localhost:7203 \
    --workload register,set,bank --time 40 --interval 3 --hold 6 \
    --faults partition-storage,partition-majority,partition-index --out "$work/faults"
