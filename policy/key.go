package policy

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"sync"

	"github.com/bireme/bireme/identity"
)

// keyOf is the cache key of an identity: SHA-256 over an injective
// (length-prefixed, sorted) encoding of every field, like
// [identity.Identity.Digest], but built in a pooled buffer without
// allocating. Hashing both identities is most of the cost of a cached
// decision, so this matters; collision resistance matters too (a collision
// would hand one workload another's verdict), hence SHA-256 and not a
// faster non-cryptographic hash.
func keyOf(id *identity.Identity) identityKey {
	bp := keyBuffers.Get().(*[]byte)
	b := (*bp)[:0]
	b = appendString(b, id.Cluster)
	b = appendString(b, id.Namespace)
	b = appendString(b, id.Pod)
	b = appendString(b, id.ServiceAccount)
	b = appendMap(b, id.Labels)
	b = appendMap(b, id.NamespaceLabels)
	var portsArr [8]identity.Port
	ports := append(portsArr[:0], id.Ports...)
	slices.SortFunc(ports, func(x, y identity.Port) int {
		return cmp.Or(cmp.Compare(x.Name, y.Name), cmp.Compare(x.Protocol, y.Protocol), cmp.Compare(x.Port, y.Port))
	})
	b = binary.BigEndian.AppendUint32(b, uint32(len(ports)))
	for _, p := range ports {
		b = appendString(b, p.Name)
		b = appendString(b, p.Protocol)
		b = binary.BigEndian.AppendUint16(b, p.Port)
	}
	k := identityKey(sha256.Sum256(b))
	*bp = b
	keyBuffers.Put(bp)
	return k
}

// keyBuffers recycles encoding buffers between decisions.
var keyBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func appendMap(b []byte, m map[string]string) []byte {
	var keysArr [16]string
	keys := keysArr[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = binary.BigEndian.AppendUint32(b, uint32(len(keys)))
	for _, k := range keys {
		b = appendString(b, k)
		b = appendString(b, m[k])
	}
	return b
}
