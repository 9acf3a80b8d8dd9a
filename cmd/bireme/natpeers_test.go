package main

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/bireme/bireme/tokens"
)

func TestNATPeersFlag(t *testing.T) {
	var f natPeersFlag
	for _, v := range []string{"cluster.local=198.18.0.1,198.19.0.0/24", "other=2001:db8::/32", "cluster.local=198.19.0.7/24"} {
		if err := f.Set(v); err != nil {
			t.Fatalf("Set(%q): %v", v, err)
		}
	}
	want := tokens.NATGateways{
		"cluster.local": {netip.MustParsePrefix("198.18.0.1/32"), netip.MustParsePrefix("198.19.0.0/24")},
		"other":         {netip.MustParsePrefix("2001:db8::/32")},
	}
	if !reflect.DeepEqual(f.gateways, want) {
		t.Fatalf("gateways = %v, want %v", f.gateways, want)
	}
	if got := f.String(); got != "cluster.local=198.18.0.1/32,198.19.0.0/24 other=2001:db8::/32" {
		t.Errorf("String() = %q", got)
	}
	for _, bad := range []string{"", "cluster.local", "=198.18.0.0/15", "cluster.local=", "cluster.local=not-an-address", "x=198.18.0.0/33"} {
		if err := new(natPeersFlag).Set(bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
}
