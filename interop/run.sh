#!/usr/bin/env bash
# Interop scenarios against real third-party software: starts the built
# Confab binary on free loopback ports with a fresh data directory, creates
# users with `confab user add` (through the running server's admin socket),
# runs each slixmpp scenario, and stops the server by its PID. Then
# federation.sh: its own Confab as confab.test on 127.0.0.10, federating
# with Prosody and ejabberd of the interop lab (interop/lab).
#
#   interop/run.sh            # uses target/release/confab (cargo build --release)
#   CONFAB=path/to/confab interop/run.sh
#   INTEROP_FEDERATION=0 interop/run.sh   # without federation.sh
#
# Needs /usr/bin/python3 with Debian's python3-slixmpp; federation.sh also
# Prosody, ejabberd and the lab's names in /etc/hosts (tests/run_all.sh
# sees to all three).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
confab=${CONFAB:-$top/target/release/confab}
py=/usr/bin/python3

[ -x "$confab" ] || { echo "interop: $confab not built (run cargo build --release)" >&2; exit 1; }
$py -c 'import slixmpp' 2>/dev/null || { echo "interop: python3-slixmpp missing for $py" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/confab-interop.XXXXXX")
pid=
turn_pid=
smsc_pid=
cleanup() {
    if [ -n "$turn_pid" ]; then kill -TERM "$turn_pid" 2>/dev/null || true; fi
    if [ -n "$smsc_pid" ]; then kill -TERM "$smsc_pid" 2>/dev/null || true; fi
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    if [ "${KEEP:-0}" = 1 ]; then echo "interop: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() {
    $py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port=$(free_port)
tls_port=$(free_port)
# coturn for turn_scenario: UDP and TCP on one port, relays on loopback.
turn_port=$(free_port)
turn_secret=$($py -c 'import secrets; print(secrets.token_hex(16))')
# An SMS centre nobody here wrote (smppy from PyPI) for sms_scenario,
# started before Confab so that the gateway binds at once.
smpp_port=$(free_port)
if $py -c 'import smppy' 2>/dev/null; then
    $py "$here/smsc.py" --port "$smpp_port" --log "$work/smsc.jsonl" > "$work/smsc.log" 2>&1 &
    smsc_pid=$!
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$smpp_port") 2>/dev/null && break
        sleep 0.1
    done
fi
cat > "$work/confab.toml" <<TOML
domain = "localhost"
data_dir = "$work/data"
admins = ["adhoc-boss@localhost"]
[listen]
c2s = ["127.0.0.1:$port"]
c2s_direct_tls = ["127.0.0.1:$tls_port"]
s2s = []
[turn]
host = "127.0.0.1"
port = $turn_port
secret = "$turn_secret"
ttl_s = 600
[sms]
backend = "smpp"
[sms.smpp]
host = "127.0.0.1"
port = $smpp_port
system_id = "confab"
password = "interop"
# smppy reads one PDU per TCP read: one SMS part in flight at a time.
window = 1
[log]
level = "info"
TOML

"$confab" --config "$work/confab.toml" serve > "$work/confab.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    if [ -S "$work/data/confab.sock" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    kill -0 "$pid" 2>/dev/null || { echo "interop: confab exited:" >&2; cat "$work/confab.log" >&2; exit 1; }
    sleep 0.1
done

"$confab" --config "$work/confab.toml" user add alice@localhost interop-pw-1 >/dev/null
"$confab" --config "$work/confab.toml" user add bob@localhost interop-pw-1 >/dev/null
"$confab" --config "$work/confab.toml" user add carol@localhost interop-pw-1 >/dev/null
"$confab" --config "$work/confab.toml" user add mallory@localhost interop-pw-1 >/dev/null
# Fresh accounts for history_scenario, which counts whole archives and inboxes.
"$confab" --config "$work/confab.toml" user add hist-alice@localhost interop-pw-1 >/dev/null
"$confab" --config "$work/confab.toml" user add hist-bob@localhost interop-pw-1 >/dev/null
# Fresh accounts for muc_scenario, which reads a room's whole archive and an inbox.
"$confab" --config "$work/confab.toml" user add muc-alice@localhost interop-pw-1 >/dev/null
"$confab" --config "$work/confab.toml" user add muc-bob@localhost interop-pw-1 >/dev/null
# adhoc_scenario: an administrator (in admins above) and an account that is not.
"$confab" --config "$work/confab.toml" user add adhoc-boss@localhost interop-pw-1 >/dev/null
"$confab" --config "$work/confab.toml" user add adhoc-pleb@localhost interop-pw-1 >/dev/null
# turn_scenario: one account with the right av, one without.
"$confab" --config "$work/confab.toml" user add turn-av@localhost interop-pw-1 >/dev/null
"$confab" --config "$work/confab.toml" user add turn-none@localhost interop-pw-1 >/dev/null
"$confab" --config "$work/confab.toml" rights grant turn-av@localhost av >/dev/null
# sms_scenario: one account with the right sms, one without.
"$confab" --config "$work/confab.toml" user add sms-alice@localhost interop-pw-1 >/dev/null
"$confab" --config "$work/confab.toml" user add sms-pleb@localhost interop-pw-1 >/dev/null
"$confab" --config "$work/confab.toml" rights grant sms-alice@localhost sms >/dev/null

failed=0
run() {
    local name=$1; shift
    if out=$("$@" 2>"$work/$name.err"); then
        echo "interop: $name: ok"
    else
        echo "interop: $name: FAILED" >&2
        echo "$out" >&2
        cat "$work/$name.err" >&2
        failed=1
    fi
}

cert="$work/data/tls/localhost.crt"
run c2s_scenario $py "$here/c2s_scenario.py" --server 127.0.0.1 --port "$port" \
    --domain localhost --cafile "$cert" --password interop-pw-1 ${INTEROP_DEBUG:+--debug}
# Reserved namespaces are refused at the reader; a slixmpp recipient
# stays connected and nothing poisoned is stored for an offline one.
run poison_scenario $py "$here/poison_scenario.py" --server 127.0.0.1 --port "$port" \
    --domain localhost --cafile "$cert" --password interop-pw-1 ${INTEROP_DEBUG:+--debug}
# The lab's one-shot client over direct TLS (XEP-0368): log in and send.
run send_direct_tls $py "$here/send.py" --jid alice@localhost --password interop-pw-1 \
    --server 127.0.0.1 --port "$tls_port" --direct-tls --cafile "$cert" \
    --to bob@localhost --body "direct tls"
# Stream management, archive, stanza-ids and carbons agree: 120 messages
# paged back from both archives, carbons' stanza-ids, and a stream resumed
# after its socket was reset delivers what was sent meanwhile exactly once.
run sm_mam_scenario $py "$here/sm_mam_scenario.py" --server 127.0.0.1 --port "$port" \
    --domain localhost --cafile "$cert" --password interop-pw-1 ${INTEROP_DEBUG:+--debug}
# Do Not Disturb defers delivery: a slixmpp client goes dnd, a marker
# passes, chats wait, and arrive in order with a delay when it is back.
run dnd_scenario $py "$here/dnd_scenario.py" --server 127.0.0.1 --port "$port" \
    --domain localhost --cafile "$cert" --password interop-pw-1 ${INTEROP_DEBUG:+--debug}
# Deleting history from one's own view (urn:confab:history:0): items and a
# whole conversation go from alice's MAM on both her devices, the other
# device is notified, bob's archive is unchanged, and the inbox agrees.
run history_scenario $py "$here/history_scenario.py" --server 127.0.0.1 --port "$port" \
    --domain localhost --cafile "$cert" --password interop-pw-1 ${INTEROP_DEBUG:+--debug}
# Group chat on rooms.localhost (XEP-0045) with slixmpp's MUC and MAM code:
# a room created, given a member and a name, its archive read by a member
# who never joined, counted in that member's inbox, and real JIDs shown.
run muc_scenario $py "$here/muc_scenario.py" --server 127.0.0.1 --port "$port" \
    --domain localhost --cafile "$cert" --password interop-pw-1 ${INTEROP_DEBUG:+--debug}
# Server administration (XEP-0133) with slixmpp's XEP-0050 command code:
# only the admin sees and may run the commands; add-user creates an account
# that logs in, announce reaches an online user, the user count goes up.
run adhoc_scenario $py "$here/adhoc_scenario.py" --server 127.0.0.1 --port "$port" \
    --domain localhost --cafile "$cert" --password interop-pw-1 \
    --admin adhoc-boss --user adhoc-pleb ${INTEROP_DEBUG:+--debug}
# STUN/TURN credentials (XEP-0215) in a real coturn: slixmpp asks Confab,
# turnutils_uclient allocates a relay with what it got.
if command -v turnserver >/dev/null && command -v turnutils_uclient >/dev/null; then
    turnserver -n --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 \
        --listening-port="$turn_port" --min-port=49200 --max-port=49400 \
        --use-auth-secret --static-auth-secret="$turn_secret" --realm=localhost \
        --no-tls --no-dtls --no-cli --allow-loopback-peers --log-file=stdout \
        --pidfile="$work/turnserver.pid" > "$work/turnserver.log" 2>&1 &
    turn_pid=$!
    for _ in $(seq 50); do
        grep -q "Total General servers" "$work/turnserver.log" 2>/dev/null && break
        sleep 0.1
    done
    run turn_scenario $py "$here/turn_scenario.py" --server 127.0.0.1 --port "$port" \
        --domain localhost --cafile "$cert" --password interop-pw-1 \
        --turn-port "$turn_port" ${INTEROP_DEBUG:+--debug}
    kill -TERM "$turn_pid" 2>/dev/null || true
    wait "$turn_pid" 2>/dev/null || true
    turn_pid=
else
    echo "interop: turn_scenario: FAILED (coturn's turnserver and turnutils_uclient are missing)" >&2
    failed=1
fi

# The SMS gateway with a real SMS centre (smppy): a refusal without the
# right, a submit_sm received, a long answer in parts joined, archived.
if [ -n "$smsc_pid" ]; then
    run sms_scenario $py "$here/sms_scenario.py" --server 127.0.0.1 --port "$port" \
        --domain localhost --cafile "$cert" --password interop-pw-1 \
        --smsc-log "$work/smsc.jsonl" ${INTEROP_DEBUG:+--debug}
    kill -TERM "$smsc_pid" 2>/dev/null || true
    wait "$smsc_pid" 2>/dev/null || true
    smsc_pid=
else
    echo "interop: sms_scenario: FAILED (the PyPI package smppy is missing for $py)" >&2
    failed=1
fi

# Graceful stop: SIGTERM, exit status 0.
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=
if [ "$status" -ne 0 ]; then
    echo "interop: confab exited with $status after SIGTERM" >&2
    failed=1
fi
if [ "$failed" -ne 0 ]; then
    echo "--- confab log ---" >&2
    tail -50 "$work/confab.log" >&2
fi

# Federation (s2s) with Prosody and ejabberd as real partners, dialback
# then SASL EXTERNAL: prints its own lines, and its logs on failure.
if [ "${INTEROP_FEDERATION:-1}" = 1 ]; then
    CONFAB="$confab" "$here/federation.sh" || failed=1
fi
[ "$failed" -eq 0 ] || exit 1
echo "interop: all scenarios passed"
