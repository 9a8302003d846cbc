// Package metrics counts the proxy's traffic per deployment, service and
// endpoint: requests by status class, latency, requests in flight (or open
// connections), exported to Prometheus, and a request rate over a recent
// window for the scheduler's `targets.rps` autoscaling. The request path only
// does atomic adds; a once-a-second sampler feeds the rate. It never decides
// anything from the numbers.
package metrics

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// MaxWindow is the longest rate window kept.
const MaxWindow = 60 * time.Second

const sampleEvery = time.Second

// Registry holds every endpoint's counters.
type Registry struct {
	now      func() time.Time
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	active   *prometheus.GaugeVec

	mu  sync.Mutex
	eps map[[3]string]*Endpoint
}

// New registers the proxy's collectors with reg. now is the clock.
func New(reg prometheus.Registerer, now func() time.Time) *Registry {
	labels := []string{"deployment", "service", "endpoint"}
	r := &Registry{
		now: now,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zlayer_proxy_requests_total",
			Help: "Requests answered (HTTP), connections accepted (TCP) or flows started (UDP), by status class (tcp/udp for L4).",
		}, append(labels, "class")),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "zlayer_proxy_request_duration_seconds",
			Help:    "Time from receiving a request to the end of its response (HTTP only).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, labels),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "zlayer_proxy_active_connections",
			Help: "Requests in flight (HTTP), open connections (TCP) or live flows (UDP).",
		}, labels),
		eps: map[[3]string]*Endpoint{},
	}
	reg.MustRegister(r.requests, r.latency, r.active)
	return r
}

// classes are the status-class label values, index = status/100.
var classes = [...]string{"", "1xx", "2xx", "3xx", "4xx", "5xx"}

// Endpoint returns the counters of one endpoint, creating them on first use.
func (r *Registry) Endpoint(deployment, service, endpoint string) *Endpoint {
	k := [3]string{deployment, service, endpoint}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.eps[k]; e != nil {
		return e
	}
	e := &Endpoint{labels: k, latency: r.latency.WithLabelValues(k[:]...), promActive: r.active.WithLabelValues(k[:]...)}
	for i := 1; i < len(classes); i++ {
		e.promClass[i] = r.requests.WithLabelValues(k[0], k[1], k[2], classes[i])
	}
	e.promL4 = r.requests.WithLabelValues(k[0], k[1], k[2], "l4")
	e.ring = append(e.ring, sample{at: r.now()})
	r.eps[k] = e
	return e
}

// Remove forgets an endpoint that is no longer routed. Requests still in
// flight on it finish and count into the forgotten counters.
func (r *Registry) Remove(deployment, service, endpoint string) {
	k := [3]string{deployment, service, endpoint}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.eps[k]; !ok {
		return
	}
	delete(r.eps, k)
	for i := 1; i < len(classes); i++ {
		r.requests.DeleteLabelValues(k[0], k[1], k[2], classes[i])
	}
	r.requests.DeleteLabelValues(k[0], k[1], k[2], "l4")
	r.latency.DeleteLabelValues(k[:]...)
	r.active.DeleteLabelValues(k[:]...)
}

// Run samples every endpoint's request count once a second until ctx is done.
func (r *Registry) Run(ctx context.Context) error {
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			r.sample()
		}
	}
}

func (r *Registry) sample() {
	now := r.now()
	r.mu.Lock()
	eps := make([]*Endpoint, 0, len(r.eps))
	for _, e := range r.eps {
		eps = append(eps, e)
	}
	r.mu.Unlock()
	for _, e := range eps {
		e.record(now)
	}
}

// Endpoint counts one endpoint's traffic.
type Endpoint struct {
	labels     [3]string
	total      atomic.Uint64
	class      [len(classes)]atomic.Uint64
	active     atomic.Int64
	promClass  [len(classes)]prometheus.Counter
	promL4     prometheus.Counter
	latency    prometheus.Observer
	promActive prometheus.Gauge

	ringMu sync.Mutex
	ring   []sample // chronological, at most MaxWindow/sampleEvery+1
}

type sample struct {
	at    time.Time
	total uint64
}

// Begin counts a request (or connection, or flow) starting.
func (e *Endpoint) Begin() {
	e.active.Add(1)
	e.promActive.Inc()
}

// End counts an HTTP request finishing with status after d.
func (e *Endpoint) End(status int, d time.Duration) {
	e.active.Add(-1)
	e.promActive.Dec()
	e.total.Add(1)
	c := status / 100
	if c < 1 || c >= len(classes) {
		c = 5
	}
	e.class[c].Add(1)
	e.promClass[c].Inc()
	e.latency.Observe(d.Seconds())
}

// Opened counts a TCP connection or UDP flow; Closed ends it.
func (e *Endpoint) Opened() {
	e.Begin()
	e.total.Add(1)
	e.promL4.Inc()
}

// Closed ends a connection or flow counted by Opened.
func (e *Endpoint) Closed() {
	e.active.Add(-1)
	e.promActive.Dec()
}

func (e *Endpoint) record(now time.Time) {
	e.ringMu.Lock()
	defer e.ringMu.Unlock()
	keep := int(MaxWindow/sampleEvery) + 1
	if len(e.ring) >= keep {
		copy(e.ring, e.ring[len(e.ring)-keep+1:])
		e.ring = e.ring[:keep-1]
	}
	e.ring = append(e.ring, sample{at: now, total: e.total.Load()})
}

// Snapshot is an endpoint's counters at one moment.
type Snapshot struct {
	Total  uint64
	Class  [6]uint64 // index = status/100; [0] unused
	Active int64
	// RPS is the rate over the window asked for, or over the time the
	// endpoint has existed when that is shorter.
	RPS float64
}

// Snapshot reads the counters at now, with the rate over window.
func (e *Endpoint) Snapshot(now time.Time, window time.Duration) Snapshot {
	s := Snapshot{Total: e.total.Load(), Active: e.active.Load()}
	for i := range e.class {
		s.Class[i] = e.class[i].Load()
	}
	e.ringMu.Lock()
	defer e.ringMu.Unlock()
	for _, smp := range e.ring {
		if age := now.Sub(smp.at); age <= window && age > 0 {
			s.RPS = float64(s.Total-smp.total) / age.Seconds()
			break
		}
	}
	return s
}
