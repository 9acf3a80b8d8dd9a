package policy

import (
	"fmt"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bireme/bireme/identity"
)

// Descriptions of compiled selectors, peers and ports in words, for
// decisions ("peer matched by service account web in namespace shop") and
// for reports of who may reach whom. They are built once at compile time.

// describePods describes a podSelector by its factors: service account,
// namespace, then ordinary labels. An empty selector is "any pod".
func (s *selector) describePods() string {
	var factors, labels []string
	for _, r := range s.reqs {
		switch r.key {
		case identity.LabelServiceAccount:
			factors = append(factors, describeFactor("service account", r))
		case identity.LabelNamespace:
			factors = append(factors, describeFactor("namespace", r))
		default:
			labels = append(labels, describeRequirement(r))
		}
	}
	if len(labels) > 0 {
		factors = append(factors, "labels "+strings.Join(labels, ", "))
	}
	if len(factors) == 0 {
		return "any pod"
	}
	return strings.Join(factors, " and ")
}

// describeNamespaces describes a namespaceSelector as what follows "in":
// by name when it selects by one of the labels that carry the name, by
// labels otherwise ("namespaces labelled team=pay"). An empty selector is
// "any namespace".
func (s *selector) describeNamespaces() string {
	var names, labels []string
	for _, r := range s.reqs {
		switch r.key {
		case identity.LabelNamespace, identity.LabelKubernetesNamespaceName:
			names = append(names, describeFactor("namespace", r))
		default:
			labels = append(labels, describeRequirement(r))
		}
	}
	switch {
	case len(names) == 0 && len(labels) == 0:
		return "any namespace"
	case len(labels) == 0:
		return strings.Join(names, " and ")
	case len(names) == 0:
		return "namespaces labelled " + strings.Join(labels, ", ")
	}
	return strings.Join(names, " and ") + " labelled " + strings.Join(labels, ", ")
}

// describeFactor names a pseudo-label requirement as the fact it is:
// "service account web", "service account in (a, b)".
func describeFactor(what string, r requirement) string {
	switch r.op {
	case metav1.LabelSelectorOpIn:
		if len(r.values) == 1 {
			return what + " " + r.values[0]
		}
		return what + " in (" + strings.Join(r.values, ", ") + ")"
	case metav1.LabelSelectorOpNotIn:
		return what + " not in (" + strings.Join(r.values, ", ") + ")"
	case metav1.LabelSelectorOpExists:
		return "any " + what
	}
	return "no " + what
}

// describeRequirement writes a label requirement in kubectl's selector
// syntax: app=web, tier in (a,b), tier notin (c), app, !app.
func describeRequirement(r requirement) string {
	switch r.op {
	case metav1.LabelSelectorOpIn:
		if len(r.values) == 1 {
			return r.key + "=" + r.values[0]
		}
		return r.key + " in (" + strings.Join(r.values, ",") + ")"
	case metav1.LabelSelectorOpNotIn:
		return r.key + " notin (" + strings.Join(r.values, ",") + ")"
	case metav1.LabelSelectorOpExists:
		return r.key
	}
	return "!" + r.key
}

// describePeer describes one NetworkPolicyPeer of a policy in namespace
// policyNS, as the facts a peer must have.
func describePeer(p *compiledPeer, policyNS string) string {
	switch {
	case p.block != nil:
		s := "address in " + p.block.cidr.String()
		if len(p.block.except) > 0 {
			var ex []string
			for _, e := range p.block.except {
				ex = append(ex, e.String())
			}
			s += " except " + strings.Join(ex, ", ")
		}
		return s
	case p.namespaces == nil:
		return p.pods.describePods() + " in namespace " + policyNS
	case p.pods == nil:
		return "any pod in " + p.namespaces.describeNamespaces()
	}
	return p.pods.describePods() + " in " + p.namespaces.describeNamespaces()
}

// anyPeerDescription describes a rule with no from/to.
const anyPeerDescription = "any peer"

// describe describes a port of a rule: "TCP 5432", "TCP 8000-8080",
// "TCP port named http", "every TCP port".
func (p *compiledPort) describe() string {
	proto := p.protocol.String()
	switch {
	case p.anyPort:
		return "every " + proto + " port"
	case p.name != "":
		return proto + " port named " + p.name
	case p.from == p.to:
		return proto + " " + strconv.Itoa(int(p.from))
	}
	return fmt.Sprintf("%s %d-%d", proto, p.from, p.to)
}
