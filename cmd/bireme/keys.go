package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// TODO(owner of this file): replace with the real command.
func newKeysCmd() *cobra.Command {
	return &cobra.Command{Use: "keys", RunE: func(*cobra.Command, []string) error { return errors.New("keys: not built yet") }}
}
