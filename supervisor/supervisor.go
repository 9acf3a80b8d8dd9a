// Package supervisor programs the iptables rules that put a workload's
// network namespace under Bireme's protection, and removes them again.
//
// Everything it installs lives in chains of its own (prefix "BIREME-"),
// reached by one jump per built-in chain; Unprotect deletes exactly those
// jumps and chains, so rules that other software put in the namespace are
// never touched. Rules are installed for IPv4 (iptables) and IPv6
// (ip6tables).
//
// # Rule layout
//
// Two connection-mark bits, owned by Bireme and named by the marks.Layout
// the supervisor and the enforcer share, carry the state of each TCP
// connection in the namespace's conntrack table:
//
//	Authorized  the enforcer verified the handshake: every packet passes in the kernel
//	Pending     the enforcer accepted the SYN-ACK: the handshake-completing
//	            ACK (client: with proof attached; server: proof verified) still
//	            has to pass the queue. The server's enforcer sets Authorized
//	            only after the ACK's verdict, with a ctnetlink update of its
//	            own, so that no data can overtake the ACK while its socket
//	            is made.
//
// mangle table (runs before filter, priority -150), for TCP (nontcp.go
// has the chains for every other protocol):
//
//	INPUT  -p tcp -j BIREME-INPUT     OUTPUT -p tcp -j BIREME-OUTPUT
//
//	BIREME-INPUT                                  BIREME-OUTPUT
//	-i lo                      RETURN             -o lo                      RETURN
//	Authorized, not SYN        RETURN             Authorized, not SYN        RETURN
//	RST                        RETURN             RST                        RETURN
//	SYN (incl. SYN-ACK)        NFQUEUE            SYN (incl. SYN-ACK)        NFQUEUE
//	Pending, original dir      NFQUEUE (server)   Pending, original dir      NFQUEUE (client)
//	Pending, reply dir, no SYN set Authorized     Pending, reply dir, no SYN NFQUEUE (server)
//	Authorized                 RETURN             Authorized                 RETURN
//	DROP                                          DROP
//
// Every chain reads the connection mark once per rule, and an enforcer's
// verdict on another CPU can move it from Pending to Authorized between
// two rules; the second Authorized check makes a packet caught in between
// pass instead of being dropped (seen about once in 3,600 connections, a
// 200 ms retransmission each).
//
// filter table (priority 0):
//
//	INPUT, OUTPUT  -p tcp -j BIREME-SAVE     (and ! -p tcp, see nontcp.go)
//	BIREME-SAVE    packet mark has one of our bits -> CONNMARK --save-mark (our bits only)
//
// The enforcer cannot set the connection mark in the verdict of a packet
// whose length it changed (the kernel would then try a sequence-number
// adjustment the connection was never set up for), so it sets the packet
// mark instead and BIREME-SAVE, which runs after mangle, copies it to the
// connection. NFQUEUE rules carry no --queue-bypass: with no enforcer
// reading the queue, handshake packets are dropped and protection fails
// closed. Connections that were already established when protection starts
// are marked Authorized by Protect (see conntrack.go, which goes through
// github.com/ti-mo/conntrack).
package supervisor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/coreos/go-iptables/iptables"

	"github.com/bireme/bireme/marks"
	"github.com/bireme/bireme/netns"
)

// Chain names. Every chain Bireme creates starts with ChainPrefix.
const (
	ChainPrefix = "BIREME-"
	chainInput  = "BIREME-INPUT"
	chainOutput = "BIREME-OUTPUT"
	chainSave   = "BIREME-SAVE"
)

// Supervisor installs and removes Bireme's rules in workload namespaces.
// It holds no per-namespace state: everything it needs is read back from
// the kernel, so a restarted process picks up where the last one stopped.
type Supervisor struct {
	layout marks.Layout

	once    sync.Once
	ipts    []*iptables.IPTables // IPv4 then IPv6
	iptsErr error
}

