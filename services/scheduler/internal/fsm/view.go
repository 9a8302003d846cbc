package fsm

import (
	"net"
	"slices"
	"strconv"

	"google.golang.org/protobuf/proto"

	overlayv1 "zlayer.dev/libs/api/zlayer/overlay/v1"
	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
)

// State is a consistent copy of the whole state, for readers (status, the
// reconciler, the node side). Changing it changes nothing in the FSM.
type State struct {
	Applied     uint64
	Deployments map[string]*schedulerv1.Deployment
	Replicas    map[string]*schedulerv1.Replica
	Nodes       map[string]*schedulerv1.Node
}

// Copy returns a deep copy of the state.
func (f *FSM) Copy() *State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := &State{
		Applied:     f.applied,
		Deployments: make(map[string]*schedulerv1.Deployment, len(f.deployments)),
		Replicas:    make(map[string]*schedulerv1.Replica, len(f.replicas)),
		Nodes:       make(map[string]*schedulerv1.Node, len(f.nodes)),
	}
	for k, v := range f.deployments {
		s.Deployments[k] = proto.CloneOf(v)
	}
	for k, v := range f.replicas {
		s.Replicas[k] = proto.CloneOf(v)
	}
	for k, v := range f.nodes {
		s.Nodes[k] = proto.CloneOf(v)
	}
	return s
}

// Events returns up to limit of the most recent events after seq (all
// deployments when deployment is empty), oldest first, and the sequence
// number of the newest event of any deployment at that moment.
func (f *FSM) Events(deployment string, after uint64, limit int) ([]*schedulerv1.Event, uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []*schedulerv1.Event
	for i := len(f.events) - 1; i >= 0 && (limit <= 0 || len(out) < limit); i-- {
		e := f.events[i]
		if e.Seq <= after {
			break
		}
		if deployment == "" || e.Deployment == deployment {
			out = append(out, proto.CloneOf(e))
		}
	}
	slices.Reverse(out)
	return out, f.eventSeq
}

// ReplicasOf returns the deployment's replicas in s, sorted by service,
// index, then id.
func (s *State) ReplicasOf(deployment string) []*schedulerv1.Replica {
	var out []*schedulerv1.Replica
	for _, r := range s.Replicas {
		if r.Deployment == deployment {
			out = append(out, r)
		}
	}
	SortReplicas(out)
	return out
}

// SortReplicas sorts by deployment, service, index, then id.
func SortReplicas(rs []*schedulerv1.Replica) {
	slices.SortFunc(rs, func(a, b *schedulerv1.Replica) int {
		switch {
		case a.Deployment != b.Deployment:
			return cmpStr(a.Deployment, b.Deployment)
		case a.Service != b.Service:
			return cmpStr(a.Service, b.Service)
		case a.Index != b.Index:
			return int(a.Index) - int(b.Index)
		}
		return cmpStr(a.Id, b.Id)
	})
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Version returns version v of deployment d, or nil.
func Version(d *schedulerv1.Deployment, v uint64) *schedulerv1.DeploymentVersion {
	return version(d, v)
}

// MemberAddr returns the peer address (host:port) of a Raft member, ""
// if there is none.
type MemberAddr func(id uint64) string

// OverlayPeers returns the nodes other than self that are in the WireGuard
// mesh, sorted by name, each with where its device listens: the host of
// its scheduler's peer address and its overlay port. A node that is no
// cluster member (no peer address) is not in the mesh.
func (st *State) OverlayPeers(self string, addr MemberAddr) []*overlayv1.Peer {
	var out []*overlayv1.Peer
	for _, name := range sortedKeys(st.Nodes) {
		n := st.Nodes[name]
		host, ok := overlayHost(n, addr)
		if name == self || !ok {
			continue
		}
		o := n.Overlay
		out = append(out, &overlayv1.Peer{
			Node: name, PublicKey: o.PublicKey, Endpoint: net.JoinHostPort(host, strconv.Itoa(int(o.Port))),
			ContainerCidr: o.ContainerCidr,
		})
	}
	return out
}

// CheckOverlay reports why node cannot take place o in the mesh (as the
// state machine would refuse it), or nil.
func (st *State) CheckOverlay(node string, o *schedulerv1.NodeOverlay) error {
	return checkOverlay(st.Nodes, node, o)
}

// InMesh reports whether node is in the WireGuard mesh.
func (st *State) InMesh(node string, addr MemberAddr) bool {
	_, ok := overlayHost(st.Nodes[node], addr)
	return ok
}

// Reachable reports whether node self reaches the containers of node n:
// its own, or another's when both are in the mesh.
func (st *State) Reachable(self, n string, addr MemberAddr) bool {
	return self == n || st.InMesh(self, addr) && st.InMesh(n, addr)
}

// overlayHost returns the host where n's overlay device listens, and
// whether n is in the mesh at all.
func overlayHost(n *schedulerv1.Node, addr MemberAddr) (string, bool) {
	if n.GetOverlay() == nil || n.GetMemberId() == 0 || addr == nil {
		return "", false
	}
	host, _, err := net.SplitHostPort(addr(n.MemberId))
	return host, err == nil && host != ""
}
