// Package app wires zlayer-overlay together: configuration, the gRPC server and
// background work, run until the context is done.
package app

import (
	"context"

	"google.golang.org/grpc"

	overlayv1 "zlayer.dev/libs/api/zlayer/overlay/v1"
	"zlayer.dev/libs/daemon"
	"zlayer.dev/services/overlay/internal/server"
)

// Main runs zlayer-overlay with args until ctx is done.
func Main(ctx context.Context, args []string, getenv func(string) string) error {
	return daemon.Main(ctx, args, getenv, daemon.Component{
		Name: "overlay",
		Start: func(ctx context.Context, env daemon.Env, srv *grpc.Server) (func(context.Context) error, error) {
			overlayv1.RegisterOverlayServiceServer(srv, server.New(env))
			return nil, nil
		},
	})
}
