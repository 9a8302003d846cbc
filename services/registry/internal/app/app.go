// Package app wires zlayer-registry together: its flags, the store, the
// puller, the root filesystem manager and the gRPC service, run by
// libs/daemon until the context is done.
package app

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"

	"google.golang.org/grpc"

	registryv1 "zlayer.dev/libs/api/zlayer/registry/v1"
	"zlayer.dev/libs/daemon"
	"zlayer.dev/libs/daemon/version"
	"zlayer.dev/services/registry/internal/pull"
	"zlayer.dev/services/registry/internal/rootfs"
	"zlayer.dev/services/registry/internal/server"
	"zlayer.dev/services/registry/internal/store"
)

// Flags are zlayer-registry's own settings (the common ones come from
// libs/daemon).
type Flags struct {
	Insecure []string
	AuthFile string
	CertsDir string
	Platform string
	Parallel int
}

func (f *Flags) register(fs *flag.FlagSet) {
	fs.Func("insecure-registry", "registry host:port reached over plain HTTP (repeatable)", func(v string) error {
		for _, h := range strings.Split(v, ",") {
			if h = strings.TrimSpace(h); h != "" {
				f.Insecure = append(f.Insecure, h)
			}
		}
		return nil
	})
	fs.StringVar(&f.AuthFile, "auth-file", "", "registry credentials, docker config.json format (default <data-dir>/auth.json)")
	fs.StringVar(&f.CertsDir, "certs-dir", "/etc/containers/certs.d", "per-registry CA certificates: <dir>/<host:port>/ca.crt")
	fs.StringVar(&f.Platform, "platform", runtime.GOOS+"/"+runtime.GOARCH, "os/arch[/variant] to pick from multi-platform images")
	fs.IntVar(&f.Parallel, "parallel", 4, "layers of one image downloaded at once")
}

// Main runs zlayer-registry with args until ctx is done.
func Main(ctx context.Context, args []string, getenv func(string) string) error {
	var f Flags
	return daemon.Main(ctx, args, getenv, daemon.Component{
		Name:  "registry",
		Flags: f.register,
		Start: func(ctx context.Context, env daemon.Env, srv *grpc.Server) (func(context.Context) error, error) {
			if f.AuthFile == "" {
				f.AuthFile = filepath.Join(env.DataDir, "auth.json")
			}
			if f.Parallel < 1 {
				return nil, fmt.Errorf("--parallel %d: must be at least 1", f.Parallel)
			}
			st, err := store.Open(filepath.Join(env.DataDir, "store"), env.Log)
			if err != nil {
				return nil, err
			}
			p, err := pull.New(st, env.Log, pull.Options{
				AuthFile:           f.AuthFile,
				InsecureRegistries: f.Insecure,
				CertsDir:           f.CertsDir,
				Platform:           f.Platform,
				Parallel:           f.Parallel,
				ConfigDir:          filepath.Join(env.DataDir, "config"),
				UserAgent:          "zlayer-registry/" + version.Version,
				Metrics:            env.Metrics,
			})
			if err != nil {
				return nil, err
			}
			m, err := rootfs.New(filepath.Join(env.DataDir, "rootfs"), st, env.Log)
			if err != nil {
				return nil, err
			}
			registryv1.RegisterRegistryServiceServer(srv, server.New(env.Info, p, st, m))
			return nil, nil
		},
	})
}
