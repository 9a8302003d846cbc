// Package app wires zlayer-proxy together: configuration, the route table,
// the HTTP and HTTPS listeners, the public tcp/udp ports, certificates,
// metrics and the gRPC server, run until the context is done.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	proxyv1 "zlayer.dev/libs/api/zlayer/proxy/v1"
	"zlayer.dev/libs/daemon"
	"zlayer.dev/libs/rpc"
	"zlayer.dev/services/proxy/internal/balance"
	"zlayer.dev/services/proxy/internal/certs"
	"zlayer.dev/services/proxy/internal/httpproxy"
	"zlayer.dev/services/proxy/internal/jobclient"
	"zlayer.dev/services/proxy/internal/l4"
	"zlayer.dev/services/proxy/internal/metrics"
	"zlayer.dev/services/proxy/internal/routes"
	"zlayer.dev/services/proxy/internal/server"
)

// Main runs zlayer-proxy with args until ctx is done.
func Main(ctx context.Context, args []string, getenv func(string) string) error {
	var cfg config
	return daemon.Main(ctx, args, getenv, daemon.Component{
		Name:  "proxy",
		Flags: func(fs *flag.FlagSet) { cfg.register(fs) },
		Start: func(ctx context.Context, env daemon.Env, srv *grpc.Server) (func(context.Context) error, error) {
			// Job routes start runs through the node's scheduler and agent
			// (connections are lazy: neither needs to be up yet).
			sched, err := rpc.Dial(rpc.SocketPath(env.RunDir, "scheduler"))
			if err != nil {
				return nil, err
			}
			agent, err := rpc.Dial(rpc.SocketPath(env.RunDir, "agent"))
			if err != nil {
				sched.Close()
				return nil, err
			}
			run, err := start(env, srv, &cfg, jobclient.New(env.Node, sched, agent))
			if err != nil {
				sched.Close()
				agent.Close()
				return nil, err
			}
			return func(ctx context.Context) error {
				defer sched.Close()
				defer agent.Close()
				return run(ctx)
			}, nil
		},
	})
}

// start builds the proxy. jobs runs job routes (nil: they answer 503).
func start(env daemon.Env, srv *grpc.Server, cfg *config, jobs httpproxy.JobRunner) (run func(context.Context) error, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	policy, _ := balance.ParsePolicy(cfg.LB)
	roots, err := cfg.acmeRoots()
	if err != nil {
		return nil, err
	}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	reg := metrics.New(env.Metrics, time.Now)
	store := routes.NewStore(policy, cfg.EjectTime, time.Now, reg)
	cm, err := certs.New(certs.Config{
		StorageDir: filepath.Join(env.DataDir, "certmagic"),
		StaticDir:  cfg.TLSCertDir,
		ACMECA:     cfg.ACMECA,
		ACMEEmail:  cfg.ACMEEmail,
		ACMERoots:  roots,
		HTTPAddr:   cfg.HTTPAddr,
		HTTPSAddr:  cfg.HTTPSAddr,
		Log:        env.Log,
	})
	if err != nil {
		return nil, err
	}
	undo = append(undo, cm.Close)
	ports := l4.New(l4.Config{Host: cfg.L4Host, ConnectTimeout: cfg.ConnectTimeout, UDPFlowTimeout: cfg.UDPFlowTimeout, Log: env.Log})
	undo = append(undo, ports.Close)
	store.AddApplier(ports)
	store.AddApplier(cm)

	var access *zap.Logger
	if cfg.AccessLog {
		access = env.Log.Named("access")
	}
	_, httpsPort, _ := net.SplitHostPort(cfg.HTTPSAddr)
	hp, _ := strconv.Atoi(httpsPort)
	px := httpproxy.New(httpproxy.Config{
		Routes:             store,
		HTTPSPort:          hp,
		ConnectTimeout:     cfg.ConnectTimeout,
		ResponseTimeout:    cfg.RequestTimeout,
		IdleBackendConns:   cfg.BackendIdleConns,
		BackendIdleTimeout: 90 * time.Second,
		TrustForwarded:     cfg.TrustForwarded,
		Jobs:               jobs,
		JobOutputLimit:     cfg.JobOutputLimit,
		Log:                env.Log,
		AccessLog:          access,
	})
	undo = append(undo, px.Close)

	httpLn, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("http listener: %w", err)
	}
	undo = append(undo, func() { httpLn.Close() })
	httpsLn, err := net.Listen("tcp", cfg.HTTPSAddr)
	if err != nil {
		return nil, fmt.Errorf("https listener: %w", err)
	}
	undo = append(undo, func() { httpsLn.Close() })

	t := httpproxy.Timeouts{ReadHeader: cfg.ReadHeaderTimeout, Idle: cfg.IdleTimeout}
	plain := px.NewFront(cm.HTTPHandler(px.Handler(false)), nil, t, env.Log)
	secure := px.NewFront(px.Handler(true), cm.TLSConfig(), t, env.Log)
	plain.Loops, secure.Loops = cfg.EventLoops, cfg.EventLoops
	proxyv1.RegisterProxyServiceServer(srv, server.New(env, store, time.Now, env.Log))
	env.Log.Info("proxy listening", zap.String("http", httpLn.Addr().String()), zap.String("https", httpsLn.Addr().String()),
		zap.String("lb", policy.String()), zap.Bool("acme", cfg.ACMECA != ""), zap.Int("event_loops", cfg.EventLoops))

	return func(ctx context.Context) error {
		g, gctx := errgroup.WithContext(ctx)
		g.Go(func() error { return serve(plain.Serve(httpLn), "http") })
		g.Go(func() error { return serve(secure.Serve(httpsLn), "https") })
		g.Go(func() error { return reg.Run(gctx) })
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
			defer cancel()
			errs := []error{plain.Shutdown(sctx), secure.Shutdown(sctx)}
			ports.Close()
			cm.Close()
			px.Close()
			return errors.Join(errs...)
		})
		return g.Wait()
	}, nil
}

func serve(err error, name string) error {
	if err == nil || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("%s listener: %w", name, err)
}
