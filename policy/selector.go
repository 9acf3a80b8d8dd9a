package policy

import (
	"fmt"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// selector is a compiled metav1.LabelSelector: a flat list of requirements,
// all of which must hold. matchLabels entries become single-value "In"
// requirements. The zero selector (no requirements) matches everything,
// which is what an empty selector `{}` means.
type selector struct {
	reqs []requirement
}

// requirement is one key test.
type requirement struct {
	key    string
	op     metav1.LabelSelectorOperator
	values []string // sorted; In / NotIn only
}

// compileSelector compiles a selector. It refuses an operator it does not
// know and values that contradict the operator (In/NotIn without values,
// Exists/DoesNotExist with some): matching nothing instead would make a
// podSelector select no pod, and so isolate none.
func compileSelector(s *metav1.LabelSelector) (*selector, error) {
	out := &selector{}
	for k, v := range s.MatchLabels {
		out.reqs = append(out.reqs, requirement{key: k, op: metav1.LabelSelectorOpIn, values: []string{v}})
	}
	for i, e := range s.MatchExpressions {
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

// matches reports whether labels satisfy every requirement. NotIn and
// DoesNotExist hold when the key is absent, as in Kubernetes.
func (s *selector) matches(labels map[string]string) bool {
	for i := range s.reqs {
		r := &s.reqs[i]
		v, ok := labels[r.key]
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
