#!/usr/bin/env bash
# Throw-away TLS material for a development or test broker (deploy/kafka/local.sh with
# KAFKA_SASL_SSL_PORT): a private CA, a broker certificate for 127.0.0.1/localhost signed
# by it, the broker's PKCS12 keystore and a random keystore password. Not for production:
# the CA key sits next to the certificates and everything expires after a few days.
#
#   deploy/kafka/dev-certs.sh DIR      writes DIR/ca.pem (clients: ssl.ca.location),
#                                      DIR/broker.p12 + DIR/keystore.password (the broker)
set -euo pipefail

dir="${1:?usage: $0 DIR}"
days="${CERT_DAYS:-7}"
command -v openssl >/dev/null || { echo "dev-certs: openssl is needed (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=fraudscore development CA" \
  -keyout ca.key -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout broker.key -out broker.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >broker.ext
openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" \
  -extfile broker.ext -out broker.pem 2>/dev/null
openssl rand -hex 16 | tr -d '\n' >keystore.password
openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
  -passout file:keystore.password -out broker.p12
chmod 644 ca.pem
rm -f broker.csr broker.ext ca.srl
echo "$dir"
