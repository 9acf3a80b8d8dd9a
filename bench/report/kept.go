package report

import "strings"

// Sections of docs/benchmarks.md between a KeptBegin line and a KeptEnd
// line hold figures this harness does not measure (the Kubernetes agent at
// scale, `make k8s-scale`, which needs an API server and minutes): a
// regeneration carries them over unchanged, after the generated document.
const (
	KeptBegin = "<!-- kept by the bench harness: measured elsewhere, carried over on regeneration -->"
	KeptEnd   = "<!-- end kept -->"
)

// Kept returns every kept section of a previous document, markers
// included, in order, or "" if it has none. A section whose end marker is
// missing runs to the end of the document.
func Kept(previous string) string {
	var out []string
	rest := previous
	for {
		i := strings.Index(rest, KeptBegin)
		if i < 0 {
			break
		}
		rest = rest[i:]
		j := strings.Index(rest, KeptEnd)
		if j < 0 {
			out = append(out, strings.TrimRight(rest, "\n")+"\n"+KeptEnd)
			break
		}
		out = append(out, rest[:j+len(KeptEnd)])
		rest = rest[j+len(KeptEnd):]
	}
	if len(out) == 0 {
		return ""
	}
	return strings.Join(out, "\n\n") + "\n"
}
