package kubernetes

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/bireme/bireme/internal/kubeenv"
)

// TestManifestsDryRun sends every object of deploy/kubernetes/ to the real
// API server with a server-side dry run: the server decodes, defaults,
// validates and admits each one exactly as `kubectl apply` would, without
// storing it. Only the namespace is created for real, since the dry run of
// an object in it needs it to exist.
func TestManifestsDryRun(t *testing.T) {
	env := kubeenv.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	objs := readManifests(t, filepath.Join("..", "..", "deploy", "kubernetes"))
	cfg, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	groups, err := restmapper.GetAPIGroupResources(disc)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)

	kinds := map[string]bool{}
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		kinds[gvk.Kind] = true
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Errorf("%s %s: %v", gvk.Kind, obj.GetName(), err)
			continue
		}
		res := dyn.Resource(m.Resource)
		var client dynamic.ResourceInterface = res
		if m.Scope.Name() == "namespace" {
			if obj.GetNamespace() == "" {
				t.Errorf("%s %s: namespaced but names no namespace", gvk.Kind, obj.GetName())
				continue
			}
			client = res.Namespace(obj.GetNamespace())
		}
		opts := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"}
		if gvk.Kind == "Namespace" {
			opts.DryRun = nil
		}
		if _, err := client.Create(ctx, obj, opts); err != nil {
			t.Errorf("%s %s/%s: the API server refuses it: %v", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
		}
	}
	for _, want := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "Deployment"} {
		if !kinds[want] {
			t.Errorf("deploy/kubernetes/ has no %s", want)
		}
	}
}

// readManifests decodes every YAML document of the directory's files.
func readManifests(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s (%v)", dir, err)
	}
	var out []*unstructured.Unstructured
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			obj := &unstructured.Unstructured{}
			if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(obj.Object) == 0 {
				continue // an empty document
			}
			out = append(out, obj)
		}
	}
	return out
}
