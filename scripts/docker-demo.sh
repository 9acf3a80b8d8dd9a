#!/usr/bin/env bash
# The Docker host demo, as root on a Debian machine with Go 1.26 (README:
# "On a Docker host"). Installs the packages it needs and builds bin/bireme
# (unless $BIREME names a binary), starts a dockerd of its own in a network
# namespace (scripts/docker-env.sh: its own data root, socket and bridge in
# 198.19.200.0/24, nothing on the host's network), runs `bireme docker` with
# the runtime hook, starts containers x/web, x/batch and x/db and an
# unprotected one, prints the reachability matrix, adds a NetworkPolicy to
# the policy directory (x/db accepts only app=web) and prints it again.
# Everything is removed at the end, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${BIREME:-} ]]; then
	bash scripts/install-deps.sh
	go build -tags grpcnotrace -o bin/bireme ./cmd/bireme
	BIREME=bin/bireme
fi
BIREME="$(cd "$(dirname "$BIREME")" && pwd)/$(basename "$BIREME")"
WORK=$(mktemp -d /tmp/bireme-docker-demo.XXXXXX)
NS=bdemo-$$
AGENT_PID=
cleanup() {
	[[ -z $AGENT_PID ]] || { kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; }
	bash scripts/docker-env.sh stop "$WORK/engine" || true
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export DOCKER_HOST="unix://$WORK/engine/docker.sock"
cat >"$WORK/runtime" <<EOF
#!/bin/sh
exec $BIREME docker runc --docker-host $DOCKER_HOST -- "\$@"
EOF
chmod +x "$WORK/runtime"

echo "### A Docker engine of its own (network namespace $NS), runtime: runc behind bireme's hook"
bash scripts/docker-env.sh start "$WORK/engine" "$NS" "$WORK/runtime"
bash scripts/docker-env.sh image "$WORK/engine"
docker network create --subnet 198.19.200.0/24 --gateway 198.19.200.1 demo >/dev/null

"$BIREME" keys init-ca --trust-domain demo --out "$WORK/ca" >/dev/null
"$BIREME" keys issue-node --ca-dir "$WORK/ca" --node dock1 --out "$WORK/dock1" >/dev/null
mkdir -p "$WORK/policies"
cat >"$WORK/policies/namespace.yaml" <<'EOF'
apiVersion: v1
kind: Namespace
metadata: {name: x}
EOF
METRICS=127.0.0.1:$((20000 + RANDOM % 20000))
"$BIREME" docker --host dock1 --policy-dir "$WORK/policies" --cluster demo \
	--ca-bundle "$WORK/ca/ca.crt" --cert "$WORK/dock1/node.crt" --key "$WORK/dock1/node.key" \
	--identity-networks 198.19.0.0/16 --flows "$WORK/flows.jsonl" --metrics-addr "$METRICS" --poll 100ms \
	>"$WORK/agent.log" 2>&1 &
AGENT_PID=$!

serve() { echo "mkdir -p /tmp/w && echo $1 > /tmp/w/index.html && exec httpd -f -p 80 -h /tmp/w"; }
for app in web batch db; do
	docker run -d --name "$app" --network demo --label bireme.io/protect=true --label bireme.io/namespace=x \
		--label "app=$app" local/busybox:bireme sh -c "$(serve "x/$app")" >/dev/null
done
docker run -d --name plain --network demo local/busybox:bireme sh -c "$(serve plain)" >/dev/null

wait_protected() {
	local i
	for ((i = 0; i < 300; i++)); do
		if curl -sf "http://$METRICS/metrics" 2>/dev/null | grep -q "^bireme_workloads_protected $1\$"; then
			return
		fi
		sleep 0.2
	done
	echo "docker-demo: the agent did not protect $1 containers; its log:" >&2
	cat "$WORK/agent.log" >&2
	exit 1
}
wait_protected 3
"$BIREME" docker status --host dock1

NAMES=(web batch db plain)
declare -A IP
for n in "${NAMES[@]}"; do
	IP[$n]=$(docker inspect -f '{{(index .NetworkSettings.Networks "demo").IPAddress}}' "$n")
done

# fetch: one HTTP request from container $1 to address $2. A refusal is
# a timeout (5 s, SYN retransmissions included); on a busy machine a
# docker exec can fail on its own, so matrix asks twice before it says X
# (a refusal by policy is refused both times).
fetch() {
	docker exec "$1" sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 $2 80" 2>/dev/null | grep -q '200 OK'
}

# matrix probes every pair in parallel (a refused one waits 10 s) and
# prints rows = clients, columns = servers: . connected, X refused.
matrix() {
	local dir c s pids=()
	dir=$(mktemp -d "$WORK/probe.XXXX")
	for c in "${NAMES[@]}"; do
		for s in "${NAMES[@]}"; do
			[[ $c == "$s" ]] && continue
			(if fetch "$c" "${IP[$s]}" || fetch "$c" "${IP[$s]}"; then
				echo . >"$dir/$c-$s"
			else
				echo X >"$dir/$c-$s"
			fi) &
			pids+=($!)
		done
	done
	wait "${pids[@]}" # not a bare wait: the agent is a child too
	printf '%-8s' "TCP/80"
	for s in "${NAMES[@]}"; do printf '%-7s' "$s"; done
	echo
	for c in "${NAMES[@]}"; do
		printf '%-8s' "$c"
		for s in "${NAMES[@]}"; do
			if [[ $c == "$s" ]]; then printf '%-7s' -; else printf '%-7s' "$(cat "$dir/$c-$s")"; fi
		done
		echo
	done
	echo "rows: client, columns: server; . connected, X refused, - self (plain: no label, not protected)"
}

echo
echo "### 1. No policy yet: every container reaches every other"
matrix
echo
echo "### 2. Adding a NetworkPolicy: x/db accepts only app=web"
cat >"$WORK/policies/.db.yaml" <<'EOF'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
EOF
mv "$WORK/policies/.db.yaml" "$WORK/policies/db.yaml"
for ((i = 0; i < 100; i++)); do
	grep -q 'policies=1' "$WORK/agent.log" && break
	sleep 0.1
done
matrix
echo
"$BIREME" policy explain -f "$WORK/policies" --docker-host "$DOCKER_HOST" --host dock1 --cluster demo --from x/batch --to x/db --port 80
echo
echo "The agent's decision on x/batch -> x/db, from its flow records:"
grep '"verdict":"deny"' "$WORK/flows.jsonl" | grep '"pod":"batch"' | tail -n 1 | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); print(r["node"], r["direction"], r["verdict"]+":", r["reason"])'
