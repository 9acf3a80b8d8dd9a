package lab

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
)

// WriteTable prints results as truth tables in the style of the Kubernetes
// network policy e2e tests: one matrix per port, a row per client, a
// column per server declaring that port; "." connected, "X" refused, "-"
// the pod itself. Pods are listed in the order of pods (all of them as rows,
// so a pod that only acts as a client still has its row).
func WriteTable(w io.Writer, pods []string, results []Result) error {
	type portKey struct {
		proto string
		port  uint16
	}
	byPort := map[portKey]map[[2]string]bool{}
	for _, r := range results {
		k := portKey{r.Protocol, r.Port}
		if byPort[k] == nil {
			byPort[k] = map[[2]string]bool{}
		}
		byPort[k][[2]string{r.From, r.To}] = r.Connected
	}
	keys := make([]portKey, 0, len(byPort))
	for k := range byPort {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].port != keys[j].port {
			return keys[i].port < keys[j].port
		}
		return keys[i].proto < keys[j].proto
	})
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for i, k := range keys {
		if i > 0 {
			fmt.Fprintln(tw)
		}
		cells := byPort[k]
		var cols []string
		for _, to := range pods {
			for _, from := range pods {
				if _, ok := cells[[2]string{from, to}]; ok {
					cols = append(cols, to)
					break
				}
			}
		}
		fmt.Fprintf(tw, "%s/%d\t%s\n", k.proto, k.port, strings.Join(cols, "\t"))
		for _, from := range pods {
			row := []string{from}
			for _, to := range cols {
				connected, ok := cells[[2]string{from, to}]
				switch {
				case from == to:
					row = append(row, "-")
				case !ok:
					row = append(row, "?")
				case connected:
					row = append(row, ".")
				default:
					row = append(row, "X")
				}
			}
			fmt.Fprintln(tw, strings.Join(row, "\t"))
		}
	}
	if len(keys) > 0 {
		fmt.Fprintln(tw)
	}
	fmt.Fprintln(tw, "rows: client, columns: server; . connected, X refused, - self")
	return tw.Flush()
}
