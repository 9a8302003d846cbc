// Package app wires zlayer-proxy together: configuration, the gRPC server and
// background work, run until the context is done.
package app

import (
	"context"

	"google.golang.org/grpc"

	proxyv1 "zlayer.dev/libs/api/zlayer/proxy/v1"
	"zlayer.dev/libs/daemon"
	"zlayer.dev/services/proxy/internal/server"
)

// Main runs zlayer-proxy with args until ctx is done.
func Main(ctx context.Context, args []string, getenv func(string) string) error {
	return daemon.Main(ctx, args, getenv, daemon.Component{
		Name: "proxy",
		Start: func(ctx context.Context, env daemon.Env, srv *grpc.Server) (func(context.Context) error, error) {
			proxyv1.RegisterProxyServiceServer(srv, server.New(env))
			return nil, nil
		},
	})
}
