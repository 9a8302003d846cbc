// Package names computes the service names a deployment's containers
// resolve: <service>.global for every running replica of every service of
// the deployment, on any node. The agent writes them into its containers'
// /etc/hosts (a name resolves on every node; the WireGuard mesh carries
// the traffic to replicas on other nodes), and keeps deployments apart with
// the same table and the nodes' subnets.
package names

import (
	"context"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/spec"
	"zlayer.dev/services/scheduler/internal/fsm"
	"zlayer.dev/services/scheduler/internal/push"
	"zlayer.dev/services/scheduler/internal/specinfo"
)

// running calls fn for every running replica with an address, with the
// service spec of its version (nil when it cannot be read).
func running(st *fsm.State, specs *specinfo.Cache, fn func(r *schedulerv1.Replica, s *spec.Service)) {
	for _, r := range st.Replicas {
		if r.Ip == "" || r.Run || r.DesiredStop || r.Phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING {
			continue
		}
		d := st.Deployments[r.Deployment]
		if d == nil || d.Deleting {
			continue
		}
		var svc *spec.Service
		if v := fsm.Version(d, r.Version); v != nil {
			if parsed, err := specs.Get(v.FileName, v.SpecYaml); err == nil {
				svc = parsed.Services[r.Service].Spec
			}
		}
		fn(r, svc)
	}
}

// Table returns every name's addresses, sorted: the running replicas of
// the services on their deployment's global overlay.
func Table(st *fsm.State, specs *specinfo.Cache) []*agentv1.ServiceName {
	var out []*agentv1.ServiceName
	running(st, specs, func(r *schedulerv1.Replica, s *spec.Service) {
		if slices.Contains(specinfo.OverlayGroups(r.Deployment, r.Service, s), "global/"+r.Deployment) {
			out = append(out, &agentv1.ServiceName{Deployment: r.Deployment, Name: r.Service + ".global", Ip: r.Ip})
		}
	})
	slices.SortFunc(out, func(a, b *agentv1.ServiceName) int {
		return strings.Compare(a.Deployment+" "+a.Name+" "+a.Ip, b.Deployment+" "+b.Name+" "+b.Ip)
	})
	return out
}

// Members returns every running replica's address and overlays, sorted by
// address.
func Members(st *fsm.State, specs *specinfo.Cache) []*agentv1.OverlayMember {
	var out []*agentv1.OverlayMember
	running(st, specs, func(r *schedulerv1.Replica, s *spec.Service) {
		out = append(out, &agentv1.OverlayMember{Ip: r.Ip, OverlayGroups: specinfo.OverlayGroups(r.Deployment, r.Service, s)})
	})
	slices.SortFunc(out, func(a, b *agentv1.OverlayMember) int { return strings.Compare(a.Ip, b.Ip) })
	return out
}

// Subnets returns every node's container subnet that the state holds,
// sorted: the agent keeps each deployment's containers apart from the
// others' within them.
func Subnets(st *fsm.State) []string {
	var out []string
	for _, n := range st.Nodes {
		if o := n.GetOverlay(); o.GetContainerCidr() != "" {
			out = append(out, o.GetContainerCidr())
		}
	}
	slices.Sort(out)
	return out
}

// Push keeps the local agent's table equal to Table(state), Members(state),
// Subnets(state) and device() (the overlay's WireGuard device, "" until known) until ctx
// is done.
func Push(ctx context.Context, log *zap.Logger, state *fsm.FSM, specs *specinfo.Cache, agent agentv1.AgentServiceClient,
	device func() string, resync time.Duration) error {
	// The whole request is the one element push.Loop compares and sends.
	request := func(st *fsm.State) []*agentv1.SetNamesRequest {
		return []*agentv1.SetNamesRequest{{
			Names: Table(st, specs), Members: Members(st, specs), Subnets: Subnets(st), OverlayDevice: device(),
		}}
	}
	return push.Loop(ctx, log.Named("names"), state, request,
		func(ctx context.Context, table []*agentv1.SetNamesRequest) error {
			_, err := agent.SetNames(ctx, table[0])
			return err
		}, resync)
}
