// Package podnetns finds the network namespace a pod runs in from the
// pod's IP address alone, on any CNI and container runtime: it scans the
// namespaces of every process (/proc/PID/ns/net, which needs the host's PID
// namespace) and the named ones (/run/netns), enters each distinct namespace
// once and reads the addresses of its interfaces.
//
// Nothing the pod writes is trusted: no annotation, label or file of the
// pod's names its namespace. The price is that an address held by two
// namespaces at once is ambiguous, and [Snapshot.Lookup] refuses it rather
// than guess: giving a pod's identity to the wrong namespace would let that
// namespace speak as the pod.
package podnetns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/bireme/bireme/netns"
)

// Scanner scans one machine's network namespaces. The zero value scans
// /proc and /run/netns.
type Scanner struct {
	// ProcDir is where the processes are listed (default "/proc"). The
	// agent needs the host's PID namespace for this to show pods.
	ProcDir string
	// RunDir holds named namespaces, as iproute2 and some runtimes make
	// them (default /run/netns).
	RunDir string
}

// ErrNotFound means no namespace on the machine holds the address (yet).
var ErrNotFound = errors.New("no network namespace holds the address")

// ErrAmbiguous means more than one namespace holds the address.
var ErrAmbiguous = errors.New("several network namespaces hold the address")

// Snapshot is what one scan found: for each address, the namespaces
// holding it, one path per distinct namespace.
type Snapshot struct {
	byAddr     map[netip.Addr][]string
	unreadable map[string]bool
	// Problems are namespaces that could not be read; they are left out.
	Problems []error
}

// Unreadable reports whether the scan found the namespace at path but
// could not read its addresses: a pod protected there may still be.
func (s *Snapshot) Unreadable(path string) bool { return s.unreadable[path] }

// NewSnapshot builds a Snapshot from addresses and the namespace paths
// holding each (for callers that test their use of a scan).
func NewSnapshot(byAddr map[netip.Addr][]string) *Snapshot {
	s := &Snapshot{byAddr: make(map[netip.Addr][]string, len(byAddr))}
	for a, paths := range byAddr {
		s.byAddr[a.Unmap()] = append([]string(nil), paths...)
	}
	return s
}

// Lookup returns the path of the one namespace holding addr, or
// ErrNotFound or ErrAmbiguous (wrapped, naming the namespaces).
func (s *Snapshot) Lookup(addr netip.Addr) (string, error) {
	paths := s.byAddr[addr.Unmap()]
	switch len(paths) {
	case 0:
		return "", fmt.Errorf("%s: %w", addr, ErrNotFound)
	case 1:
		return paths[0], nil
	default:
		return "", fmt.Errorf("%s: %w: %v", addr, ErrAmbiguous, paths)
	}
}

// nsKey identifies a namespace: the device and inode of its nsfs file.
type nsKey struct{ dev, ino uint64 }

// candidate is one path to a namespace; rank orders the paths to one
// namespace, lowest first.
type candidate struct {
	path string
	rank int
}

// Scan reads every network namespace on the machine except the scanner's
// own (the host's, for an agent on the host network: a pod is never
// protected in the host's namespace, whatever addresses it holds). Call it
// from a goroutine that is not inside another namespace.
//
// Of several paths to one namespace it keeps the most stable: a name under
// RunDir (a bind mount that lives as long as the namespace), else the
// process with the lowest PID, in a pod the sandbox ("pause") process that
// outlives the containers. Processes that exit while being scanned are
// skipped.
func (s Scanner) Scan(ctx context.Context) (*Snapshot, error) {
	procDir, runDir := s.ProcDir, s.RunDir
	if procDir == "" {
		procDir = "/proc"
	}
	if runDir == "" {
		runDir = netns.RunDir
	}
	own, err := ownNamespace(procDir)
	if err != nil {
		return nil, fmt.Errorf("scan network namespaces: own namespace: %w", err)
	}

	best := map[nsKey]candidate{}
	consider := func(path string, rank int) {
		k, err := keyOf(path)
		if err != nil || k == own {
			return // gone, not a namespace, or the host's own
		}
		if c, seen := best[k]; !seen || rank < c.rank {
			best[k] = candidate{path: path, rank: rank}
		}
	}
	if names, err := os.ReadDir(runDir); err == nil {
		for _, e := range names {
			consider(filepath.Join(runDir, e.Name()), -1)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("scan network namespaces: %w", err)
	}
	procs, err := os.ReadDir(procDir)
	if err != nil {
		return nil, fmt.Errorf("scan network namespaces: %w", err)
	}
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		consider(filepath.Join(procDir, e.Name(), "ns/net"), pid)
	}

	snap := &Snapshot{byAddr: map[netip.Addr][]string{}, unreadable: map[string]bool{}}
	// Sorted so that a snapshot, and the order of ambiguous paths, is the
	// same from one scan to the next.
	cands := make([]candidate, 0, len(best))
	for _, c := range best {
		cands = append(cands, c)
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].path < cands[j].path })
	for _, c := range cands {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		addrs, err := addressesIn(c.path)
		if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ESRCH) {
			addrs, err = addressesIn(c.path) // once more: a netlink dump can be interrupted by a concurrent change
		}
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ESRCH) {
				snap.Problems = append(snap.Problems, fmt.Errorf("%s: %w", c.path, err))
				snap.unreadable[c.path] = true
			}
			continue
		}
		for _, a := range addrs {
			snap.byAddr[a] = append(snap.byAddr[a], c.path)
		}
	}
	return snap, nil
}

