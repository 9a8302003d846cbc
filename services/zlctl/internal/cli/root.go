// Package cli implements zlctl's commands. Each sub-command lives in its own
// file (validate.go, node.go, …); this file wires them to the root command.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// exitError carries a process exit code out of a command without printing
// anything more: the command has already told the user what went wrong.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// Main runs zlctl with args and returns the process exit code.
func Main(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRootCmd(getenv)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintf(stderr, "zlctl: %v\n", err)
	return 1
}

func newRootCmd(getenv func(string) string) *cobra.Command {
	root := &cobra.Command{
		Use:           "zlctl",
		Short:         "Control a ZLayer node or cluster",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newValidateCmd(),
		newSpecCmd(),
	)
	return root
}
