// Package specinfo reads deployment files for the scheduler: it parses and
// validates them with libs/spec and extracts what placement, the reconciler
// and status need (hashes, rtype, demand, replica counts, endpoints). Parsed
// versions are cached by content, since every reconcile round asks again.
package specinfo

import (
	"crypto/sha256"
	"fmt"
	"slices"
	"sync"
	"time"

	"zlayer.dev/libs/spec"
	"zlayer.dev/services/scheduler/internal/placement"
	"zlayer.dev/services/scheduler/internal/reconcile"
)

// Deployment is a parsed deployment file.
type Deployment struct {
	Spec     *spec.Deployment
	Services map[string]Service
}

// Service is what the scheduler needs of one service.
type Service struct {
	reconcile.Service
	Spec *spec.Service
	// Endpoints as "name protocol port expose" for status.
	Endpoints []string
	Image     string
	// Scale bounds: Min/Max for adaptive, Replicas for fixed/manual.
	Mode               spec.ScaleMode
	Min, Max, Replicas uint32
}

// Parse parses and validates a deployment file, with cron schedules in
// UTC. Validation errors are a spec.Errors value, each with file, line and
// column.
func Parse(fileName string, data []byte) (*Deployment, error) {
	return parseIn(fileName, data, time.UTC)
}

func parseIn(fileName string, data []byte, loc *time.Location) (*Deployment, error) {
	d, err := spec.Parse(fileName, data)
	if err != nil {
		return nil, err
	}
	out := &Deployment{Spec: d, Services: map[string]Service{}}
	for name, s := range d.Services {
		svc := Service{
			Service: reconcile.Service{
				Name:       name,
				Hash:       s.Hash(),
				RType:      string(s.RType),
				Demand:     placement.Demand{CPU: s.Resources.CPU, Memory: s.Resources.Memory.Bytes()},
				JoinClosed: s.Network.Join.Mode == spec.JoinClosed,
			},
			Spec:  s,
			Image: s.Image.Name,
		}
		if s.RType == spec.RTypeCron && !s.Schedule.IsZero() {
			cron := s.Schedule
			svc.Next = func(after time.Time) time.Time { return cron.Next(after, loc) }
		}
		for _, e := range s.Endpoints {
			svc.Endpoints = append(svc.Endpoints, fmt.Sprintf("%s %s %d %s", e.Name, e.Protocol, e.Port, e.Expose))
		}
		if sc := s.Scale; sc != nil {
			svc.Mode = sc.Mode
			svc.Min, svc.Max, svc.Replicas = u32(sc.Min), u32(sc.Max), u32(sc.Replicas)
		}
		if sc := s.Scale; sc != nil && s.RType == spec.RTypeService && sc.Mode == spec.ScaleAdaptive {
			a := &reconcile.Autoscale{Min: svc.Min, Max: svc.Max, Cooldown: sc.Cooldown.D()}
			if t := sc.Targets; t != nil {
				a.CPU, a.Memory, a.RPS = float64(t.CPU), float64(t.Memory), t.RPS
			}
			if a.CPU == 0 && a.Memory == 0 && a.RPS == 0 {
				a.CPU = 70 // SPEC.md: cpu 70% when no target is given
			}
			svc.Auto = a
		}
		out.Services[name] = svc
	}
	return out, nil
}

func u32(p *int) uint32 {
	if p == nil || *p < 0 {
		return 0
	}
	return uint32(*p)
}

// InitialScale is the replica count a service starts at when deployed,
// given the count it had before (had=false when it is new).
func (s Service) InitialScale(prev uint32, had bool) uint32 {
	switch s.Mode {
	case spec.ScaleFixed:
		return s.Replicas
	case spec.ScaleManual:
		if had {
			return prev
		}
		return s.Replicas
	case spec.ScaleAdaptive:
		if !had {
			return s.Min
		}
		return min(max(prev, s.Min), s.Max)
	}
	return 0 // jobs and cron jobs
}

// ServiceNames returns the names in order.
func (d *Deployment) ServiceNames() []string {
	names := make([]string, 0, len(d.Services))
	for n := range d.Services {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Cache parses each distinct file once.
type Cache struct {
	// Location is the time zone of cron schedules; nil means UTC.
	Location *time.Location

	mu sync.Mutex
	m  map[[32]byte]*Deployment
}

// Get returns the parsed file, parsing it on first use.
func (c *Cache) Get(fileName string, data []byte) (*Deployment, error) {
	key := sha256.Sum256(data)
	c.mu.Lock()
	defer c.mu.Unlock()
	if d, ok := c.m[key]; ok {
		return d, nil
	}
	loc := c.Location
	if loc == nil {
		loc = time.UTC
	}
	d, err := parseIn(fileName, data, loc)
	if err != nil {
		return nil, err
	}
	if c.m == nil || len(c.m) > 256 {
		c.m = map[[32]byte]*Deployment{}
	}
	c.m[key] = d
	return d, nil
}
