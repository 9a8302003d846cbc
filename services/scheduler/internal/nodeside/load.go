package nodeside

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	proxyv1 "zlayer.dev/libs/api/zlayer/proxy/v1"
	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/services/scheduler/internal/fsm"
)

// Proxy is the local proxy as the node side reads it.
type Proxy interface {
	GetStats(ctx context.Context, in *proxyv1.GetStatsRequest, opts ...grpc.CallOption) (*proxyv1.GetStatsResponse, error)
}

// measureLoad returns this node's load per service: requests per second
// through its proxy over the last window, and its replicas' CPU and memory
// use. A part that cannot be read is left out.
func (r *Runner) measureLoad(ctx context.Context, st *fsm.State, window time.Duration) []*schedulerv1.ServiceLoad {
	byKey := map[string]*schedulerv1.ServiceLoad{}
	get := func(dep, svc string) *schedulerv1.ServiceLoad {
		k := dep + "/" + svc
		if byKey[k] == nil {
			byKey[k] = &schedulerv1.ServiceLoad{Deployment: dep, Service: svc}
		}
		return byKey[k]
	}
	if r.proxy != nil {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		// The proxy samples its counters every second: a rate over less
		// than a few seconds is mostly noise.
		resp, err := r.proxy.GetStats(cctx, &proxyv1.GetStatsRequest{Window: durationpb.New(max(window, 5*time.Second))})
		cancel()
		if err == nil {
			for _, e := range resp.Endpoints {
				get(e.Deployment, e.Service).Rps += e.Rps
			}
		}
	}
	if stats, err := r.agent.Stats(ctx); err == nil {
		for id, s := range stats {
			rep := st.Replicas[id]
			if rep == nil || rep.Run || rep.Node != r.cfg.Node.Name {
				continue
			}
			l := get(rep.Deployment, rep.Service)
			l.Replicas++
			l.CpuPercent += s[0]
			l.MemoryPercent += s[1]
		}
	}
	out := make([]*schedulerv1.ServiceLoad, 0, len(byKey))
	for _, l := range byKey {
		out = append(out, l)
	}
	return out
}

// putLoad keeps a measurement for the next heartbeat.
func (r *Runner) putLoad(l []*schedulerv1.ServiceLoad) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.load = l
}

// takeLoad returns the measurement waiting for a heartbeat, if any.
func (r *Runner) takeLoad() []*schedulerv1.ServiceLoad {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.load
	r.load = nil
	return l
}
