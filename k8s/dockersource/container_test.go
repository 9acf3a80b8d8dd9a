package dockersource

import (
	"net/netip"
	"strings"
	"testing"
)

func TestRulesPod(t *testing.T) {
	on := map[string]string{LabelProtect: "true"}
	with := func(extra map[string]string) map[string]string {
		out := map[string]string{LabelProtect: "true"}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		rules   Rules
		c       Container
		protect bool
		status  string // prefix
	}{
		{"labelled", Rules{Host: "h"}, Container{Name: "web", Labels: on, Pid: 7}, true, "protected"},
		{"not labelled", Rules{Host: "h"}, Container{Name: "web", Pid: 7}, false, "not selected"},
		{"all", Rules{Host: "h", All: true}, Container{Name: "web", Pid: 7}, true, "protected"},
		{"all but opted out", Rules{Host: "h", All: true}, Container{Name: "web", Labels: map[string]string{LabelProtect: "false"}, Pid: 7}, false, "not selected"},
		{"host network", Rules{Host: "h"}, Container{Name: "web", Labels: on, NetworkMode: "host", Pid: 7}, false, "refused: --network host"},
		{"container network", Rules{Host: "h"}, Container{Name: "web", Labels: on, NetworkMode: "container:abc", Pid: 7}, false, "refused: --network container:abc"},
		{"bad name", Rules{Host: "h"}, Container{Name: "Web_1", Labels: on, Pid: 7}, false, "refused: container name"},
		{"bad namespace", Rules{Host: "h"}, Container{Name: "web", Labels: with(map[string]string{LabelNamespace: "Prod"}), Pid: 7}, false, "refused: label bireme.io/namespace"},
		{"bad ports", Rules{Host: "h"}, Container{Name: "web", Labels: with(map[string]string{LabelPorts: "http=x"}), Pid: 7}, false, "refused: label bireme.io/ports"},
		{"not running", Rules{Host: "h"}, Container{Name: "web", Labels: on}, false, "not running"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.rules.Pod(tc.c)
			if d.Protect != tc.protect || !strings.HasPrefix(d.Status, tc.status) {
				t.Errorf("Pod = protect %v, %q; want %v, %q...", d.Protect, d.Status, tc.protect, tc.status)
			}
		})
	}
}

func TestRulesPodIdentity(t *testing.T) {
	c := Container{
		Name: "api", Pid: 42, Addresses: []netip.Addr{netip.MustParseAddr("198.19.200.5")},
		Labels: map[string]string{
			LabelProtect: "true", LabelNamespace: "shop", LabelServiceAccount: "api", LabelPorts: "http=8080, dns=53/udp",
			"app": "api", "bireme.io/other": "x", "maintainer": "Jane <jane@example.com>",
		},
	}
	d := Rules{Host: "dock1"}.Pod(c)
	if !d.Protect {
		t.Fatalf("not protected: %s", d.Status)
	}
	p := d.Pod
	if p.Name != "api" || p.Namespace != "shop" || p.Spec.NodeName != "dock1" || p.Spec.ServiceAccountName != "api" || p.Status.PodIP != "198.19.200.5" {
		t.Errorf("pod %+v", p)
	}
	if len(p.Labels) != 1 || p.Labels["app"] != "api" {
		t.Errorf("labels %v: want only app=api (reserved and invalid ones left out)", p.Labels)
	}
	if len(d.Ignored) != 1 || d.Ignored[0] != "maintainer" {
		t.Errorf("ignored %v, want [maintainer]", d.Ignored)
	}
	ports := p.Spec.Containers[0].Ports
	if len(ports) != 2 || ports[0].Name != "http" || ports[0].ContainerPort != 8080 || ports[0].Protocol != "TCP" || ports[1].Protocol != "UDP" {
		t.Errorf("ports %+v", ports)
	}
	if c.NetNS() != "/proc/42/ns/net" || (Container{}).NetNS() != "" {
		t.Errorf("NetNS %q", c.NetNS())
	}
	if d := (Rules{Host: "h"}).Pod(Container{Name: "x1", Labels: map[string]string{LabelProtect: "true"}, Pid: 1}); d.Pod.Namespace != "default" || d.Pod.Spec.ServiceAccountName != "default" {
		t.Errorf("defaults: %+v", d.Pod)
	}
}
