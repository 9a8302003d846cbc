package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/rpc"
)

// clusterStandIn serves ClusterService with fixed answers and records what
// it was asked. It stands in for the scheduler because the real service
// (services/scheduler/internal/clusterserver, tested there against real
// Raft members) sits behind Go's internal-package rule, out of this
// module's reach; this test checks only what zlctl sends and prints. The
// transport is real: gRPC on a Unix socket made by libs/rpc.
type clusterStandIn struct {
	schedulerv1.UnimplementedClusterServiceServer
	mu      sync.Mutex
	initReq *schedulerv1.InitClusterRequest
	added   []string
	removed []uint64
}

func (s *clusterStandIn) InitCluster(_ context.Context, req *schedulerv1.InitClusterRequest) (*schedulerv1.InitClusterResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.initReq = req
	return &schedulerv1.InitClusterResponse{
		Member:        &schedulerv1.ClusterMember{Id: 0xa1, Address: req.GetAdvertiseAddress(), Self: true, Leader: true},
		CaFingerprint: strings.Repeat("ab", 32),
	}, nil
}

func (s *clusterStandIn) AddMember(_ context.Context, req *schedulerv1.AddMemberRequest) (*schedulerv1.AddMemberResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.added = append(s.added, req.GetAddress())
	return &schedulerv1.AddMemberResponse{Bundle: &schedulerv1.JoinBundle{
		MemberId: 0xb2, Address: req.GetAddress(), CertPem: []byte("cert"), KeyPem: []byte("key"),
		CaCertPem: []byte("ca"), CaKeyPem: []byte("cakey"), CaFingerprint: strings.Repeat("ab", 32),
		Members: []*schedulerv1.ClusterMember{{Id: 0xa1, Address: "10.0.0.1:7946", Leader: true}, {Id: 0xb2, Address: req.GetAddress(), Learner: true}},
	}}, nil
}

func (s *clusterStandIn) RemoveMember(_ context.Context, req *schedulerv1.RemoveMemberRequest) (*schedulerv1.RemoveMemberResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if req.GetMemberId() != 0xb2 {
		return nil, status.Errorf(codes.NotFound, "member %x: not found", req.GetMemberId())
	}
	s.removed = append(s.removed, req.GetMemberId())
	return &schedulerv1.RemoveMemberResponse{}, nil
}

func (s *clusterStandIn) ListMembers(context.Context, *schedulerv1.ListMembersRequest) (*schedulerv1.ListMembersResponse, error) {
	return &schedulerv1.ListMembersResponse{
		SelfId: 0xa1, LeaderId: 0xa1, Term: 3, CommitIndex: 42, AppliedIndex: 41,
		Members: []*schedulerv1.ClusterMember{
			{Id: 0xa1, Address: "10.0.0.1:7946", Leader: true, Self: true},
			{Id: 0xb2, Address: "10.0.0.2:7946", Learner: true},
			{Id: 0xc3, Address: "10.0.0.3:7946"},
		},
	}, nil
}

func startClusterStandIn(t *testing.T) (*clusterStandIn, *globals) {
	t.Helper()
	runDir := t.TempDir()
	l, err := rpc.Listen(rpc.SocketPath(runDir, "scheduler"))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	s := &clusterStandIn{}
	schedulerv1.RegisterClusterServiceServer(srv, s)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return s, &globals{runDir: runDir, getenv: func(string) string { return "" }}
}

func runCluster(t *testing.T, g *globals, args ...string) (string, error) {
	t.Helper()
	cmd := newClusterCmd(g)
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func TestClusterCommands(t *testing.T) {
	s, g := startClusterStandIn(t)

	out, err := runCluster(t, g, "init", "--advertise-addr", "10.0.0.1:7946")
	if err != nil {
		t.Fatalf("init: %v", err)
	}
	if s.initReq.GetAdvertiseAddress() != "10.0.0.1:7946" || !strings.Contains(out, "member:         a1") ||
		!strings.Contains(out, "sha256:abab") {
		t.Fatalf("init sent %v, printed:\n%s", s.initReq, out)
	}

	out, err = runCluster(t, g, "members")
	if err != nil {
		t.Fatalf("members: %v", err)
	}
	want := "ID  ADDRESS        ROLE     SELF\n" +
		"a1  10.0.0.1:7946  leader   *\n" +
		"b2  10.0.0.2:7946  learner  \n" +
		"c3  10.0.0.3:7946  voter    \n" +
		"leader a1, term 3, commit 42, applied 41\n"
	if out != want {
		t.Fatalf("members table:\n%s\nwant:\n%s", out, want)
	}

	out, err = runCluster(t, g, "members", "-o", "json")
	if err != nil {
		t.Fatalf("members -o json: %v", err)
	}
	var got clusterMembersOutput
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("members json: %v\n%s", err, out)
	}
	if got.Leader != "a1" || len(got.Members) != 3 || got.Members[1].Role != "learner" || !got.Members[0].Self {
		t.Fatalf("members json = %+v", got)
	}

	bundle := filepath.Join(t.TempDir(), "join.json")
	out, err = runCluster(t, g, "add-member", "10.0.0.2:7946", "--bundle", bundle)
	if err != nil {
		t.Fatalf("add-member: %v", err)
	}
	if len(s.added) != 1 || s.added[0] != "10.0.0.2:7946" || !strings.Contains(out, "--join "+bundle) {
		t.Fatalf("add-member sent %v, printed:\n%s", s.added, out)
	}
	fi, err := os.Stat(bundle)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("bundle file: %v, %v", fi, err)
	}
	raw, _ := os.ReadFile(bundle)
	var b schedulerv1.JoinBundle
	if err := protojson.Unmarshal(raw, &b); err != nil || b.GetMemberId() != 0xb2 || string(b.GetKeyPem()) != "key" {
		t.Fatalf("bundle file does not parse back: %v\n%s", err, raw)
	}
	if _, err := runCluster(t, g, "add-member", "10.0.0.9:7946", "--bundle", bundle); err == nil || len(s.added) != 1 {
		t.Fatalf("add-member over an existing bundle file: err %v, calls %v", err, s.added)
	}

	out, err = runCluster(t, g, "remove-member", "0xB2")
	if err != nil || len(s.removed) != 1 || s.removed[0] != 0xb2 || out != "member b2 removed\n" {
		t.Fatalf("remove-member: %v, %v, %q", err, s.removed, out)
	}
	if _, err := runCluster(t, g, "remove-member", "ff"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("remove-member unknown: %v", err)
	}
	if _, err := runCluster(t, g, "remove-member", "zz"); err == nil || !strings.Contains(err.Error(), "hex ID") {
		t.Fatalf("remove-member bad id: %v", err)
	}
}
