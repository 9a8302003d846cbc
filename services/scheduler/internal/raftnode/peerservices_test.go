package raftnode

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// TestPeerServicesMembersOnly: services added with Config.PeerServices
// answer members (DialMember) and refuse a certificate of the same CA whose
// member is not in the cluster.
func TestPeerServicesMembersOnly(t *testing.T) {
	c := newCluster(t, func(cfg *Config) {
		cfg.PeerServices = func(r grpc.ServiceRegistrar) { healthpb.RegisterHealthServer(r, health.NewServer()) }
	})
	a := c.members[0]
	b := c.add()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	cc, err := a.node.DialMember(b.node.ID())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("member %x calling member %x: %v", a.node.ID(), b.node.ID(), err)
	}

	// Same CA, but no member of the cluster.
	stranger, _ := randomID(nil)
	creds := c.creds(stranger, "127.0.0.1:1")
	addr := b.node.Members()[0].Addr
	for _, m := range b.node.Members() {
		if m.ID == b.node.ID() {
			addr = m.Addr
		}
	}
	sc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(creds.ClientTLS())))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	_, err = healthpb.NewHealthClient(sc).Check(ctx, &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a non-member's call: %v, want PermissionDenied", err)
	}

	if _, err := a.node.DialMember(stranger); err == nil {
		t.Fatal("DialMember of an unknown member: want an error")
	}
}
