package k8s

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	kjson "sigs.k8s.io/json"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/bireme/bireme/policy"
)

// The apiVersion/kind pairs the store accepts. Anything else is an error
// rather than silently ignored: a misspelt kind would otherwise drop a
// policy without a word, which fails open.
const (
	kindNamespace     = "Namespace"
	kindPod           = "Pod"
	kindNetworkPolicy = "NetworkPolicy"
	apiCoreV1         = "v1"
	apiNetworkingV1   = "networking.k8s.io/v1"
)

// Decoder reads Namespace, Pod, NetworkPolicy and ClusterNetworkPolicy objects (and their List
// kinds, or a v1 List of them) from one or more files' contents and
// accumulates them, remembering which file each came from so that an object
// defined twice is reported with both files. The zero Decoder is ready.
type Decoder struct {
	objs policy.Objects
	seen map[string]string // "Kind ns/name" -> file
}

// Decode parses one file's content; name is the file's name, used to choose
// the format (".json": one object or a stream of objects; anything else:
// YAML, several documents separated by "---") and to name the file in errors.
//
// Decoding is strict: an unknown or duplicated field is an error, because a
// misspelt selector silently dropped would widen a policy. Every object is
// validated as it is read; the first bad one is reported as
// "FILE: Kind namespace/name: field.path: problem" (or
// "FILE: document N: problem" before the object is known). Namespaces of
// Pods and NetworkPolicies default to "default", as kubectl does. After an
// error the Decoder's objects are incomplete: discard it.
func (d *Decoder) Decode(name string, data []byte) error {
	docs, err := splitDocuments(name, data)
	if err != nil {
		return err
	}
	for i, doc := range docs {
		if err := d.decodeDocument(name, i+1, doc); err != nil {
			return err
		}
	}
	return nil
}

// Objects returns everything decoded so far.
func (d *Decoder) Objects() policy.Objects { return d.objs }

// Decode is a [Decoder] used for one file's content.
func Decode(name string, data []byte) (policy.Objects, error) {
	var d Decoder
	if err := d.Decode(name, data); err != nil {
		return policy.Objects{}, err
	}
	return d.Objects(), nil
}

// splitDocuments returns each document of a file as JSON. Empty documents
// (only comments, "---" at the start or end) are dropped.
func splitDocuments(name string, data []byte) ([][]byte, error) {
	var docs [][]byte
	if strings.EqualFold(filepath.Ext(name), ".json") {
		dec := json.NewDecoder(bytes.NewReader(data))
		for n := 1; ; n++ {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err == io.EOF {
				return docs, nil
			} else if err != nil {
				return nil, fmt.Errorf("%s: document %d: %w", name, n, err)
			}
			docs = append(docs, raw)
		}
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for n := 1; ; n++ {
		doc, err := r.Read()
		if err == io.EOF {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", name, n, err)
		}
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", name, n, err)
		}
		if t := bytes.TrimSpace(js); len(t) == 0 || string(t) == "null" {
			continue
		}
		docs = append(docs, js)
	}
}

