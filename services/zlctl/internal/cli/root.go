// Package cli implements zlctl's commands. Each sub-command lives in its own
// file (validate.go, node.go, …); this file wires them to the root command
// and holds the options every command shares.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"zlayer.dev/libs/rpc"
)

// exitError carries a process exit code out of a command without printing
// anything more: the command has already told the user what went wrong.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// globals are the options every command shares.
type globals struct {
	runDir string
	getenv func(string) string
}

// socket returns the path of component's socket on the local node.
func (g *globals) socket(component string) string {
	return rpc.SocketPath(g.runDir, component)
}

// dial connects to a local daemon. The connection is lazy: a daemon that is
// down shows up as an Unavailable error on the first call.
func (g *globals) dial(component string) (*grpc.ClientConn, error) {
	return rpc.Dial(g.socket(component))
}

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
	g := &globals{getenv: getenv}
	root := &cobra.Command{
		Use:           "zlctl",
		Short:         "Control a ZLayer node or cluster",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	defRunDir := getenv("ZLAYER_RUN_DIR")
	if defRunDir == "" {
		defRunDir = "/run/zlayer"
	}
	root.PersistentFlags().StringVar(&g.runDir, "run-dir", defRunDir, "the local node's run directory, where the daemons' sockets are [$ZLAYER_RUN_DIR]")
	root.AddCommand(
		newVersionCmd(g),
		newNodeCmd(g),
		newValidateCmd(),
		newSpecCmd(),
		newDeployCmd(g),
		newStatusCmd(g),
		newScaleCmd(g),
		newDeleteCmd(g),
		newRollbackCmd(g),
		newHistoryCmd(g),
		newEventsCmd(g),
		newImageCmd(g),
		newPsCmd(g),
		newLogsCmd(g),
		newExecCmd(g),
		newClusterCmd(g),
		newJobCmd(g),
		newRoutesCmd(g),
		newTokenCmd(g),
	)
	return root
}
