package lab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Metric reads one value from node's enforcer metrics (the Prometheus text
// at http://ADDR/metrics, ADDR as NodeStatus.Metrics): that of the first
// series of name whose labels include every one of labels.
func (l *Lab) Metric(ctx context.Context, node, name string, labels map[string]string) (float64, error) {
	addr := l.st.MetricsAddrs[node]
	if addr == "" {
		return 0, fmt.Errorf("node %s: no enforcer metrics", node)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, fmt.Errorf("node %s metrics: %w", node, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("node %s metrics: %w", node, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("node %s metrics: %s", node, resp.Status)
	}
	v, err := findSeries(resp.Body, name, labels)
	if err != nil {
		return 0, fmt.Errorf("node %s metrics: %w", node, err)
	}
	return v, nil
}

// findSeries returns the value of the first series of name in Prometheus
// text exposition r whose labels include labels. Label values are compared
// as written: Bireme's never need escaping.
func findSeries(r io.Reader, name string, labels map[string]string) (float64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		seriesName, rest, _ := strings.Cut(series, "{")
		if seriesName != name || !hasLabels(strings.TrimSuffix(rest, "}"), labels) {
			continue
		}
		// A timestamp may follow the value.
		value, _, _ = strings.Cut(strings.TrimSpace(value), " ")
		return strconv.ParseFloat(value, 64)
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no series %s%v", name, labels)
}

// hasLabels reports whether the label list `k1="v1",k2="v2"` has every
// pair of want.
func hasLabels(list string, want map[string]string) bool {
	have := map[string]string{}
	for _, pair := range strings.Split(list, ",") {
		if k, v, ok := strings.Cut(pair, "="); ok {
			have[k] = strings.Trim(v, `"`)
		}
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}
