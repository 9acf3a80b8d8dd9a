package report

import "testing"

func TestKept(t *testing.T) {
	section := KeptBegin + "\n## Kubernetes agent at scale\n\nRSS 127 MB\n" + KeptEnd
	for _, tt := range []struct{ name, previous, want string }{
		{"none", "# Benchmarks\n\nno kept section\n", ""},
		{"one, after generated text", "# Benchmarks\n\n| a |\n\n" + section + "\n", section + "\n"},
		{"two", section + "\nbetween\n" + section, section + "\n\n" + section + "\n"},
		{"unterminated", "x\n" + KeptBegin + "\nfigures\n", KeptBegin + "\nfigures\n" + KeptEnd + "\n"},
	} {
		if got := Kept(tt.previous); got != tt.want {
			t.Errorf("%s: Kept = %q, want %q", tt.name, got, tt.want)
		}
	}
}
