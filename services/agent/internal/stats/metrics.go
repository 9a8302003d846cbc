package stats

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Target is a container the collector reports on.
type Target struct {
	ID, Deployment, Service string
	Index                   int
	Cgroup                  string
}

// Collector exports the cgroup readings of every running container as
// Prometheus metrics, reading them at scrape time (no background work).
type Collector struct {
	targets func() []Target
	cpu     *prometheus.Desc
	cpuLim  *prometheus.Desc
	mem     *prometheus.Desc
	memLim  *prometheus.Desc
	oom     *prometheus.Desc
}

// NewCollector reports on what targets returns at each scrape.
func NewCollector(targets func() []Target) *Collector {
	labels := []string{"container", "deployment", "service", "index"}
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("zlayer_container_"+name, help, labels, nil)
	}
	return &Collector{
		targets: targets,
		cpu:     d("cpu_seconds_total", "CPU time used by the container."),
		cpuLim:  d("cpu_limit_cpus", "The container's CPU limit in CPUs (0: unlimited)."),
		mem:     d("memory_bytes", "Memory in use, without reclaimable file cache."),
		memLim:  d("memory_limit_bytes", "The container's memory limit (0: unlimited)."),
		oom:     d("oom_kills_total", "Processes killed for exceeding the memory limit."),
	}
}

// Describe sends the metric descriptions.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.cpu, c.cpuLim, c.mem, c.memLim, c.oom} {
		ch <- d
	}
}

// Collect reads every target's cgroup.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, t := range c.targets() {
		s, err := Read(t.Cgroup)
		if err != nil {
			continue // gone since listing
		}
		l := []string{t.ID, t.Deployment, t.Service, strconv.Itoa(t.Index)}
		ch <- prometheus.MustNewConstMetric(c.cpu, prometheus.CounterValue, float64(s.CPUNanos)/1e9, l...)
		ch <- prometheus.MustNewConstMetric(c.cpuLim, prometheus.GaugeValue, s.CPULimit, l...)
		ch <- prometheus.MustNewConstMetric(c.mem, prometheus.GaugeValue, float64(s.MemoryBytes), l...)
		ch <- prometheus.MustNewConstMetric(c.memLim, prometheus.GaugeValue, float64(s.MemoryLimit), l...)
		ch <- prometheus.MustNewConstMetric(c.oom, prometheus.CounterValue, float64(s.OOMKills), l...)
	}
}
