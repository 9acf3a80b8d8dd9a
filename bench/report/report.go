// Package report holds the benchmark's results (raw per round and summarized
// across rounds), the ratios that are its headline, and their rendering as
// the markdown table of docs/benchmarks.md.
package report

import (
	"slices"

	"github.com/bireme/bireme/bench/workload"
)

// Results is one benchmark run; it is what the JSON file holds.
type Results struct {
	Date    string `json:"date"`
	Command string `json:"command"`
	// Commit is the work tree's git commit, "+dirty" when it had changes.
	Commit   string     `json:"commit"`
	Short    bool       `json:"short"`
	Machine  Machine    `json:"machine"`
	Settings Settings   `json:"settings"`
	Cases    []*Case    `json:"cases"`
	Ratios   []Ratio    `json:"ratios"`
	Targets  []Target   `json:"targets"`
	Micro    []Micro    `json:"micro_benchmarks"`
	MicroErr string     `json:"micro_benchmarks_error,omitempty"`
	Notes    []string   `json:"notes,omitempty"`
	Duration float64    `json:"duration_s"`
	Failure  string     `json:"failure,omitempty"`
	Topology []HostInfo `json:"topology"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUModel  string `json:"cpu_model"`
	CPUs      int    `json:"cpus"`
	MemoryMB  int64  `json:"memory_mb"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	Iptables  string `json:"iptables"`
	// LoadAvg is /proc/loadavg at the start and the end of the run: other
	// work on the machine shows here.
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
}

// Settings are the knobs of the run.
type Settings struct {
	Rounds             int     `json:"rounds"`
	Concurrency        []int   `json:"concurrency"`
	LoadSeconds        float64 `json:"load_seconds"`
	BulkBytes          int64   `json:"bulk_bytes"`
	ColdSamples        int     `json:"cold_samples_per_round"`
	ConnectTimeoutMS   int64   `json:"connect_timeout_ms"`
	DeniedTimeoutMS    int64   `json:"denied_connect_timeout_ms"`
	ProcessModel       string  `json:"process_model"`
	ColdCacheMethod    string  `json:"cold_cache_method"`
	EnforcerQueues     int     `json:"enforcer_queues"`
	EnforcerPoll       string  `json:"enforcer_poll"`
	BiremeBinary       string  `json:"bireme_binary"`
	WarmupConnections  int     `json:"warmup_connections"`
	ConntrackFlushed   bool    `json:"conntrack_flushed_between_cases"`
	AlternationPattern string  `json:"alternation"`
}

// HostInfo is one workload of the topology.
type HostInfo struct {
	Role string `json:"role"`
	Node string `json:"node"`
	NS   string `json:"netns"`
	Addr string `json:"addr"`
}

// Case is one of the compared setups.
type Case struct {
	ID   int    `json:"id"`
	Key  string `json:"key"`
	Name string `json:"name"`
	// Unavailable, when set, says why the case was not measured; no number
	// of the case is then meaningful.
	Unavailable string   `json:"unavailable,omitempty"`
	Rounds      []*Round `json:"rounds,omitempty"`
	Summary     *Summary `json:"summary,omitempty"`
	Notes       []string `json:"notes,omitempty"`
}

// Round is one measurement of a case within one round of the run.
type Round struct {
	Round int     `json:"round"`
	Loads []*Load `json:"loads,omitempty"`
	// Cold holds one single-connection run per fresh identity (case 5).
	Cold []*Load `json:"cold,omitempty"`
	// Quiet holds, for a case measured under a flood (case 8), the same
	// load runs made just before each flooded one (in Loads) without it.
	Quiet []*Load `json:"quiet,omitempty"`
	// ColdVerified counts cold samples whose flow record shows the server
	// enforcer saw the fresh client identity (proof the sample was cold).
	ColdVerified int `json:"cold_verified,omitempty"`
	// ServerFlows counts the server enforcer's ingress decisions during the
	// case (warm-up included): proof the measured connections went through it.
	ServerFlows *FlowCount           `json:"server_flows,omitempty"`
	Bulk        *workload.BulkResult `json:"bulk,omitempty"`
	BulkError   string               `json:"bulk_error,omitempty"`
	// Enforcer (or queue reader) processes charged for this case.
	Procs []Proc `json:"procs,omitempty"`
	// IdleCPUPerS is the enforcer processes' CPU seconds per second of wall
	// time with no traffic (store polling, timers), measured after warm-up.
	IdleCPUPerS float64 `json:"idle_cpu_s_per_s"`
}

