#!/usr/bin/env bash
# Builds the image drsdb:local from this checkout: static binaries
# (glibc, crt-static: they need no library in the image), copied into an
# image FROM scratch. Needs Rust and Docker; pulls nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target "$target" \
    --bin drsdb --bin drsdb-storage --bin drsdb-index
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "target/$target/release/drsdb" "target/$target/release/drsdb-storage" "target/$target/release/drsdb-index" \
    deploy/Dockerfile "$context/"
docker build --tag drsdb:local "$context"
