// Package app wires zlayer-scheduler together: the state machine, the Raft
// node, the leader's reconcile loop, this node's side (agent sync and
// heartbeats) and the gRPC services, run until the context is done.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	overlayv1 "zlayer.dev/libs/api/zlayer/overlay/v1"
	proxyv1 "zlayer.dev/libs/api/zlayer/proxy/v1"
	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/daemon"
	"zlayer.dev/libs/rpc"
	"zlayer.dev/services/scheduler/internal/agentclient"
	"zlayer.dev/services/scheduler/internal/clusterserver"
	"zlayer.dev/services/scheduler/internal/fsm"
	"zlayer.dev/services/scheduler/internal/mesh"
	"zlayer.dev/services/scheduler/internal/names"
	"zlayer.dev/services/scheduler/internal/nodeside"
	"zlayer.dev/services/scheduler/internal/raftnode"
	"zlayer.dev/services/scheduler/internal/reconcile"
	"zlayer.dev/services/scheduler/internal/routes"
	"zlayer.dev/services/scheduler/internal/server"
	"zlayer.dev/services/scheduler/internal/specinfo"
)

// options are the scheduler's own flags.
type options struct {
	nodeTimeout   time.Duration
	heartbeat     time.Duration
	loadInterval  time.Duration
	jobHistory    int
	timezone      string
	reconcileTick time.Duration
	cpus          float64
	memory        int64
	labels        string
	peerAddr      string
	advertiseAddr string
	raftTick      time.Duration
	snapshotEvery uint64
	join          string
	maxVoters     int
}

func (o *options) register(fs *flag.FlagSet) {
	fs.DurationVar(&o.nodeTimeout, "node-timeout", 5*time.Second, "a node silent this long is marked down and its replicas placed elsewhere")
	fs.DurationVar(&o.heartbeat, "heartbeat", time.Second, "how often this node reports to the cluster")
	fs.IntVar(&o.jobHistory, "job-history", reconcile.DefaultJobHistory, "finished runs kept per job or cron job")
	fs.StringVar(&o.timezone, "timezone", "UTC", "time zone of cron schedules (an IANA name such as Europe/Paris)")
	fs.DurationVar(&o.loadInterval, "load-interval", 10*time.Second, "how often this node reports its load (requests/s, CPU, memory) for adaptive scaling")
	fs.DurationVar(&o.reconcileTick, "reconcile-interval", 500*time.Millisecond, "how often the leader reconciles when nothing changes")
	fs.Float64Var(&o.cpus, "cpus", 0, "CPUs this node offers (default: all)")
	fs.Int64Var(&o.memory, "memory-bytes", 0, "memory this node offers in bytes (default: all)")
	fs.StringVar(&o.labels, "labels", "", "node labels, k=v,k=v")
	fs.StringVar(&o.peerAddr, "peer-addr", "", "host:port for Raft peers (mutual TLS); empty keeps a single member without a peer listener until `zlctl cluster init`")
	fs.StringVar(&o.advertiseAddr, "advertise-addr", "", "how other members reach this one (default: --peer-addr)")
	fs.DurationVar(&o.raftTick, "raft-tick", raftnode.DefaultTickInterval, "Raft tick; elections time out after 10-20 ticks")
	fs.Uint64Var(&o.snapshotEvery, "snapshot-entries", raftnode.DefaultSnapshotEntries, "snapshot and compact the Raft log every this many entries")
	fs.IntVar(&o.maxVoters, "max-voters", raftnode.DefaultMaxVoters, "voting Raft members at most (the leader's setting counts); members beyond stay non-voting learners, promoted when a voter is removed")
	fs.StringVar(&o.join, "join", "", "join bundle written by `zlctl cluster add-member`; read on the first start only")
}

// Main runs zlayer-scheduler with args until ctx is done.
func Main(ctx context.Context, args []string, getenv func(string) string) error {
	var o options
	return daemon.Main(ctx, args, getenv, daemon.Component{
		Name:  "scheduler",
		Flags: o.register,
		Start: func(ctx context.Context, env daemon.Env, srv *grpc.Server) (func(context.Context) error, error) {
			return start(ctx, env, srv, o)
		},
	})
}

