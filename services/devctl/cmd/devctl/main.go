// Command devctl is ZLayer's development tool: it runs a node's five daemons
// without systemd, builds demo images and starts local registries.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"zlayer.dev/services/devctl/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
