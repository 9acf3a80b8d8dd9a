package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// TODO(owner of this file): replace with the real command.
func newPolicyCmd() *cobra.Command {
	return &cobra.Command{Use: "policy", RunE: func(*cobra.Command, []string) error { return errors.New("policy: not built yet") }}
}
