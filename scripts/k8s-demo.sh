#!/usr/bin/env bash
# Bireme on Kubernetes in two minutes, as root on a Debian machine with Go
# 1.26 (README: "On Kubernetes"). Starts a real API server on loopback
# (etcd and kube-apiserver, scripts/k8s-env.sh: built once and cached, the
# first build takes minutes), plays two nodes with a network namespace per
# pod on one bridge, runs one `bireme agent` per node, and:
#
#   1. prints the reachability matrix with no policy (everyone reaches everyone),
#   2. applies a NetworkPolicy through the API: y/c takes only x/a,
#   3. prints the matrix again.
#
# Everything (agents, servers, namespaces, API server) is removed at the
# end, also on failure or Ctrl-C. There is no kubelet: this script creates
# the Pod objects and reports them Running with their addresses, as the
# tests do. Addresses: 198.18.77.0/24 (pods), namespaces named bkdemo-*.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
	echo "k8s-demo: run as root (it builds network namespaces)" >&2
	exit 1
fi
if [[ -z ${BIREME:-} ]]; then
	bash scripts/install-deps.sh
	go build -tags grpcnotrace -o bin/bireme ./cmd/bireme
	BIREME=bin/bireme
fi
BIREME=$(realpath "$BIREME")
bash scripts/k8s-env.sh build >/dev/null

STATE=$(mktemp -d /tmp/bireme-k8s-demo.XXXXXX)
NET=198.18.77
PIDS=()
PODS=(x/a x/b y/c)
declare -A NODE=([x/a]=n1 [x/b]=n1 [y/c]=n2) LABEL=([x/a]=a [x/b]=b [y/c]=c) ADDR=()

teardown() {
	set +e
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
	for ns in $(ip netns list | awk '/^bkdemo-/ {print $1}'); do ip netns del "$ns"; done
	bash scripts/k8s-env.sh stop "$STATE/api" 2>/dev/null
	rm -rf "$STATE"
}
# Leftovers of an interrupted earlier run would clash with this one.
for ns in $(ip netns list | awk '/^bkdemo-/ {print $1}'); do ip netns del "$ns"; done
trap teardown EXIT

echo "### Starting etcd and kube-apiserver on loopback"
bash scripts/k8s-env.sh start "$STATE/api"
# shellcheck disable=SC1091
source "$STATE/api/env"
TOKEN=$(cut -d, -f1 "$STATE/api/tokens.csv")
api() {
	curl -sS --fail-with-body --cacert "$STATE/api/pki/apiserver.crt" -H "Authorization: Bearer $TOKEN" "$@"
}
# create PATH: creates the YAML object on stdin under PATH.
create() {
	local out
	out=$(api -X POST -H 'Content-Type: application/yaml' --data-binary @- "$APISERVER_URL$1") ||
		{ echo "k8s-demo: POST $1: $out" >&2; return 1; }
}

echo "### Cluster CA and node credentials (bireme keys)"
"$BIREME" keys init-ca --trust-domain demo.local --out "$STATE/ca" >/dev/null
for node in n1 n2; do
	"$BIREME" keys issue-node --ca-dir "$STATE/ca" --node "$node" --out "$STATE/$node" >/dev/null
done

echo "### Namespaces x (team=x) and y, pods x/a x/b on n1 and y/c on n2"
for ns in x y; do
	create /api/v1/namespaces <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: "$ns", labels: {team: "$ns"}}
EOF
	# No controller manager: the service account admission wants the
	# namespace's default account to exist.
	create "/api/v1/namespaces/$ns/serviceaccounts" <<<"{apiVersion: v1, kind: ServiceAccount, metadata: {name: default}}"
done
ip netns add bkdemo-br
ip -n bkdemo-br link add br0 type bridge
ip -n bkdemo-br link set br0 up
i=2
for ref in "${PODS[@]}"; do
	ns=${ref%/*} name=${ref#*/} netns="bkdemo-${ref/\//-}"
	create "/api/v1/namespaces/$ns/pods" <<EOF
