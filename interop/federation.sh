#!/usr/bin/env bash
# Federation (s2s) interop: Confab serves confab.test on 127.0.0.10 and
# federates with a real Prosody (prosody.test, 127.0.0.11) and ejabberd
# (ejabberd.test, 127.0.0.12) of the interop lab (interop/lab: hosts.sh,
# cert.sh, prosody.sh, ejabberd.sh), all on loopback; everything it starts
# is stopped by PID.
#
#   CONFAB=path/to/confab interop/federation.sh     # interop/run.sh calls it
#
# Phase "dialback": the peers do not trust the lab CA; Confab requires valid
#   certificates except from insecure_domains (both peers): dialback both
#   ways. federation_scenario.py (full) against each peer.
# Phase "external": the peers restarted with INTEROP_TRUST_CA=1, Confab with
#   ca_file = the lab CA and no insecure domains: SASL EXTERNAL both ways.
#   federation_scenario.py --subset basic against each peer.
# After each scenario `confab s2s list --json` must list, over TLS and
# authenticated the phase's way, a stream each way with ejabberd (23.01
# has no XEP-0288), and with Prosody (the lab enables its mod_s2s_bidi)
# bidirectional streams: with SASL EXTERNAL just one, which carries
# everything; with dialback one or two, since Prosody checks our key on a
# stream of its own that it then authenticates for its own traffic. With
# ejabberd over dialback, the room's traffic (step 4) must go on the stream
# confab.test opened, piggybacked (XEP-0220 §2.4): mode both+pb.
# Prints `interop: federation_<peer>_<phase>: ok|FAILED`; on failure the
# scenario's JSON and the tails of Confab's and the peers' logs. Exit 1 on
# any failure.
#
# Needs the lab names in /etc/hosts (interop/lab/hosts.sh, as root), Debian's
# prosody, lua-unbound and ejabberd (tests/run_all.sh installs them), and
# /usr/bin/python3 with python3-slixmpp. The lab's addresses and ports are
# fixed: runs are serialised with a lock file. Knobs: KEEP=1 keeps the work
# dir; INTEROP_DEBUG=1 passes --debug (slixmpp XML, in the .err files);
# FEDERATION_SKIP=3,4 leaves steps out of the scenarios.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
lab="$here/lab"
confab=${CONFAB:-$top/target/release/confab}
py=/usr/bin/python3
pw=interop-pw-1
home_ip=127.0.0.10

[ -x "$confab" ] || { echo "interop: $confab not built (run cargo build --release)" >&2; exit 1; }
$py -c 'import slixmpp' 2>/dev/null || { echo "interop: python3-slixmpp missing for $py" >&2; exit 1; }
"$lab/hosts.sh" --check >/dev/null || {
    echo "interop: the lab's names are not in /etc/hosts: run interop/lab/hosts.sh as root" >&2
    exit 1
}

exec 8>"${TMPDIR:-/tmp}/confab-interop-lab.lock"
flock -w 300 8 || { echo "interop: the interop lab is busy (lock held for 5 min)" >&2; exit 1; }

INTEROP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/confab-federation.XXXXXX")
export INTEROP_DIR
data="$INTEROP_DIR/confab-data"
cfg=
confab_pid=
phase=
failed=0
phase_failed=0
logs_shown=

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

show_logs() { # once per failed phase, before the peers' next start truncates their logs
    [ "$logs_shown" != "$phase" ] || return 0
    logs_shown=$phase
    local f
    for f in "confab:$INTEROP_DIR/confab-$phase.log" \
             "prosody:$INTEROP_DIR/prosody/prosody.log" \
             "ejabberd:$INTEROP_DIR/ejabberd/logs/ejabberd.log"; do
        [ -s "${f#*:}" ] || continue
        echo "--- ${f%%:*} log, phase $phase (last 40 lines) ---" >&2
        tail -n 40 "${f#*:}" >&2
    done
}

