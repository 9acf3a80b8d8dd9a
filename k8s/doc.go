// Package k8s turns Kubernetes objects into what Bireme enforces: it decodes
// Namespace, Pod and NetworkPolicy objects from YAML or JSON, validates them
// as the API server would, maps a Pod to the identity its tokens carry
// ([IdentityOf]) and compiles the objects into a [policy.Engine] ([Compile]).
//
// It reads no files and watches nothing: its inputs are bytes and typed
// objects, so the same code serves the file store (package
// [github.com/bireme/bireme/k8s/filestore]), the `bireme policy` command and,
// later, API server informers. It depends only on policy and identity.
//
//	var d k8s.Decoder
//	err := d.Decode("store.yaml", data) // errors: "store.yaml: Pod x/a: metadata.labels: ..."
//	eng, err := k8s.Compile(d.Objects())
//	id := k8s.IdentityOf("prod", ns, pod)
package k8s
