#!/usr/bin/env bash
# A real CRI runtime (containerd and its CRI plugin) for Bireme's tests of
# the agent's --cri-socket lookup, that disturbs nothing else on the
# machine: its own root, state dir, socket, config and CNI config under DIR,
# and its own network namespace, so that the CNI bridge and its address
# never reach the host's. No registry is needed: the sandbox ("pause")
# image is built from busybox-static and imported.
#
#   scripts/cri-env.sh start DIR NETNS [PREFIX]
#       creates network namespace NETNS (under /run/netns) if missing,
#       writes DIR/config.toml and a CNI bridge network (bireme-cri,
#       PREFIX.0/24, default 198.19.240, bridge bircri0, host-local
#       addresses kept under DIR; tests that may run at once use different
#       prefixes, so that no address is held by two of their sandboxes), starts containerd inside NETNS and imports the sandbox image;
#       writes DIR/env (CRI_SOCKET=unix://DIR/containerd.sock) and
#       DIR/containerd.pid.
#   scripts/cri-env.sh stop DIR
#       stops containerd by its PID (after which the caller's sandboxes are
#       gone: the test removes them through CRI first), unmounts what it
#       left under DIR and deletes the network namespace (the bridge went
#       with it).
#
# Pod network namespaces are made by the CRI plugin itself as
# /run/netns/cni-UUID; the test removes its sandboxes through CRI, which
# removes those.
set -euo pipefail

log() { printf 'cri-env: %s\n' "$*" >&2; }

image_tag=local/pause:bireme

need_root() {
	if [[ $(id -u) -ne 0 ]]; then
		log "run as root (containerd, network namespaces)"
		exit 1
	fi
}

cni_bin_dir() {
	local d
	for d in /usr/lib/cni /opt/cni/bin; do
		[[ -x "$d/bridge" && -x "$d/host-local" && -x "$d/loopback" ]] && { echo "$d"; return; }
	done
	return 1
}

start() {
	local dir="$1" ns="$2" prefix="${3:-198.19.240}"
	need_root
	command -v containerd >/dev/null || { log "containerd is not installed: apt-get install -y containerd (scripts/install-deps.sh)"; exit 1; }
	command -v ctr >/dev/null || { log "ctr is not installed (package containerd)"; exit 1; }
	local bb cni
	bb="$(command -v busybox || true)"
	[[ -n "$bb" ]] || { log "busybox is not installed: apt-get install -y busybox-static"; exit 1; }
	cni="$(cni_bin_dir)" || { log "CNI plugins are not installed: apt-get install -y containernetworking-plugins"; exit 1; }
	mkdir -p "$dir"
	dir="$(cd "$dir" && pwd)"
	mkdir -p "$dir/root" "$dir/state" "$dir/cni/conf" "$dir/cni/ipam"
	cat >"$dir/cni/conf/10-bireme-cri.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "bireme-cri",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "bircri0",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{"subnet": "$prefix.0/24", "gateway": "$prefix.1"}]]
      }
    }
  ]
}
EOF
	cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$dir/containerd.sock"

[ttrpc]
  address = "$dir/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$image_tag"
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni"
    conf_dir = "$dir/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
EOF
	[[ -e "/run/netns/$ns" ]] || ip netns add "$ns"
	ip -n "$ns" link set lo up
	# nsenter keeps the host's mount namespace (containerd's mounts and
	# the pods' /run/netns bind mounts work as on any host) and changes
	# only the network namespace: the CNI bridge is made there.
	setsid nsenter --net="/run/netns/$ns" -- containerd --config "$dir/config.toml" --log-level warn >"$dir/containerd.log" 2>&1 </dev/null &
	echo $! >"$dir/containerd.pid"
	echo "$ns" >"$dir/netns"
	echo "CRI_SOCKET=unix://$dir/containerd.sock" >"$dir/env"
	local i up=
	for ((i = 0; i < 300; i++)); do
		if ctr -a "$dir/containerd.sock" version >/dev/null 2>&1; then
			up=1
			break
		fi
		sleep 0.1
	done
	if [[ -z "$up" ]]; then
		log "containerd did not answer within 30 s; its log:"
		tail -n 30 "$dir/containerd.log" >&2 || true
		exit 1
	fi
	import_image "$dir" "$bb"
	log "containerd up in $ns (CRI_SOCKET=unix://$dir/containerd.sock)"
}

# import_image builds a one-layer image in the docker-archive format
# (manifest.json, config, layer tar) whose entrypoint sleeps, as a pause
# container does, and imports it into the CRI plugin's namespace.
import_image() {
	local dir="$1" bb="$2"
	local work
	work="$(mktemp -d)"
	mkdir -p "$work/rootfs/bin"
	cp "$bb" "$work/rootfs/bin/busybox"
	ln -s busybox "$work/rootfs/bin/sleep"
	ln -s busybox "$work/rootfs/bin/sh"
	tar -C "$work/rootfs" --owner=0 --group=0 --numeric-owner -cf "$work/layer.tar" .
	local diff
	diff="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
	cat >"$work/config.json" <<EOF
{"architecture":"$(go env GOARCH 2>/dev/null || echo amd64)","os":"linux","config":{"Entrypoint":["/bin/sleep","2147483647"],"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:$diff"]}}
EOF
	cat >"$work/manifest.json" <<EOF
[{"Config":"config.json","RepoTags":["$image_tag"],"Layers":["layer.tar"]}]
EOF
	tar -C "$work" -cf "$work/image.tar" manifest.json config.json layer.tar
	if ! ctr -a "$dir/containerd.sock" -n k8s.io images import --no-unpack=false "$work/image.tar" >"$dir/import.log" 2>&1; then
		log "image import failed:"
		cat "$dir/import.log" >&2
		rm -rf "$work"
		exit 1
	fi
	rm -rf "$work"
}

stop() {
	local dir="$1"
	need_root
	[[ -d "$dir" ]] || return 0
	dir="$(cd "$dir" && pwd)"
	if [[ -f "$dir/containerd.pid" ]]; then
		local pid i
		pid="$(cat "$dir/containerd.pid")"
		if kill -0 "$pid" 2>/dev/null; then
			kill -TERM "$pid" 2>/dev/null || true
			for ((i = 0; i < 100; i++)); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.1
			done
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	# Shims of sandboxes the caller did not remove outlive containerd:
	# they are found by the state dir on their command line.
	local p
	for p in $(pgrep -f "containerd-shim.*-address $dir/containerd.sock" || true); do
		kill -KILL "$p" 2>/dev/null || true
	done
	{ grep -o " $dir/[^ ]*" /proc/self/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
	if [[ -f "$dir/netns" ]]; then
		ip netns del "$(cat "$dir/netns")" 2>/dev/null || true
	fi
}

case "${1:-}" in
start) start "${2:?DIR}" "${3:?NETNS}" "${4:-}" ;;
stop) stop "${2:?DIR}" ;;
*)
	echo "usage: $0 start DIR NETNS [PREFIX] | stop DIR" >&2
	exit 2
	;;
esac
