#!/bin/sh
# Run the real NVIDIA Dynamo frontend (ai-dynamo 1.6.1) on loopback, by hand:
#
#   file store: DYN_DISCOVERY_BACKEND=file DYN_FILE_KV=/some/dir tests/dynamo/run_frontend.sh [PORT]
#   etcd:       DYN_DISCOVERY_BACKEND=etcd ETCD_ENDPOINTS=http://127.0.0.1:2379 tests/dynamo/run_frontend.sh [PORT]
#   then:       curl -s http://127.0.0.1:PORT/v1/models
#
# It downloads nothing: it lists (and routes chat requests to) the models that
# workers register, given a card and an instance. DYN_NAMESPACE=ns limits it to
# one namespace. The tests start it the same way (tests/servers/dynamo.py).
# The venv is scripts/install-dynamo's: $WAYPOST_DYNAMO_VENV, else
# $WAYPOST_SERVERS_DIR/dynamo-venv, else <repo>/.servers/dynamo-venv.
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
venv=${WAYPOST_DYNAMO_VENV:-${WAYPOST_SERVERS_DIR:-$here/.servers}/dynamo-venv}
[ -x "$venv/bin/python" ] || { echo "no Dynamo venv at $venv: run scripts/install-dynamo" >&2; exit 1; }
port=${1:-$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export DYN_DISCOVERY_BACKEND="${DYN_DISCOVERY_BACKEND:-file}"
export DYN_REQUEST_PLANE="${DYN_REQUEST_PLANE:-tcp}"
# Without these Dynamo binds and advertises the host's non-loopback address.
export DYN_TCP_RPC_HOST="${DYN_TCP_RPC_HOST:-127.0.0.1}"
export DYN_TCP_RESPONSE_STREAM_HOST="${DYN_TCP_RESPONSE_STREAM_HOST:-127.0.0.1}"
export DYN_EVENT_PLANE_HOST="${DYN_EVENT_PLANE_HOST:-127.0.0.1}"
echo "dynamo frontend on http://127.0.0.1:$port ($DYN_DISCOVERY_BACKEND store)" >&2
exec "$venv/bin/python" -m dynamo.frontend --http-host 127.0.0.1 --http-port "$port"
