#!/usr/bin/env bash
# ejabberd.sh — a throw-away ejabberd (Debian package, 23.01) for interop tests.
# (Shared by interop/ and bench/; beyond the shared lab script: no limit on
# how often one address may register, so the benchmark can create its
# users in-band; EJABBERD_BACKLOG sets the c2s listen backlog, whose
# default of 5 drops connection attempts under a burst of logins. The
# bench runs it with the archive on, EJABBERD_MAM=1 (default: always),
# and mod_stream_mgmt, which every bench client enables.)
#
#   ejabberd.sh [-d DIR] start              write config + cert, start, wait for ports
#   ejabberd.sh [-d DIR] stop               stop the node started from DIR (by PID)
#   ejabberd.sh [-d DIR] status             exit 0 if running
#   ejabberd.sh [-d DIR] adduser USER PASS  create USER@$EJABBERD_DOMAIN
#   ejabberd.sh [-d DIR] deluser USER
#   ejabberd.sh [-d DIR] ctl CMD [ARGS...]  any ejabberdctl command, e.g. 'incoming_s2s_number'
#   ejabberd.sh [-d DIR] info               print what a test needs, as JSON
#
# DIR defaults to $INTEROP_DIR/ejabberd; INTEROP_DIR defaults to
# ${TMPDIR:-/tmp}/confab-interop. Config, cert, Mnesia spool, logs, cookie and
# PID live in DIR; nothing in /etc/ejabberd or /var/lib/ejabberd is used, and
# no epmd is started (the node listens for ejabberdctl on a fixed port,
# $EJABBERD_DIST_PORT, on its own IP), so it coexists with a system ejabberd.
# The node is run with `erl` directly rather than through ejabberdctl, which
# would `su` to the ejabberd user and leave the PID unknown.
# Environment knobs:
#   EJABBERD_IP (127.0.0.12)  EJABBERD_DOMAIN (ejabberd.test)
#   EJABBERD_DIST_PORT (4370) EJABBERD_LOGLEVEL (info; debug shows s2s steps)
#   EJABBERD_S2S_STARTTLS (required; optional | false)
#   EJABBERD_DNS (unset: the system's resolv.conf for SRV lookups; IP or
#                 IP@PORT: ask only that server, e.g. dns.sh's 127.0.0.13)
#   INTEROP_TRUST_CA (0; 1: trust the lab CA for s2s certificate checks)
#   EJABBERD_REGISTRATION (0; 1: allow in-band registration, XEP-0077)
#   EJABBERD_C2S_SHAPER (none; normal: Debian's 3000 B/s per c2s connection)
#   EJABBERD_MAM (1: archive every message, in Mnesia as Debian does, which
#                 costs tens of ms per message; 0: no mod_mam, for load tests)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INTEROP_DIR=${INTEROP_DIR:-${TMPDIR:-/tmp}/confab-interop}
dir="$INTEROP_DIR/ejabberd"
if [ "${1:-}" = "-d" ]; then dir=$2; shift 2; fi
cmd=${1:-}; shift || true

IP=${EJABBERD_IP:-127.0.0.12}
DOMAIN=${EJABBERD_DOMAIN:-ejabberd.test}
MUC="conference.$DOMAIN"
DIST_PORT=${EJABBERD_DIST_PORT:-4370}
LOGLEVEL=${EJABBERD_LOGLEVEL:-info}
C2S_PORT=5222 C2S_TLS_PORT=5223 S2S_PORT=5269 S2S_TLS_PORT=5270
NODE="ejabberd@$IP"           # long name with an IP: no name resolution needed
cfg="$dir/ejabberd.yml"
pidfile="$dir/pid"
# Debian puts ejabberd's code in /usr/lib/<multiarch>/ejabberd-<version>/ebin
ERL_LIBS_DIR=""
for d in /usr/lib/*/ejabberd-*/ebin; do
  if [ -d "$d" ]; then ERL_LIBS_DIR=${d%/ejabberd-*}; break; fi
