// Package runtimehook closes the window between a container's start and
// its protection on a Docker host.
//
// Docker reports a container's "start" event only after its process runs,
// and a new start (a restart included) gets a new network namespace: an
// agent that protects containers on events always comes late, and a
// process that connects or accepts at once does so unprotected. The OCI
// runtime is the one place that runs synchronously between "the
// namespace exists" and "the process runs": Docker is given a runtime
// that is runc behind a thin wrapper (`bireme docker runc`), which adds a
// createRuntime hook to the container's OCI config before runc creates
// it. runc runs the hook (`bireme docker hook`) once the container's
// namespaces exist and before its process is started; the hook fences a
// container the agent would protect with Bireme's rules, whose NFQUEUE
// rules without bypass drop every handshake until an enforcer reads them.
// If the hook fails, runc fails and the container does not start.
//
// This package does the byte work: finding the bundle in runc's command
// line, adding the hook to config.json, and reading the state runc gives a
// hook on its standard input.
package runtimehook

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Hook is one OCI hook entry.
type Hook struct {
	Path    string   `json:"path"`
	Args    []string `json:"args,omitempty"`
	Env     []string `json:"env,omitempty"`
	Timeout *int     `json:"timeout,omitempty"`
}

// State is what runc writes to a hook's standard input (the OCI state).
type State struct {
	ID     string `json:"id"`
	Pid    int    `json:"pid"`
	Bundle string `json:"bundle"`
}

// ParseState reads a hook's standard input.
func ParseState(data []byte) (State, error) {
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return State{}, fmt.Errorf("OCI state on stdin: %w", err)
	}
	if s.ID == "" || s.Pid <= 0 {
		return State{}, fmt.Errorf("OCI state on stdin: want an id and a pid, got id %q pid %d", s.ID, s.Pid)
	}
	return s, nil
}

// globalFlagsWithValue are runc's global flags that take a separate value.
var globalFlagsWithValue = map[string]bool{"--root": true, "--log": true, "--log-format": true, "--criu": true, "--rootless": false}

// CreateBundle finds, in runc's command line (without the program name),
// whether it is a "create" (or "run") and the bundle directory it names
// ("--bundle DIR", "-b DIR", "--bundle=DIR"; runc's default is the working
// directory, returned as "."). ok is false for every other command.
func CreateBundle(args []string) (bundle string, ok bool) {
	i := 0
	for i < len(args) {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			break
		}
		if globalFlagsWithValue[a] {
			i++
		}
		i++
	}
	if i >= len(args) || (args[i] != "create" && args[i] != "run") {
		return "", false
	}
	rest := args[i+1:]
	for j := 0; j < len(rest); j++ {
		a := rest[j]
		switch {
		case a == "--bundle" || a == "-b":
			if j+1 < len(rest) {
				return rest[j+1], true
			}
		case strings.HasPrefix(a, "--bundle="):
			return strings.TrimPrefix(a, "--bundle="), true
		case strings.HasPrefix(a, "-b="):
			return strings.TrimPrefix(a, "-b="), true
		}
	}
	return ".", true
}

// AddCreateRuntimeHook returns the OCI config with h appended to its
// createRuntime hooks, every other field kept as it was. A config that
// already has a hook with h's path and arguments is returned unchanged.
func AddCreateRuntimeHook(config []byte, h Hook) ([]byte, error) {
	if h.Path == "" {
		return nil, errors.New("hook: empty path")
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(config, &doc); err != nil {
		return nil, fmt.Errorf("OCI config: %w", err)
	}
	var hooks map[string]json.RawMessage
	if raw, ok := doc["hooks"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &hooks); err != nil {
			return nil, fmt.Errorf("OCI config: hooks: %w", err)
		}
	}
	if hooks == nil {
		hooks = map[string]json.RawMessage{}
	}
	var list []Hook
	if raw, ok := hooks["createRuntime"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &list); err != nil {
			return nil, fmt.Errorf("OCI config: hooks.createRuntime: %w", err)
		}
	}
	for _, have := range list {
		if have.Path == h.Path && strings.Join(have.Args, "\x00") == strings.Join(h.Args, "\x00") {
			return config, nil
		}
	}
	list = append(list, h)
	var err error
	if hooks["createRuntime"], err = json.Marshal(list); err != nil {
		return nil, err
	}
	if doc["hooks"], err = json.Marshal(hooks); err != nil {
		return nil, err
	}
	return json.Marshal(doc)
}
