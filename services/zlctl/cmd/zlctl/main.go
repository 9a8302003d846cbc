// Command zlctl is the ZLayer command-line client.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"zlayer.dev/services/zlctl/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
