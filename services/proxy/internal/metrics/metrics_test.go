package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCountsAndRate(t *testing.T) {
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	reg := prometheus.NewRegistry()
	r := New(reg, clock)
	e := r.Endpoint("d", "s", "http")
	if r.Endpoint("d", "s", "http") != e {
		t.Fatal("Endpoint is not idempotent")
	}
	// 10 requests per second for 20 seconds, sampled each second.
	for range 20 {
		for range 10 {
			e.Begin()
			e.End(200, time.Millisecond)
		}
		now = now.Add(time.Second)
		r.sample()
	}
	e.Begin()
	e.End(503, time.Millisecond)
	e.Begin() // one in flight
	s := e.Snapshot(now, 10*time.Second)
	if s.Total != 201 || s.Class[2] != 200 || s.Class[5] != 1 || s.Active != 1 {
		t.Fatalf("snapshot %+v", s)
	}
	if s.RPS < 10 || s.RPS > 10.2 {
		t.Fatalf("rps %v, want about 10 (101 requests in the last 10s)", s.RPS)
	}
	if got := testutil.ToFloat64(r.requests.WithLabelValues("d", "s", "http", "2xx")); got != 200 {
		t.Fatalf("prometheus 2xx = %v", got)
	}
	r.Remove("d", "s", "http")
	n, err := testutil.GatherAndCount(reg, "zlayer_proxy_requests_total")
	if err != nil || n != 0 {
		t.Fatalf("after Remove: %d series (%v)", n, err)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(""), "zlayer_proxy_active_connections"); err != nil {
		t.Fatal(err)
	}
}
