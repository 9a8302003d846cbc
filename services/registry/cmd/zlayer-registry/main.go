// Command zlayer-registry is ZLayer's image daemon: pulls, the
// content-addressed store and container root filesystems. See internal/app.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"zlayer.dev/services/registry/internal/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := app.Main(ctx, os.Args[1:], os.Getenv)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "zlayer-registry: %v\n", err)
		os.Exit(1)
	}
}
