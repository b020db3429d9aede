#!/usr/bin/env bash
# Every test Confab has, in the order that fails fastest:
#   formatting, clippy, unit + integration tests (cargo test), interop
#   scenarios with real third-party software (interop/run.sh).
# Installs what the tests need when it is missing (Debian's python3-slixmpp
# for /usr/bin/python3; prosody, lua-unbound and ejabberd as federation
# partners; coturn as the TURN server; smppy from PyPI as the SMS centre)
# and puts the interop lab's names in /etc/hosts
# (interop/lab/hosts.sh). One cargo profile (release) for everything, so the
# stack is built once and shared by the tests, the interop run and the
# README's `cargo run --release -- serve`.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
need_pkgs=()
/usr/bin/python3 -c 'import slixmpp' 2>/dev/null || need_pkgs+=(python3-slixmpp)
# What interop/lab/prosody.sh and ejabberd.sh run. lua-unbound is only
# recommended by prosody, but without it Prosody ignores /etc/hosts.
command -v prosody >/dev/null || need_pkgs+=(prosody)
dpkg -s lua-unbound >/dev/null 2>&1 || need_pkgs+=(lua-unbound)
# coturn's turnserver and turnutils_uclient, for interop/turn_scenario.py.
command -v turnutils_uclient >/dev/null || need_pkgs+=(coturn)
# pip for /usr/bin/python3, to install smppy from PyPI below.
/usr/bin/python3 -m pip --version >/dev/null 2>&1 || need_pkgs+=(python3-pip)
/usr/bin/python3 -c 'import setuptools' 2>/dev/null || need_pkgs+=(python3-setuptools)
command -v erl >/dev/null && compgen -G '/usr/lib/*/ejabberd-*/ebin' >/dev/null || need_pkgs+=(ejabberd)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "== installing ${need_pkgs[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null
    # The packages may start system servers bound to every address, which
    # takes the lab's ports: stop them (the lab runs its own, by PID).
    # `service ejabberd stop` with no node running would start an epmd.
    if [[ " ${need_pkgs[*]} " == *" prosody "* ]]; then
        $sudo service prosody stop >/dev/null 2>&1 || true
    fi
    if [[ " ${need_pkgs[*]} " == *" coturn "* ]]; then
        $sudo service coturn stop >/dev/null 2>&1 || true
    fi
    if [[ " ${need_pkgs[*]} " == *" ejabberd "* ]] && pgrep -u ejabberd beam >/dev/null 2>&1; then
        $sudo service ejabberd stop >/dev/null 2>&1 || true
    fi
fi
# smppy (PyPI: an SMPP 3.4 server library on smpppdu), the SMS centre of
# interop/sms_scenario.py, for Debian's /usr/bin/python3.
if ! /usr/bin/python3 -c 'import smppy' 2>/dev/null; then
    echo "== installing smppy from PyPI for /usr/bin/python3"
    $sudo /usr/bin/python3 -m pip install --quiet --disable-pip-version-check \
        --break-system-packages smppy==0.3.2
fi
if ! interop/lab/hosts.sh --check >/dev/null 2>&1; then
    echo "== adding the interop lab's names to /etc/hosts"
    $sudo interop/lab/hosts.sh
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