// New returns a Supervisor whose rules feed the queues and set the mark
// bits of layout; the enforcer must be given the same layout.
func New(layout marks.Layout) *Supervisor {
	return &Supervisor{layout: layout.WithDefaults()}
}

// tables returns the iptables and ip6tables handles, made once: making one
// runs "iptables --version", which does not depend on the namespace.
func (s *Supervisor) tables() ([]*iptables.IPTables, error) {
	s.once.Do(func() {
		for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
			ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(5))
			if err != nil {
				s.iptsErr = fmt.Errorf("%s: %w", protoName(proto), err)
				return
			}
			s.ipts = append(s.ipts, ipt)
		}
	})
	return s.ipts, s.iptsErr
}

// Layout returns the queues and mark bits the rules use, defaults filled
// in.
func (s *Supervisor) Layout() marks.Layout { return s.layout }

// jump is one rule in a built-in chain that sends one protocol (TCP
// unless protocol says otherwise) to one of our chains.
type jump struct {
	table, from, to string
	protocol        []string // the rule's protocol match; nil: -p tcp
}

var jumps = append([]jump{
	{table: "mangle", from: "INPUT", to: chainInput},
	{table: "mangle", from: "OUTPUT", to: chainOutput},
	{table: "filter", from: "INPUT", to: chainSave},
	{table: "filter", from: "OUTPUT", to: chainSave},
}, nonTCPJumps...) // nontcp.go

func (j jump) rule() []string {
	proto := j.protocol
	if proto == nil {
		proto = []string{"-p", "tcp"}
	}
	return append(slices.Clip(proto), "-m", "comment", "--comment", "bireme", "-j", j.to)
}

// chainSpec is one of our chains with the rules it must hold, in order.
type chainSpec struct {
	table, name string
	rules       [][]string
}

func hex32(v uint32) string { return "0x" + strconv.FormatUint(uint64(v), 16) }

// listed is the chain as "iptables -S CHAIN" prints it.
func (c chainSpec) listed() []string {
	out := []string{"-N " + c.name}
	for _, r := range c.rules {
		out = append(out, "-A "+c.name+" "+strings.Join(r, " "))
	}
	return out
}

// chains returns the full layout described in the package doc.
func (s *Supervisor) chains() []chainSpec {
	c := s.layout
	mask := hex32(c.Mask())
	auth := hex32(c.Authorized) + "/" + mask
	pending := hex32(c.Pending) + "/" + mask
	queue := s.queueTarget()
	r := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	isAuth := []string{"-m", "connmark", "--mark", auth}
	isPending := []string{"-m", "connmark", "--mark", pending}
	notSYN := []string{"-m", "tcp", "!", "--tcp-flags", "SYN", "SYN"}
	isSYN := []string{"-p", "tcp", "-m", "tcp", "--tcp-flags", "SYN", "SYN"}
	isRST := []string{"-p", "tcp", "-m", "tcp", "--tcp-flags", "RST", "RST"}
	dirOrig := []string{"-m", "conntrack", "--ctdir", "ORIGINAL"}
	dirReply := []string{"-m", "conntrack", "--ctdir", "REPLY"}
	tcp := []string{"-p", "tcp"}
	return append([]chainSpec{
		{"mangle", chainInput, [][]string{
			{"-i", "lo", "-j", "RETURN"},
			r(tcp, isAuth, notSYN, []string{"-j", "RETURN"}),
			r(isRST, []string{"-j", "RETURN"}),
			r(isSYN, queue),
			r(tcp, isPending, dirOrig, queue),
			r(tcp, isPending, dirReply, notSYN, []string{"-j", "CONNMARK", "--set-xmark", auth}),
			r(isAuth, []string{"-j", "RETURN"}),
			{"-j", "DROP"},
		}},
		{"mangle", chainOutput, [][]string{
			{"-o", "lo", "-j", "RETURN"},
			r(tcp, isAuth, notSYN, []string{"-j", "RETURN"}),
			r(isRST, []string{"-j", "RETURN"}),
			r(isSYN, queue),
			r(tcp, isPending, dirOrig, queue),
			// The server's first bytes may leave while the connection
			// is still Pending: the enforcer marks it Authorized right
			// after the verdict on the client's ACK, and the accepted
			// socket can write before that.
			r(tcp, isPending, dirReply, notSYN, queue),
			// The mark is read once per rule, and the enforcer's verdict
			// on the ACK can turn Pending into Authorized between two of
			// them: a packet that missed both the first RETURN and the
			// queue sees Authorized here rather than being dropped.
			// (Every SYN was queued above.)
			r(isAuth, []string{"-j", "RETURN"}),
			{"-j", "DROP"},
		}},
		{"filter", chainSave, [][]string{
			{"-m", "mark", "!", "--mark", "0x0/" + mask, "-j", "CONNMARK", "--save-mark",
				"--nfmask", mask, "--ctmask", mask},
		}},
	}, s.nonTCPChains()...) // nontcp.go
}

