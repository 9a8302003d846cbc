// Package app wires zlayer-scheduler together: configuration, the gRPC server and
// background work, run until the context is done.
package app

import (
	"context"

	"google.golang.org/grpc"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/daemon"
	"zlayer.dev/services/scheduler/internal/server"
)

// Main runs zlayer-scheduler with args until ctx is done.
func Main(ctx context.Context, args []string, getenv func(string) string) error {
	return daemon.Main(ctx, args, getenv, daemon.Component{
		Name: "scheduler",
		Start: func(ctx context.Context, env daemon.Env, srv *grpc.Server) (func(context.Context) error, error) {
			schedulerv1.RegisterSchedulerServiceServer(srv, server.New(env))
			return nil, nil
		},
	})
}
