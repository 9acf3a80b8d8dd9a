package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// TODO(owner of this file): replace with the real command.
func newEnforceCmd() *cobra.Command {
	return &cobra.Command{Use: "enforce", RunE: func(*cobra.Command, []string) error { return errors.New("enforce: not built yet") }}
}