func start(ctx context.Context, env daemon.Env, srv *grpc.Server, o options) (func(context.Context) error, error) {
	loc, err := time.LoadLocation(o.timezone)
	if err != nil {
		return nil, fmt.Errorf("--timezone %q: %w", o.timezone, err)
	}
	state, err := fsm.Open(filepath.Join(env.DataDir, "state.db"))
	if err != nil {
		return nil, err
	}
	cfg, err := clusterserver.NodeConfig(clusterserver.Flags{
		DataDir:         env.DataDir,
		PeerAddr:        o.peerAddr,
		AdvertiseAddr:   o.advertiseAddr,
		JoinFile:        o.join,
		TickInterval:    o.raftTick,
		SnapshotEntries: o.snapshotEvery,
	})
	if err != nil {
		state.Close()
		return nil, fmt.Errorf("raft: %w", err)
	}
	if o.maxVoters < 1 {
		state.Close()
		return nil, fmt.Errorf("--max-voters %d: must be at least 1", o.maxVoters)
	}
	cfg.MaxVoters = o.maxVoters
	peers := &server.PeerServer{}
	cfg.PeerServices = func(r grpc.ServiceRegistrar) { schedulerv1.RegisterSchedulerServiceServer(r, peers) }
	node, err := raftnode.New(cfg, state, env.Log)
	if err != nil {
		state.Close()
		return nil, fmt.Errorf("raft: %w", err)
	}
	clusterserver.Register(srv, node, clusterserver.Options{
		DataDir: env.DataDir, AdvertiseAddr: o.advertiseAddr, PeerAddr: o.peerAddr, Log: env.Log,
	})
	specs := &specinfo.Cache{Location: loc}
	agentConn, err := rpc.Dial(rpc.SocketPath(env.RunDir, "agent"))
	if err != nil {
		state.Close()
		return nil, err
	}
	api := server.New(env, node, state, specs, server.Local{
		Node: env.Node, Agent: agentv1.NewAgentServiceClient(agentConn), DialMember: node.DialMember,
	})
	schedulerv1.RegisterSchedulerServiceServer(srv, api)
	peers.Serve(api)

	self, err := describeNode(env.Node, node.ID(), o)
	if err != nil {
		state.Close()
		agentConn.Close()
		return nil, err
	}
	proxyConn, err := rpc.Dial(rpc.SocketPath(env.RunDir, "proxy"))
	if err != nil {
		state.Close()
		agentConn.Close()
		return nil, err
	}
	overlayConn, err := rpc.Dial(rpc.SocketPath(env.RunDir, "overlay"))
	if err != nil {
		state.Close()
		agentConn.Close()
		proxyConn.Close()
		return nil, err
	}
	side := nodeside.New(nodeside.Config{Node: self, Heartbeat: o.heartbeat, LoadInterval: o.loadInterval, Proxy: proxyv1.NewProxyServiceClient(proxyConn)},
		env.Log, state, node, agentclient.New(agentConn), specs)
	rc := reconcile.Config{NodeTimeout: o.nodeTimeout, MaxRolloutRestarts: 3, ReplaceFailedAfter: 10 * time.Second, LoadFresh: 3 * o.loadInterval, JobHistory: o.jobHistory}

	// The members' peer addresses, read once per table built from them.
	members := func() fsm.MemberAddr {
		addrs := map[uint64]string{}
		for _, m := range node.Members() {
			addrs[m.ID] = m.Addr
		}
		return func(id uint64) string { return addrs[id] }
	}
	overlayMesh := mesh.New(mesh.Config{Node: env.Node, State: state, Raft: node, Agent: agentv1.NewAgentServiceClient(agentConn),
		Overlay: overlayv1.NewOverlayServiceClient(overlayConn), Members: members, Every: 5 * time.Second, Log: env.Log})
	// The proxy gets the replicas of this node and of nodes in the mesh whose
	// device shook hands with this node's recently.
	reachable := func(st *fsm.State) func(string) bool {
		addr := members()
		return func(n string) bool { return n == env.Node || st.Reachable(env.Node, n, addr) && overlayMesh.Live(n) }
	}

	return func(ctx context.Context) error {
		defer state.Close()
		defer agentConn.Close()
		defer proxyConn.Close()
		defer overlayConn.Close()
		g, ctx := errgroup.WithContext(ctx)
		g.Go(func() error {
			return routes.Push(ctx, env.Log, state, specs, proxyv1.NewProxyServiceClient(proxyConn), reachable, 5*time.Second)
		})
		g.Go(func() error {
			return names.Push(ctx, env.Log, state, specs, agentv1.NewAgentServiceClient(agentConn), overlayMesh.Device, 5*time.Second)
		})
		g.Go(func() error { return overlayMesh.Run(ctx) })
		g.Go(func() error { return node.Run(ctx) })
		g.Go(func() error { return side.Run(ctx) })
		g.Go(func() error { return reconcileLoop(ctx, env.Log, node, state, specs, rc, o.reconcileTick) })
		err := g.Wait()
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	}, nil
}

