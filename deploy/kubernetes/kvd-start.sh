#!/bin/sh
# Starts kvd in a StatefulSet pod: the node id comes from the pod's ordinal (kvcascade-0 -> 1),
# every address is the pod's stable DNS name under the headless Service, ordinals below
# $KVC_INITIAL_MEMBERS create the cluster (--peers), later ordinals join it and add themselves
# (--join-auto-add, with the admin token). A restarted pod reuses its volume: kvd then ignores
# --peers (the cluster exists) and a joined member finds itself in the map.
#
# Environment (set by the StatefulSet): POD_NAME or HOSTNAME, POD_NAMESPACE, KVC_SERVICE (headless
# Service), KVC_INITIAL_MEMBERS (default 3), KVC_CLUSTER_DOMAIN (default cluster.local), KVD (the
# command, default "node --max-semi-space-size=32 /app/dist/src/bin/kvd.js --data-dir /data"), KVC_TLS_DIR (per-node
# certificates as node-<id>.pem/.key and ca.pem; empty = --insecure-peers, for try-outs only),
# KVC_ADMIN_TOKEN_FILE. Extra arguments are passed to kvd.
set -eu
name="${POD_NAME:-${HOSTNAME:?}}"
ordinal="${name##*-}"
case "$ordinal" in
  ''|*[!0-9]*) echo "kvd-start: cannot read an ordinal from pod name '$name'" >&2; exit 64 ;;
esac
set_name="${name%-*}"
id=$((ordinal + 1))
svc="${KVC_SERVICE:?KVC_SERVICE (the headless Service) is required}"
ns="${POD_NAMESPACE:?POD_NAMESPACE is required}"
domain="${KVC_CLUSTER_DOMAIN:-cluster.local}"
initial="${KVC_INITIAL_MEMBERS:-3}"
fqdn() { echo "$set_name-$1.$svc.$ns.svc.$domain"; }
me="$(fqdn "$ordinal")"
kvd="${KVD:-node --max-semi-space-size=32 /app/dist/src/bin/kvd.js --data-dir /data}"

set -- --id "$id" \
  --listen 0.0.0.0:7379 --advertise "$me:7379" \
  --peer-listen 0.0.0.0:7380 --advertise-peer "$me:7380" \
  --metrics-host 0.0.0.0 --metrics-port 9464 "$@"

if [ -n "${KVC_TLS_DIR:-}" ]; then
  set -- "$@" --tls-cert "$KVC_TLS_DIR/node-$id.pem" --tls-key "$KVC_TLS_DIR/node-$id.key" --tls-ca "$KVC_TLS_DIR/ca.pem"
else
  set -- "$@" --insecure-peers
fi
if [ -n "${KVC_ADMIN_TOKEN_FILE:-}" ]; then
  set -- "$@" --admin-token-file "$KVC_ADMIN_TOKEN_FILE"
fi

if [ "$ordinal" -lt "$initial" ]; then
  peers=""
  i=0
  while [ "$i" -lt "$initial" ]; do
    host="$(fqdn "$i")"
    peers="${peers:+$peers,}$((i + 1))=$host:7379/$host:7380"
    i=$((i + 1))
  done
  set -- "$@" --peers "$peers"
else
  set -- "$@" --join "$(fqdn 0):7379" --join-auto-add
fi
# shellcheck disable=SC2086
exec $kvd "$@"
