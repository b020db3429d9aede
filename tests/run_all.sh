#!/usr/bin/env bash
# Every test Confab has, in the order that fails fastest:
#   formatting, clippy, unit + integration tests (cargo test), interop
#   scenarios with real third-party software (interop/run.sh).
# Installs what the tests need when it is missing (Debian's python3-slixmpp
# for /usr/bin/python3). One cargo profile (release) for everything, so the
# stack is built once and shared by the tests, the interop run and the
# README's `cargo run --release -- serve`.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
/usr/bin/python3 -c 'import slixmpp' 2>/dev/null || need_pkgs+=(python3-slixmpp)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "== installing ${need_pkgs[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test --release"
cargo test --release

echo "== interop"
# cargo test built target/release/confab for the integration tests; a
# plain `cargo build` would rebuild the stack without the dev-dependencies'
# feature unification (minutes for nothing).
[ -x target/release/confab ] || cargo build --release --bin confab
CONFAB=target/release/confab interop/run.sh

echo "== all tests passed"
