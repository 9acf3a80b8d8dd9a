#!/usr/bin/env bash
# The Bireme demo, as root on a Debian machine with Go 1.26 (README: "See
# it work"). Installs the packages it needs and builds bin/bireme (unless
# $BIREME names a binary), then builds the lab of examples/demo/model.yaml
# (pods x/a and x/b on node1, y/c on node2, each node with its own
# enforcer), prints the reachability matrix, applies examples/demo/policy.yaml and
# prints it again, then adds a pod with a forged identity and shows it
# refused. The lab is removed at the end, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${BIREME:-} ]]; then
	bash scripts/install-deps.sh
	go build -tags grpcnotrace -o bin/bireme ./cmd/bireme
	BIREME=bin/bireme
fi
STATE=${STATE:-/run/bireme-demo}
DEMO=examples/demo

PROBE=$(mktemp)

lab() { "$BIREME" lab "$@" --state "$STATE"; }

# Leftovers of an interrupted earlier demo would block `lab up`.
lab down
trap 'lab down; rm -f "$PROBE"' EXIT

echo "### Building the lab: namespaces x and y, pods x/a, x/b (node1), y/c (node2)"
lab up -f "$DEMO/model.yaml" --untrusted-node rogue
lab status
echo
echo "### 1. No policy yet: every pod reaches every port of every other pod"
lab probe
echo
echo "### 2. Applying $DEMO/policy.yaml: y/c takes only x/a, and only on its db port"
lab apply -f "$DEMO/policy.yaml"
lab probe
echo
echo "### 3. Attack: x/mallory (node rogue, keys from an untrusted CA) claims x/a's labels"
lab apply -f "$DEMO/forged.yaml"
lab probe -o json >"$PROBE"
lab probe
python3 - "$PROBE" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))
def show(frm, to, port):
    for r in results:
        if (r["from"], r["to"], r["port"]) == (frm, to, port):
            verdict = "connected" if r["connected"] else "REFUSED"
            print(f"{frm} -> {to}:{port}  {verdict}  {r.get('reason', '')}")
            return r["connected"]
    sys.exit(f"no probe {frm} -> {to}:{port}")
real = show("x/a", "y/c", 5432)
forged = show("x/mallory", "y/c", 5432)
if not real or forged:
    sys.exit("demo: unexpected result: the real x/a must connect and the forged one must not")
print("The forged identity was refused; the real one connected.")
PY
