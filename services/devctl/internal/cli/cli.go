// Package cli implements devctl's commands.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"zlayer.dev/libs/obs"
)

// exitError ends devctl with a code after the command has said why.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

type globals struct {
	getenv func(string) string
	stdout io.Writer
	stderr io.Writer
	log    *zap.Logger
}

// Main runs devctl and returns the exit code.
func Main(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	log, err := obs.NewLogger(stderr, "console", "info")
	if err != nil {
		fmt.Fprintf(stderr, "devctl: %v\n", err)
		return 1
	}
	g := &globals{getenv: getenv, stdout: stdout, stderr: stderr, log: log.Named("devctl")}
	root := &cobra.Command{
		Use:           "devctl",
		Short:         "ZLayer development tool: local nodes, demo images, registries",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newUpCmd(g), newDownCmd(g), newImageCmd(g), newRegistryCmd(g))
	err = root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintf(stderr, "devctl: %v\n", err)
	return 1
}
