package raftnode

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"zlayer.dev/libs/errkind"
)

// The benchmarks run real members (WAL fsyncs on the real disk, mutual TLS
// over loopback TCP) with the default timing: 100ms ticks, elections after
// 10-20 ticks. scripts/bench/raft.sh runs them; docs/BENCHMARKS.md has the
// numbers.

func defaultTiming(c *Config) { c.TickInterval = DefaultTickInterval }

// reportLatencies reports the p50, p99 and max of ds in milliseconds.
func reportLatencies(b *testing.B, prefix string, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	q := func(p float64) float64 {
		i := int(p*float64(len(ds))+0.5) - 1
		i = max(0, min(i, len(ds)-1))
		return float64(ds[i].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.50), prefix+"p50-ms")
	b.ReportMetric(q(0.99), prefix+"p99-ms")
	b.ReportMetric(float64(ds[len(ds)-1].Microseconds())/1000, prefix+"max-ms")
}

// BenchmarkCommitLatency measures one proposal on the leader, from Propose
// to the FSM's result on the leader (so: persisted on a majority, committed
// and applied), one at a time.
func BenchmarkCommitLatency(b *testing.B) {
	for _, size := range []int{1, 3} {
		b.Run(fmt.Sprintf("members=%d", size), func(b *testing.B) {
			c := newCluster(b, defaultTiming)
			for len(c.members) < size {
				c.add()
			}
			leader := c.waitLeader(nil)
			propose(b, leader, "warm=1")
			ctx := context.Background()
			payload := []byte("bench=" + string(make([]byte, 200)))
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				if _, err := leader.node.Propose(ctx, payload); err != nil {
					b.Fatalf("Propose: %v", err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			reportLatencies(b, "", lat)
			for _, m := range c.members {
				m.kill()
			}
		})
	}
}

// BenchmarkFailover measures, for a three-member cluster, the time from
// killing the leader to the next write committed through a surviving
// member. Each iteration builds a fresh cluster.
func BenchmarkFailover(b *testing.B) {
	var ds []time.Duration
	for range b.N {
		b.StopTimer()
		c := newCluster(b, defaultTiming)
		c.add()
		c.add()
		leader := c.waitLeader(nil)
		propose(b, leader, "warm=1")
		var survivor *member
		for _, m := range c.members {
			if m != leader {
				survivor = m
				break
			}
		}
		b.StartTimer()
		start := time.Now()
		leader.kill()
		poll := time.NewTicker(5 * time.Millisecond)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			_, err := survivor.node.Propose(ctx, []byte("after-failover=1"))
			cancel()
			if err == nil {
				break
			}
			if !errors.Is(err, errkind.Unavailable) || time.Since(start) > time.Minute {
				b.Fatalf("no write after failover: %v", err)
			}
			<-poll.C
		}
		d := time.Since(start)
		poll.Stop()
		b.StopTimer()
		ds = append(ds, d)
		for _, m := range c.members {
			m.kill()
		}
	}
	reportLatencies(b, "failover-", ds)
}
