package reconcile

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/scheduler/internal/fsm"
	"zlayer.dev/services/scheduler/internal/pki"
	"zlayer.dev/services/scheduler/internal/placement"
	"zlayer.dev/services/scheduler/internal/raftnode"
)

// benchMember is one in-process scheduler member: a real Raft node over
// mutual TLS on 127.0.0.1 with a real state machine on disk.
type benchMember struct {
	node *raftnode.Node
	fsm  *fsm.FSM
}

func startBenchCluster(b *testing.B, members int) []*benchMember {
	b.Helper()
	ca, err := pki.NewCA()
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	b.Cleanup(func() { cancel(); wg.Wait() })
	start := func(cfg raftnode.Config) *benchMember {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		addr := l.Addr().String()
		if cfg.ID == 0 {
			var buf [8]byte
			_, _ = rand.Read(buf[:])
			cfg.ID = binary.BigEndian.Uint64(buf[:]) | 1
		}
		certPEM, keyPEM, err := ca.Issue(cfg.ID, addr)
		if err != nil {
			b.Fatal(err)
		}
		creds, err := pki.NewCredentials(ca.CertPEM, certPEM, keyPEM)
		if err != nil {
			b.Fatal(err)
		}
		f, err := fsm.Open(filepath.Join(b.TempDir(), "state.db"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { f.Close() })
		cfg.DataDir, cfg.PeerListener, cfg.AdvertiseAddr, cfg.TLS = b.TempDir(), l, addr, creds
		n, err := raftnode.New(cfg, f, zap.NewNop())
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = n.Run(ctx) }()
		return &benchMember{node: n, fsm: f}
	}
	first := start(raftnode.Config{Bootstrap: raftnode.BootstrapNew})
	out := []*benchMember{first}
	waitFor(b, "a leader", func() bool { return first.node.Status().IsLeader })
	for len(out) < members {
		// Reserve the address first: the member's id and cert name it.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		actx, acancel := context.WithTimeout(ctx, 10*time.Second)
		id, err := first.node.AddMember(actx, addr)
		acancel()
		if err != nil {
			b.Fatal(err)
		}
		m := startAt(b, ca, addr, id, first, ctx, &wg)
		out = append(out, m)
	}
	waitFor(b, "all members voting", func() bool {
		voters := 0
		for _, m := range first.node.Members() {
			if !m.Learner {
				voters++
			}
		}
		return voters == members
	})
	return out
}

func startAt(b *testing.B, ca *pki.CA, addr string, id uint64, leader *benchMember, ctx context.Context, wg *sync.WaitGroup) *benchMember {
	b.Helper()
	var l net.Listener
	waitFor(b, "rebinding "+addr, func() bool {
		var err error
		l, err = net.Listen("tcp", addr)
		return err == nil
	})
	certPEM, keyPEM, err := ca.Issue(id, addr)
	if err != nil {
		b.Fatal(err)
	}
	creds, err := pki.NewCredentials(ca.CertPEM, certPEM, keyPEM)
	if err != nil {
		b.Fatal(err)
	}
	f, err := fsm.Open(filepath.Join(b.TempDir(), "state.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	n, err := raftnode.New(raftnode.Config{
		ID: id, DataDir: b.TempDir(), PeerListener: l, AdvertiseAddr: addr, TLS: creds,
		Bootstrap: raftnode.BootstrapJoin, Peers: leader.node.Members(),
	}, f, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = n.Run(ctx) }()
	return &benchMember{node: n, fsm: f}
}

