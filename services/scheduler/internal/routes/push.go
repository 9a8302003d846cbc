package routes

import (
	"context"
	"time"

	"go.uber.org/zap"

	proxyv1 "zlayer.dev/libs/api/zlayer/proxy/v1"
	"zlayer.dev/services/scheduler/internal/fsm"
	"zlayer.dev/services/scheduler/internal/specinfo"
)

// Push keeps the local proxy's table equal to Table(state) until ctx is
// done: after every state change that alters the table, and every resync
// interval in any case (a restarted proxy starts empty).
func Push(ctx context.Context, log *zap.Logger, state *fsm.FSM, specs *specinfo.Cache, proxy proxyv1.ProxyServiceClient, resync time.Duration) error {
	log = log.Named("routes")
	var (
		last       []*proxyv1.Route
		generation uint64
		sent       time.Time
		failing    bool
	)
	t := time.NewTicker(resync)
	defer t.Stop()
	for {
		changed := state.Changed()
		table := Table(state.Copy(), specs)
		if !Equal(table, last) || time.Since(sent) >= resync || failing {
			generation++
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := proxy.SetRoutes(cctx, &proxyv1.SetRoutesRequest{Generation: generation, Routes: table})
			cancel()
			switch {
			case err != nil && !failing:
				log.Warn("proxy did not take the routes; retrying", zap.Error(err))
				failing = true
			case err == nil:
				if failing {
					log.Info("proxy takes routes again")
				}
				failing = false
				last, sent = table, time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-t.C:
		}
	}
}
