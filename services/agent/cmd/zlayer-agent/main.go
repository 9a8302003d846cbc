// Command zlayer-agent runs a node's containers with runc: bundles, cgroup
// limits, network namespaces through CNI, logs, exec and stats. Containers
// outlive it; a restarted agent re-adopts them. See internal/app.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"zlayer.dev/services/agent/internal/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := app.Main(ctx, os.Args[1:], os.Getenv)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "zlayer-agent: %v\n", err)
		os.Exit(1)
	}
}
