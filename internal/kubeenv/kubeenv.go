// Package kubeenv gives tests a real Kubernetes API server: etcd and a
// pinned kube-apiserver on loopback, started and stopped by
// scripts/k8s-env.sh (which builds kube-apiserver from the Go module proxy
// on first use and caches it under $HOME/.cache/bireme). There is no
// kubelet, no scheduler and no controller manager: a test plays the node.
package kubeenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Env is a running API server.
type Env struct {
	// Dir holds the server's state, logs and Kubeconfig.
	Dir string
	// Kubeconfig is an admin kubeconfig (group system:masters).
	Kubeconfig string
	// Client is an admin client.
	Client kubernetes.Interface
}

// startTimeout covers a cold build of kube-apiserver on a busy 2-core
// machine (about 5 minutes idle) plus its start.
const startTimeout = 12 * time.Minute

// Start starts etcd and kube-apiserver for the test and stops them when
// it ends, whatever its outcome. It skips the test in -short mode and,
// when not root, if etcd is not installed (installing it needs root);
// anything else that fails is the test's failure, so CI cannot pass
// without running against the server.
func Start(t testing.TB) *Env {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping: starts a Kubernetes API server (not in -short mode)")
	}
	if _, err := exec.LookPath("etcd"); err != nil && os.Geteuid() != 0 {
		t.Skip("skipping: etcd is not installed and installing it needs root (apt-get install -y etcd-server, or run as root as CI does)")
	}
	script, err := script()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	env := &Env{Dir: dir, Kubeconfig: filepath.Join(dir, "kubeconfig")}
	// Registered before starting: a start that fails halfway (etcd up,
	// API server not) is stopped too.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "bash", script, "stop", dir).CombinedOutput(); err != nil {
			t.Errorf("stop API server: %v: %s", err, out)
		}
	})
	started := time.Now()
	if out, err := exec.CommandContext(ctx, "bash", script, "start", dir).CombinedOutput(); err != nil {
		t.Fatalf("start API server (%s): %v\n%s", script, err, out)
	}
	t.Logf("API server up in %v (kubeconfig %s)", time.Since(started).Round(time.Millisecond), env.Kubeconfig)
	cfg, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	// A test sets up thousands of objects: client-go's default rate limit
	// (5 requests/s) would make that minutes.
	cfg.QPS, cfg.Burst = 1000, 1000
	if env.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	return env
}

// script finds scripts/k8s-env.sh in the repository the test runs in.
func script() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			path := filepath.Join(dir, "scripts", "k8s-env.sh")
			if _, err := os.Stat(path); err != nil {
				return "", fmt.Errorf("API server script: %w", err)
			}
			return path, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("API server script: no go.mod above the test's directory")
		}
		dir = parent
	}
}