// header is the part of any object read before its kind is known.
type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// decodeDocument decodes, defaults and validates one object (or List).
func (d *Decoder) decodeDocument(file string, n int, doc []byte) error {
	var h header
	if err := json.Unmarshal(doc, &h); err != nil {
		return fmt.Errorf("%s: document %d: not a Kubernetes object: %w", file, n, err)
	}
	if h.Kind == "" {
		return fmt.Errorf("%s: document %d: kind: Required value", file, n)
	}
	if strings.HasSuffix(h.Kind, "List") && (h.APIVersion == apiCoreV1 || h.APIVersion == apiNetworkingV1 ||
		h.APIVersion == apiPolicyV1beta1 || h.APIVersion == apiPolicyV1alpha2) {
		var list struct {
			metav1.TypeMeta `json:",inline"`
			Metadata        metav1.ListMeta   `json:"metadata"`
			Items           []json.RawMessage `json:"items"`
		}
		if err := decodeStrict(doc, &list); err != nil {
			return fmt.Errorf("%s: document %d: %s: %w", file, n, h.Kind, err)
		}
		for i, item := range list.Items {
			if err := d.decodeDocument(file, n, item); err != nil {
				return fmt.Errorf("%w (%s items[%d])", err, h.Kind, i)
			}
		}
		return nil
	}
	ns := h.Metadata.Namespace
	if ns == "" && h.Kind != kindNamespace && h.Kind != kindClusterNetworkPolicy {
		ns = "default"
	}
	if h.Kind == kindClusterNetworkPolicy {
		// Cluster-scoped: the API server ignores a namespace given.
		ns = ""
	}
	ref := objectRef(h.Kind, ns, h.Metadata.Name)
	wrap := func(err error) error { return fmt.Errorf("%s: %s: %w", file, ref, err) }
	switch {
	case h.Kind == kindNamespace && h.APIVersion == apiCoreV1:
		obj := &corev1.Namespace{}
		if err := decodeStrict(doc, obj); err != nil {
			return wrap(err)
		}
		if err := validateNamespace(obj).ToAggregate(); err != nil {
			return wrap(err)
		}
		d.objs.Namespaces = append(d.objs.Namespaces, obj)
	case h.Kind == kindPod && h.APIVersion == apiCoreV1:
		obj := &corev1.Pod{}
		if err := decodeStrict(doc, obj); err != nil {
			return wrap(err)
		}
		obj.Namespace = ns
		if err := validatePod(obj).ToAggregate(); err != nil {
			return wrap(err)
		}
		d.objs.Pods = append(d.objs.Pods, obj)
	case h.Kind == kindNetworkPolicy && h.APIVersion == apiNetworkingV1:
		obj := &networkingv1.NetworkPolicy{}
		if err := decodeStrict(doc, obj); err != nil {
			return wrap(err)
		}
		obj.Namespace = ns
		if err := validateNetworkPolicy(obj).ToAggregate(); err != nil {
			return wrap(err)
		}
		d.objs.Policies = append(d.objs.Policies, obj)
	case h.Kind == kindClusterNetworkPolicy && (h.APIVersion == apiPolicyV1beta1 || h.APIVersion == apiPolicyV1alpha2):
		obj := &cnp.ClusterNetworkPolicy{}
		if err := decodeStrict(doc, obj); err != nil {
			return wrap(err)
		}
		obj.Namespace = ""
		if err := validateClusterNetworkPolicy(obj).ToAggregate(); err != nil {
			return wrap(err)
		}
		d.objs.ClusterPolicies = append(d.objs.ClusterPolicies, obj)
	default:
		return fmt.Errorf("%s: document %d: unsupported apiVersion/kind %q/%q (the store holds v1 Namespace, v1 Pod, networking.k8s.io/v1 NetworkPolicy, policy.networking.k8s.io/v1beta1 or v1alpha2 ClusterNetworkPolicy and their Lists)",
			file, n, h.APIVersion, h.Kind)
	}
	if d.seen == nil {
		d.seen = map[string]string{}
	}
	if first, dup := d.seen[ref]; dup {
		return fmt.Errorf("%s: %s: duplicate object (first defined in %s)", file, ref, first)
	}
	d.seen[ref] = file
	return nil
}

// objectRef names an object the way errors and reasons do: "Kind ns/name".
func objectRef(kind, ns, name string) string {
	if name == "" {
		name = "<unnamed>"
	}
	if kind == kindNamespace || ns == "" {
		return kind + " " + name
	}
	return kind + " " + ns + "/" + name
}

// decodeStrict decodes one JSON object as the API server does: field names
// case-sensitive, unknown and duplicate fields rejected (errors name the
// field path, e.g. `unknown field "spec.podSelecter"`).
func decodeStrict(doc []byte, into any) error {
	strict, err := kjson.UnmarshalStrict(doc, into)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}
