#!/usr/bin/env bash
# Make a private CA and a SuperLink server certificate for TLS between SuperNodes / the flwr CLI and the SuperLink.
#
# Usage: scripts/make_certs.sh OUT_DIR [SERVER_NAME_OR_IP ...]
#   OUT_DIR        where ca.crt, ca.key, server.pem, server.key are written (created; existing files are kept)
#   SERVER_NAME... names/IPs the SuperLink is reached by (default: localhost 127.0.0.1)
#
# Give the SuperLink  --ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key
# Give each SuperNode --root-certificates ca.crt   and the flwr CLI connection  root-certificates = ".../ca.crt"
# Keep ca.key offline; only ca.crt is shared with the hospitals.
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit 1
fi
command -v openssl >/dev/null || { echo "make_certs.sh: openssl not found; install it (apt-get install openssl)" >&2; exit 2; }

out="$1"; shift
names=("$@")
[[ ${#names[@]} -eq 0 ]] && names=(localhost 127.0.0.1)
mkdir -p "$out"
cd "$out"
if [[ -e server.pem || -e ca.crt ]]; then
  echo "make_certs.sh: $out already holds certificates; remove them first to make new ones" >&2
  exit 3
fi

san=""
i_dns=1; i_ip=1
for n in "${names[@]}"; do
  if [[ "$n" =~ ^[0-9.]+$ || "$n" == *:* ]]; then san+="IP.${i_ip} = ${n}"$'\n'; i_ip=$((i_ip + 1))
  else san+="DNS.${i_dns} = ${n}"$'\n'; i_dns=$((i_dns + 1)); fi
done

cat > server.cnf <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = ${names[0]}
[ext]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = @alt
[alt]
${san}
CNF

openssl genrsa -out ca.key 4096 2>/dev/null
openssl req -x509 -new -key ca.key -sha256 -days 825 -subj "/CN=OmniFuse-FL federation CA" -out ca.crt
openssl genrsa -out server.key 2048 2>/dev/null
openssl req -new -key server.key -config server.cnf -out server.csr
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -sha256 \
  -extfile server.cnf -extensions ext -out server.pem 2>/dev/null
chmod 600 ca.key server.key
rm -f server.csr server.cnf ca.srl
echo "wrote $(pwd)/{ca.crt,ca.key,server.pem,server.key} for: ${names[*]}"