// reconcileLoop plans and proposes while this member leads.
func reconcileLoop(ctx context.Context, log *zap.Logger, node *raftnode.Node, state *fsm.FSM, specs *specinfo.Cache, cfg reconcile.Config, tick time.Duration) error {
	log = log.Named("reconcile")
	specFn := func(d *schedulerv1.Deployment, v *schedulerv1.DeploymentVersion) (map[string]reconcile.Service, error) {
		parsed, err := specs.Get(v.FileName, v.SpecYaml)
		if err != nil {
			return nil, err
		}
		out := make(map[string]reconcile.Service, len(parsed.Services))
		for n, s := range parsed.Services {
			out[n] = s.Service
		}
		return out, nil
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	var leaderSince time.Time
	for {
		changed := state.Changed()
		if !node.Status().IsLeader {
			leaderSince = time.Time{}
		} else {
			if leaderSince.IsZero() {
				leaderSince = time.Now()
			}
			round := cfg
			if time.Since(leaderSince) < cfg.NodeTimeout {
				// A new leader has heard no heartbeats yet (those sent during
				// the election were lost): give every node one timeout to
				// report before judging any of them down.
				round.NodeTimeout = 0
			}
			for _, c := range reconcile.Plan(state.Copy(), specFn, time.Now(), round) {
				data, err := proto.Marshal(c)
				if err != nil {
					return err
				}
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				res, err := node.Propose(pctx, data)
				cancel()
				if err != nil {
					log.Info("plan not committed", zap.Error(err))
					break
				}
				if r, ok := res.(fsm.Result); ok && r.Err != nil {
					log.Info("plan step rejected", zap.Error(r.Err))
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-t.C:
		}
	}
}

// describeNode is this node as it registers itself.
func describeNode(name string, member uint64, o options) (*schedulerv1.Node, error) {
	n := &schedulerv1.Node{Name: name, Cpu: o.cpus, MemoryBytes: uint64(max(o.memory, 0)), Labels: map[string]string{}, Address: o.advertiseAddr, MemberId: member}
	if n.Cpu == 0 {
		n.Cpu = float64(runtime.NumCPU())
	}
	if n.MemoryBytes == 0 {
		mem, err := memTotal()
		if err != nil {
			return nil, err
		}
		n.MemoryBytes = mem
	}
	if o.labels != "" {
		for _, kv := range strings.Split(o.labels, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("--labels %q: want k=v,k=v", o.labels)
			}
			n.Labels[k] = v
		}
	}
	return n, nil
}

func memTotal() (uint64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("read node memory: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		var kb uint64
		if _, err := fmt.Sscanf(line, "MemTotal: %d kB", &kb); err == nil {
			return kb << 10, nil
		}
	}
	return 0, errors.New("read node memory: no MemTotal in /proc/meminfo")
}
