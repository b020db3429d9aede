#!/usr/bin/env bash
# cert.sh — issue a TLS certificate from the interop lab's own CA.
# (Shared by interop/ and bench/; beyond the shared lab script it adds CERT_KEY=ec.)
#
#   cert.sh OUTDIR NAME [NAME...]
#
# Writes OUTDIR/NAME.crt (leaf then CA), OUTDIR/NAME.key and OUTDIR/NAME.pem
# (key + chain, the form ejabberd wants) for the first NAME, with every NAME
# as a DNS subjectAltName. The CA is created once in $INTEROP_DIR/ca
# (ca.crt, ca.key) and shared by every server of the lab, including the
# project's own, so a test can make a peer trust it (INTEROP_TRUST_CA=1 in
# prosody.sh / ejabberd.sh) and exercise SASL EXTERNAL. Without that trust
# the certificates are as good as self-signed: peers fall back to dialback.
# Idempotent: an existing certificate with the same names is kept.
# CERT_KEY=ec issues an ECDSA P-256 leaf instead of RSA 2048 (the benchmark
# gives every server the same EC certificate).
set -euo pipefail

usage() { echo "usage: $0 OUTDIR NAME [NAME...]" >&2; exit 64; }
[ $# -ge 2 ] || usage
out=$1; shift
INTEROP_DIR=${INTEROP_DIR:-${TMPDIR:-/tmp}/confab-interop}
ca="$INTEROP_DIR/ca"
mkdir -p "$ca" "$out"

# Create the CA once, under a lock (two servers may start side by side).
(
  flock 9
  if [ ! -s "$ca/ca.crt" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -days 3650 -subj "/CN=Confab interop lab CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$ca/ca.key" -out "$ca/ca.crt" 2>/dev/null
    chmod 600 "$ca/ca.key"
  fi
) 9>"$ca/.lock"

name=$1
keytype=${CERT_KEY:-rsa}
san=$(printf 'DNS:%s,' "$@"); san=${san%,}
marker="$keytype $san"
if [ -s "$out/$name.crt" ] && [ -s "$out/$name.key" ] \
   && [ "$(cat "$out/$name.san" 2>/dev/null)" = "$marker" ] \
   && openssl verify -CAfile "$ca/ca.crt" "$out/$name.crt" >/dev/null 2>&1; then
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
case $keytype in
  ec) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
  *) newkey=(-newkey rsa:2048) ;;
esac
openssl req "${newkey[@]}" -nodes -subj "/CN=$name" \
  -keyout "$tmp/key" -out "$tmp/csr" 2>/dev/null
cat > "$tmp/ext" <<EOF
subjectAltName=$san
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
EOF
openssl x509 -req -in "$tmp/csr" -CA "$ca/ca.crt" -CAkey "$ca/ca.key" \
  -CAcreateserial -days 3650 -sha256 -extfile "$tmp/ext" -out "$tmp/crt" 2>/dev/null
cat "$tmp/crt" "$ca/ca.crt" > "$out/$name.crt"
cp "$tmp/key" "$out/$name.key"
cat "$tmp/key" "$out/$name.crt" > "$out/$name.pem"
chmod 600 "$out/$name.key" "$out/$name.pem"
printf '%s\n' "$marker" > "$out/$name.san"
