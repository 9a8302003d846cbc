package server

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	overlayv1 "zlayer.dev/libs/api/zlayer/overlay/v1"
	typesv1 "zlayer.dev/libs/api/zlayer/types/v1"
	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/overlay/internal/wg"
)

type info struct{}

func (info) Info() *typesv1.DaemonInfo { return &typesv1.DaemonInfo{} }

// TestSetPeersNamesTheBadPeer: a bad request changes nothing and says
// which peer and field are wrong.
func TestSetPeersNamesTheBadPeer(t *testing.T) {
	m, err := wg.New("zlbad0", 51820, filepath.Join(t.TempDir(), "key"), zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	s := New(info{}, m)
	good := func() *overlayv1.Peer {
		return &overlayv1.Peer{Node: "n2", PublicKey: "MJtLpCaS5BpaKOS3A+FLY/33WCjQe3hhE9GMkULlblQ=", Endpoint: "192.0.2.2:51820", ContainerCidr: "10.2.0.0/16"}
	}
	tests := []struct {
		name string
		mod  func(*overlayv1.SetPeersRequest)
		says string
	}{
		{"address", func(r *overlayv1.SetPeersRequest) { r.Address = "ten" }, `address "ten"`},
		{"key", func(r *overlayv1.SetPeersRequest) { r.Peers[1].PublicKey = "c2hvcnQ=" }, `peers[1] (node "n3"): public key`},
		{"endpoint", func(r *overlayv1.SetPeersRequest) { r.Peers[1].Endpoint = "no port" }, `peers[1] (node "n3"): endpoint "no port"`},
		{"subnet", func(r *overlayv1.SetPeersRequest) { r.Peers[0].ContainerCidr = "fd00::/64" }, `peers[0] (node "n2"): container subnet "fd00::/64"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			second := good()
			second.Node = "n3"
			req := &overlayv1.SetPeersRequest{Address: "10.1.255.254", ContainerCidr: "10.1.0.0/16", Peers: []*overlayv1.Peer{good(), second}}
			tt.mod(req)
			_, err := s.SetPeers(context.Background(), req)
			if !errors.Is(err, errkind.Invalid) || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("%v, want Invalid saying %q", err, tt.says)
			}
		})
	}
	id, err := s.GetIdentity(context.Background(), &overlayv1.GetIdentityRequest{})
	if err != nil || id.PublicKey != m.PublicKey() || id.Port != 51820 || id.Device != "zlbad0" {
		t.Errorf("identity %v, %v", id, err)
	}
}
