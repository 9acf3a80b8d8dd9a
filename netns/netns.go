// Package netns creates, enters and removes Linux network namespaces and the
// veth links between them; it is the one place Bireme touches namespaces.
//
// Namespaces are made with iproute2 ("ip netns add"), so each is visible as
// /run/netns/NAME and usable with "ip netns exec NAME". Go code runs inside a
// namespace with Do, which pins the goroutine to its OS thread for the
// duration; sockets opened there stay in that namespace afterwards.
package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// RunDir is where iproute2 keeps named namespaces.
const RunDir = "/run/netns"

// NS is a named network namespace.
type NS struct {
	Name string
}

// Path is the namespace's bind-mount, usable as a setns(2) target.
func (n *NS) Path() string { return RunDir + "/" + n.Name }

// Create makes the namespace NAME and brings its loopback up. It fails if
// NAME already exists, so two owners never share one by accident.
func Create(ctx context.Context, name string) (*NS, error) {
	if err := Cmd(ctx, "ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	n := &NS{Name: name}
	if err := n.Exec(ctx, "ip", "link", "set", "lo", "up"); err != nil {
		_ = n.Delete(context.Background())
		return nil, fmt.Errorf("netns %s: loopback up: %w", name, err)
	}
	return n, nil
}

// Open returns the existing namespace NAME.
func Open(name string) (*NS, error) {
	n := &NS{Name: name}
	if _, err := os.Stat(n.Path()); err != nil {
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	return n, nil
}

// Exists reports whether the named namespace exists.
func Exists(name string) bool {
	_, err := os.Stat(RunDir + "/" + name)
	return err == nil
}

// Delete kills every process still inside the namespace and removes it.
// Deleting a namespace that is already gone is not an error.
func (n *NS) Delete(ctx context.Context) error {
	if !Exists(n.Name) {
		return nil
	}
	// Processes left inside keep the namespace (and its veths) alive.
	if out, err := exec.CommandContext(ctx, "ip", "netns", "pids", n.Name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			_ = exec.CommandContext(ctx, "kill", "-9", f).Run()
		}
	}
	if err := Cmd(ctx, "ip", "netns", "del", n.Name); err != nil && Exists(n.Name) {
		return fmt.Errorf("delete netns %s: %w", n.Name, err)
	}
	return nil
}

// List returns the names of all namespaces whose name starts with prefix.
func List(prefix string) ([]string, error) {
	entries, err := os.ReadDir(RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", RunDir, err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// DeleteAll removes every namespace whose name starts with prefix; it is how
// a crashed lab or test is cleaned up. The first error is returned after all
// deletions were tried.
func DeleteAll(ctx context.Context, prefix string) error {
	names, err := List(prefix)
	if err != nil {
		return err
	}
	var first error
	for _, name := range names {
		if err := (&NS{Name: name}).Delete(ctx); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Exec runs a command inside the namespace and returns an error that
// includes its output when it fails.
func (n *NS) Exec(ctx context.Context, name string, args ...string) error {
	return Cmd(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Output runs a command inside the namespace and returns its standard output.
func (n *NS) Output(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("netns %s: %s %s: %w: %s", n.Name, name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Command returns an unstarted command that will run inside the namespace.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Do runs fn on an OS thread that has entered the namespace. Sockets and
// netlink connections opened by fn belong to the namespace for their lifetime.
// fn must not start goroutines that expect to inherit the namespace.
func (n *NS) Do(fn func() error) error {
	target, err := os.Open(n.Path())
	if err != nil {
		return fmt.Errorf("open netns %s: %w", n.Name, err)
	}
	defer target.Close()
	return DoFD(int(target.Fd()), fn)
}

// DoFD is Do for a namespace given as an open file descriptor (for example
// /proc/PID/ns/net of a container).
func DoFD(fd int, fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current netns: %w", err)
	}
	defer orig.Close()
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns: %w", err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread is stuck in the wrong namespace: keep it locked so the
		// runtime retires it instead of reusing it.
		return errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// Listen opens a listener inside the namespace.
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// Dial connects from inside the namespace, giving up after timeout.
func (n *NS) Dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

// Veth joins namespace a (interface aIf) and b (interface bIf) with a veth
// pair and brings both ends up. A nil namespace means the current one.
func Veth(ctx context.Context, a *NS, aIf string, b *NS, bIf string) error {
	if err := Cmd(ctx, "ip", "link", "add", aIf, "type", "veth", "peer", "name", bIf); err != nil {
		return fmt.Errorf("veth %s-%s: %w", aIf, bIf, err)
	}
	for _, end := range []struct {
		ns *NS
		If string
	}{{a, aIf}, {b, bIf}} {
		if end.ns != nil {
			if err := Cmd(ctx, "ip", "link", "set", end.If, "netns", end.ns.Name); err != nil {
				_ = Cmd(context.Background(), "ip", "link", "del", aIf)
				return fmt.Errorf("move %s to %s: %w", end.If, end.ns.Name, err)
			}
		}
	}
	for _, end := range []struct {
		ns *NS
		If string
	}{{a, aIf}, {b, bIf}} {
		args := []string{"link", "set", end.If, "up"}
		var err error
		if end.ns != nil {
			err = end.ns.Exec(ctx, "ip", args...)
		} else {
			err = Cmd(ctx, "ip", args...)
		}
		if err != nil {
			return fmt.Errorf("up %s: %w", end.If, err)
		}
	}
	return nil
}

// Cmd runs a command in the current namespace and returns an error that
// includes its combined output when it fails.
func Cmd(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
