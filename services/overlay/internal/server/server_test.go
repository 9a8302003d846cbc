package server

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	overlayv1 "zlayer.dev/libs/api/zlayer/overlay/v1"
	typesv1 "zlayer.dev/libs/api/zlayer/types/v1"
	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/overlay/internal/wg"
)

type info struct{}

func (info) Info() *typesv1.DaemonInfo { return &typesv1.DaemonInfo{} }

// TestSetPeersLeavesOutBadPeers: a bad address fails the request; a bad
// peer is left out and logged by name and field, and the rest is set.
func TestSetPeersLeavesOutBadPeers(t *testing.T) {
	m, err := wg.New("zlbad0", 51820, filepath.Join(t.TempDir(), "key"), zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.WarnLevel)
	s := New(info{}, m, zap.New(core))
	peer := func(node string) *overlayv1.Peer {
		return &overlayv1.Peer{Node: node, PublicKey: "MJtLpCaS5BpaKOS3A+FLY/33WCjQe3hhE9GMkULlblQ=", Endpoint: "192.0.2.2:51820", ContainerCidr: "10.2.0.0/16"}
	}
	if _, err := s.SetPeers(context.Background(), &overlayv1.SetPeersRequest{Address: "ten", Peers: []*overlayv1.Peer{peer("n2")}}); !errors.Is(err, errkind.Invalid) || !strings.Contains(err.Error(), `address "ten"`) {
		t.Errorf("bad address: %v", err)
	}
	bad := []*overlayv1.Peer{peer("n2"), peer("n3"), peer("n4")}
	bad[0].PublicKey = "c2hvcnQ="
	bad[1].Endpoint = "no port"
	bad[2].ContainerCidr = "fd00::/64"
	if _, err := s.SetPeers(context.Background(), &overlayv1.SetPeersRequest{Address: "10.1.255.254", Peers: bad}); err != nil {
		t.Fatalf("only bad peers: %v, want them left out", err)
	}
	var said []string
	for _, e := range logs.All() {
		said = append(said, fmt.Sprint(e.ContextMap()["peer"], ": ", e.ContextMap()["error"]))
	}
	for _, want := range []string{`peers[0] (node "n2"): public key`, `peers[1] (node "n3"): endpoint "no port"`, `peers[2] (node "n4"): container subnet "fd00::/64"`} {
		if !strings.Contains(strings.Join(said, "\n"), want) {
			t.Errorf("the log does not say %q:\n%s", want, strings.Join(said, "\n"))
		}
	}
	if st, _ := m.Status(); len(st) != 0 {
		t.Errorf("peers %v, want none (no device)", st)
	}
	id, err := s.GetIdentity(context.Background(), &overlayv1.GetIdentityRequest{})
	if err != nil || id.PublicKey != m.PublicKey() || id.Port != 51820 || id.Device != "zlbad0" {
		t.Errorf("identity %v, %v", id, err)
	}
}
