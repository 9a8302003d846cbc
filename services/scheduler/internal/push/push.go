// Package push keeps a table held by a local daemon (the proxy's routes,
// the agent's service names) equal to a table derived from the cluster
// state: it sends the whole table after every state change that alters it,
// and again every resync interval in any case (a restarted daemon starts
// empty). It knows nothing of what the tables hold.
package push

import (
	"context"
	"slices"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"zlayer.dev/services/scheduler/internal/fsm"
)

// Loop runs until ctx is done. build derives the table from a state copy;
// send replaces the daemon's table with it.
func Loop[T proto.Message](ctx context.Context, log *zap.Logger, state *fsm.FSM, build func(*fsm.State) []T,
	send func(context.Context, []T) error, resync time.Duration) error {
	var (
		last    []T
		sent    time.Time
		failing bool
	)
	t := time.NewTicker(resync)
	defer t.Stop()
	for {
		changed := state.Changed()
		table := build(state.Copy())
		if !equal(table, last) || time.Since(sent) >= resync || failing {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := send(cctx, table)
			cancel()
			switch {
			case err != nil && !failing:
				log.Warn("table not taken; retrying", zap.Error(err))
				failing = true
			case err == nil:
				if failing {
					log.Info("table taken again")
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

func equal[T proto.Message](a, b []T) bool {
	return len(a) == len(b) && slices.EqualFunc(a, b, func(x, y T) bool { return proto.Equal(x, y) })
}
