package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/bireme/bireme/lab/topology"
	"github.com/bireme/bireme/netns"
)

// StopGrace is how long an enforcer may take to exit after SIGTERM before
// it is killed.
const StopGrace = 30 * time.Second

// Down removes the lab in cfg.StateDir: it stops the enforcers (which
// leave their rules: fail closed), deletes every namespace with the lab's
// prefix (and with them the servers and every rule in them), and removes
// the state directory. It works from
// whatever a crash left behind and does nothing if there is no lab.
func Down(ctx context.Context, cfg Config) error {
	var errs []error
	// Enforcers stop in parallel; their rules go with the namespaces below.
	pids, _ := filepath.Glob(cfg.path("pids", "*.pid"))
	stopErrs := make([]error, len(pids))
	var wg sync.WaitGroup
	for i, f := range pids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stopErrs[i] = stopPID(ctx, f, cfg.StateDir, StopGrace)
		}()
	}
	wg.Wait()
	errs = append(errs, stopErrs...)
	if data, err := os.ReadFile(cfg.path("prefix")); err == nil {
		if prefix := strings.TrimSpace(string(data)); prefix != "" {
			if err := topology.DestroyPrefix(ctx, prefix); err != nil {
				errs = append(errs, err)
			}
			if left, _ := netns.List(prefix + "-"); len(left) > 0 {
				errs = append(errs, fmt.Errorf("namespaces left: %v", left))
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("lab down: %w", err))
	}
	// Only what a lab puts there is removed, so a mistyped --state never
	// deletes anything else.
	for _, name := range []string{"store", "clusters", "bundles", "keys", "flows", "logs", "pids", "state.json", ".state.json.tmp", "prefix", "lock"} {
		if err := os.RemoveAll(cfg.path(name)); err != nil {
			errs = append(errs, fmt.Errorf("lab down: %w", err))
		}
	}
	if err := os.Remove(cfg.StateDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("lab down: state directory not empty: %w", err))
	}
	return errors.Join(errs...)
}