done

die() { echo "ejabberd.sh: $*" >&2; exit 1; }

running_pid() {
  local pid
  [ -s "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [ -r "/proc/$pid/cmdline" ] || return 1
  # guard against a recycled PID: it must be the VM using our spool dir
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$dir/spool" || return 1
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# The environment ejabberdctl would set up, pointing into DIR.
erl_env=(env HOME="$dir"
  EJABBERD_CONFIG_PATH="$cfg"
  EJABBERD_LOG_PATH="$dir/logs/ejabberd.log"
  EJABBERD_PID_PATH="$dir/ejabberd.pid"
  ERL_CRASH_DUMP="$dir/logs/erl_crash.dump"
  ERL_INETRC="$dir/inetrc"
  ERL_LIBS="$ERL_LIBS_DIR"
  ERL_MAX_PORTS=32000 ERL_MAX_ETS_TABLES=1400)

write_config() {
  mkdir -p "$dir/spool" "$dir/logs" "$dir/certs"
  "$here/cert.sh" "$dir/certs" "$DOMAIN" "$MUC" "upload.$DOMAIN" "pubsub.$DOMAIN"
  [ -s "$dir/cookie" ] || { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/cookie"; chmod 600 "$dir/cookie"; }
  # inetrc: SRV lookups (inet_res) use resolv.conf, or only EJABBERD_DNS;
  # A/AAAA go through getaddrinfo (libc: /etc/hosts, then DNS) either way.
  if [ -n "${EJABBERD_DNS:-}" ]; then
    local dns_ip=${EJABBERD_DNS%@*} dns_port=53
    [ "$EJABBERD_DNS" != "$dns_ip" ] && dns_port=${EJABBERD_DNS#*@}
    # resolv_conf "" is required: otherwise /etc/resolv.conf's servers win
    printf '{lookup,["file","native"]}.\n{resolv_conf, ""}.\n{nameserver, {%s}, %s}.\n' \
      "${dns_ip//./,}" "$dns_port" > "$dir/inetrc"
  else
    printf '{lookup,["file","native"]}.\n{file, resolv, "/etc/resolv.conf"}.\n' > "$dir/inetrc"
  fi
  local ca=""
  if [ "${INTEROP_TRUST_CA:-0}" = 1 ]; then
    ca="s2s_cafile: \"$INTEROP_DIR/ca/ca.crt\""
  fi
  local reg=deny mam="  mod_mam: {assume_mam_usage: true, default: always}"
  [ "${EJABBERD_MAM:-1}" = 1 ] || mam="  # mod_mam left out (EJABBERD_MAM=0)"
  [ "${EJABBERD_REGISTRATION:-0}" = 1 ] && reg=all
  cat > "$cfg" <<EOF
# Generated by interop/ejabberd.sh at each start; edits are overwritten.
# Changed from Debian's /etc/ejabberd/ejabberd.yml: loopback listeners only;
# no traffic shaping (shaper_rules c2s_shaper and s2s_shaper: none, where
# Debian has 'normal' = 3000 B/s for c2s and 'fast' for s2s);
# max_user_sessions 1000; mod_fail2ban, mod_pres_counter, MQTT, STUN, BOSH,
# HTTP, push and avatar conversion removed; short DNS timeouts.
loglevel: $LOGLEVEL
log_rotate_count: 0
hosts:
  - "$DOMAIN"
certfiles:
  - "$dir/certs/$DOMAIN.pem"
$ca
listen:
  - port: $C2S_PORT
    ip: "$IP"
    module: ejabberd_c2s
    backlog: ${EJABBERD_BACKLOG:-5}
    max_stanza_size: 262144
    starttls_required: true
    access: c2s
    shaper: c2s_shaper
  - port: $C2S_TLS_PORT
    ip: "$IP"
    module: ejabberd_c2s
    backlog: ${EJABBERD_BACKLOG:-5}
    max_stanza_size: 262144
    tls: true
    access: c2s
    shaper: c2s_shaper
  - port: $S2S_PORT
    ip: "$IP"
    module: ejabberd_s2s_in
    max_stanza_size: 524288
  - port: $S2S_TLS_PORT
    ip: "$IP"
    module: ejabberd_s2s_in
    max_stanza_size: 524288
    tls: true
s2s_use_starttls: ${EJABBERD_S2S_STARTTLS:-required}
s2s_access: all
s2s_dns_timeout: 3
s2s_dns_retries: 1
outgoing_s2s_families: [ipv4]
outgoing_s2s_ipv4_address: "$IP"
outgoing_s2s_timeout: 10
disable_sasl_mechanisms: ["digest-md5", "X-OAUTH2"]
registration_timeout: infinity
auth_password_format: scram
acl:
  admin:
    user: "admin@$DOMAIN"
  local:
    user_regexp: ""
  loopback:
    ip: ["127.0.0.0/8", "::1/128"]
access_rules:
  local: {allow: local}
  c2s: {deny: blocked, allow: all}
  announce: {allow: admin}
  configure: {allow: admin}
  muc_create: {allow: local}
  pubsub_createnode: {allow: local}
  register: {allow: $reg}
api_permissions:
  "console commands":
    from: [ejabberd_ctl]
    who: all
    what: "*"
shaper:                 # Debian's definitions, kept so EJABBERD_C2S_SHAPER=normal works
  normal: {rate: 3000, burst_size: 20000}
  fast: 200000
shaper_rules:
  max_user_sessions: 1000
  max_user_offline_messages: 10000
  c2s_shaper: ${EJABBERD_C2S_SHAPER:-none}
  s2s_shaper: none
modules:
  mod_adhoc: {}
  mod_admin_extra: {}
  mod_announce: {access: announce}
  mod_blocking: {}
  mod_caps: {}
  mod_carboncopy: {}
  mod_client_state: {}
  mod_configure: {}
  mod_disco: {}
  mod_last: {}
$mam
  mod_muc:
    access: [allow]
    access_admin: [{allow: admin}]
    access_create: muc_create
    access_persistent: muc_create
    access_mam: [allow]
    default_room_options: {mam: true}
  mod_muc_admin: {}
  mod_offline: {access_max_user_messages: max_user_offline_messages}
  mod_ping: {}
  mod_privacy: {}
  mod_private: {}
  mod_pubsub:
    access_createnode: pubsub_createnode
    plugins: [flat, pep]
    force_node_config:
      storage:bookmarks: {access_model: whitelist}
  mod_register: {access: register, ip_access: all}
  mod_roster: {versioning: true}
  mod_s2s_dialback: {}
  mod_stream_mgmt: {resend_on_timeout: if_offline}
  mod_vcard: {}
  mod_vcard_xupdate: {}
  mod_version: {show_os: false}
EOF
}

start() {
  local pid t0 t1 rss
  if pid=$(running_pid); then echo "ejabberd.sh: already running, pid $pid"; return 0; fi
  if ! command -v erl >/dev/null || [ -z "$ERL_LIBS_DIR" ]; then
    die "ejabberd not installed (apt-get install ejabberd)"
  fi
  write_config
  for p in $C2S_PORT $S2S_PORT $DIST_PORT; do
    port_open "$IP" "$p" && die "$IP:$p is already taken by another process"
  done
  rm -f "$dir/logs/ejabberd.log" "$dir/logs/error.log" "$dir/ejabberd.pid"
  t0=$(date +%s%N)
  # subshell -> env -> erl -> erlexec -> beam.smp all exec in place, so $! is
  # the VM itself. Its cwd is the spool dir (Mnesia drops MnesiaCore.* files
  # into the cwd when it crashes).
  (cd "$dir/spool" && exec "${erl_env[@]}" erl -name "$NODE" -setcookie "$(cat "$dir/cookie")" \
    -noinput -noshell +K true +P 250000 \
    -erl_epmd_port "$DIST_PORT" -start_epmd false \
    -kernel inet_dist_use_interface "{${IP//./,}}" \
    -mnesia dir "\"$dir/spool\"" \
    -s ejabberd) > "$dir/logs/stdout.log" 2>&1 < /dev/null &
  pid=$!
  echo "$pid" > "$pidfile"
  for _ in $(seq 1 600); do
    if [ -s "$dir/ejabberd.pid" ] && [ "$(cat "$dir/ejabberd.pid")" != "$pid" ]; then
      stop; die "ejabberd reports pid $(cat "$dir/ejabberd.pid"), expected $pid"
    fi
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$dir/logs/stdout.log" "$dir/logs/ejabberd.log" >&2 || true; rm -f "$pidfile"; die "exited during start-up"; }
    if port_open "$IP" $C2S_PORT && port_open "$IP" $S2S_PORT; then break; fi
    sleep 0.05
  done
  port_open "$IP" $C2S_PORT || { stop; die "ports not open after 30 s"; }
  # Listeners open a moment before start-up ends (a fresh Mnesia may still be
  # creating tables: an immediate 'register' fails with no_exists passwd).
  # Ready = the "is started in the node" log line (info/debug), else ctl status.
  local ready=0
  for _ in $(seq 1 300); do
    if grep -q "is started in the node" "$dir/logs/ejabberd.log" 2>/dev/null; then ready=1; break; fi
    case $LOGLEVEL in info|debug) sleep 0.05 ;; *) ctl status >/dev/null 2>&1 && { ready=1; break; }; sleep 0.2 ;; esac
  done
  [ "$ready" = 1 ] || { stop; die "did not finish starting in time"; }
  t1=$(date +%s%N)
  rss=$(awk '/^VmRSS/{print $2}' "/proc/$pid/status")
  printf '{"server":"ejabberd","pid":%s,"startup_ms":%s,"rss_kb":%s}\n' \
    "$pid" $(( (t1 - t0) / 1000000 )) "$rss" | tee "$dir/started.json"
}

stop() {
  local pid
  if ! pid=$(running_pid); then rm -f "$pidfile"; echo "ejabberd.sh: not running"; return 0; fi
  kill -TERM "$pid"   # the Erlang VM turns SIGTERM into init:stop(): a clean shutdown
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
  rm -f "$pidfile"
  echo "ejabberd.sh: stopped pid $pid"
}

ctl() { # what ejabberdctl does, minus su/epmd: a hidden node calls ejabberd_ctl
  running_pid >/dev/null || die "not running"
  "${erl_env[@]}" erl -name "ctl$$@127.0.0.1" -setcookie "$(cat "$dir/cookie")" \
    -hidden -noinput -noshell -erl_epmd_port "$DIST_PORT" -start_epmd false -dist_listen false \
    -s ejabberd_ctl -extra "$NODE" "$@"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if pid=$(running_pid); then echo "running, pid $pid"; else echo "not running"; exit 1; fi ;;
  adduser) [ $# -eq 2 ] || die "usage: adduser USER PASSWORD"; ctl register "$1" "$DOMAIN" "$2" ;;
  deluser) [ $# -eq 1 ] || die "usage: deluser USER"; ctl unregister "$1" "$DOMAIN" ;;
  ctl) ctl "$@" ;;
  info)
    printf '{"server":"ejabberd","domain":"%s","muc":"%s","ip":"%s","c2s":%s,"c2s_tls":%s,"s2s":%s,"s2s_tls":%s,"pid":%s,"dir":"%s","cafile":"%s","log":"%s"}\n' \
      "$DOMAIN" "$MUC" "$IP" $C2S_PORT $C2S_TLS_PORT $S2S_PORT $S2S_TLS_PORT \
      "$(running_pid || echo null)" "$dir" "$INTEROP_DIR/ca/ca.crt" "$dir/logs/ejabberd.log" ;;
  *) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0" >&2; exit 64 ;;
esac
