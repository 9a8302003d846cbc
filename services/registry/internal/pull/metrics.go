package pull

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the puller's Prometheus collectors.
type metrics struct {
	pulls      *prometheus.CounterVec
	layerBytes prometheus.Counter
	duration   prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		pulls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zlayer_registry_pulls_total",
			Help: "Image pulls by result: fetched (something was downloaded), cached, or error.",
		}, []string{"result"}),
		layerBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "zlayer_registry_layer_bytes_downloaded_total",
			Help: "Compressed layer bytes downloaded from registries.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "zlayer_registry_pull_duration_seconds",
			Help:    "Time of pulls that contacted a registry, from manifest to record.",
			Buckets: prometheus.ExponentialBuckets(0.01, 3, 10),
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.pulls, m.layerBytes, m.duration} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
