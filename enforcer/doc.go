// Package enforcer is Bireme's datapath: it reads the handshake packets
// the supervisor's rules queue (NFQUEUE) in each protected workload's
// network namespace, carries signed identities in them, asks policy, and
// hands authorized connections back to the kernel for good.
//
// One Enforcer serves every workload on a node:
//
//	layout := marks.Layout{} // queues and mark bits: the supervisor and the enforcer take the same
//	sup := supervisor.New(layout)
//	e, _ := enforcer.New(enforcer.Config{Node: "n1", Tokens: eng, Policy: live, Placement: placement, Flows: w, Layout: layout})
//	e.Attach(ctx, enforcer.Workload{Identity: id, NetNS: "/run/netns/pod1"}) // open its queue(s)
//	sup.Protect(ctx, "/run/netns/pod1")                                        // then the rules that feed them
//	...
//	e.Detach("/run/netns/pod1"); sup.Unprotect(ctx, "/run/netns/pod1")
//
// # The path of a SYN, file by file
//
//   - nfqueue.go: Attach opened an NFQUEUE netlink socket inside the
//     workload's namespace (one per queue number), spoken to directly with
//     reused buffers: no allocation per packet.
//   - queue.go: one goroutine per queue calls queue.handle for each
//     packet; handle recovers from any panic (the packet is dropped), and
//     sends the verdict — accept or drop, with the rewritten packet and our
//     mark bits when there are any.
//   - packet.go: process parses the raw IPv4/IPv6 packet into offsets
//     (parsePacket, no allocation) and finds Bireme's TCP options.
//   - egress.go: a packet leaving the workload. Its SYN gets a fresh
//     client handshake (tokens.Engine.NewSYN, pre-signed token from the
//     engine's cache) inserted as payload behind an option marker; its
//     SYN-ACK gets the server's answer; its ACK gets the client proof in an
//     option.
//   - ingress.go: a packet arriving. A SYN's token is verified
//     (VerifySYN) and stripped with any data behind it, and the server
//     workload's ingress policy is asked about the client identity (the
//     nonce is recorded only if it allows); a SYN-ACK is verified against the
//     client handshake (ConsumeSYNACK) and the client's egress policy
//     decides; the ACK's proof is verified (ConsumeACK), the ACK passes
//     still Pending and, once its verdict is given, the connection is marked
//     Authorized in conntrack (queue.go, conntrack.go). Deny means
//     drop, never a reset.
//   - handshake.go: per-workload table of handshakes in progress, keyed by
//     the tuple as the namespace sees it, bounded, expired after
//     Config.HandshakeTimeout.
//   - flows.go: one flowlog.Record per decision and per token rejection,
//     handed to Config.OnDecision on the packet path and to the flow log
//     (flowqueue.go) off it.
//   - conntrack.go: the server's conntrack update after the proof ACK.
//   - checksum.go: the checksums a rewrite needs.
//   - limits.go: what a flood may cost: incoming checksums checked before
//     anything is used, a CPU budget (token buckets per node and per
//     source) for SYNs whose token is new, and rate-limited records of
//     such bulk drops, counted in Enforcer.BulkDrops. The node-wide cap
//     on handshakes is in handshake.go.
//
// After the handshake the connection carries the Authorized conntrack mark
// and the supervisor's rules let its packets pass without visiting user
// space; they keep passing if the enforcer stops or restarts. New
// handshakes of a namespace whose queue nobody reads are dropped: the
// rules have no --queue-bypass, so protection fails closed.
//
// docs/protocol.md ("Carrying tokens in TCP") has the wire format and the
// state machine with its mark bits; the supervisor package doc has the
// rules; docs/performance.md has what was measured and tried to make the
// datapath fast.
package enforcer
