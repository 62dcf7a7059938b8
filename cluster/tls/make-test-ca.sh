#!/usr/bin/env bash
# Make a throw-away certificate authority and one certificate for 127.0.0.1 and
# localhost, signed by it, for TLS between dmask's client, scheduler and workers.
# For tests and trials only: use your site's CA for anything real.
#
#   cluster/tls/make-test-ca.sh DIR [DAYS]
#
# writes DIR/ca.pem, DIR/ca-key.pem, DIR/cert.pem, DIR/key.pem (keys mode 600).
set -euo pipefail
dir="${1:?usage: make-test-ca.sh DIR [DAYS]}"
days="${2:-30}"
command -v openssl >/dev/null || { echo "make-test-ca.sh: openssl is not installed" >&2; exit 1; }
mkdir -p "$dir"
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days "$days" \
    -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" \
    -subj "/CN=dmask test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$dir/key.pem" -out "$dir/cert.csr" \
    -subj "/CN=dmask" 2>/dev/null
cat > "$dir/cert.ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
EXT
openssl x509 -req -in "$dir/cert.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
    -CAcreateserial -days "$days" -out "$dir/cert.pem" -extfile "$dir/cert.ext" 2>/dev/null
rm -f "$dir/cert.csr" "$dir/cert.ext" "$dir/ca.srl"
chmod 644 "$dir/ca.pem" "$dir/cert.pem"
echo "CA: $dir/ca.pem  certificate: $dir/cert.pem  key: $dir/key.pem"
