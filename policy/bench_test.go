package policy_test

import (
	"fmt"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/bireme/bireme/identity"
	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/policy"
)

// benchWorld is 1000 pods and 1000 policies over 10 namespaces: each
// namespace has 100 pods in 20 apps and 100 policies, each selecting one app
// and allowing two peers (same-namespace app, other-namespace team) on a
// numeric, a ranged and a named port, plus egress rules.
func benchWorld() policy.Objects {
	const namespaces, podsPerNS, policiesPerNS, apps = 10, 100, 100, 20
	var objs policy.Objects
	for n := range namespaces {
		ns := &corev1.Namespace{}
		ns.Name = fmt.Sprintf("ns%d", n)
		ns.Labels = map[string]string{"team": fmt.Sprintf("t%d", n%3), "env": "prod"}
		objs.Namespaces = append(objs.Namespaces, ns)
		for i := range podsPerNS {
			p := &corev1.Pod{}
			p.Namespace, p.Name = ns.Name, fmt.Sprintf("pod%d", i)
			p.Labels = map[string]string{"app": fmt.Sprintf("app%d", i%apps), "tier": fmt.Sprintf("tier%d", i%3), "version": "v1"}
			p.Spec.Containers = []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "metrics", ContainerPort: 9090}}}}
			objs.Pods = append(objs.Pods, p)
		}
		for i := range policiesPerNS {
			tcp := corev1.ProtocolTCP
			port, named := intstr.FromInt32(int32(1000+i)), intstr.FromString("http")
			lo, hi := intstr.FromInt32(20000), int32(20000+i)
			np := &networkingv1.NetworkPolicy{}
			np.Namespace, np.Name = ns.Name, fmt.Sprintf("pol%d", i)
			np.Spec.PodSelector = metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app%d", i%apps)}}
			np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{
					{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app%d", (i+1)%apps)}}},
					{NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: metav1.LabelSelectorOpIn, Values: []string{fmt.Sprintf("t%d", i%3)}}}},
						PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"tier0"}}}}},
				},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}, {Port: &lo, EndPort: &hi}, {Port: &named}},
			}}
			np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{
				To:    []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}, {IPBlock: &networkingv1.IPBlock{CIDR: "198.18.0.0/15", Except: []string{"198.18.1.0/24"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &named}},
			}}
			objs.Policies = append(objs.Policies, np)
		}
	}
	return objs
}

// BenchmarkCompile compiles 1000 pods x 1000 policies and reports the heap
// the Engine holds (MB-heap, measured after a GC with the Engine live).
func BenchmarkCompile(b *testing.B) {
	objs := benchWorld()
	var ms0 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	b.ReportAllocs()
	var e *policy.Engine
	start := cpuTime()
	for b.Loop() {
		var err error
		if e, err = policy.Compile(objs); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportCPU(b, start, false)
	var ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms1)
	b.ReportMetric(float64(int64(ms1.HeapAlloc)-int64(ms0.HeapAlloc))/(1<<20), "MB-heap")
	runtime.KeepAlive(e)
}

// benchQuestions returns the Engine and n (local, peer, port) questions
// over the bench world: half ingress, half egress.
func benchQuestions(b *testing.B, n int) (*policy.Engine, []benchQuestion) {
	objs := benchWorld()
	e, err := policy.Compile(objs)
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]*identity.Identity, len(objs.Pods))
	for i, p := range objs.Pods {
		ids[i] = k8s.IdentityOf("c1", objs.Namespace(p.Namespace), p)
	}
	qs := make([]benchQuestion, n)
	for i := range qs {
		q := benchQuestion{local: ids[(i*7919)%len(ids)], dir: policy.Direction(i % 2), port: []uint16{8080, 1005, 20050, 9090}[i%4]}
		if i%10 == 9 {
			q.peer = policy.Peer{Addr: netip.AddrFrom4([4]byte{198, 18, byte(i % 3), byte(i)})}
		} else {
			q.peer = policy.Peer{Identity: ids[(i*104729+13)%len(ids)]}
		}
		qs[i] = q
	}
	return e, qs
}

type benchQuestion struct {
	local *identity.Identity
	peer  policy.Peer
	dir   policy.Direction
	port  uint16
}

// BenchmarkDecideCached: 4096 distinct questions asked again and again
// (the steady state of a node: same workloads, same peers).
func BenchmarkDecideCached(b *testing.B) {
	e, qs := benchQuestions(b, 4096)
	for _, q := range qs {
		e.Decide(q.local, q.peer, q.dir, q.port, "TCP")
	}
	b.ReportAllocs()
	i := 0
	start := cpuTime()
	for b.Loop() {
		q := &qs[i%len(qs)]
		e.Decide(q.local, q.peer, q.dir, q.port, "TCP")
		i++
	}
	reportCPU(b, start, true)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
}

// BenchmarkDecideCachedParallel: the same from all CPUs at once, as several
// enforcer queues do.
func BenchmarkDecideCachedParallel(b *testing.B) {
	e, qs := benchQuestions(b, 4096)
	for _, q := range qs {
		e.Decide(q.local, q.peer, q.dir, q.port, "TCP")
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			q := &qs[i%len(qs)]
			e.Decide(q.local, q.peer, q.dir, q.port, "TCP")
			i++
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
}

// BenchmarkDecideUncached: every question computed from scratch: finding
// the selecting policies among the namespace's 100 and walking their rules,
// with no cache at all (what the first packet of a new pair costs, plus
// the two identity digests).
func BenchmarkDecideUncached(b *testing.B) {
	e, qs := benchQuestions(b, 4096)
	b.ReportAllocs()
	i := 0
	start := cpuTime()
	for b.Loop() {
		q := &qs[i%len(qs)]
		e.DecideUncached(q.local, q.peer, q.dir, q.port)
		i++
	}
	reportCPU(b, start, true)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
}

// BenchmarkCacheMemory fills an Engine's decision cache to its bound with
// distinct questions and reports the heap that costs (MB-heap); the
// per-op time is that of a cache miss that inserts.
func BenchmarkCacheMemory(b *testing.B) {
	e, qs := benchQuestions(b, 1024)
	var ms0 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		q := &qs[i%len(qs)]
		// Vary the port so that every question is new.
		e.Decide(q.local, q.peer, q.dir, uint16(i/len(qs)), "TCP")
		i++
	}
	b.StopTimer()
	for ; i < 2*policy.DecisionCacheSize; i++ {
		q := &qs[i%len(qs)]
		e.Decide(q.local, q.peer, q.dir, uint16(i/len(qs)), "TCP")
	}
	var ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms1)
	b.ReportMetric(float64(int64(ms1.HeapAlloc)-int64(ms0.HeapAlloc))/(1<<20), "MB-heap")
	runtime.KeepAlive(e)
}

// cpuTime is the process's user+system CPU time so far. The machines these
// benchmarks run on are shared, so besides wall-clock ns/op the benchmarks
// report CPU time per op, which another process's load does not inflate.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU adds cpu-ns/op and, when perSecond is set, decisions per CPU
// second, measured from start.
func reportCPU(b *testing.B, start time.Duration, perSecond bool) {
	cpu := cpuTime() - start
	if cpu <= 0 || b.N == 0 {
		return
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	if perSecond {
		b.ReportMetric(float64(b.N)/cpu.Seconds(), "decisions/cpu-s")
	}
}
