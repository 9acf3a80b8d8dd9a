package policy

import (
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

// compileSelector compiles a validated selector.
func compileSelector(s *metav1.LabelSelector) *selector {
	out := &selector{}
	for k, v := range s.MatchLabels {
		out.reqs = append(out.reqs, requirement{key: k, op: metav1.LabelSelectorOpIn, values: []string{v}})
	}
	for _, e := range s.MatchExpressions {
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
	return out
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
			// Unreachable after validation; fail closed.
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
