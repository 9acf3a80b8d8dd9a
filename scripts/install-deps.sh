#!/usr/bin/env bash
# Installs the system packages Bireme's lab, tests and benchmarks need on a
# fresh Debian machine (run as root). Safe to run again.
set -euo pipefail
need=()
for pkg in iptables iproute2 conntrack python3-scapy socat iperf3; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
modprobe nfnetlink_queue 2>/dev/null || true
