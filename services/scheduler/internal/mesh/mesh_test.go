package mesh

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/scheduler/internal/fsm"
)

type state struct {
	t     *testing.T
	f     *fsm.FSM
	index uint64
}

func newState(t *testing.T) *state {
	f, err := fsm.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &state{t: t, f: f}
}

func (s *state) apply(c *schedulerv1.Command) error {
	s.t.Helper()
	c.ProposedAt = timestamppb.Now()
	data, err := proto.Marshal(c)
	if err != nil {
		s.t.Fatal(err)
	}
	s.index++
	return s.f.Apply(s.index, data).(fsm.Result).Err
}

func (s *state) register(name string, member uint64) {
	s.t.Helper()
	if err := s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_RegisterNode{RegisterNode: &schedulerv1.RegisterNodeCommand{
		Node: &schedulerv1.Node{Name: name, Cpu: 2, MemoryBytes: 1 << 30, MemberId: member},
	}}}); err != nil {
		s.t.Fatal(err)
	}
}

func (s *state) setOverlay(node, key, cidr string) error {
	return s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_SetNodeOverlay{SetNodeOverlay: &schedulerv1.SetNodeOverlayCommand{
		Node: node, Overlay: place(key, cidr),
	}}})
}

// place is a node's place with a key made from name (a real key's shape).
func place(name, cidr string) *schedulerv1.NodeOverlay {
	key := ""
	if name != "" {
		key = base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("%-32s", name)))
	}
	addr := ""
	if p, err := netip.ParsePrefix(cidr); err == nil && p.Addr().Is4() {
		a := p.Masked().Addr().As4()
		v := binary.BigEndian.Uint32(a[:]) | (uint32(1)<<(32-p.Bits()) - 2) // the last host address
		binary.BigEndian.PutUint32(a[:], v)
		addr = netip.AddrFrom4(a).String()
	}
	return &schedulerv1.NodeOverlay{PublicKey: key, Port: 51820, ContainerCidr: cidr, Address: addr}
}

func key(name string) string { return place(name, "").PublicKey }

// members maps Raft member ids to peer addresses; c is not a member.
var members = fsm.MemberAddr(func(id uint64) string {
	return map[uint64]string{1: "192.0.2.1:7946", 2: "192.0.2.2:7946", 4: "[2001:db8::4]:7946"}[id]
})

func TestOverlayPlacesAreChecked(t *testing.T) {
	s := newState(t)
	s.register("a", 1)
	s.register("b", 2)
	if err := s.setOverlay("a", "keyA", "10.1.0.0/16"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		node, key, cidr string
		want            error
		says            string
	}{
		{"b", "keyA", "10.2.0.0/16", errkind.Conflict, `node "a" has the same public key`},
		{"b", "keyB", "10.1.128.0/17", errkind.Conflict, `overlaps node "a"'s 10.1.0.0/16`},
		{"b", "keyB", "10.0.0.0/8", errkind.Conflict, "overlaps"},
		{"b", "", "10.2.0.0/16", errkind.Invalid, "is not a base64 WireGuard key"},
		{"b", "keyB", "ten.two", errkind.Invalid, `container subnet "ten.two"`},
		{"b", "keyB", "fd00::/16", errkind.Invalid, "want an IPv4 CIDR"},
		{"nobody", "keyN", "10.9.0.0/16", errkind.NotFound, `node "nobody"`},
		{"b", "keyB", "10.2.0.0/16", nil, ""},
		{"a", "keyA", "10.1.0.0/16", nil, ""}, // the same again: no change
	}
	for _, tt := range tests {
		err := s.setOverlay(tt.node, tt.key, tt.cidr)
		if !errors.Is(err, tt.want) || tt.want != nil && !strings.Contains(err.Error(), tt.says) {
			t.Errorf("%s %s %s: %v, want %v saying %q", tt.node, tt.key, tt.cidr, err, tt.want, tt.says)
		}
	}
	outside := place("keyC", "10.3.0.0/16")
	outside.Address = "10.9.0.1"
	if err := s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_SetNodeOverlay{SetNodeOverlay: &schedulerv1.SetNodeOverlayCommand{
		Node: "b", Overlay: outside}}}); !errors.Is(err, errkind.Invalid) || !strings.Contains(err.Error(), `device address "10.9.0.1" is not in its subnet`) {
		t.Errorf("an address outside the subnet: %v", err)
	}
	// A node registering again (its scheduler restarted) keeps its place.
	s.register("a", 1)
	if o := s.f.Copy().Nodes["a"].GetOverlay(); o.GetPublicKey() != key("keyA") {
		t.Errorf("after re-registration: overlay %v", o)
	}
}

func TestPeersAreTheOtherMembersInTheMesh(t *testing.T) {
	s := newState(t)
	s.register("a", 1)
	s.register("b", 2)
	s.register("c", 3) // in the state, but not (or no longer) a Raft member
	s.register("d", 4)
	s.register("e", 0) // no cluster
	for i, n := range []string{"a", "b", "c", "e"} {
		if err := s.setOverlay(n, "key"+n, "10."+string(rune('1'+i))+".0.0/16"); err != nil {
			t.Fatal(err)
		}
	}
	st := s.f.Copy()

	req := Peers(st, "a", members)
	if req.Address != "10.1.255.254" || req.ContainerCidr != "10.1.0.0/16" {
		t.Errorf("a's own place: %v", req)
	}
	var got []string
	for _, p := range req.Peers {
		got = append(got, p.Node+"="+p.Endpoint+"/"+p.ContainerCidr+"/"+p.PublicKey)
	}
	// d is a member without an overlay; c and e are no members.
	if want := "b=192.0.2.2:51820/10.2.0.0/16/" + key("keyb"); strings.Join(got, " ") != want {
		t.Errorf("a's peers: %v, want %s", got, want)
	}
	if req := Peers(st, "e", members); len(req.Peers) != 0 || req.Address == "" {
		t.Errorf("a node in no cluster: %v, want its place and no peers", req)
	}
	if req := Peers(st, "d", members); req.Address != "" || len(req.Peers) != 0 {
		t.Errorf("a node whose overlay never reported: %v, want nothing", req)
	}
	for _, tt := range []struct {
		self, n string
		want    bool
	}{{"a", "a", true}, {"a", "b", true}, {"b", "a", true}, {"a", "c", false}, {"a", "d", false}, {"e", "a", false}, {"e", "e", true}} {
		if got := st.Reachable(tt.self, tt.n, members); got != tt.want {
			t.Errorf("Reachable(%s, %s) = %v, want %v", tt.self, tt.n, got, tt.want)
		}
	}
}
