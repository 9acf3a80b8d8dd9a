// Package enforcer is Bireme's datapath: it reads the handshake packets
// the supervisor's rules queue (NFQUEUE) in each protected workload's
// network namespace, carries signed identities in them, asks policy, and
// hands authorized connections back to the kernel.
package enforcer
