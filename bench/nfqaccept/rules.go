package nfqaccept

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/bireme/bireme/netns"
)

// Chains the benchmark owns inside a workload namespace.
const (
	chainIn  = "BENCHQ-INPUT"
	chainOut = "BENCHQ-OUTPUT"
)

// ruleSpecs returns the rules of one chain: the shape Bireme's supervisor
// installs (authorized connections bypass on their conntrack mark, handshake
// packets go to the queue, every other TCP packet of an unauthorized
// connection is dropped), minus anything token-specific.
func ruleSpecs(iface string, queue uint16, mark uint32) [][]string {
	q := []string{"-j", "NFQUEUE", "--queue-num", strconv.Itoa(int(queue))}
	m := fmt.Sprintf("0x%x/0x%x", mark, mark)
	return [][]string{
		{iface, "lo", "-j", "RETURN"},
		{"-p", "tcp", "-m", "connmark", "--mark", m, "-j", "RETURN"},
		append([]string{"-p", "tcp", "--tcp-flags", "SYN,ACK,FIN,RST", "SYN"}, q...),
		append([]string{"-p", "tcp", "--tcp-flags", "SYN,ACK,FIN,RST", "SYN,ACK"}, q...),
		append([]string{"-p", "tcp", "--tcp-flags", "SYN,ACK,FIN,RST", "ACK", "-m", "conntrack", "--ctstate", "ESTABLISHED"}, q...),
		{"-p", "tcp", "-j", "DROP"},
	}
}

// Install adds the queueing rules to ns's INPUT and OUTPUT (filter table)
// through chains of its own. On error it removes what it added.
func Install(ctx context.Context, ns *netns.NS, queue uint16, mark uint32) error {
	for _, c := range []struct{ chain, hook, iface string }{{chainIn, "INPUT", "-i"}, {chainOut, "OUTPUT", "-o"}} {
		if err := ns.Exec(ctx, "iptables", "-w", "-N", c.chain); err != nil {
			return errors.Join(fmt.Errorf("install nfqueue rules: %w", err), Remove(context.WithoutCancel(ctx), ns))
		}
		for _, r := range ruleSpecs(c.iface, queue, mark) {
			if err := ns.Exec(ctx, "iptables", append([]string{"-w", "-A", c.chain}, r...)...); err != nil {
				return errors.Join(fmt.Errorf("install nfqueue rules: %w", err), Remove(context.WithoutCancel(ctx), ns))
			}
		}
		if err := ns.Exec(ctx, "iptables", "-w", "-I", c.hook, "-p", "tcp", "-j", c.chain); err != nil {
			return errors.Join(fmt.Errorf("install nfqueue rules: %w", err), Remove(context.WithoutCancel(ctx), ns))
		}
	}
	return nil
}

// Remove deletes the jumps and chains Install added; missing ones are not
// an error, so it also cleans up after a partial install.
func Remove(ctx context.Context, ns *netns.NS) error {
	var errs []error
	for _, c := range []struct{ chain, hook string }{{chainIn, "INPUT"}, {chainOut, "OUTPUT"}} {
		// Delete every jump (there is one unless something went wrong).
		for i := 0; i < 10; i++ {
			if ns.Exec(ctx, "iptables", "-w", "-D", c.hook, "-p", "tcp", "-j", c.chain) != nil {
				break
			}
		}
		if ns.Exec(ctx, "iptables", "-w", "-n", "-L", c.chain) != nil {
			continue // chain absent
		}
		if err := ns.Exec(ctx, "iptables", "-w", "-F", c.chain); err != nil {
			errs = append(errs, err)
		}
		if err := ns.Exec(ctx, "iptables", "-w", "-X", c.chain); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove nfqueue rules from %s: %w", ns.Name, errors.Join(errs...))
	}
	return nil
}
