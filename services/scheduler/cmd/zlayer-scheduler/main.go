// Command zlayer-scheduler is ZLayer's scheduler daemon. See internal/app.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"zlayer.dev/services/scheduler/internal/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := app.Main(ctx, os.Args[1:], os.Getenv)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "zlayer-scheduler: %v\n", err)
		os.Exit(1)
	}
}
