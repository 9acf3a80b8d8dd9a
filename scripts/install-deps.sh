#!/usr/bin/env bash
# Installs what Bireme's build, lab, tests and benchmarks need on a fresh
# Debian or Ubuntu machine, as root. Safe to run again: it only calls apt
# when a package is missing. Go itself (1.26) must already be on PATH.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
	echo "install-deps: run as root (the lab and the tests build network namespaces)" >&2
	exit 1
fi
if ! command -v go >/dev/null; then
	echo "install-deps: Go 1.26 is not on PATH; install it from https://go.dev/dl/ first" >&2
	exit 1
fi

# iptables, iproute2, conntrack: the datapath and the lab.
# kmod: modprobe for the NFQUEUE module. make: the Makefile.
# python3-scapy: crafted and replayed packets in the attack tests; python3 also
#   reads the demo's JSON.
# socat, iperf3, curl: real clients and load in tests and benchmarks.
# jq: reading `bireme lab status -o json` in scripts.
# tcpdump: the e2e attack tests capture handshakes on the wire to replay them.
# etcd-server, openssl: the Kubernetes tests' API server (scripts/k8s-env.sh).
# docker.io, busybox-static, util-linux (nsenter): the Docker tests' engines
#   and their image (scripts/docker-env.sh starts its own dockerd; the
#   package's service is never started here).
# containerd, runc, containernetworking-plugins: the CRI lookup's test runs a
#   containerd of its own with a CNI bridge (scripts/cri-env.sh; the
#   package's service is never started here).
pkgs=(iptables iproute2 conntrack kmod make python3 python3-scapy socat iperf3 curl jq procps tcpdump etcd-server openssl docker.io busybox-static util-linux containerd runc containernetworking-plugins)

need=()
for pkg in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
	echo "install-deps: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Loaded on demand on most kernels; explicit here so a missing module is
# seen now rather than as a mysterious queue error later.
for mod in nfnetlink_queue xt_NFQUEUE nf_conntrack; do
	modprobe "$mod" 2>/dev/null || true
done
