package policy

import (
	"fmt"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bireme/bireme/identity"
)

// selector is a compiled metav1.LabelSelector: a flat list of requirements,
// all of which must hold. matchLabels entries become single-value "In"
// requirements. The zero selector (no requirements) matches everything,
// which is what an empty selector `{}` means.
type selector struct {
	reqs []requirement
	// namesCluster: a requirement reads identity.LabelCluster. Only such
	// a namespaceSelector may match a peer of another cluster.
	namesCluster bool
}

// requirement is one key test.
type requirement struct {
	key    string
	op     metav1.LabelSelectorOperator
	values []string // sorted; In / NotIn only
}

// selectorSide says whose labels a selector reads: a pod's (podSelector)
// or its namespace's (namespaceSelector). The reserved pseudo-labels differ
// between the two (identity.CheckSelectorKey).
type selectorSide uint8

const (
	podSide selectorSide = iota
	namespaceSide
)

// compileSelector compiles a selector. It refuses an operator it does not
// know, values that contradict the operator (In/NotIn without values,
// Exists/DoesNotExist with some) and a reserved bireme.io/ key that does not
// exist on that side: matching nothing instead would make a podSelector
// select no pod, and so isolate none.
func compileSelector(s *metav1.LabelSelector, side selectorSide) (*selector, error) {
	out := &selector{}
	for k, v := range s.MatchLabels {
		if err := identity.CheckSelectorKey(k, side == namespaceSide); err != nil {
			return nil, fmt.Errorf("matchLabels: %w", err)
		}
		out.reqs = append(out.reqs, requirement{key: k, op: metav1.LabelSelectorOpIn, values: []string{v}})
	}
	for i, e := range s.MatchExpressions {
		if err := identity.CheckSelectorKey(e.Key, side == namespaceSide); err != nil {
			return nil, fmt.Errorf("matchExpressions[%d]: %w", i, err)
		}
		switch e.Operator {
		case metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn:
			if len(e.Values) == 0 {
				return nil, fmt.Errorf("matchExpressions[%d]: operator %s needs values", i, e.Operator)
			}
		case metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist:
			if len(e.Values) > 0 {
				return nil, fmt.Errorf("matchExpressions[%d]: operator %s takes no values", i, e.Operator)
			}
		default:
			return nil, fmt.Errorf("matchExpressions[%d]: unknown operator %q", i, e.Operator)
		}
		vals := slices.Clone(e.Values)
		slices.Sort(vals)
		out.reqs = append(out.reqs, requirement{key: e.Key, op: e.Operator, values: vals})
	}
	for _, r := range out.reqs {
		out.namesCluster = out.namesCluster || r.key == identity.LabelCluster
	}
	// Deterministic order; cheap tests (Exists) first would be a micro-gain
	// not worth the obscurity.
	slices.SortFunc(out.reqs, func(a, b requirement) int {
		if a.key < b.key {
			return -1
		}
		if a.key > b.key {
			return 1
		}
		return 0
	})
	return out, nil
}

// matchesPod reports whether id's pod labels, pseudo-labels included,
// satisfy the selector.
func (s *selector) matchesPod(id *identity.Identity) bool { return s.matches(id.PodLabel) }

// matchesNamespace reports whether the labels of id's namespace, as signed
// in id and with the namespace pseudo-labels, satisfy the selector.
func (s *selector) matchesNamespace(id *identity.Identity) bool {
	return s.matches(id.NamespaceLabel)
}

// matches reports whether the labels label looks up satisfy every
// requirement. NotIn and DoesNotExist hold when the key is absent, as in
// Kubernetes. Labels are looked up rather than passed as a map so that the
// pseudo-labels come from the identity's signed fields and cannot be
// shadowed by a map entry.
func (s *selector) matches(label func(key string) (string, bool)) bool {
	for i := range s.reqs {
		r := &s.reqs[i]
		v, ok := label(r.key)
		switch r.op {
		case metav1.LabelSelectorOpIn:
			if !ok || !contains(r.values, v) {
				return false
			}
		case metav1.LabelSelectorOpNotIn:
			if ok && contains(r.values, v) {
				return false
			}
		case metav1.LabelSelectorOpExists:
			if !ok {
				return false
			}
		case metav1.LabelSelectorOpDoesNotExist:
			if ok {
				return false
			}
		default:
			// Unreachable: compileSelector refuses other operators.
			return false
		}
	}
	return true
}

// contains is a search in a short sorted list; matchLabels entries are
// lists of one.
func contains(sorted []string, v string) bool {
	if len(sorted) == 1 {
		return sorted[0] == v
	}
	_, ok := slices.BinarySearch(sorted, v)
	return ok
}
