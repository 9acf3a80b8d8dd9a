package main

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/bireme/bireme/tokens"
)

// natPeersFlag is the repeatable --nat-peers DOMAIN=CIDR[,CIDR...]: the
// trust domains whose nodes reach this one through source NAT, and the
// address ranges of their gateways (tokens.NATGateways).
type natPeersFlag struct{ gateways tokens.NATGateways }

func (f *natPeersFlag) Set(v string) error {
	domain, cidrs, ok := strings.Cut(v, "=")
	domain = strings.TrimSpace(domain)
	if !ok || domain == "" || strings.TrimSpace(cidrs) == "" {
		return fmt.Errorf("%q: want TRUST-DOMAIN=CIDR[,CIDR...]", v)
	}
	if f.gateways == nil {
		f.gateways = tokens.NATGateways{}
	}
	for _, c := range strings.Split(cidrs, ",") {
		p, err := parsePrefixOrAddr(strings.TrimSpace(c))
		if err != nil {
			return fmt.Errorf("%q: %w", v, err)
		}
		if !slices.Contains(f.gateways[domain], p) {
			f.gateways[domain] = append(f.gateways[domain], p)
		}
	}
	return nil
}

// parsePrefixOrAddr reads a CIDR, or a single address as its host prefix.
func parsePrefixOrAddr(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return p.Masked(), nil
}

func (f *natPeersFlag) String() string {
	var parts []string
	for domain, prefixes := range f.gateways {
		var cidrs []string
		for _, p := range prefixes {
			cidrs = append(cidrs, p.String())
		}
		parts = append(parts, domain+"="+strings.Join(cidrs, ","))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func (f *natPeersFlag) Type() string { return "DOMAIN=CIDR[,CIDR]" }
