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
// is done, with the replicas of node only: container addresses are
// reachable only on their own node until the overlay (not built yet)
// connects the nodes, and a backend that cannot be reached would cost each
// request sent to it a connect timeout. A node without a replica of a
// service answers its endpoints with 503, naming the service.
func Push(ctx context.Context, log *zap.Logger, state *fsm.FSM, specs *specinfo.Cache, proxy proxyv1.ProxyServiceClient, node string, resync time.Duration) error {
	var generation uint64
	local := func(n string) bool { return n == node }
	return push.Loop(ctx, log.Named("routes"), state,
		func(st *fsm.State) []*proxyv1.Route { return Table(st, specs, local) },
		func(ctx context.Context, table []*proxyv1.Route) error {
			generation++
			_, err := proxy.SetRoutes(ctx, &proxyv1.SetRoutesRequest{Generation: generation, Routes: table})
			return err
		}, resync)
}
