package agent

import (
	"reflect"
	"strings"
	"testing"

	"github.com/bireme/bireme/agent/desired"
	"github.com/bireme/bireme/identity"
)

func wl(path, ref string, labels map[string]string) desired.Workload {
	ns, pod, _ := strings.Cut(ref, "/")
	return desired.Workload{Ref: ref, NetNS: path, Identity: &identity.Identity{Cluster: "c1", Namespace: ns, Pod: pod, Labels: labels}}
}

func refsOf(ws []desired.Workload) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.Ref+"@"+w.NetNS)
	}
	return out
}

func TestDiff(t *testing.T) {
	web := map[string]string{"app": "web"}
	db := map[string]string{"app": "db"}
	tests := []struct {
		name                      string
		installed                 []desired.Workload
		desired                   []desired.Workload
		wantAdd, wantUpd, wantRem []string
	}{
		{name: "empty"},
		{
			name:    "all new",
			desired: []desired.Workload{wl("/n/b", "x/b", nil), wl("/n/a", "x/a", nil)},
			wantAdd: []string{"x/a@/n/a", "x/b@/n/b"},
		},
		{
			name:      "unchanged",
			installed: []desired.Workload{wl("/n/a", "x/a", web)},
			desired:   []desired.Workload{wl("/n/a", "x/a", map[string]string{"app": "web"})},
		},
		{
			name:      "labels changed",
			installed: []desired.Workload{wl("/n/a", "x/a", web)},
			desired:   []desired.Workload{wl("/n/a", "x/a", db)},
			wantUpd:   []string{"x/a@/n/a"},
		},
		{
			name:      "another pod now in the namespace",
			installed: []desired.Workload{wl("/n/a", "x/a", web)},
			desired:   []desired.Workload{wl("/n/a", "x/b", web)},
			wantUpd:   []string{"x/b@/n/a"},
		},
		{
			name:      "pod left",
			installed: []desired.Workload{wl("/n/a", "x/a", web), wl("/n/b", "x/b", web)},
			desired:   []desired.Workload{wl("/n/b", "x/b", web)},
			wantRem:   []string{"x/a@/n/a"},
		},
		{
			name:      "pod moved to another namespace",
			installed: []desired.Workload{wl("/n/a", "x/a", web)},
			desired:   []desired.Workload{wl("/n/a2", "x/a", web)},
			wantAdd:   []string{"x/a@/n/a2"},
			wantRem:   []string{"x/a@/n/a"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			installed := map[string]desired.Workload{}
			for _, w := range tt.installed {
				installed[w.NetNS] = w
			}
			p := Diff(installed, tt.desired)
			if !reflect.DeepEqual(refsOf(p.Add), tt.wantAdd) || !reflect.DeepEqual(refsOf(p.Update), tt.wantUpd) || !reflect.DeepEqual(refsOf(p.Remove), tt.wantRem) {
				t.Errorf("Diff = add %v update %v remove %v; want add %v update %v remove %v",
					refsOf(p.Add), refsOf(p.Update), refsOf(p.Remove), tt.wantAdd, tt.wantUpd, tt.wantRem)
			}
			if p.Empty() != (len(tt.wantAdd)+len(tt.wantUpd)+len(tt.wantRem) == 0) {
				t.Errorf("Empty() = %v", p.Empty())
			}
		})
	}
}
