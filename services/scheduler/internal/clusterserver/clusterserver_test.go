package clusterserver

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/rpc"
	"zlayer.dev/services/scheduler/internal/pki"
	"zlayer.dev/services/scheduler/internal/raftnode"
)

// Every goroutine a member or its server starts must end with it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// counter is the smallest state machine: it counts applied entries.
type counter struct {
	mu      sync.Mutex
	applied uint64
	n       int
}

func (c *counter) Apply(index uint64, _ []byte) any {
	c.mu.Lock()
	defer c.mu.Unlock()
	if index > c.applied {
		c.applied = index
		c.n++
	}
	return c.n
}
func (c *counter) Snapshot() ([]byte, error) { return nil, nil }
func (c *counter) Restore(index uint64, _ []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.applied = index
	return nil
}
func (c *counter) AppliedIndex() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applied
}

type scheduler struct {
	node   *raftnode.Node
	client schedulerv1.ClusterServiceClient
	stop   func()
}

// start runs a Raft member and its ClusterService on a Unix socket, the
// way internal/app wires them.
func start(t *testing.T, f Flags, lis net.Listener) *scheduler {
	t.Helper()
	cfg, err := NodeConfig(f)
	if err != nil {
		t.Fatalf("NodeConfig: %v", err)
	}
	cfg.TickInterval = 20 * time.Millisecond
	cfg.PeerListener = lis
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	n, err := raftnode.New(cfg, &counter{}, log)
	if err != nil {
		t.Fatalf("raftnode.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runc := make(chan error, 1)
	go func() { runc <- n.Run(ctx) }()

	sock := filepath.Join(t.TempDir(), "scheduler.sock")
	ul, err := rpc.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := rpc.NewServer(log)
	Register(srv, n, Options{DataDir: f.DataDir, AdvertiseAddr: f.AdvertiseAddr, PeerAddr: f.PeerAddr, Log: log})
	go func() { _ = srv.Serve(ul) }()
	cc, err := rpc.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cc.Close()
			srv.Stop()
			cancel()
			if err := <-runc; err != nil && !errors.Is(err, raftnode.ErrRemoved) {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return &scheduler{node: n, client: schedulerv1.NewClusterServiceClient(cc), stop: stop}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func TestInitAddRemove(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l1, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dir1 := t.TempDir()
	s1 := start(t, Flags{DataDir: dir1, AdvertiseAddr: l1.Addr().String()}, l1)
	eventually(t, "single-member leader", func() bool { return s1.node.Status().IsLeader })

	_, err = s1.client.AddMember(ctx, &schedulerv1.AddMemberRequest{Address: "127.0.0.1:1"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("AddMember before init: %v, want FailedPrecondition", err)
	}
	ir, err := s1.client.InitCluster(ctx, &schedulerv1.InitClusterRequest{})
	if err != nil {
		t.Fatalf("InitCluster: %v", err)
	}
	if ir.GetMember().GetAddress() != l1.Addr().String() || len(ir.GetCaFingerprint()) != 64 {
		t.Fatalf("InitCluster = %v", ir)
	}
	if _, err := os.Stat(filepath.Join(dir1, PKIDir, "ca.key")); err != nil {
		t.Fatalf("CA key not stored: %v", err)
	}
	if _, err := s1.client.InitCluster(ctx, &schedulerv1.InitClusterRequest{}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("second InitCluster: %v, want AlreadyExists", err)
	}

	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ar, err := s1.client.AddMember(ctx, &schedulerv1.AddMemberRequest{Address: l2.Addr().String()})
	if err != nil {
		t.Fatalf("AddMember: %v", err)
	}
	if _, err := s1.client.AddMember(ctx, &schedulerv1.AddMemberRequest{Address: l2.Addr().String()}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("AddMember same address: %v, want AlreadyExists", err)
	}
	raw, err := protojson.Marshal(ar.GetBundle())
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(t.TempDir(), "join.json")
	if err := os.WriteFile(bundle, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	dir2 := t.TempDir()
	s2 := start(t, Flags{DataDir: dir2, JoinFile: bundle}, l2)
	if s2.node.ID() != ar.GetBundle().GetMemberId() {
		t.Fatalf("joined as %x, bundle says %x", s2.node.ID(), ar.GetBundle().GetMemberId())
	}
	eventually(t, "two voters", func() bool {
		lr, err := s2.client.ListMembers(ctx, &schedulerv1.ListMembersRequest{})
		if err != nil || len(lr.GetMembers()) != 2 || lr.GetLeaderId() == 0 {
			return false
		}
		for _, m := range lr.GetMembers() {
			if m.GetLearner() {
				return false
			}
		}
		return true
	})
	if _, err := s2.node.Propose(ctx, []byte("x")); err != nil {
		t.Fatalf("Propose on the joined member: %v", err)
	}

	if _, err := s1.client.RemoveMember(ctx, &schedulerv1.RemoveMemberRequest{MemberId: 42}); status.Code(err) != codes.NotFound {
		t.Fatalf("RemoveMember unknown: %v, want NotFound", err)
	}
	if _, err := s1.client.RemoveMember(ctx, &schedulerv1.RemoveMemberRequest{MemberId: s2.node.ID()}); err != nil {
		t.Fatalf("RemoveMember: %v", err)
	}
	lr, err := s1.client.ListMembers(ctx, &schedulerv1.ListMembersRequest{})
	if err != nil || len(lr.GetMembers()) != 1 || !lr.GetMembers()[0].GetSelf() {
		t.Fatalf("ListMembers after removal = %v, %v", lr, err)
	}
}

func TestNodeConfigBadJoinFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "join.json")
	if err := os.WriteFile(p, []byte(`{"memberId":"1"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := NodeConfig(Flags{DataDir: t.TempDir(), JoinFile: p})
	if err == nil {
		t.Fatal("NodeConfig accepted a bundle without credentials")
	}
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		t.Fatalf("NodeConfig returned a status error: %v", err)
	}
}

// TestInitResumes covers a crash between writing the CA and recording the
// address in Raft: the scheduler restarts with peers on but no address,
// and a second init finishes the job instead of failing.
func TestInitResumes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	s := start(t, Flags{DataDir: dir, AdvertiseAddr: addr}, l)
	eventually(t, "leader", func() bool { return s.node.Status().IsLeader })
	id := s.node.ID()
	s.stop()

	// What InitCluster had written before the crash.
	ca, err := pki.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(id, addr)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := pki.NewCredentials(ca.CertPEM, certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.SaveCA(filepath.Join(dir, PKIDir), ca); err != nil {
		t.Fatal(err)
	}
	if err := pki.SaveCredentials(filepath.Join(dir, PKIDir), creds); err != nil {
		t.Fatal(err)
	}

	var l2 net.Listener
	eventually(t, "rebinding "+addr, func() bool {
		l2, err = net.Listen("tcp", addr)
		return err == nil
	})
	s = start(t, Flags{DataDir: dir, AdvertiseAddr: addr}, l2)
	eventually(t, "leader after restart", func() bool { return s.node.Status().IsLeader })
	ir, err := s.client.InitCluster(ctx, &schedulerv1.InitClusterRequest{})
	if err != nil {
		t.Fatalf("InitCluster after interrupted init: %v", err)
	}
	if ir.GetCaFingerprint() != ca.Fingerprint() || s.node.Members()[0].Addr != addr {
		t.Fatalf("InitCluster = %v, members %+v", ir, s.node.Members())
	}
	if _, err := s.client.InitCluster(ctx, &schedulerv1.InitClusterRequest{}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("third InitCluster: %v, want AlreadyExists", err)
	}
}
