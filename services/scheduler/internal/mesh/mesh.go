// Package mesh keeps this node's part of the WireGuard mesh that carries
// traffic between nodes' containers. It records the node's place in the
// mesh in the replicated state (the overlay's public key and port, the
// agent's container subnet and the address the agent keeps for the
// device), and keeps the local overlay's peers equal to every other node
// in the mesh. A node is in the mesh once its overlay answered and it has
// an advertised address (it is in a cluster).
package mesh

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	overlayv1 "zlayer.dev/libs/api/zlayer/overlay/v1"
	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/services/scheduler/internal/fsm"
	"zlayer.dev/services/scheduler/internal/push"
)

// Proposer commits commands (the Raft node).
type Proposer interface {
	Propose(ctx context.Context, data []byte) (any, error)
}

// Config is what Run needs.
type Config struct {
	Node    string
	State   *fsm.FSM
	Raft    Proposer
	Agent   agentv1.AgentServiceClient
	Overlay overlayv1.OverlayServiceClient
	// Members gives the Raft members' peer addresses as they are now (a
	// node's overlay listens on the host of its scheduler's).
	Members func() fsm.MemberAddr
	// Every is how often the node's place is checked (a restarted overlay
	// or agent may report another) and the peers sent again.
	Every time.Duration
	Log   *zap.Logger
}

// Handshake freshness. WireGuard renews a session after two minutes when
// it sends, or after about three when only the other side sends (each
// side's keepalives every 25 s keep one of them sending), and forgets its
// keys after nine. A peer with no handshake in five minutes (or none ever)
// is not reachable through the mesh.
const fresh = 5 * time.Minute

// Mesh keeps the node's part of the mesh and knows which peers answer.
type Mesh struct {
	cfg  Config
	log  *zap.Logger
	live atomic.Pointer[map[string]bool] // nodes with a fresh handshake
	dev  atomic.Pointer[string]          // the overlay's device, once known
}

// New returns the node's mesh keeper.
func New(cfg Config) *Mesh {
	m := &Mesh{cfg: cfg, log: cfg.Log.Named("mesh")}
	m.live.Store(&map[string]bool{})
	return m
}

// Device is the name of the node's WireGuard device, as the overlay last
// said, or "" before it has.
func (m *Mesh) Device() string {
	if d := m.dev.Load(); d != nil {
		return *d
	}
	return ""
}

// Live reports whether node's device made a session with this node's
// recently: only then are its containers reachable.
func (m *Mesh) Live(node string) bool { return (*m.live.Load())[node] }

// Run records the node's place, pushes peers and watches their handshakes
// until ctx is done.
func (m *Mesh) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		t := time.NewTicker(m.cfg.Every)
		defer t.Stop()
		var failing error
		for {
			err := m.register(ctx)
			switch {
			case err != nil && (failing == nil || err.Error() != failing.Error()):
				m.log.Warn("node not in the overlay mesh yet; retrying", zap.String("node", m.cfg.Node), zap.Error(err))
			case err == nil && failing != nil:
				m.log.Info("node's place in the overlay mesh recorded", zap.String("node", m.cfg.Node))
			}
			failing = err
			m.watch(ctx)
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	})
	g.Go(func() error {
		return push.Loop(ctx, m.log, m.cfg.State,
			func(st *fsm.State) []*overlayv1.SetPeersRequest {
				return []*overlayv1.SetPeersRequest{Peers(st, m.cfg.Node, m.cfg.Members())}
			},
			func(ctx context.Context, req []*overlayv1.SetPeersRequest) error {
				_, err := m.cfg.Overlay.SetPeers(ctx, req[0])
				return err
			}, m.cfg.Every)
	})
	return g.Wait()
}

// watch asks the overlay which peers shook hands recently.
func (m *Mesh) watch(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	live := map[string]bool{}
	resp, err := m.cfg.Overlay.ListPeers(ctx, &overlayv1.ListPeersRequest{})
	if err == nil {
		for _, p := range resp.Peers {
			if p.LastHandshake != nil && time.Since(p.LastHandshake.AsTime()) < fresh {
				live[p.Node] = true
			}
		}
	}
	old := m.live.Swap(&live)
	for n := range live {
		if !(*old)[n] {
			m.log.Info("peer reachable through the mesh", zap.String("node", m.cfg.Node), zap.String("peer", n))
		}
	}
	for n := range *old {
		if !live[n] {
			m.log.Warn("peer no longer reachable through the mesh: no recent handshake", zap.String("node", m.cfg.Node), zap.String("peer", n))
		}
	}
}

// Peers is what the local overlay must set: this node's address and
// subnet and the other nodes, or no peers while the node is not in the
// mesh itself (they could not answer it).
func Peers(st *fsm.State, node string, addr fsm.MemberAddr) *overlayv1.SetPeersRequest {
	o := st.Nodes[node].GetOverlay()
	if o == nil {
		return &overlayv1.SetPeersRequest{}
	}
	req := &overlayv1.SetPeersRequest{Address: o.Address, ContainerCidr: o.ContainerCidr}
	if st.InMesh(node, addr) {
		req.Peers = st.OverlayPeers(node, addr)
	}
	return req
}

// register proposes the node's place when it differs from the state's
// and the state machine would take it.
func (m *Mesh) register(ctx context.Context) error {
	cfg := m.cfg
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	id, err := cfg.Overlay.GetIdentity(ctx, &overlayv1.GetIdentityRequest{})
	if err != nil {
		return fmt.Errorf("ask the overlay for its key: %w", err)
	}
	m.dev.Store(&id.Device)
	info, err := cfg.Agent.GetInfo(ctx, &agentv1.GetInfoRequest{})
	if err != nil {
		return fmt.Errorf("ask the agent for the container subnet: %w", err)
	}
	want := &schedulerv1.NodeOverlay{PublicKey: id.PublicKey, Port: id.Port, ContainerCidr: info.ContainerCidr, Address: info.OverlayAddress}
	if info.OverlayAddress == "" {
		return fmt.Errorf("the agent keeps no address of %s for the overlay (a subnet smaller than /29?)", info.ContainerCidr)
	}
	st := cfg.State.Copy()
	if n := st.Nodes[cfg.Node]; n == nil {
		return fmt.Errorf("node %s is not registered yet", cfg.Node)
	} else if proto.Equal(n.Overlay, want) {
		return nil
	}
	if err := st.CheckOverlay(cfg.Node, want); err != nil {
		return err // not proposed again and again: it would be refused
	}
	data, err := proto.Marshal(&schedulerv1.Command{ProposedAt: timestamppb.Now(), Kind: &schedulerv1.Command_SetNodeOverlay{
		SetNodeOverlay: &schedulerv1.SetNodeOverlayCommand{Node: cfg.Node, Overlay: want},
	}})
	if err != nil {
		return err
	}
	res, err := cfg.Raft.Propose(ctx, data)
	if err != nil {
		return fmt.Errorf("record the node's place in the mesh: %w", err)
	}
	if fr, ok := res.(fsm.Result); ok && fr.Err != nil {
		return fr.Err
	}
	return nil
}
