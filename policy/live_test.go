package policy_test

import (
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/bireme/bireme/policy"
)

// TestLiveSwap: a swap applies to the next decision; label changes of the
// local pod, the peer pod and the peer's namespace apply at once because
// they change the identities decided on.
func TestLiveSwap(t *testing.T) {
	allowClients := np("x", "web", "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchLabels: {app: client}}}]}]")
	e1 := compileWith(t)
	live := policy.NewLive(e1)
	objs := e1.Objects()
	server, client := ident(t, objs, "x/a"), ident(t, objs, "y/b")
	decide := func() policy.Decision {
		return live.Decide(server, policy.Peer{Identity: client}, policy.Ingress, 80, "TCP")
	}

	if d := decide(); !d.Allowed {
		t.Fatalf("before policy: %s", d.Reason)
	}
	e2 := compileWith(t, allowClients)
	live.Swap(e2)
	if live.Engine() != e2 {
		t.Fatal("Engine() is not the swapped engine")
	}
	if d := decide(); !d.Allowed || d.Policy != "x/web" {
		t.Fatalf("allowed client: %s", d.Reason)
	}

	// The client's pod label changes: a new identity, denied.
	client = client.Clone()
	client.Labels["app"] = "batch"
	if d := decide(); d.Allowed {
		t.Fatalf("relabelled client still allowed: %s", d.Reason)
	}
	client.Labels["app"] = "client"
	// The client's namespace label changes (through its Namespace object and
	// k8s.IdentityOf, as the file store does): denied.
	objs2 := parseObjects(t, strings.Replace(fixtureYAML, "{team: b}", "{team: c}", 1), allowClients)
	e3, err := policy.Compile(objs2)
	if err != nil {
		t.Fatal(err)
	}
	live.Swap(e3)
	client = ident(t, objs2, "y/b")
	if d := decide(); d.Allowed {
		t.Fatalf("client in relabelled namespace still allowed: %s", d.Reason)
	}
	// The server's label changes so the policy no longer selects it: open.
	client = ident(t, objs, "y/b")
	server = server.Clone()
	server.Labels["app"] = "api"
	if d := decide(); !d.Allowed || d.Policy != "" {
		t.Fatalf("unselected server: %s", d.Reason)
	}
	// The policy is removed again.
	live.Swap(e1)
	server.Labels["app"] = "web"
	if d := decide(); !d.Allowed || d.Policy != "" {
		t.Fatalf("after removal: %s", d.Reason)
	}
	// No engine: fail closed.
	var empty policy.Live
	if d := empty.Decide(server, policy.Peer{Identity: client}, policy.Ingress, 80, "TCP"); d.Allowed {
		t.Fatal("zero Live allowed")
	}
	if d := policy.NewLive(nil).Decide(server, policy.Peer{Identity: client}, policy.Ingress, 80, "TCP"); d.Allowed {
		t.Fatal("Live(nil) allowed")
	}
}

// TestLiveConcurrent: decisions from several goroutines while engines are
// swapped always come whole from one engine or the other (run with -race).
func TestLiveConcurrent(t *testing.T) {
	open := compileWith(t)
	closed := compileWith(t, np("x", "deny", "  podSelector: {}\n  ingress: []"))
	live := policy.NewLive(open)
	objs := open.Objects()
	server, client := ident(t, objs, "x/a"), ident(t, objs, "x/c")
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 3000 {
				d := live.Decide(server, policy.Peer{Identity: client}, policy.Ingress, uint16(80+(i+g)%4), "TCP")
				okOpen := d.Allowed && d.Reason == "allowed: no policy selects x/a for ingress"
				okClosed := !d.Allowed && d.Reason == "denied: selected by x/deny and no rule allows"
				if !okOpen && !okClosed {
					errs <- d.Reason
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for i := 0; ; i++ {
		select {
		case <-done:
			close(errs)
			for e := range errs {
				t.Errorf("torn decision: %s", e)
			}
			return
		default:
		}
		if i%2 == 0 {
			live.Swap(closed)
		} else {
			live.Swap(open)
		}
		runtime.Gosched()
	}
}
