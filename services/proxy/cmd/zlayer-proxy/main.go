// Command zlayer-proxy is ZLayer's proxy daemon. See internal/app.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"zlayer.dev/services/proxy/internal/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := app.Main(ctx, os.Args[1:], os.Getenv)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "zlayer-proxy: %v\n", err)
		os.Exit(1)
	}
}