// FlowCount counts flow records by verdict.
type FlowCount struct {
	Allow int `json:"allow"`
	Deny  int `json:"deny"`
	// DenyReasons counts denials by reason (and token error).
	DenyReasons map[string]int `json:"deny_reasons,omitempty"`
}

// Load is one load run at one concurrency, with the CPU the enforcer
// processes used while it ran.
type Load struct {
	Concurrency int                 `json:"concurrency"`
	Result      workload.LoadResult `json:"result"`
	EnforcerCPU float64             `json:"enforcer_cpu_s"`
	// WindowS is the wall time between the two CPU samples around the run.
	WindowS float64 `json:"window_s"`
}

// Proc is an enforcer process as seen at the end of a case.
type Proc struct {
	Name      string  `json:"name"`
	PID       int     `json:"pid"`
	PeakRSSMB float64 `json:"peak_rss_mb"`
	CPUS      float64 `json:"cpu_s_total"`
}

// Summary is the median over rounds of each metric of a case. Zero values
// with a false Has flag mean "not measured for this case".
type Summary struct {
	// ConnPerS by concurrency (same order as Settings.Concurrency).
	ConnPerS     []float64 `json:"conn_per_s"`
	ConnectP50us float64   `json:"connect_p50_us"`
	ConnectP99us float64   `json:"connect_p99_us"`
	TxnP50us     float64   `json:"txn_p50_us"`
	TxnP99us     float64   `json:"txn_p99_us"`
	// Denied case: time until the client gave up, and attempts made.
	GiveUpP50us float64 `json:"give_up_p50_us,omitempty"`
	GiveUpP99us float64 `json:"give_up_p99_us,omitempty"`
	Attempts    []int   `json:"attempts,omitempty"`
	Connected   int     `json:"connected_total"`
	Failed      int     `json:"failed_total"`
	BulkGbps    float64 `json:"bulk_gbit_per_s,omitempty"`
	HasBulk     bool    `json:"has_bulk"`
	// CPUPer10k is enforcer CPU seconds per 10,000 connections (attempts
	// for the denied case), over all load runs. CPUPer10kNet subtracts the
	// idle CPU the enforcers use over the same wall time anyway.
	CPUPer10k    float64 `json:"enforcer_cpu_s_per_10k"`
	CPUPer10kNet float64 `json:"enforcer_cpu_s_per_10k_net_of_idle"`
	IdleCPUms    float64 `json:"enforcer_idle_cpu_ms_per_s"`
	HasEnforcer  bool    `json:"has_enforcer"`
	PeakRSSMB    float64 `json:"enforcer_peak_rss_mb,omitempty"`
}

// Ratio is a headline comparison: metric of case Case divided by the same
// metric of case Base.
type Ratio struct {
	Case   int     `json:"case"`
	Base   int     `json:"base"`
	Metric string  `json:"metric"`
	Value  float64 `json:"value"`
}

// Target is one of the goals of issue 6, checked against this run.
type Target struct {
	Goal     string  `json:"goal"`
	Measured float64 `json:"measured"`
	Limit    float64 `json:"limit"`
	Met      bool    `json:"met"`
}

// Micro is one Go micro-benchmark line.
type Micro struct {
	Package     string  `json:"package"`
	Name        string  `json:"name"`
	Iterations  int64   `json:"iterations"`
	NsPerOp     float64 `json:"ns_per_op"`
	BytesPerOp  int64   `json:"bytes_per_op"`
	AllocsPerOp int64   `json:"allocs_per_op"`
	// Extra holds the benchmark's own metrics (b.ReportMetric), in order.
	Extra []Metric `json:"extra,omitempty"`
}

// Metric is one custom benchmark metric.
type Metric struct {
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
}

// Median of xs (0 for none); it is the summary across rounds, robust to one
// noisy round.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
