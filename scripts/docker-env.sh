#!/usr/bin/env bash
# A real Docker engine for Bireme's Docker tests and demo, that disturbs no
# other engine on the machine: its own data root, exec root, pidfile, socket
# and cgroup parent under DIR, and its own network namespace, so that its
# bridges, addresses and routes never reach the host's. No registry is
# needed: the image is imported from busybox-static.
#
#   scripts/docker-env.sh start DIR NETNS [RUNTIME]
#       creates network namespace NETNS (under /run/netns) if missing and
#       starts dockerd inside it with state in DIR; writes DIR/env
#       (DOCKER_HOST=unix://DIR/docker.sock) and DIR/dockerd.pid. With
#       RUNTIME (a runc wrapper, e.g. one running `bireme docker runc`), it
#       is registered as runtime "bireme" and made the default.
#   scripts/docker-env.sh image DIR [TAG]
#       imports a busybox-static root filesystem as TAG
#       (default local/busybox:bireme).
#   scripts/docker-env.sh stop DIR
#       removes every container and network, stops dockerd by its PID, and
#       deletes the network namespace (the engine's rules went with it).
#
# The engine runs with --iptables=false and --bridge=none: no docker0 (its
# 172.17.0.0/16 is outside the test ranges), no chains and no kernel module
# loaded for the host. Networks are user-defined bridges, created by the
# caller with a subnet in 198.18.0.0/15.
set -euo pipefail

log() { printf 'docker-env: %s\n' "$*" >&2; }

need_root() {
	if [[ $(id -u) -ne 0 ]]; then
		log "run as root (dockerd, network namespaces)"
		exit 1
	fi
}

docker_cli() {
	local dir="$1"
	shift
	DOCKER_HOST="unix://$dir/docker.sock" docker "$@"
}

start() {
	local dir="$1" ns="$2" runtime="${3:-}"
	need_root
	command -v dockerd >/dev/null || { log "dockerd is not installed: apt-get install -y docker.io (scripts/install-deps.sh)"; exit 1; }
	mkdir -p "$dir"
	dir="$(cd "$dir" && pwd)"
	[[ -e "/run/netns/$ns" ]] || ip netns add "$ns"
	ip -n "$ns" link set lo up
	sysctl -q -w net.ipv4.ip_forward=1 >/dev/null 2>&1 || true
	ip netns exec "$ns" sysctl -q -w net.ipv4.ip_forward=1
	local args=(
		--data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid"
		-H "unix://$dir/docker.sock" --iptables=false --ip6tables=false --bridge=none
		--userland-proxy=false --cgroup-parent "/bireme-docker-$ns" --log-level warn
		--default-address-pool "base=198.19.0.0/16,size=24"
	)
	if [[ -n "$runtime" ]]; then
		args+=(--add-runtime "bireme=$runtime" --default-runtime bireme)
	fi
	# nsenter keeps the host's mount namespace (dockerd's mounts and
	# cgroups work as on any host) and changes only the network namespace.
	setsid nsenter --net="/run/netns/$ns" -- dockerd "${args[@]}" >"$dir/dockerd.log" 2>&1 </dev/null &
	echo "DOCKER_HOST=unix://$dir/docker.sock" >"$dir/env"
	echo "$ns" >"$dir/netns"
	local i
	for ((i = 0; i < 300; i++)); do
		if docker_cli "$dir" version >/dev/null 2>&1; then
			log "dockerd up in $ns (DOCKER_HOST=unix://$dir/docker.sock)"
			return
		fi
		sleep 0.1
	done
	log "dockerd did not answer within 30 s; its log:"
	tail -n 30 "$dir/dockerd.log" >&2 || true
	exit 1
}

image() {
	local dir="$1" tag="${2:-local/busybox:bireme}"
	local bb
	bb="$(command -v busybox || true)"
	[[ -n "$bb" ]] || { log "busybox is not installed: apt-get install -y busybox-static"; exit 1; }
	if docker_cli "$dir" image inspect "$tag" >/dev/null 2>&1; then
		return
	fi
	local root
	root="$(mktemp -d)"
	mkdir -p "$root/bin" "$root/tmp" "$root/www" "$root/etc"
	cp "$bb" "$root/bin/busybox"
	# Only the applets the tests and the demo run: a few links import in
	# a fraction of the time of busybox's 400.
	local applet
	for applet in sh httpd nc grep printf sleep echo cat mkdir ls ip hostname true false; do
		ln -sf busybox "$root/bin/$applet"
	done
	echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
	tar -C "$root" -c . | docker_cli "$dir" import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' - "$tag" >/dev/null
	rm -rf "$root"
	log "image $tag imported"
}

stop() {
	local dir="$1"
	need_root
	[[ -d "$dir" ]] || return 0
	if [[ -S "$dir/docker.sock" ]] && docker_cli "$dir" version >/dev/null 2>&1; then
		local ids
		ids="$(docker_cli "$dir" ps -aq || true)"
		[[ -z "$ids" ]] || docker_cli "$dir" rm -f $ids >/dev/null 2>&1 || true
		docker_cli "$dir" network prune -f >/dev/null 2>&1 || true
	fi
	if [[ -f "$dir/dockerd.pid" ]]; then
		local pid i
		pid="$(cat "$dir/dockerd.pid")"
		if kill -0 "$pid" 2>/dev/null; then
			kill -TERM "$pid" 2>/dev/null || true
			for ((i = 0; i < 150; i++)); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.1
			done
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	# Anything the engine left mounted under DIR (its overlay and netns
	# bind mounts) is unmounted so that DIR can be removed.
	{ grep -o " $dir/[^ ]*" /proc/self/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
	if [[ -f "$dir/netns" ]]; then
		ip netns del "$(cat "$dir/netns")" 2>/dev/null || true
	fi
	rmdir "/sys/fs/cgroup/bireme-docker-$(cat "$dir/netns" 2>/dev/null)" 2>/dev/null || true
}

case "${1:-}" in
start) start "${2:?DIR}" "${3:?NETNS}" "${4:-}" ;;
image) image "${2:?DIR}" "${3:-}" ;;
stop) stop "${2:?DIR}" ;;
*)
	echo "usage: $0 start DIR NETNS [RUNTIME] | image DIR [TAG] | stop DIR" >&2
	exit 2
	;;
esac
