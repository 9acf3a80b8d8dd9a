// Command bireme is the single Bireme binary: the node enforcer, the local
// lab, and the tools for keys and policy.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bireme:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "bireme",
		Short:         "Transport identity for TCP: both ends prove who they are in the handshake",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newEnforceCmd(),
		newAgentCmd(),
		newDockerCmd(),
		newSignerCmd(),
		newUninstallCmd(),
		newLabCmd(),
		newPolicyCmd(),
		newKeysCmd(),
		newFlowsCmd(),
	)
	return root
}
