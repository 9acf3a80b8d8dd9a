#!/usr/bin/env bash
# A real Kubernetes control plane for Bireme's Kubernetes tests: etcd and
# kube-apiserver on loopback, both with TLS (etcd asks its clients, the API
# server, for a certificate of its own throwaway CA), a service-account
# signing key, a static token file and RBAC. There is no kubelet: the tests
# play the node.
#
#   scripts/k8s-env.sh build          builds (or reuses) kube-apiserver, prints its path
#   scripts/k8s-env.sh start DIR      starts etcd + kube-apiserver with state in DIR,
#                                     writes DIR/kubeconfig (admin) and DIR/env
#   scripts/k8s-env.sh stop DIR       stops both (by the PIDs recorded in DIR)
#
# kube-apiserver is built from the Go module proxy (no internet needed
# beyond it): a wrapper module requires k8s.io/kubernetes at a pinned version
# and points every staging module (k8s.io/api, ...) at the matching v0.X
# release. The binary is cached under $BIREME_CACHE (default
# $HOME/.cache/bireme) keyed by version, never in the work tree: the first
# build takes 2.5-5 minutes on 2 cores, later runs reuse it.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.34.2}"
STAGING_VERSION="v0${KUBE_VERSION#v1}" # v1.34.2 -> v0.34.2
CACHE_ROOT="${BIREME_CACHE:-$HOME/.cache/bireme}"
BUILD_DIR="$CACHE_ROOT/kube-apiserver-$KUBE_VERSION"
APISERVER="$BUILD_DIR/kube-apiserver"

log() { printf 'k8s-env: %s\n' "$*" >&2; }

# build_apiserver builds kube-apiserver once; concurrent callers (two test
# packages, two engineers) wait on a lock instead of building twice.
build_apiserver() {
	mkdir -p "$BUILD_DIR"
	exec 9>"$BUILD_DIR/.lock"
	flock 9
	if [[ -x "$APISERVER" ]]; then
		echo "$APISERVER"
		return
	fi
	log "building kube-apiserver $KUBE_VERSION in $BUILD_DIR (takes minutes the first time)"
	local started=$SECONDS
	local mod="$BUILD_DIR/module"
	rm -rf "$mod"
	mkdir -p "$mod"
	cd "$mod"
	cat >go.mod <<EOF
module bireme.test/kube-apiserver

go 1.24

require k8s.io/kubernetes $KUBE_VERSION
EOF
	# k8s.io/kubernetes replaces its staging modules with local paths, which
	# a dependent module cannot see: read that list from its go.mod and
	# point each at the published release of the same version.
	local kube_gomod
	kube_gomod="$(GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
		sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
	[[ -f "$kube_gomod" ]] || { log "cannot find go.mod of k8s.io/kubernetes@$KUBE_VERSION"; exit 1; }
	local staging
	staging="$(sed -n 's#^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/src/.*#\1#p' "$kube_gomod")"
	[[ -n "$staging" ]] || { log "no staging replaces found in $kube_gomod"; exit 1; }
	local m
	for m in $staging; do
		echo "replace $m => $m $STAGING_VERSION" >>go.mod
	done
	cat >tools.go <<'EOF'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
EOF
	GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || true
	GOFLAGS=-mod=mod go build -trimpath -o "$APISERVER.tmp" k8s.io/kubernetes/cmd/kube-apiserver
	mv "$APISERVER.tmp" "$APISERVER"
	log "built $APISERVER in $((SECONDS - started)) s"
	echo "$APISERVER"
}

# install_etcd installs Debian's etcd-server when no etcd is on PATH.
install_etcd() {
	command -v etcd >/dev/null && return
	log "installing etcd-server (apt)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null ||
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; }
	# Debian's package starts a system etcd on the default ports where an
	# init system runs; ours uses its own ports and data directory.
}

# etcd_pki DIR makes a throwaway CA in DIR (valid two days, its key
# discarded once used), a certificate for etcd on 127.0.0.1 (its clients'
# and its peer port's) and a client certificate for the API server.
etcd_pki() {
	local d=$1
	mkdir -p "$d"
	(
		umask 077
		cd "$d"
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
			-subj /CN=bireme-test-etcd-ca -keyout ca.key -out ca.crt 2>/dev/null
		local name usage
		for name in server client; do
			usage=clientAuth
			[[ $name == server ]] && usage=serverAuth,clientAuth
			openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
				-subj "/CN=bireme-test-etcd-$name" -keyout "$name.key" -out "$name.csr" 2>/dev/null
			openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out "$name.crt" \
				-extfile <(printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=%s\n' "$usage") 2>/dev/null
			rm -f "$name.csr"
		done
		rm -f ca.key ca.srl
	)
}

# free_port asks the kernel for an unused loopback port.
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
	local deadline=$((SECONDS + $1)) what=$2
	shift 2
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			log "timed out waiting for $what"
			return 1
		fi
		sleep 0.2
	done
}

