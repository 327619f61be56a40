#!/bin/sh
# Makes the Secrets deploy/kubernetes/kvcascade.yaml mounts: a cluster CA, one certificate per
# node (CN node-<id>, SANs = the pod's DNS names), a client certificate for operators, and an
# admin token. Prints the Secret manifests on stdout (pipe to `kubectl apply -f -`); the CA key and
# the operator's client key stay in the output folder.
#
#   deploy/kubernetes/make-secrets.sh [NAMESPACE] [NODES] [OUT_DIR] | kubectl apply -f -
set -eu
ns="${1:-default}"
nodes="${2:-5}"
out="${3:-./kvcascade-pki}"
svc="${KVC_SERVICE:-kvcascade}"
domain="${KVC_CLUSTER_DOMAIN:-cluster.local}"
mkdir -p "$out"
umask 077
cd "$out"
if [ ! -f ca.key ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj '/CN=kvcascade cluster CA' -keyout ca.key -out ca.pem 2>/dev/null
fi
i=0
while [ "$i" -lt "$nodes" ]; do
  id=$((i + 1))
  pod="$svc-$i"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=node-$id" \
    -keyout "node-$id.key" -out "node-$id.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s.%s.%s.svc.%s,DNS:%s.%s.%s.svc,DNS:%s-client.%s.svc.%s,DNS:localhost,IP:127.0.0.1,URI:urn:kvcascade:node:%s\nextendedKeyUsage=serverAuth,clientAuth\n' \
    "$pod" "$svc" "$ns" "$domain" "$pod" "$svc" "$ns" "$svc" "$ns" "$domain" "$id" > "node-$id.cnf"
  openssl x509 -req -in "node-$id.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
    -extfile "node-$id.cnf" -out "node-$id.pem" 2>/dev/null
  i=$((i + 1))
done
if [ ! -f operator.key ]; then
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj '/CN=operator' \
    -keyout operator.key -out operator.csr 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' > operator.cnf
  openssl x509 -req -in operator.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
    -extfile operator.cnf -out operator.pem 2>/dev/null
fi
[ -f admin-token ] || head -c 24 /dev/urandom | base64 > admin-token
b64() { base64 < "$1" | tr -d '\n'; }
echo "apiVersion: v1"
echo "kind: Secret"
echo "metadata:"
echo "  name: kvcascade-tls"
echo "  namespace: $ns"
echo "type: Opaque"
echo "data:"
echo "  ca.pem: $(b64 ca.pem)"
i=1
while [ "$i" -le "$nodes" ]; do
  echo "  node-$i.pem: $(b64 "node-$i.pem")"
  echo "  node-$i.key: $(b64 "node-$i.key")"
  i=$((i + 1))
done
echo "---"
echo "apiVersion: v1"
echo "kind: Secret"
echo "metadata:"
echo "  name: kvcascade-admin"
echo "  namespace: $ns"
echo "type: Opaque"
echo "data:"
echo "  token: $(printf '%s' "$(cat admin-token)" | base64 | tr -d '\n')"