// ownNamespace is the namespace the process's goroutines run in. Not
// /proc/self/ns/net: that is the main thread's, and while another goroutine
// has locked the main thread into a pod's namespace (the datapath enters
// them to add rules and open queues), it names that pod's namespace, which
// the scan would then skip as its own. A goroutine that has not locked its
// thread is never on a thread inside another namespace, since whoever
// enters one holds its thread locked until it is back.
func ownNamespace(procDir string) (nsKey, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return keyOf(filepath.Join(procDir, "self/task", strconv.Itoa(unix.Gettid()), "ns/net"))
}

// keyOf stats path (following /proc's magic links to the nsfs inode).
func keyOf(path string) (nsKey, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsKey{}, err
	}
	return nsKey{dev: st.Dev, ino: st.Ino}, nil
}

// addressesIn enters the namespace at path and lists the addresses of its
// interfaces, loopback and link-local ones left out (every namespace has
// them: they name nothing).
func addressesIn(path string) ([]netip.Addr, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []netip.Addr
	err = netns.DoFD(int(f.Fd()), func() error {
		ifAddrs, err := net.InterfaceAddrs()
		if err != nil {
			return fmt.Errorf("list addresses: %w", err)
		}
		for _, ia := range ifAddrs {
			ipNet, ok := ia.(*net.IPNet)
			if !ok {
				continue
			}
			a, ok := netip.AddrFromSlice(ipNet.IP)
			if !ok {
				continue
			}
			a = a.Unmap()
			if a.IsLoopback() || a.IsLinkLocalUnicast() {
				continue
			}
			out = append(out, a)
		}
		return nil
	})
	return out, err
}

// ErrNotHeld means a namespace named by someone else (the container
// runtime) does not hold the pod's address.
var ErrNotHeld = errors.New("the network namespace does not hold the address")

// Verify checks a namespace path found another way (the container
// runtime, through CRI) as a scan would have found it: the namespace is
// not the caller's own (the host's, for an agent on the host network) and
// one of its interfaces holds addr. The runtime is trusted for the path,
// never for the address: a path naming the wrong namespace would give the
// pod's identity to it.
func (s Scanner) Verify(path string, addr netip.Addr) error {
	procDir := s.ProcDir
	if procDir == "" {
		procDir = "/proc"
	}
	own, err := ownNamespace(procDir)
	if err != nil {
		return fmt.Errorf("verify %s: own namespace: %w", path, err)
	}
	k, err := keyOf(path)
	if err != nil {
		return fmt.Errorf("verify %s: %w", path, err)
	}
	if k == own {
		return fmt.Errorf("verify %s: it is the node's own network namespace", path)
	}
	addrs, err := addressesIn(path)
	if err != nil {
		return fmt.Errorf("verify %s: %w", path, err)
	}
	addr = addr.Unmap()
	for _, a := range addrs {
		if a == addr {
			return nil
		}
	}
	return fmt.Errorf("%s holds %v, not %s: %w", path, addrs, addr, ErrNotHeld)
}
