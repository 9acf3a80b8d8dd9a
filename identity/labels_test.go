package identity

import (
	"maps"
	"strings"
	"testing"
)

func TestPseudoLabelsComeFromSignedFields(t *testing.T) {
	id := &Identity{
		Cluster: "c", Namespace: "shop", Pod: "forger", ServiceAccount: "batch",
		// What a pod could write into its own metadata.labels.
		Labels:          map[string]string{"app": "client", LabelServiceAccount: "web", LabelNamespace: "pay", "bireme.io/node": "n9"},
		NamespaceLabels: map[string]string{"team": "shop", LabelNamespace: "pay", LabelKubernetesNamespaceName: "pay", LabelCluster: "forged"},
	}
	for _, c := range []struct {
		key, want string
		ok        bool
	}{
		{LabelServiceAccount, "batch", true},
		{LabelNamespace, "shop", true},
		{"bireme.io/node", "", false},
		{"app", "client", true},
		{"missing", "", false},
	} {
		if v, ok := id.PodLabel(c.key); v != c.want || ok != c.ok {
			t.Errorf("PodLabel(%q) = %q, %v; want %q, %v", c.key, v, ok, c.want, c.ok)
		}
	}
	for _, c := range []struct {
		key, want string
		ok        bool
	}{
		{LabelNamespace, "shop", true},
		{LabelKubernetesNamespaceName, "shop", true},
		{LabelServiceAccount, "", false},
		{LabelCluster, "c", true},
		{"team", "shop", true},
	} {
		if v, ok := id.NamespaceLabel(c.key); v != c.want || ok != c.ok {
			t.Errorf("NamespaceLabel(%q) = %q, %v; want %q, %v", c.key, v, ok, c.want, c.ok)
		}
	}
	wantPod := map[string]string{"app": "client", LabelServiceAccount: "batch", LabelNamespace: "shop"}
	if got := id.SelectableLabels(); !maps.Equal(got, wantPod) {
		t.Errorf("SelectableLabels = %v, want %v", got, wantPod)
	}
	wantNS := map[string]string{"team": "shop", LabelNamespace: "shop", LabelKubernetesNamespaceName: "shop", LabelCluster: "c"}
	if got := id.SelectableNamespaceLabels(); !maps.Equal(got, wantNS) {
		t.Errorf("SelectableNamespaceLabels = %v, want %v", got, wantNS)
	}
	if id.Labels[LabelServiceAccount] != "web" {
		t.Error("SelectableLabels wrote into the identity's own map")
	}
}

func TestWithoutReserved(t *testing.T) {
	plain := map[string]string{"app": "a"}
	if got := WithoutReserved(plain); !maps.Equal(got, plain) {
		t.Errorf("WithoutReserved(%v) = %v", plain, got)
	}
	forged := map[string]string{"app": "a", LabelServiceAccount: "web"}
	got := WithoutReserved(forged)
	if !maps.Equal(got, plain) || len(forged) != 2 {
		t.Errorf("WithoutReserved(%v) = %v (input must be left alone)", forged, got)
	}
	// "lab.bireme.io/" is another prefix, not Bireme's reserved one.
	if IsReserved("lab.bireme.io/x") || !IsReserved("bireme.io/x") {
		t.Error("IsReserved: wrong prefix test")
	}
}

func TestCheckSelectorKey(t *testing.T) {
	for _, c := range []struct {
		key       string
		namespace bool
		wantErr   string
	}{
		{"app", false, ""},
		{LabelServiceAccount, false, ""},
		{LabelNamespace, false, ""},
		{LabelNamespace, true, ""},
		{LabelServiceAccount, true, "podSelector"},
		{"bireme.io/serviceaccount", false, "reserved"},
		{"bireme.io/node", true, "reserved"},
		{LabelCluster, true, ""},
		{LabelCluster, false, "namespaceSelector"},
	} {
		err := CheckSelectorKey(c.key, c.namespace)
		if (err == nil) != (c.wantErr == "") || (err != nil && !strings.Contains(err.Error(), c.wantErr)) {
			t.Errorf("CheckSelectorKey(%q, namespace=%v) = %v, want error containing %q", c.key, c.namespace, err, c.wantErr)
		}
	}
}
