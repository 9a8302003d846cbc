// Package app wires zlayer-agent together: its flags, the container
// network, the registry client, the runner and the gRPC service, run by
// libs/daemon until the context is done. Containers are not stopped when
// the agent stops: the next agent re-adopts them. The runner's warm pool
// of network namespaces (--warm-netns) is released when it stops.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"

	"zlayer.dev/libs/daemon"
	"zlayer.dev/libs/rpc"
	"zlayer.dev/services/agent/internal/images"
	"zlayer.dev/services/agent/internal/netns"
	"zlayer.dev/services/agent/internal/runner"
	"zlayer.dev/services/agent/internal/server"
	"zlayer.dev/services/agent/internal/stats"
)

// Flags are zlayer-agent's own settings (the common ones come from
// libs/daemon).
type Flags struct {
	ContainerCIDR  string
	StopGrace      time.Duration
	Runc           string
	Monitor        string
	CNIBinDir      string
	CgroupParent   string
	RegistrySocket string
	LogMaxSize     int64
	LogFiles       int
	WarmNetns      int
}

func (f *Flags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.ContainerCIDR, "container-cidr", "10.88.0.0/16", "this node's container subnet (IPv4 CIDR)")
	fs.DurationVar(&f.StopGrace, "stop-grace", 10*time.Second, "time between SIGTERM and SIGKILL when stopping a container")
	fs.StringVar(&f.Runc, "runc", "runc", "runc binary")
	fs.StringVar(&f.Monitor, "monitor", "", "zlayer-monitor binary (default: next to zlayer-agent, then PATH)")
	fs.StringVar(&f.CNIBinDir, "cni-bin-dir", "/usr/lib/cni", "directory of the CNI plugins")
	fs.StringVar(&f.CgroupParent, "cgroup-parent", "", "cgroup under which containers' cgroups go (default zlayer/<node>)")
	fs.StringVar(&f.RegistrySocket, "registry-socket", "", "the registry daemon's socket (default <run-dir>/registry.sock)")
	fs.Int64Var(&f.LogMaxSize, "log-max-size", 10<<20, "rotate a container's log file at this many bytes")
	fs.IntVar(&f.LogFiles, "log-files", 2, "rotated log files kept per container")
	fs.IntVar(&f.WarmNetns, "warm-netns", 2, "network namespaces kept made and attached (an address and a veth each) for starts to take instead of running CNI; 0 keeps none")
}

// monitorPath finds zlayer-monitor: next to the running binary, else PATH.
func monitorPath(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "zlayer-monitor")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "zlayer-monitor"
}

// Main runs zlayer-agent with args until ctx is done.
func Main(ctx context.Context, args []string, getenv func(string) string) error {
	var f Flags
	return daemon.Main(ctx, args, getenv, daemon.Component{
		Name:  "agent",
		Flags: f.register,
		Start: func(ctx context.Context, env daemon.Env, srv *grpc.Server) (func(context.Context) error, error) {
			return start(ctx, env, srv, f)
		},
	})
}

func start(ctx context.Context, env daemon.Env, srv *grpc.Server, f Flags) (func(context.Context) error, error) {
	if f.CgroupParent == "" {
		f.CgroupParent = "zlayer/" + env.Node
	}
	if f.RegistrySocket == "" {
		f.RegistrySocket = rpc.SocketPath(env.RunDir, "registry")
	}
	if f.StopGrace < 0 {
		return nil, errors.New("--stop-grace: must not be negative")
	}
	if f.WarmNetns < 0 {
		return nil, errors.New("--warm-netns: must not be negative")
	}
	nw, err := netns.New(netns.Config{
		Node: env.Node, CIDR: f.ContainerCIDR, BinDir: f.CNIBinDir,
		StateDir: filepath.Join(env.DataDir, "cni"),
	})
	if err != nil {
		return nil, err
	}
	cc, err := rpc.Dial(f.RegistrySocket)
	if err != nil {
		return nil, err
	}
	rn, err := runner.New(runner.Config{
		Node:         env.Node,
		StateDir:     env.DataDir,
		RunDir:       filepath.Join(env.RunDir, "agent"),
		Runc:         f.Runc,
		Monitor:      monitorPath(f.Monitor),
		CgroupParent: f.CgroupParent,
		StopGrace:    f.StopGrace,
		LogMax:       f.LogMaxSize,
		LogKeep:      f.LogFiles,
		WarmNetns:    f.WarmNetns,
		LookupEnv: func(k string) (string, bool) {
			v := env.Getenv(k)
			return v, v != ""
		},
	}, env.Log, images.NewRegistry(cc), nw)
	if err != nil {
		cc.Close()
		return nil, err
	}
	// Host changes only after every check passed (runc, monitor, CIDR).
	if err := nw.Setup(); err != nil {
		rn.Close()
		cc.Close()
		return nil, err
	}
	if err := rn.Recover(ctx); err != nil {
		rn.Close()
		cc.Close()
		return nil, err
	}
	env.Metrics.MustRegister(stats.NewCollector(func() []stats.Target {
		var ts []stats.Target
		for _, r := range rn.List() {
			if r.State == runner.StateRunning || r.State == runner.StateStopping {
				ts = append(ts, stats.Target{ID: r.ID(), Deployment: r.Spec.Identity.Deployment,
					Service: r.Spec.Identity.Service, Index: r.Spec.Identity.Index, Cgroup: r.Cgroup})
			}
		}
		return ts
	}))
	server.New(rn, env.Info, f.ContainerCIDR, nw.OverlayAddress()).Register(srv)
	env.Log.Info("agent ready", zap.Int("containers", len(rn.List())), zap.String("cidr", f.ContainerCIDR),
		zap.Int("warm_netns", f.WarmNetns))
	return func(ctx context.Context) error {
		<-ctx.Done()
		rn.Close() // containers keep running; the warm pool is released
		if err := cc.Close(); err != nil {
			return fmt.Errorf("close registry connection: %w", err)
		}
		return nil
	}, nil
}
