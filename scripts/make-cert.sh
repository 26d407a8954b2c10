#!/usr/bin/env bash
# Makes a local self-signed TLS pair the way the zhiva docs do (openssl, RSA 2048,
# 365 days), plus a subjectAltName, which current TLS clients require.
#
#   scripts/make-cert.sh [OUT_DIR] [HOSTNAME]    # default: certs localhost
#
# Writes OUT_DIR/zhiva.crt, OUT_DIR/zhiva.key and OUT_DIR/trusted.crt (a copy of
# the certificate for clients to trust). Existing files are kept: delete them to renew.
set -euo pipefail
out=${1:-certs}
host=${2:-localhost}
mkdir -p "$out"
if [ -e "$out/zhiva.crt" ] || [ -e "$out/zhiva.key" ]; then
    echo "make-cert: $out/zhiva.crt or zhiva.key exists; not overwriting" >&2
    exit 0
fi
san="DNS:localhost,IP:127.0.0.1"
[ "$host" = localhost ] || san="DNS:$host,$san"
openssl req -x509 -nodes -days 365 -newkey rsa:2048 \
    -keyout "$out/zhiva.key" -out "$out/zhiva.crt" \
    -subj "/C=PL/L=Wroclaw/O=Your Company, Inc./CN=$host" \
    -addext "subjectAltName=$san" -addext "basicConstraints=critical,CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment" -addext "extendedKeyUsage=serverAuth" 2>/dev/null
chmod 600 "$out/zhiva.key"
cat "$out/zhiva.crt" > "$out/trusted.crt"
echo "wrote $out/zhiva.crt, $out/zhiva.key and $out/trusted.crt for $host ($san)"
