// Package workload is the traffic of the benchmark: a server that answers a
// 1-byte request with a 1-byte response or swallows a bulk stream, and a
// client that opens connections against it as fast as it can or measures one
// bulk transfer. Both speak plain TCP or TLS 1.3 with mutual authentication.
//
// The wire protocol is one request byte: ReqEcho is answered with RespEcho and
// the connection ends; ReqBulk is followed by an 8-byte big-endian length and
// that many bytes, then answered with RespBulk once all of them arrived.
package workload

// Request and response bytes.
const (
	ReqEcho  byte = 'e'
	RespEcho byte = 'E'
	ReqBulk  byte = 'b'
	RespBulk byte = 'B'
)
