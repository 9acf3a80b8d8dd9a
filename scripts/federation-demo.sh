#!/usr/bin/env bash
# The federation demo (README "Across clusters", docs/federation.md), as
# root on a Debian machine with Go 1.26. Builds one lab of two clusters,
# each with its own CA and trust domain, joined through NAT: a
# (examples/federation/a.yaml: payments/api, payments/worker) and b
# (examples/federation/b.yaml: checkout/client, checkout/other). Then, with
# a reachability matrix at each step: no trust (every cross-cluster
# connection refused, unknown-ca), one-way trust, two-way trust with a's
# policy admitting one remote workload, what the NAT shows, and the
# revocation of b's bundle cutting a new and an established connection.
# The lab is removed at the end, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${BIREME:-} ]]; then
	bash scripts/install-deps.sh
	go build -tags grpcnotrace -o bin/bireme ./cmd/bireme
	BIREME=bin/bireme
fi
STATE=${STATE:-/run/bireme-federation-demo}
FED=examples/federation
TMP=$(mktemp -d)

lab() { "$BIREME" lab "$@" --state "$STATE"; }

lab down
trap 'lab down; rm -rf "$TMP"' EXIT

# show FROM TO PORT WANT [REASON]: one probe of the last matrix, checked,
# and if REASON is given, the probe's reason (from the flow records) must
# contain it.
show() {
	python3 - "$TMP/probe.json" "$@" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))
frm, to, port, want = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
why = sys.argv[6] if len(sys.argv) > 6 else ""
for r in results:
    if (r["from"], r["to"], r["port"]) == (frm, to, port):
        got = "connected" if r["connected"] else "refused"
        reason = r.get("reason", "")
        print(f"  {frm} -> {to}:{port}  {got}  {reason}")
        if got != want:
            sys.exit(f"federation demo: expected {want}")
        if why not in reason:
            sys.exit(f"federation demo: expected the reason to say {why!r}")
        sys.exit(0)
sys.exit(f"no probe {frm} -> {to}:{port}")
PY
}
probe() { lab probe; lab probe -o json >"$TMP/probe.json"; }

echo "### Two clusters, own CAs and trust domains, NAT between every node: a (node n1), b (node b-n1)"
lab up -f "$FED/a.yaml" --cluster a --member b="$FED/b.yaml" --nat
lab status
echo
echo "### 1. No trust: every connection between the clusters is refused (unknown-ca)"
probe
show b/checkout/client payments/api 8080 refused unknown-ca
show payments/worker b/checkout/client 8080 refused unknown-ca
echo
echo "### 2. One-way trust: a imports b's bundle. a would admit b/checkout/client, but b refuses a's answer"
lab trust a b
probe
show b/checkout/client payments/api 8080 refused unknown-ca
echo
echo "### 3. Two-way trust: b imports a's bundle. a's policy admits exactly b's checkout/client (bireme.io/cluster: b)"
lab trust b a
probe
show b/checkout/client payments/api 8080 connected
show b/checkout/other payments/api 8080 refused "no rule allows"
# b's namespace claims team=payments and bireme.io/cluster=a: a overwrites the cluster label.
show b/checkout/client payments/worker 8080 refused "no rule allows"
show payments/worker b/checkout/client 8080 connected
"$BIREME" policy explain -f "$FED/a.yaml" -f "$FED/b.yaml" --cluster a --from b/checkout/client --to payments/worker --port 8080
echo
echo "### 4. The NAT in between: a sees b's workloads from b's node address, identities intact"
python3 - "$STATE/flows/n1.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("verdict") == "allow" and (r.get("peer") or {}).get("cluster") == "b" and r.get("stage") == "syn":
        print(f"  {r['local']['namespace']}/{r['local']['pod']} <- b/{r['peer']['namespace']}/{r['peer']['pod']} seen from {r['peerAddr']}: {r['reason']}")
        break
else:
    sys.exit("no allowed connection from cluster b in n1's flow records")
PY
echo
echo "### 5. Revocation: a removes b's bundle while b/checkout/client holds a connection to payments/api"
API_NS=$(lab status -o json | python3 -c 'import json,sys; print(next(p["netns"] for p in json.load(sys.stdin)["pods"] if p["pod"]=="payments/api"))')
API_ADDR=$(lab status -o json | python3 -c 'import json,sys; print(next(p["addr"] for p in json.load(sys.stdin)["pods"] if p["pod"]=="payments/api"))')
CLIENT_NS=$(lab status -o json | python3 -c 'import json,sys; print(next(p["netns"] for p in json.load(sys.stdin)["pods"] if p["pod"]=="b/checkout/client"))')
# An echo server on port 9000 of payments/api (its policy admits b's client on every port).
ip netns exec "$API_NS" python3 -c '
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 9000)); s.listen()
def echo(c):
    try:
        while True:
            d = c.recv(100)
            if not d: return
            c.sendall(d)
    except OSError as e:
        print(f"  payments/api echo server: {e}", flush=True)
while True:
    c, _ = s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
' &
ECHO=$!
trap 'kill $ECHO 2>/dev/null; lab down; rm -rf "$TMP"' EXIT
for _ in $(seq 50); do
	ip netns exec "$API_NS" ss -Hltn 'sport = :9000' | grep -q . && break
	sleep 0.2
done
# The held connection: one line a second, for 10 seconds.
ip netns exec "$CLIENT_NS" python3 -c '
import socket, sys, time
c = socket.create_connection((sys.argv[1], 9000), timeout=5)
for i in range(10):
    try:
        c.sendall(b"ping\n"); c.settimeout(2); d = c.recv(100)
        print(f"  held connection, second {i}: " + ("echoed" if d else "closed by peer"), flush=True)
        if not d: break
    except OSError as e:
        print(f"  held connection, second {i}: {e}", flush=True); break
    time.sleep(1)
' "$API_ADDR" >"$TMP/held.log" 2>&1 &
HELD=$!
for _ in $(seq 50); do
	grep -q echoed "$TMP/held.log" && break
	sleep 0.2
done
sleep 1
lab distrust a b
wait $HELD || true
cat "$TMP/held.log"
grep -q "echoed" "$TMP/held.log" || { echo "federation demo: the held connection never worked"; exit 1; }
tail -n1 "$TMP/held.log" | grep -qv "echoed" || { echo "federation demo: the held connection survived the revocation"; exit 1; }
python3 - "$STATE/flows/n1.jsonl" <<'PY'
import json, sys
n = 0
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("stage") == "revoked":
        n += 1
        print(f"  flow record: {r['local']['namespace']}/{r['local']['pod']} <- {r['peer']['cluster']}/{r['peer']['namespace']}/{r['peer']['pod']} ({r['peerAddr']}): {r['reason']}")
if n != 1:
    sys.exit(f"federation demo: {n} revocation records, want 1")
PY
probe
show b/checkout/client payments/api 8080 refused unknown-ca
show payments/worker payments/api 8080 connected
echo
echo "Federation demo done: trust is per cluster, per direction, and cut at once."
