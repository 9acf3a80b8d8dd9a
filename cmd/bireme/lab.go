package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// TODO(owner of this file): replace with the real command.
func newLabCmd() *cobra.Command {
	return &cobra.Command{Use: "lab", RunE: func(*cobra.Command, []string) error { return errors.New("lab: not built yet") }}
}