stop_confab() { # SIGTERM, then wait; status 0 expected
    [ -n "$confab_pid" ] || return 0
    local pid=$confab_pid status=0
    confab_pid=
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "interop: confab still running 10 s after SIGTERM, killed" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" || status=$?
    if [ "$status" -ne 0 ]; then
        echo "interop: confab exited with $status after SIGTERM (phase $phase)" >&2
        return 1
    fi
}

stop_peers() {
    "$lab/prosody.sh" stop >/dev/null 2>&1 || true
    "$lab/ejabberd.sh" stop >/dev/null 2>&1 || true
}

cleanup() {
    local rc=$?
    stop_confab || rc=1
    [ "$rc" -eq 0 ] || [ -z "$phase" ] || show_logs
    stop_peers
    if [ "${KEEP:-0}" = 1 ]; then echo "interop: kept $INTEROP_DIR" >&2; else rm -rf "$INTEROP_DIR"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

abort() { # the lab itself did not come up: nothing else to try
    echo "interop: federation_$phase: FAILED: $*" >&2
    exit 1
}

start_peers() { # [VAR=VALUE...]: environment for both
    local p
    for p in prosody ejabberd; do
        env "$@" "$lab/$p.sh" start >> "$INTEROP_DIR/lab.log" 2>&1 \
            || { cat "$INTEROP_DIR/lab.log" >&2; abort "$p did not start"; }
    done
}

add_peer_users() { # once: phase B restarts the peers on the same data
    "$lab/prosody.sh" adduser fed-alice "$pw" >> "$INTEROP_DIR/lab.log" 2>&1 \
        || { cat "$INTEROP_DIR/lab.log" >&2; abort "prosody.sh adduser fed-alice"; }
    "$lab/ejabberd.sh" adduser fed-bob "$pw" >> "$INTEROP_DIR/lab.log" 2>&1 \
        || { cat "$INTEROP_DIR/lab.log" >&2; abort "ejabberd.sh adduser fed-bob"; }
}

start_confab() { # the [s2s] table's lines on stdin
    cfg="$INTEROP_DIR/confab-$phase.toml"
    cat > "$cfg" <<TOML
domain = "confab.test"
data_dir = "$data"
[listen]
c2s = ["$home_ip:5222"]
c2s_direct_tls = ["$home_ip:5223"]
s2s = ["$home_ip:5269"]
s2s_direct_tls = ["$home_ip:5270"]
[tls]
cert = "$INTEROP_DIR/confab/confab.test.crt"
key = "$INTEROP_DIR/confab/confab.test.key"
[s2s]
$(cat)
[log]
level = "info"
TOML
    "$confab" --config "$cfg" serve > "$INTEROP_DIR/confab-$phase.log" 2>&1 &
    confab_pid=$!
    for _ in $(seq 100); do
        if [ -S "$data/confab.sock" ] && port_open $home_ip 5222 && port_open $home_ip 5269; then
            return 0
        fi
        if ! kill -0 "$confab_pid" 2>/dev/null; then
            wait "$confab_pid" || true
            confab_pid=
            abort "confab exited during start-up"
        fi
        sleep 0.1
    done
    abort "confab not ready (admin socket, $home_ip:5222 and :5269) after 10 s"
}

check_s2s() { # remote auth both|both+pb|bidi|bidi1: confab.test's streams with remote, over TLS, authenticated so
    local json
    json=$("$confab" --config "$cfg" s2s list --json) || { echo "confab s2s list --json failed"; return 1; }
    $py - "$1" "$2" "$3" "$json" <<'PY'
import json, sys
remote, auth, mode, text = sys.argv[1:]
try:
    streams = json.loads(text)
except ValueError as e:
    sys.exit("s2s list --json is not JSON (%s): %s" % (e, text))
mine = [s for s in streams if s.get("local") == "confab.test" and s.get("remote") == remote
        and s.get("auth") != "none"]
good = [s for s in mine if s.get("auth") == auth and s.get("tls")]
if mode in ("bidi", "bidi1"):
    most = 1 if mode == "bidi1" else 2
    if not 1 <= len(mine) <= most or len(good) != len(mine) or not all(s.get("bidi") for s in good):
        sys.exit("s2s list: not %s bidirectional stream(s) with %s authenticated by %s over TLS;"
                 " the list: %s" % ("one" if most == 1 else "one or two", remote, auth,
                                     json.dumps(streams)))
else:
    missing = [d for d in ("in", "out") if not any(s.get("direction") == d for s in good)]
    if missing:
        sys.exit("s2s list: no %s stream with %s authenticated by %s over TLS; the list: %s"
                 % (" and no ".join(missing), remote, auth, json.dumps(streams)))
    if mode == "both+pb":
        out = {s.get("stream") for s in good if s.get("direction") == "out"}
        rooms = [s for s in streams if s.get("local") == "rooms.confab.test"
                 and s.get("remote") == remote and s.get("direction") == "out"]
        if not rooms or any(s.get("stream") not in out for s in rooms):
            sys.exit("s2s list: rooms.confab.test does not piggyback on confab.test's stream to %s;"
                     " the list: %s" % (remote, json.dumps(streams)))
PY
}

check_peer() { # peer subset auth
    local peer=$1 subset=$2 auth=$3 name="federation_$1_$phase" ip user home mode out="" s2s=""
    case $peer in
        prosody) ip=127.0.0.11 user=fed-alice home=fed-carol mode=bidi
                 [ "$auth" = dialback ] || mode=bidi1 ;;
        ejabberd) ip=127.0.0.12 user=fed-bob home=fed-dave mode=both
                  [ "$subset" != full ] || [ "$auth" != dialback ] || mode=both+pb ;;
    esac
    if out=$($py "$here/federation_scenario.py" --peer-server "$ip" --peer-domain "$peer.test" \
                 --peer-user "$user" --home-server "$home_ip" --home-domain confab.test \
                 --home-user "$home" --password "$pw" --cafile "$INTEROP_DIR/ca/ca.crt" \
                 --subset "$subset" ${FEDERATION_SKIP:+--skip "$FEDERATION_SKIP"} \
                 ${INTEROP_DEBUG:+--debug} 2>"$INTEROP_DIR/$name.err") \
       && s2s=$(check_s2s "$peer.test" "$auth" "$mode" 2>&1); then
        echo "interop: $name: ok"
    else
        echo "interop: $name: FAILED" >&2
        echo "$out" >&2
        [ -z "$s2s" ] || echo "$s2s" >&2
        tail -n 30 "$INTEROP_DIR/$name.err" >&2
        failed=1 phase_failed=1
    fi
}

end_phase() {
    stop_confab || failed=1 phase_failed=1
    [ "$phase_failed" -eq 0 ] || show_logs
    stop_peers
    phase_failed=0
}

"$lab/cert.sh" "$INTEROP_DIR/confab" confab.test rooms.confab.test

# --- phase A: dialback (certificates not trusted by the peers) ---------------
phase=dialback
start_peers
add_peer_users
start_confab <<'S2S'
require_valid_certs = true
insecure_domains = ["prosody.test", "ejabberd.test"]
S2S
"$confab" --config "$cfg" user add fed-carol@confab.test "$pw" >/dev/null
"$confab" --config "$cfg" user add fed-dave@confab.test "$pw" >/dev/null
check_peer prosody full dialback
check_peer ejabberd full dialback
end_phase

# --- phase B: SASL EXTERNAL (everyone trusts the lab CA) ---------------------
phase=external
start_peers INTEROP_TRUST_CA=1
start_confab <<S2S
require_valid_certs = true
ca_file = "$INTEROP_DIR/ca/ca.crt"
S2S
check_peer prosody basic external
check_peer ejabberd basic external
end_phase

phase=
exit "$failed"