apiVersion: v1
kind: Pod
metadata: {name: "$name", namespace: "$ns", labels: {app: "${LABEL[$ref]}"}}
spec:
  nodeName: "${NODE[$ref]}"
  automountServiceAccountToken: false
  containers: [{name: main, image: none, ports: [{name: http, containerPort: 80}]}]
EOF
	# The node's part: the pod's network namespace on the bridge, its
	# server, then status Running with its address.
	ADDR[$ref]=$NET.$i
	ip netns add "$netns"
	ip link add eth0 netns "$netns" type veth peer name "v$i" netns bkdemo-br
	ip -n bkdemo-br link set "v$i" master br0 up
	ip -n "$netns" addr add "${ADDR[$ref]}/24" dev eth0
	ip -n "$netns" link set eth0 up
	ip -n "$netns" link set lo up
	ip netns exec "$netns" socat TCP-LISTEN:80,fork,reuseaddr SYSTEM:'echo ok' &
	PIDS+=($!)
	api -X PATCH -H 'Content-Type: application/merge-patch+json' \
		--data "{\"status\":{\"phase\":\"Running\",\"podIP\":\"${ADDR[$ref]}\",\"podIPs\":[{\"ip\":\"${ADDR[$ref]}\"}]}}" \
		"$APISERVER_URL/api/v1/namespaces/$ns/pods/$name/status" >/dev/null
	i=$((i + 1))
done

echo "### One bireme agent per node (logs in $STATE/n1.log, $STATE/n2.log)"
for node in n1 n2; do
	"$BIREME" agent --node "$node" --kubeconfig "$KUBECONFIG" --cluster demo.local \
		--ca-bundle "$STATE/$node/ca.crt" --cert "$STATE/$node/node.crt" --key "$STATE/$node/node.key" \
		--identity-networks "$NET.0/24" --flows "$STATE/$node.flows.jsonl" >"$STATE/$node.log" 2>&1 &
	PIDS+=($!)
done
for ref in "${PODS[@]}"; do
	node=${NODE[$ref]}
	for _ in $(seq 200); do
		grep -q "workload protected.*pod=$ref" "$STATE/$node.log" && break
		sleep 0.1
	done
	grep -q "workload protected.*pod=$ref" "$STATE/$node.log" ||
		{ echo "k8s-demo: $node never protected $ref; its log:" >&2; cat "$STATE/$node.log" >&2; exit 1; }
	echo "  $ref (${ADDR[$ref]}) protected by the agent of $node"
done

# matrix prints who reaches whom on port 80 (a refused handshake is dropped,
# so refusal shows as a 1 s timeout).
matrix() {
	printf '  %-8s' 'from\to'
	for to in "${PODS[@]}"; do printf '%-8s' "$to"; done
	echo
	for from in "${PODS[@]}"; do
		printf '  %-8s' "$from"
		for to in "${PODS[@]}"; do
			if [[ $from == "$to" ]]; then
				printf '%-8s' -
			elif [[ $(ip netns exec "bkdemo-${from/\//-}" timeout 3 socat -T1 - "TCP:${ADDR[$to]}:80,connect-timeout=1" </dev/null 2>/dev/null) == ok ]]; then
				printf '%-8s' yes
			else
				printf '%-8s' no
			fi
		done
		echo
	done
}

echo
echo "### 1. No NetworkPolicy: every pod reaches every other (each handshake carries a signed identity)"
matrix
echo
echo "### 2. NetworkPolicy y/c-from-a, created through the API: y/c takes pods app=a of namespaces team=x, on http"
create /apis/networking.k8s.io/v1/namespaces/y/networkpolicies <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-from-a, namespace: "y"}
spec:
  podSelector: {matchLabels: {app: "c"}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: "x"}}, podSelector: {matchLabels: {app: "a"}}}]
    ports: [{port: http}]
EOF
sleep 1
matrix
echo
echo "### The refusal, as n2's flow record says it:"
grep '"verdict":"deny"' "$STATE/n2.flows.jsonl" | grep '"pod":"b"' | tail -1 |
	jq -r '"  \(.peer.namespace)/\(.peer.pod) -> \(.local.namespace)/\(.local.pod): \(.reason)"' || true
echo
echo "### Tearing down (agents, servers, namespaces, API server)"