start() {
	local dir=$1
	mkdir -p "$dir"
	dir="$(cd "$dir" && pwd)"
	install_etcd
	local apiserver
	apiserver="$(build_apiserver)"

	local etcd_client etcd_peer api_port
	etcd_client="$(free_port)"
	etcd_peer="$(free_port)"
	api_port="$(free_port)"

	local pki="$dir/etcd-pki"
	etcd_pki "$pki"
	# Clients (the API server) and the peer port need a certificate of
	# the throwaway CA: nothing else on the machine can read or write
	# the cluster's state through etcd.
	etcd --name bireme-test --data-dir "$dir/etcd" \
		--listen-client-urls "https://127.0.0.1:$etcd_client" \
		--advertise-client-urls "https://127.0.0.1:$etcd_client" \
		--cert-file "$pki/server.crt" --key-file "$pki/server.key" \
		--client-cert-auth --trusted-ca-file "$pki/ca.crt" \
		--listen-peer-urls "https://127.0.0.1:$etcd_peer" \
		--initial-advertise-peer-urls "https://127.0.0.1:$etcd_peer" \
		--initial-cluster "bireme-test=https://127.0.0.1:$etcd_peer" \
		--peer-cert-file "$pki/server.crt" --peer-key-file "$pki/server.key" \
		--peer-client-cert-auth --peer-trusted-ca-file "$pki/ca.crt" \
		--unsafe-no-fsync \
		>"$dir/etcd.log" 2>&1 &
	echo $! >"$dir/etcd.pid"
	wait_for 30 etcd curl -fsS --cacert "$pki/ca.crt" --cert "$pki/client.crt" --key "$pki/client.key" \
		"https://127.0.0.1:$etcd_client/health" || { tail -20 "$dir/etcd.log" >&2; stop "$dir"; return 1; }

	openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
	local token
	token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
	echo "$token,bireme-admin,bireme-admin,system:masters" >"$dir/tokens.csv"
	chmod 600 "$dir/tokens.csv" "$dir/sa.key"

	# Service cluster IPs come from the test range (198.18.0.0/15, like
	# every address of the tests): e2e/kubernetes plays kube-proxy with them.
	"$apiserver" \
		--etcd-servers="https://127.0.0.1:$etcd_client" \
		--etcd-cafile="$pki/ca.crt" --etcd-certfile="$pki/client.crt" --etcd-keyfile="$pki/client.key" \
		--service-account-key-file="$dir/sa.key" \
		--service-account-signing-key-file="$dir/sa.key" \
		--service-account-issuer=https://kubernetes.default.svc \
		--token-auth-file="$dir/tokens.csv" \
		--authorization-mode=RBAC \
		--secure-port="$api_port" \
		--bind-address=127.0.0.1 \
		--advertise-address=127.0.0.1 \
		--cert-dir="$dir/pki" \
		--service-cluster-ip-range=198.19.224.0/20 \
		>"$dir/apiserver.log" 2>&1 &
	echo $! >"$dir/apiserver.pid"
	wait_for 90 kube-apiserver curl -fsS -k -H "Authorization: Bearer $token" "https://127.0.0.1:$api_port/readyz" ||
		{ tail -30 "$dir/apiserver.log" >&2; stop "$dir"; return 1; }

	# The serving certificate is self-signed by the API server into
	# --cert-dir; clients trust exactly that certificate.
	local ca_data
	ca_data="$(base64 -w0 "$dir/pki/apiserver.crt")"
	cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: bireme-test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $ca_data
users:
- name: bireme-admin
  user:
    token: $token
contexts:
- name: bireme-test
  context: {cluster: bireme-test, user: bireme-admin}
current-context: bireme-test
EOF
	chmod 600 "$dir/kubeconfig"
	cat >"$dir/env" <<EOF
KUBECONFIG=$dir/kubeconfig
APISERVER_URL=https://127.0.0.1:$api_port
ETCD_URL=https://127.0.0.1:$etcd_client
EOF
	log "kube-apiserver ready at https://127.0.0.1:$api_port; kubeconfig $dir/kubeconfig"
}

stop_pid_file() {
	local file=$1 pid
	[[ -f "$file" ]] || return 0
	pid="$(cat "$file")"
	if kill "$pid" 2>/dev/null; then
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$file"
}

stop() {
	local dir=$1
	stop_pid_file "$dir/apiserver.pid"
	stop_pid_file "$dir/etcd.pid"
}

case "${1:-}" in
build) build_apiserver ;;
start) start "${2:?usage: $0 start DIR}" ;;
stop) stop "${2:?usage: $0 stop DIR}" ;;
*)
	echo "usage: $0 build | start DIR | stop DIR" >&2
	exit 2
	;;
esac
