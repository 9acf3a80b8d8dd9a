package supervisor

// Chains for everything that is not TCP (UDP, SCTP, ICMP, ICMPv6, other IP
// protocols). Non-TCP carries no identity, so the enforcer decides each new
// flow on the local identity and the peer's address only (only ipBlock or
// peer-less rules can allow it) and marks it Authorized; the flow's other
// packets then pass in the kernel, like an authorized TCP connection's.
//
// mangle table, reached by "! -p tcp" jumps placed beside the TCP ones:
//
//	BIREME-NONTCP-IN / BIREME-NONTCP-OUT
//	-i lo / -o lo                      RETURN
//	Authorized                         RETURN   the flow was allowed; also ICMP errors
//	                                            RELATED to an allowed connection, TCP
//	                                            or not (conntrack gives them its mark)
//	ctstate UNTRACKED                  RETURN   ICMPv6 neighbour discovery and MLD,
//	                                            which conntrack never tracks
//	ctdir ORIGINAL, ctstate NEW,ESTABLISHED  NFQUEUE   the packet that opens a flow
//	DROP                                        replies to flows not authorized,
//	                                            INVALID (ICMP errors about nothing)
//
// Each flow visits the queue once: the enforcer's accept carries the
// Authorized packet mark, BIREME-SAVE (filter, reached by its own
// "! -p tcp" jumps) copies it to the conntrack entry before the entry is
// confirmed, so the next packet already finds it. A denied packet is
// dropped before confirmation, so the flow never exists and its next
// packet is decided again. ESTABLISHED in the queue rule covers flows
// older than the rules (they have no mark): their next packet in the
// opening direction is decided like a first one, rather than the flow
// being cut for good.
//
// Letting UNTRACKED pass trusts the namespace's raw table: only root in
// the workload's namespace could add a NOTRACK rule there, and root there
// could as well remove ours.
const (
	chainNonTCPIn  = "BIREME-NONTCP-IN"
	chainNonTCPOut = "BIREME-NONTCP-OUT"
)

// nonTCPJumps send non-TCP packets to the chains above, and to BIREME-SAVE
// so that the enforcer's mark reaches the flow.
var nonTCPJumps = []jump{
	{table: "mangle", from: "INPUT", to: chainNonTCPIn, protocol: notTCP},
	{table: "mangle", from: "OUTPUT", to: chainNonTCPOut, protocol: notTCP},
	{table: "filter", from: "INPUT", to: chainSave, protocol: notTCP},
	{table: "filter", from: "OUTPUT", to: chainSave, protocol: notTCP},
}

var notTCP = []string{"!", "-p", "tcp"}

// nonTCPChains returns the two mangle chains described above.
func (s *Supervisor) nonTCPChains() []chainSpec {
	c := s.layout
	auth := hex32(c.Authorized) + "/" + hex32(c.Mask())
	queue := s.queueTarget()
	chain := func(name, loopback string) chainSpec {
		return chainSpec{"mangle", name, [][]string{
			{loopback, "lo", "-j", "RETURN"},
			{"-m", "connmark", "--mark", auth, "-j", "RETURN"},
			{"-m", "conntrack", "--ctstate", "UNTRACKED", "-j", "RETURN"},
			append([]string{"-m", "conntrack", "--ctstate", "NEW,ESTABLISHED", "--ctdir", "ORIGINAL"}, queue...),
			{"-j", "DROP"},
		}}
	}
	return []chainSpec{chain(chainNonTCPIn, "-i"), chain(chainNonTCPOut, "-o")}
}
