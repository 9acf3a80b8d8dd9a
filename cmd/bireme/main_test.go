package main

import (
	"bytes"
	"testing"

	"github.com/spf13/cobra"
)

// runCommand executes cmd with args, as the CLI would, and returns what it
// wrote to stdout and stderr together, and its error.
func runCommand(t *testing.T, cmd *cobra.Command, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}
