// Package stats reads a container's resource use from its cgroup (v1
// controllers, the layout this host has) and exports it: CPU time and
// percent of the limit, memory use and percent of the limit, OOM kills,
// as samples for the gRPC API and as Prometheus metrics. It reads files;
// it never changes limits.
package stats

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Root is where the cgroup v1 controllers are mounted.
var Root = "/sys/fs/cgroup"

// Sample is one reading of a container's cgroup.
type Sample struct {
	At          time.Time
	CPUNanos    uint64  // total CPU time used
	CPULimit    float64 // CPUs; 0 when unlimited
	MemoryBytes uint64  // in use, not counting reclaimable file cache
	MemoryLimit uint64  // 0 when unlimited
	OOMKills    uint64
}

// Usage is a sample plus rates derived from the one before it.
type Usage struct {
	Sample
	CPUPercent    float64 // of the limit, or of one CPU when unlimited
	MemoryPercent float64 // of the limit; 0 when unlimited
}

// unlimited is what cgroup v1 reports for "no memory limit" (rounded to
// the page size); anything above 2^62 is treated as unlimited.
const unlimited = 1 << 62

// Read samples the cgroup at path (the OCI cgroupsPath, e.g.
// /zlayer/node-1/<id>).
func Read(path string) (Sample, error) {
	s := Sample{At: time.Now()}
	var err error
	if s.CPUNanos, err = readUint(filepath.Join(Root, "cpuacct", path, "cpuacct.usage")); err != nil {
		return s, err
	}
	quota, qerr := readInt(filepath.Join(Root, "cpu", path, "cpu.cfs_quota_us"))
	period, perr := readInt(filepath.Join(Root, "cpu", path, "cpu.cfs_period_us"))
	if qerr == nil && perr == nil && quota > 0 && period > 0 {
		s.CPULimit = float64(quota) / float64(period)
	}
	mem := filepath.Join(Root, "memory", path)
	usage, err := readUint(filepath.Join(mem, "memory.usage_in_bytes"))
	if err != nil {
		return s, err
	}
	if inactive := statValue(filepath.Join(mem, "memory.stat"), "total_inactive_file"); inactive < usage {
		usage -= inactive
	}
	s.MemoryBytes = usage
	if l, err := readUint(filepath.Join(mem, "memory.limit_in_bytes")); err == nil && l < unlimited {
		s.MemoryLimit = l
	}
	s.OOMKills = statValue(filepath.Join(mem, "memory.oom_control"), "oom_kill")
	return s, nil
}

// MemoryCgroup is the memory controller directory for path.
func MemoryCgroup(path string) string { return filepath.Join(Root, "memory", path) }

func readUint(p string) (uint64, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("read cgroup: %w", err)
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

func readInt(p string) (int64, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// statValue reads "key value" from a flat-keyed cgroup file.
func statValue(p, key string) uint64 {
	f, err := os.Open(p)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+" "); ok {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// Derive computes rates from prev (zero At means none) to cur.
func Derive(prev, cur Sample) Usage {
	u := Usage{Sample: cur}
	if cur.MemoryLimit > 0 {
		u.MemoryPercent = 100 * float64(cur.MemoryBytes) / float64(cur.MemoryLimit)
	}
	dt := cur.At.Sub(prev.At).Seconds()
	if prev.At.IsZero() || dt <= 0 || cur.CPUNanos < prev.CPUNanos {
		return u
	}
	cpus := cur.CPULimit
	if cpus == 0 {
		cpus = 1
	}
	used := float64(cur.CPUNanos-prev.CPUNanos) / 1e9 / dt
	u.CPUPercent = math.Round(1000*100*used/cpus) / 1000
	return u
}

// Tracker keeps each container's previous sample, so a reading gets a
// CPU percent over the time since the one before.
type Tracker struct {
	mu   sync.Mutex
	last map[string]Sample
}

// NewTracker returns an empty tracker.
func NewTracker() *Tracker { return &Tracker{last: map[string]Sample{}} }

// minWindow is the shortest interval a CPU percent is computed over; a
// reading closer to the last one reports the rate over the last window.
const minWindow = 500 * time.Millisecond

// Read samples id's cgroup and derives its usage from the previous
// sample kept for id.
func (t *Tracker) Read(id, path string) (Usage, error) {
	cur, err := Read(path)
	if err != nil {
		return Usage{}, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	prev := t.last[id]
	u := Derive(prev, cur)
	if prev.At.IsZero() || cur.At.Sub(prev.At) >= minWindow {
		t.last[id] = cur
	}
	return u, nil
}

// Forget drops id's history.
func (t *Tracker) Forget(id string) {
	t.mu.Lock()
	delete(t.last, id)
	t.mu.Unlock()
}

// HostCPUs is the number of CPUs limits are checked against.
func HostCPUs() int { return runtime.NumCPU() }
