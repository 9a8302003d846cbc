// Package app wires zlayer-overlay together: configuration, the WireGuard
// mesh and the gRPC server, run until the context is done.
package app

import (
	"context"
	"flag"
	"path/filepath"

	"google.golang.org/grpc"

	overlayv1 "zlayer.dev/libs/api/zlayer/overlay/v1"
	"zlayer.dev/libs/daemon"
	"zlayer.dev/services/overlay/internal/server"
	"zlayer.dev/services/overlay/internal/wg"
)

// Main runs zlayer-overlay with args until ctx is done.
func Main(ctx context.Context, args []string, getenv func(string) string) error {
	var (
		device string
		port   int
	)
	return daemon.Main(ctx, args, getenv, daemon.Component{
		Name: "overlay",
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&device, "device", "zl-wg0", "name of the WireGuard (TUN) interface")
			fs.IntVar(&port, "wg-port", 51820, "UDP port of the WireGuard device; other nodes send to it")
		},
		Start: func(ctx context.Context, env daemon.Env, srv *grpc.Server) (func(context.Context) error, error) {
			mesh, err := wg.New(device, port, filepath.Join(env.DataDir, "wireguard.key"), env.Log)
			if err != nil {
				return nil, err
			}
			overlayv1.RegisterOverlayServiceServer(srv, server.New(env, mesh, env.Log))
			return func(ctx context.Context) error {
				<-ctx.Done()
				mesh.Close()
				return nil
			}, nil
		},
	})
}
