// Package daemon is the common life of a ZLayer daemon: configuration
// (defaults → file → environment → flags), logging, the run-directory lock,
// the gRPC server on <run-dir>/<component>.sock with health and reflection,
// Prometheus metrics, systemd readiness and graceful shutdown. A component
// supplies only its flags and its Start function; it never parses common
// flags, opens sockets or handles signals itself.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	typesv1 "zlayer.dev/libs/api/zlayer/types/v1"
	"zlayer.dev/libs/daemon/version"
	"zlayer.dev/libs/obs"
	"zlayer.dev/libs/rpc"
)

// Component describes one daemon.
type Component struct {
	// Name is the component's name: agent, scheduler, proxy, overlay or
	// registry. The socket is <run-dir>/<Name>.sock.
	Name string
	// Flags registers the component's own flags. Their values are read after
	// parsing, inside Start. May be nil.
	Flags func(fs *flag.FlagSet)
	// Start registers the component's gRPC services on srv and returns a
	// function that runs its background work until ctx is done (nil if it
	// has none). An error from Start aborts start-up; an error from run
	// stops the daemon.
	Start func(ctx context.Context, env Env, srv *grpc.Server) (run func(context.Context) error, err error)
}

// Env is what a component gets from the daemon.
type Env struct {
	Config
	// Log is the component's logger, already named and carrying the node.
	Log *zap.Logger
	// Metrics registers the component's Prometheus collectors.
	Metrics prometheus.Registerer
	// Getenv reads the process environment; components use it instead of
	// os.Getenv so tests can run daemons in-process.
	Getenv func(string) string

	component string
	started   time.Time
}

// Info describes the daemon for its GetInfo RPC.
func (e Env) Info() *typesv1.DaemonInfo {
	return &typesv1.DaemonInfo{
		Component: e.component,
		Version:   version.Version,
		Node:      e.Node,
		Pid:       int32(os.Getpid()),
		StartedAt: timestamppb.New(e.started),
		Uptime:    durationpb.New(time.Since(e.started)),
		RunDir:    e.RunDir,
		DataDir:   e.DataDir,
	}
}

// Main runs the daemon until ctx is done (the caller cancels it on SIGTERM
// or SIGINT) or a part of it fails. Logs go to stderr.
func Main(ctx context.Context, args []string, getenv func(string) string, c Component) error {
	return run(ctx, args, getenv, os.Stderr, c)
}

func run(ctx context.Context, args []string, getenv func(string) string, logOut io.Writer, c Component) error {
	fs := flag.NewFlagSet("zlayer-"+c.Name, flag.ContinueOnError)
	fs.SetOutput(logOut)
	if c.Flags != nil {
		c.Flags(fs)
	}
	var cfg Config
	if err := parseConfig(fs, args, getenv, c.Name, &cfg); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("configuration: %w", err)
	}
	log, err := obs.NewLogger(logOut, cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	log = log.Named(c.Name).With(zap.String(obs.KeyNode, cfg.Node))

	for _, dir := range []string{cfg.RunDir, cfg.DataDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
	}
	lock, err := rpc.AcquireLock(filepath.Join(cfg.RunDir, c.Name+".lock"))
	if err != nil {
		return fmt.Errorf("zlayer-%s: %w", c.Name, err)
	}
	defer lock.Release()

	sock := rpc.SocketPath(cfg.RunDir, c.Name)
	lis, err := rpc.Listen(sock)
	if err != nil {
		return err
	}
	defer os.Remove(sock)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	env := Env{Config: cfg, Log: log, Metrics: reg, Getenv: getenv, component: c.Name, started: time.Now()}
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "zlayer_daemon_info",
		Help:        "Constant 1, labelled with the daemon's component, version and node.",
		ConstLabels: prometheus.Labels{"component": c.Name, "version": version.Version, "node": cfg.Node},
	})
	info.Set(1)
	reg.MustRegister(info)

	var metricsLis net.Listener
	if cfg.MetricsAddr != "" {
		metricsLis, err = net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			lis.Close()
			return fmt.Errorf("metrics listen %s: %w", cfg.MetricsAddr, err)
		}
	}

	srv, hs := rpc.NewServer(log)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	bg, err := c.Start(ctx, env, srv)
	if err != nil {
		lis.Close()
		if metricsLis != nil {
			metricsLis.Close()
		}
		return fmt.Errorf("start %s: %w", c.Name, err)
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serve %s: %w", sock, err)
		}
		return nil
	})
	if bg != nil {
		g.Go(func() error { return bg(gctx) })
	}
	if metricsLis != nil {
		hsrv := &http.Server{Handler: metricsMux(reg), ReadHeaderTimeout: 10 * time.Second}
		g.Go(func() error {
			if err := hsrv.Serve(metricsLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("metrics serve: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer scancel()
			return hsrv.Shutdown(sctx)
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		hs.Shutdown() // every service NOT_SERVING while we drain
		_ = sdNotify(getenv("NOTIFY_SOCKET"), "STOPPING=1")
		stopped := make(chan struct{})
		go func() { srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(3 * time.Second):
			// Watch streams (events -f, rollout progress) end only when
			// their clients leave: close them rather than wait.
			log.Info("closing streams still open after 3s")
			srv.Stop()
		}
		return nil
	})

	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	if err := sdNotify(getenv("NOTIFY_SOCKET"), "READY=1"); err != nil {
		log.Warn("systemd notification failed", zap.Error(err))
	}
	log.Info("daemon serving", zap.String(obs.KeySocket, sock), zap.String("version", version.Version),
		zap.String("data_dir", cfg.DataDir), zap.String("metrics_addr", cfg.MetricsAddr))
	err = g.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error("daemon stopped on error", zap.Error(err))
		return err
	}
	log.Info("daemon stopped")
	return nil
}

func metricsMux(reg *prometheus.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}