// queueTarget is the NFQUEUE target that feeds the layout's queues.
func (s *Supervisor) queueTarget() []string {
	c := s.layout
	if c.Queues > 1 {
		return []string{"-j", "NFQUEUE", "--queue-balance",
			fmt.Sprintf("%d:%d", c.QueueBase, int(c.QueueBase)+int(c.Queues)-1)}
	}
	return []string{"-j", "NFQUEUE", "--queue-num", strconv.Itoa(int(c.QueueBase))}
}

// Protect puts the namespace at netnsPath (for example /run/netns/NAME or
// /proc/PID/ns/net) under protection. It is idempotent and never opens a
// gap: chains that already hold the right rules are left alone, a chain
// that differs is replaced in one iptables-restore transaction, and jumps
// already present stay, so a restarted or upgraded enforcer takes over the
// rules of the one before without a moment in which the namespace is
// unprotected.
//
// Adoption of established connections depends on whether Bireme protected
// the namespace before. On the first install (no BIREME- chain in it),
// connections established before are marked authorized so enforcement
// does not cut them. On a takeover (our chains are there), nothing is
// adopted: every connection made under our rules was decided by an
// enforcer and carries its mark, so an unmarked established one was made
// while the rules were missing or bypassed, and is exactly what must not
// become authorized; it stays unmarked and its packets are dropped.
func (s *Supervisor) Protect(ctx context.Context, netnsPath string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ipts, err := s.tables()
	if err != nil {
		return fmt.Errorf("protect %s: %w", netnsPath, err)
	}
	// On a first install, pass 1 of the marking runs before the jumps
	// exist, pass 2 after: a connection that completed its handshake in
	// between was not seen by the enforcer and would otherwise be cut.
	// Neither pass touches a connection that carries one of our bits, so
	// handshakes the enforcer handled (or refused before ESTABLISHED) are
	// never promoted.
	var (
		present  [][]string // per family: the rules of the built-in chains, as listed
		takeover bool       // a BIREME- chain was there before this call
	)
	err = inNetNS(netnsPath, func() error {
		for _, ipt := range ipts {
			ours, err := s.chainsPresent(ipt)
			if err != nil {
				return fmt.Errorf("%s: %w", protoName(ipt.Proto()), err)
			}
			takeover = takeover || ours
			for _, c := range s.chains() {
				if err := ensureChain(ipt, c); err != nil {
					return fmt.Errorf("%s: %w", protoName(ipt.Proto()), err)
				}
			}
			var listed []string
			for _, j := range jumps {
				rules, err := ipt.List(j.table, j.from)
				if err != nil {
					return fmt.Errorf("%s: list %s/%s: %w", protoName(ipt.Proto()), j.table, j.from, err)
				}
				listed = append(listed, rules...)
			}
			present = append(present, listed)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("protect %s: %w", netnsPath, err)
	}
	if !takeover {
		// The chains above use conntrack, so from here on the namespace is
		// tracked; give the sockets that existed before an authorized entry.
		if err := trackEstablishedSockets(netnsPath, s.layout.Authorized); err != nil {
			return fmt.Errorf("protect %s: %w", netnsPath, err)
		}
		if err := markEstablished(netnsPath, s.layout.Authorized, s.layout.Mask()); err != nil {
			return fmt.Errorf("protect %s: %w", netnsPath, err)
		}
	}
	err = inNetNS(netnsPath, func() error {
		for i, ipt := range ipts {
			for _, j := range jumps {
				if slices.Contains(present[i], "-A "+j.from+" "+strings.Join(j.rule(), " ")) {
					continue
				}
				ok, err := ipt.Exists(j.table, j.from, j.rule()...)
				if err != nil {
					return fmt.Errorf("%s: check jump %s/%s: %w", protoName(ipt.Proto()), j.table, j.from, err)
				}
				if !ok {
					// First in the chain: our verdicts must not depend on
					// what rules others placed before us.
					if err := ipt.Insert(j.table, j.from, 1, j.rule()...); err != nil {
						return fmt.Errorf("%s: add jump %s/%s: %w", protoName(ipt.Proto()), j.table, j.from, err)
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("protect %s: %w", netnsPath, err)
	}
	if !takeover {
		if err := markEstablished(netnsPath, s.layout.Authorized, s.layout.Mask()); err != nil {
			return fmt.Errorf("protect %s: %w", netnsPath, err)
		}
	}
	return nil
}

// chainsPresent reports whether any chain Protect creates exists in the
// tables of one family: whether Bireme protected the namespace before.
func (s *Supervisor) chainsPresent(ipt *iptables.IPTables) (bool, error) {
	for _, c := range s.chains() {
		ok, err := ipt.ChainExists(c.table, c.name)
		if err != nil {
			return false, fmt.Errorf("check chain %s/%s: %w", c.table, c.name, err)
		}
		if ok {
			return true, nil
		}
	}
	return false, nil
}

// ensureChain makes chain c exist with exactly c.rules. A chain that
// already matches is not rewritten.
func ensureChain(ipt *iptables.IPTables, c chainSpec) error {
	exists, err := ipt.ChainExists(c.table, c.name)
	if err != nil {
		return fmt.Errorf("check chain %s/%s: %w", c.table, c.name, err)
	}
	if exists {
		current, err := ipt.List(c.table, c.name)
		if err != nil {
			return fmt.Errorf("list %s/%s: %w", c.table, c.name, err)
		}
		if slices.Equal(current, c.listed()) {
			return nil // the common case, one exec
		}
		// iptables may print a rule differently from how we wrote it;
		// ask it to compare each rule before concluding they differ.
		same := len(current) == len(c.rules)+1 // the first line is "-N CHAIN"
		for i := 0; same && i < len(c.rules); i++ {
			ok, err := ipt.Exists(c.table, c.name, c.rules[i]...)
			if err != nil {
				return fmt.Errorf("check rule in %s/%s: %w", c.table, c.name, err)
			}
			same = ok
		}
		if same {
			return nil
		}
	}
	return replaceChain(ipt, c)
}

// replaceChain makes chain c hold exactly c.rules in one iptables-restore
// transaction: the kernel sees the old chain or the new one, never an
// empty or half-written one (a chain emptied while jumped to returns every
// packet unchecked: fail open). An upgrade that changes the rules goes
// through here while the old rules still protect the namespace; if the new
// rules are refused, the old ones stay. It runs in the calling thread's
// network namespace.
func replaceChain(ipt *iptables.IPTables, c chainSpec) error {
	var in strings.Builder
	fmt.Fprintf(&in, "*%s\n:%s - [0:0]\n", c.table, c.name) // declaring a chain with --noflush empties it first
	for _, rule := range c.rules {
		fmt.Fprintf(&in, "-A %s %s\n", c.name, strings.Join(rule, " "))
	}
	in.WriteString("COMMIT\n")
	tool := "iptables-restore"
	if ipt.Proto() == iptables.ProtocolIPv6 {
		tool = "ip6tables-restore"
	}
	cmd := exec.Command(tool, "--noflush", "--wait", "5")
	cmd.Stdin = strings.NewReader(in.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("replace chain %s/%s: %s: %w: %s", c.table, c.name, tool, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Unprotect removes every jump and chain Protect added to the namespace,
// and nothing else. Removing from a namespace that is not protected is not
// an error. Connection marks stay: they are harmless without the rules,
// and keep authorized connections flowing if protection comes back.
func (s *Supervisor) Unprotect(ctx context.Context, netnsPath string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ipts, err := s.tables()
	if err != nil {
		return fmt.Errorf("unprotect %s: %w", netnsPath, err)
	}
	err = inNetNS(netnsPath, func() error {
		for _, ipt := range ipts {
			if err := s.unprotectFamily(ipt); err != nil {
				return fmt.Errorf("%s: %w", protoName(ipt.Proto()), err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("unprotect %s: %w", netnsPath, err)
	}
	return nil
}

// unprotectFamily removes our jumps, then our chains, for one family.
func (s *Supervisor) unprotectFamily(ipt *iptables.IPTables) error {
	existing := map[string][]string{}
	for _, table := range []string{"mangle", "filter"} {
		names, err := ipt.ListChains(table)
		if err != nil {
			return fmt.Errorf("list chains of %s: %w", table, err)
		}
		existing[table] = names
	}
	for _, j := range jumps {
		if !slices.Contains(existing[j.table], j.to) {
			continue // no chain, so no jump to it
		}
		rules, err := ipt.List(j.table, j.from)
		if err != nil {
			return fmt.Errorf("list %s/%s: %w", j.table, j.from, err)
		}
		// A jump may have been added more than once by hand; remove all.
		want := "-A " + j.from + " " + strings.Join(j.rule(), " ")
		n := 0
		for _, r := range rules {
			if r == want {
				n++
			}
		}
		if n == 0 {
			// Printed differently by this iptables: ask it.
			ok, err := ipt.Exists(j.table, j.from, j.rule()...)
			if err != nil {
				return fmt.Errorf("check jump %s/%s: %w", j.table, j.from, err)
			}
			if ok {
				n = 1
			}
		}
		for range n {
			if err := ipt.Delete(j.table, j.from, j.rule()...); err != nil {
				return fmt.Errorf("delete jump %s/%s: %w", j.table, j.from, err)
			}
		}
	}
	for _, c := range s.chains() {
		if !slices.Contains(existing[c.table], c.name) {
			continue
		}
		if err := ipt.ClearAndDeleteChain(c.table, c.name); err != nil {
			return fmt.Errorf("delete chain %s/%s: %w", c.table, c.name, err)
		}
	}
	return nil
}

func protoName(p iptables.Protocol) string {
	if p == iptables.ProtocolIPv6 {
		return "ip6tables"
	}
	return "iptables"
}

// inNetNS runs fn on a thread inside the namespace at path. go-iptables
// execs the iptables binary from the calling goroutine, which netns.DoFD
// keeps locked to the namespace's thread, so the child process inherits
// the workload namespace (a test checks the rules land there and not in
// the caller's namespace).
func inNetNS(path string, fn func() error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	defer f.Close()
	return netns.DoFD(int(f.Fd()), fn)
}

// Installed reports whether Bireme's chains are in the namespace at
// netnsPath (IPv4 tables): whether it is protected, or fenced and waiting
// for an enforcer. For status reports; Protect and Unprotect need no such
// check.
func (s *Supervisor) Installed(ctx context.Context, netnsPath string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	ipts, err := s.tables()
	if err != nil {
		return false, fmt.Errorf("check %s: %w", netnsPath, err)
	}
	var ours bool
	err = inNetNS(netnsPath, func() error {
		ours, err = s.chainsPresent(ipts[0])
		return err
	})
	if err != nil {
		return false, fmt.Errorf("check %s: %w", netnsPath, err)
	}
	return ours, nil
}