func waitFor(b *testing.B, what string, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func proposeCmd(ctx context.Context, n *raftnode.Node, c *schedulerv1.Command) error {
	if c.ProposedAt == nil {
		c.ProposedAt = timestamppb.Now()
	}
	data, err := proto.Marshal(c)
	if err != nil {
		return err
	}
	for {
		res, err := n.Propose(ctx, data)
		if errors.Is(err, errkind.Unavailable) && ctx.Err() == nil {
			continue
		}
		if err != nil {
			return err
		}
		if r, ok := res.(fsm.Result); ok && r.Err != nil {
			return r.Err
		}
		return nil
	}
}

// BenchmarkPlacement places 10,000 replicas (100 services of 100) onto
// 1,000 simulated nodes (state entries, no containers) through a real
// 3-member Raft cluster, and reports placements per second until the
// leader has committed every placement, and the time until every member
// has applied them.
func BenchmarkPlacement(b *testing.B) {
	const (
		nodes       = 1000
		services    = 100
		perService  = 100
		replicasAll = services * perService
	)
	for range b.N {
		ms := startBenchCluster(b, 3)
		var leader *benchMember
		waitFor(b, "a leader", func() bool {
			for _, m := range ms {
				if m.node.Status().IsLeader {
					leader = m
					return true
				}
			}
			return false
		})
		ctx := context.Background()
		// Register the nodes, 50 proposals in flight at a time.
		sem := make(chan struct{}, 50)
		var wg sync.WaitGroup
		for i := range nodes {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				err := proposeCmd(ctx, leader.node, &schedulerv1.Command{Kind: &schedulerv1.Command_RegisterNode{RegisterNode: &schedulerv1.RegisterNodeCommand{
					Node: &schedulerv1.Node{Name: fmt.Sprintf("node-%04d", i), Cpu: 4, MemoryBytes: 8 << 30},
				}}})
				if err != nil {
					b.Error(err)
				}
			}()
		}
		wg.Wait()
		hashes, scale := map[string]string{}, map[string]uint32{}
		var file []byte
		for s := range services {
			name := fmt.Sprintf("svc%03d", s)
			hashes[name], scale[name] = "h"+name, perService
			if s > 0 {
				file = append(file, ',')
			}
			file = append(file, fmt.Sprintf("%s:h%s:%d", name, name, perService)...)
		}
		specFn := func(d *schedulerv1.Deployment, v *schedulerv1.DeploymentVersion) (map[string]Service, error) {
			svcs, err := specs(d, v)
			for n, s := range svcs {
				s.Demand = placement.Demand{CPU: 0.1, Memory: 64 << 20}
				svcs[n] = s
			}
			return svcs, err
		}
		if err := proposeCmd(ctx, leader.node, &schedulerv1.Command{Kind: &schedulerv1.Command_PutDeployment{PutDeployment: &schedulerv1.PutDeploymentCommand{
			Name: "big", SpecYaml: file, FileName: "bench", ServiceHashes: hashes, InitialScale: scale,
		}}}); err != nil {
			b.Fatal(err)
		}
		assigned := func(f *fsm.FSM) int {
			n := 0
			for _, r := range f.Copy().Replicas {
				if r.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_ASSIGNED {
					n++
				}
			}
			return n
		}
		b.ResetTimer()
		start := time.Now()
		for assigned(leader.fsm) < replicasAll {
			for _, c := range Plan(leader.fsm.Copy(), specFn, time.Now(), Config{}) {
				if err := proposeCmd(ctx, leader.node, c); err != nil {
					b.Fatal(err)
				}
			}
		}
		committed := time.Since(start)
		waitFor(b, "every member to apply the placements", func() bool {
			for _, m := range ms {
				if assigned(m.fsm) < replicasAll {
					return false
				}
			}
			return true
		})
		converged := time.Since(start)
		b.StopTimer()
		b.ReportMetric(float64(replicasAll)/committed.Seconds(), "placements/s")
		b.ReportMetric(converged.Seconds(), "converge-s")
		// Spread check: no node got more than its fair share plus one.
		per := map[string]int{}
		for _, r := range leader.fsm.Copy().Replicas {
			per[r.Node]++
		}
		for node, n := range per {
			if n > replicasAll/nodes+1 {
				b.Fatalf("node %s got %d replicas, want at most %d", node, n, replicasAll/nodes+1)
			}
		}
	}
}
