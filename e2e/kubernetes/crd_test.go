package kubernetes

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"
	cnpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/bireme/bireme/internal/kubeenv"
)

// installClusterNetworkPolicyCRD creates the ClusterNetworkPolicy CRD of
// deploy/kubernetes/ in the real API server, waits until the server serves
// v1beta1, and returns a client for the objects.
func installClusterNetworkPolicyCRD(t *testing.T, ctx context.Context, env *kubeenv.Env) cnpclient.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	crds := dyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	objs := readManifests(t, filepath.Join("..", "..", "deploy", "kubernetes"))
	n := 0
	for _, obj := range objs {
		if obj.GetKind() != "CustomResourceDefinition" {
			continue
		}
		if _, err := crds.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create CRD %s: %v", obj.GetName(), err)
		}
		n++
	}
	if n == 0 {
		t.Fatal("deploy/kubernetes/ has no CustomResourceDefinition")
	}
	client, err := cnpclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := client.Discovery().ServerResourcesForGroupVersion(cnp.GroupVersion.String())
		if err == nil {
			return client
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not served 30 s after the CRD was created: %v", cnp.GroupVersion, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
