package policy

import (
	"encoding/binary"
	"sync"
)

// cacheShards spreads lock contention between enforcer queues.
const cacheShards = 32

// boundedCache is a sharded map that never holds more than about its
// capacity: a full shard is emptied before an insert. Crude, but bounded,
// allocation-free on hits, and correct — entries never go stale because an
// Engine (and with it its caches) is immutable; policy changes replace it.
type boundedCache[K shardedKey, V any] struct {
	perShard int
	shards   [cacheShards]cacheShard[K, V]
}

// shardedKey is a cache key that picks its own shard cheaply. The keys
// are SHA-256 based, so a few of their bytes are already uniform.
type shardedKey interface {
	comparable
	shard() uint32
}

type cacheShard[K shardedKey, V any] struct {
	mu sync.RWMutex
	m  map[K]V
}

func newBoundedCache[K shardedKey, V any](capacity int) *boundedCache[K, V] {
	c := &boundedCache[K, V]{perShard: max(1, capacity/cacheShards)}
	for i := range c.shards {
		c.shards[i].m = make(map[K]V)
	}
	return c
}

func (c *boundedCache[K, V]) shard(k K) *cacheShard[K, V] {
	return &c.shards[k.shard()%cacheShards]
}

func (c *boundedCache[K, V]) get(k K) (V, bool) {
	s := c.shard(k)
	s.mu.RLock()
	v, ok := s.m[k]
	s.mu.RUnlock()
	return v, ok
}

func (c *boundedCache[K, V]) put(k K, v V) {
	s := c.shard(k)
	s.mu.Lock()
	if len(s.m) >= c.perShard {
		clear(s.m)
	}
	s.m[k] = v
	s.mu.Unlock()
}

// shard uses the first bytes of the SHA-256 key.
func (k identityKey) shard() uint32 { return binary.LittleEndian.Uint32(k[:4]) }

// shard mixes the local and peer keys and the port, so one busy local
// workload's decisions spread over all shards.
func (k decisionKey) shard() uint32 {
	return binary.LittleEndian.Uint32(k.local[:4]) ^ binary.LittleEndian.Uint32(k.peer[:4]) ^ uint32(k.port)*0x9e3779b1
}
