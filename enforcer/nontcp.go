package enforcer

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/bireme/bireme/flowlog"
	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/policy"
)

// stageNew names, in flow records, the first packet of a non-TCP flow.
const stageNew = "new"

// IP protocol numbers the non-TCP path tells apart.
const (
	ipProtoICMP   = 1
	ipProtoUDP    = 17
	ipProtoICMPv6 = 58
	ipProtoSCTP   = 132
)

// flowPacket is the first packet of a UDP, SCTP, ICMP or other non-TCP
// flow, as the supervisor's non-TCP chains queue it.
type flowPacket struct {
	ipHeader
	policyProto  string // the protocol policy decides: "UDP", "SCTP", policy.ProtocolICMP or ProtocolOtherIP
	name         string // the protocol as flow records show it: "UDP", "ICMPv6", "IP protocol 47"
	sport, dport uint16 // UDP and SCTP only
	ports        bool
}

// parseFlowPacket reads the addresses, protocol and (for UDP and SCTP,
// whose headers both start with the two ports) the ports of b.
func parseFlowPacket(b []byte) (flowPacket, error) {
	ip, err := parseIP(b)
	if err != nil {
		return flowPacket{}, err
	}
	f := flowPacket{ipHeader: ip}
	switch ip.proto {
	case ipProtoUDP, ipProtoSCTP:
		if ip.l4Off+4 > len(ip.b) {
			return flowPacket{}, errMalformed
		}
		f.policyProto, f.name, f.ports = "UDP", "UDP", true
		if ip.proto == ipProtoSCTP {
			f.policyProto, f.name = "SCTP", "SCTP"
		}
		f.sport = binary.BigEndian.Uint16(ip.b[ip.l4Off:])
		f.dport = binary.BigEndian.Uint16(ip.b[ip.l4Off+2:])
	case ipProtoICMP:
		f.policyProto, f.name = policy.ProtocolICMP, "ICMP"
	case ipProtoICMPv6:
		f.policyProto, f.name = policy.ProtocolICMP, "ICMPv6"
	case 6:
		return flowPacket{}, errMalformed // TCP never comes this way
	default:
		f.policyProto, f.name = policy.ProtocolOtherIP, fmt.Sprintf("IP protocol %d", ip.proto)
	}
	return f, nil
}

// newFlow decides the first packet of a non-TCP flow. Nothing outside TCP
// carries an identity yet, so the peer is its address: the pod the API
// says holds it when the enforcer has an address map (Config.Addresses;
// records say byAddress), otherwise policy can allow it only by an ipBlock
// rule or a rule with no peers (and, for ICMP and other portless
// protocols, no ports). Allowed: the packet leaves with
// the Authorized mark, which BIREME-SAVE copies to the flow, so the rest of
// the flow never comes back here. Denied: dropped, and the flow never
// exists. The enforcer keeps no state per flow.
func (q *queue) newFlow(b []byte, outgoing bool) verdict {
	f, err := parseFlowPacket(b)
	if err != nil {
		q.e.log.Debug("unparsable packet dropped", "netns", q.wl.netns, "err", err)
		return drop
	}
	local := q.wl.id.Load()
	dir, peer := policy.Ingress, f.src
	if outgoing {
		dir, peer = policy.Egress, f.dst
	}
	// The peer proves nothing outside TCP: the pod the API says holds its
	// address stands for it, so pod and namespace selectors apply (the
	// usual "DNS to kube-dns" egress rule), as in address-based
	// NetworkPolicy implementations.
	pr := policy.Peer{Addr: peer, Identity: q.e.peerByAddress(peer)}
	d := q.e.cfg.Policy.Decide(local, pr, dir, f.dport, f.policyProto)
	q.recordFlow(&f, outgoing, dir, local, pr.Identity, d)
	if !d.Allowed {
		return drop
	}
	return verdict{accept: true, mark: q.e.cfg.Layout.Authorized}
}

// recordFlow reports the decision on a non-TCP flow, saying that it was
// taken on the peer's address only.
func (q *queue) recordFlow(f *flowPacket, outgoing bool, dir policy.Direction, local, peer *identity.Identity, d policy.Decision) {
	if !q.e.wantsRecords() {
		return
	}
	src, dst := f.endpoint(f.src, f.sport), f.endpoint(f.dst, f.dport)
	localEnd, peerEnd := dst, src
	if outgoing {
		localEnd, peerEnd = src, dst
	}
	r := &flowlog.Record{
		Time:             time.Now().UTC(),
		Node:             q.e.cfg.Node,
		Direction:        dir.String(),
		Stage:            stageNew,
		Protocol:         f.name,
		LocalAddr:        localEnd,
		PeerAddr:         peerEnd,
		Local:            local,
		Peer:             peer,
		ByAddress:        peer != nil,
		Verdict:          flowlog.Deny,
		Policy:           d.Policy,
		SelectedBy:       d.SelectedBy,
		Reason:           f.reason(d, peer != nil),
		Tier:             recordTier(d.Tier),
		MatchedByAddress: d.MatchedByAddress,
		WouldDeny:        wouldDenyRecord(d.WouldDeny),
	}
	if d.Allowed {
		r.Verdict = flowlog.Allow
	}
	q.e.report(r)
}

// endpoint is "ip:port" for UDP and SCTP, "ip" for the portless ones.
func (f *flowPacket) endpoint(a netip.Addr, port uint16) string {
	if !f.ports {
		return a.String()
	}
	return netip.AddrPortFrom(a, port).String()
}

// reason turns policy's sentence into one that says the decision was
// made without identity, and why a denial could not have gone otherwise
// than by address.
func (f *flowPacket) reason(d policy.Decision, byAddress bool) string {
	switch {
	case d.Allowed && d.Policy != "" && byAddress:
		// "UDP: allowed by ns/pol egress rule 0: ... (peer is the pod
		// holding its address: no identity for UDP)"
		return fmt.Sprintf("%s: %s (by address: the peer is the pod the API says holds it; no identity for %s)", f.name, d.Reason, f.name)
	case d.Allowed && d.Policy != "":
		// "UDP: allowed by ns/pol ingress rule 0: peer matched by address
		// in 198.18.0.0/15 (no identity for UDP)": the decision names the
		// ipBlock that matched, or that the rule allows any peer.
		return fmt.Sprintf("%s: %s (no identity for %s)", f.name, d.Reason, f.name)
	case d.Allowed, d.Policy != "":
		// "UDP: allowed: no policy selects ns/pod for ingress"; or a
		// ClusterNetworkPolicy rule that denied: it says which.
		return f.name + ": " + d.Reason
	case byAddress:
		return fmt.Sprintf("denied: %s decided by address, on the pod the API says holds it (%s)",
			f.name, strings.TrimPrefix(d.Reason, "denied: "))
	case f.ports:
		return fmt.Sprintf("denied: %s has no identity; only ipBlock or peer-less rules admit it (%s)",
			f.name, strings.TrimPrefix(d.Reason, "denied: "))
	default:
		return fmt.Sprintf("denied: %s has no identity and no ports; only rules without ports whose peers are ipBlocks or absent admit it (%s)",
			f.name, strings.TrimPrefix(d.Reason, "denied: "))
	}
}
