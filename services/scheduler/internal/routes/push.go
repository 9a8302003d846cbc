package routes

import (
	"context"
	"time"

	"go.uber.org/zap"

	proxyv1 "zlayer.dev/libs/api/zlayer/proxy/v1"
	"zlayer.dev/services/scheduler/internal/fsm"
	"zlayer.dev/services/scheduler/internal/push"
	"zlayer.dev/services/scheduler/internal/specinfo"
)

// Push keeps the local proxy's route table equal to Table(state) until ctx
// is done, with the replicas this node reaches (reachable, asked once per
// table): its own, and those of nodes that are in the WireGuard mesh with
// it and shook hands recently. A backend that cannot be reached would cost
// each request sent to it a connect timeout; a node that reaches no
// replica of a service answers its endpoints with 503, naming the service.
func Push(ctx context.Context, log *zap.Logger, state *fsm.FSM, specs *specinfo.Cache, proxy proxyv1.ProxyServiceClient,
	reachable func(st *fsm.State) func(node string) bool, resync time.Duration) error {
	var generation uint64
	return push.Loop(ctx, log.Named("routes"), state,
		func(st *fsm.State) []*proxyv1.Route {
			return Table(st, specs, reachable(st))
		},
		func(ctx context.Context, table []*proxyv1.Route) error {
			generation++
			_, err := proxy.SetRoutes(ctx, &proxyv1.SetRoutesRequest{Generation: generation, Routes: table})
			return err
		}, resync)
}
