package runtimehook

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestCreateBundle(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		bundle string
		ok     bool
	}{
		{[]string{"--root", "/run/r", "--log", "/l.json", "--log-format", "json", "create", "--bundle", "/b/1", "--pid-file", "/p", "id1"}, "/b/1", true},
		{[]string{"--systemd-cgroup", "create", "-b", "/b/2", "id"}, "/b/2", true},
		{[]string{"create", "--bundle=/b/3", "id"}, "/b/3", true},
		{[]string{"run", "id"}, ".", true},
		{[]string{"--root", "create", "start", "id"}, "", false}, // "create" is --root's value
		{[]string{"--root", "/r", "start", "id"}, "", false},
		{[]string{"delete", "--force", "id"}, "", false},
		{nil, "", false},
	} {
		b, ok := CreateBundle(tc.args)
		if b != tc.bundle || ok != tc.ok {
			t.Errorf("CreateBundle(%q) = %q, %v; want %q, %v", tc.args, b, ok, tc.bundle, tc.ok)
		}
	}
}

func TestAddCreateRuntimeHook(t *testing.T) {
	config := []byte(`{"ociVersion":"1.0.2","process":{"args":["sh"]},"hooks":{"prestart":[{"path":"/proc/1/exe","args":["libnetwork-setkey"]}]},"x-unknown":{"kept":true}}`)
	h := Hook{Path: "/usr/bin/bireme", Args: []string{"bireme", "docker", "hook"}}
	out, err := AddCreateRuntimeHook(config, h)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OCIVersion string `json:"ociVersion"`
		Hooks      map[string][]Hook
		Unknown    map[string]bool `json:"x-unknown"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.OCIVersion != "1.0.2" || !doc.Unknown["kept"] || len(doc.Hooks["prestart"]) != 1 {
		t.Errorf("fields not kept: %s", out)
	}
	if got := doc.Hooks["createRuntime"]; len(got) != 1 || got[0].Path != h.Path || strings.Join(got[0].Args, " ") != "bireme docker hook" {
		t.Errorf("createRuntime hooks %+v", got)
	}
	again, err := AddCreateRuntimeHook(out, h)
	if err != nil || string(again) != string(out) {
		t.Errorf("adding the hook twice changed the config: %v\n%s\n%s", err, out, again)
	}
	if out, err := AddCreateRuntimeHook([]byte(`{"hooks":null}`), h); err != nil || !strings.Contains(string(out), `"createRuntime"`) {
		t.Errorf("config with null hooks: %v %s", err, out)
	}
	for _, bad := range []string{``, `[]`, `{"hooks":[]}`, `{"hooks":{"createRuntime":{}}}`} {
		if _, err := AddCreateRuntimeHook([]byte(bad), h); err == nil {
			t.Errorf("config %q accepted", bad)
		}
	}
	if _, err := AddCreateRuntimeHook(config, Hook{}); err == nil {
		t.Error("hook without a path accepted")
	}
}

func TestParseState(t *testing.T) {
	s, err := ParseState([]byte(`{"ociVersion":"1.0.2","id":"abc","status":"creating","pid":42,"bundle":"/b"}`))
	if err != nil || s.ID != "abc" || s.Pid != 42 || s.Bundle != "/b" {
		t.Fatalf("ParseState = %+v, %v", s, err)
	}
	for _, bad := range []string{``, `{}`, `{"id":"abc"}`, `{"id":"","pid":3}`, `{"id":"a","pid":-1}`} {
		if _, err := ParseState([]byte(bad)); err == nil {
			t.Errorf("state %q accepted", bad)
		}
	}
}
