package routes

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"zlayer.dev/services/proxy/internal/balance"
	"zlayer.dev/services/proxy/internal/metrics"
)

// Entry is a route bound to its live pool and counters. Both outlive table
// updates that keep the route's key.
type Entry struct {
	Route
	Pool  *balance.Pool
	Stats *metrics.Endpoint
}

// Table is one immutable generation of the route table.
type Table struct {
	Generation uint64
	Entries    []*Entry // every route, sorted by key
	// Shadowed explains each public route not served because an earlier
	// one (in key order) takes its host and path or its public port.
	Shadowed []string

	hosts   map[string][]*Entry // public HTTP routes with a host, longest path first
	anyHost []*Entry            // public HTTP routes without a host, longest path first
	tcp     map[uint16]*Entry
	udp     map[uint16]*Entry
}

func compile(gen uint64, entries []*Entry) *Table {
	t := &Table{Generation: gen, Entries: entries, hosts: map[string][]*Entry{}, tcp: map[uint16]*Entry{}, udp: map[uint16]*Entry{}}
	hostPath := map[string]*Entry{}
	shadow := func(e, by *Entry, what string) {
		t.Shadowed = append(t.Shadowed, fmt.Sprintf("%s: %s is taken by %s", e.Key, what, by.Key))
	}
	for _, e := range entries { // in key order: the first route of a collision wins
		if !e.Public {
			continue
		}
		switch {
		case e.Protocol.IsHTTP():
			hp := e.Host + " " + e.Path
			if by := hostPath[hp]; by != nil {
				shadow(e, by, fmt.Sprintf("host %q path %q", e.Host, e.Path))
				continue
			}
			hostPath[hp] = e
			if e.Host == "" {
				t.anyHost = append(t.anyHost, e)
			} else {
				t.hosts[e.Host] = append(t.hosts[e.Host], e)
			}
		case e.Kind != Service:
			t.Shadowed = append(t.Shadowed, fmt.Sprintf("%s: %s endpoints of a %s are not served (http, https and websocket ones start runs)", e.Key, e.Protocol, e.Kind))
		case e.Protocol == TCP || e.Protocol == UDP:
			m := t.tcp
			if e.Protocol == UDP {
				m = t.udp
			}
			if by := m[e.PublicPort]; by != nil {
				shadow(e, by, fmt.Sprintf("public port %s/%d", e.Protocol, e.PublicPort))
				continue
			}
			m[e.PublicPort] = e
		}
	}
	byPath := func(a, b *Entry) int { return len(b.Path) - len(a.Path) }
	for _, es := range t.hosts {
		slices.SortStableFunc(es, byPath)
	}
	slices.SortStableFunc(t.anyHost, byPath)
	return t
}

// MatchHTTP returns the public HTTP route for host (a Host header, port
// allowed) and path, or nil. Routes naming the host win over routes for any
// host; among them the longest matching path prefix wins.
func (t *Table) MatchHTTP(host, path string) *Entry {
	if len(t.hosts) > 0 {
		h := host
		if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.HasSuffix(h, "]") {
			h = h[:i]
		}
		h = strings.TrimSuffix(h, ".")
		es, ok := t.hosts[h]
		if !ok {
			es = t.hosts[strings.ToLower(h)]
		}
		for _, e := range es {
			if PathMatches(e.Path, path) {
				return e
			}
		}
	}
	for _, e := range t.anyHost {
		if PathMatches(e.Path, path) {
			return e
		}
	}
	return nil
}

// TCP returns the public TCP route on port, or nil.
func (t *Table) TCP(port uint16) *Entry { return t.tcp[port] }

// UDP returns the public UDP route on port, or nil.
func (t *Table) UDP(port uint16) *Entry { return t.udp[port] }

// Ports returns the public ports of protocol p (TCP or UDP), ascending.
func (t *Table) Ports(p Protocol) []uint16 {
	m := t.tcp
	if p == UDP {
		m = t.udp
	}
	ports := make([]uint16, 0, len(m))
	for port := range m {
		ports = append(ports, port)
	}
	slices.Sort(ports)
	return ports
}

// PublicHosts returns the hosts of public https routes, sorted: the names
// that need certificates.
func (t *Table) PublicHosts() []string {
	var hosts []string
	for h, es := range t.hosts {
		for _, e := range es {
			if e.Protocol == HTTPS {
				hosts = append(hosts, h)
				break
			}
		}
	}
	slices.Sort(hosts)
	return hosts
}

// An Applier takes part in table changes, e.g. by opening the listeners of
// new public ports. Prepare is called with the next table before it is in
// force; an error refuses the whole table. Otherwise exactly one of commit
// (after the table is in force) and abort (when another applier refused it)
// is called.
type Applier interface {
	Prepare(next *Table) (commit, abort func(), err error)
}

// Store holds the table in force and the pools and counters behind it.
type Store struct {
	policy   balance.Policy
	ejectFor time.Duration
	now      func() time.Time
	metrics  *metrics.Registry

	cur      atomic.Pointer[Table]
	mu       sync.Mutex // serializes Set
	pools    map[Key]*balance.Pool
	appliers []Applier
}

// NewStore returns a store with an empty table of generation 0.
func NewStore(policy balance.Policy, ejectFor time.Duration, now func() time.Time, m *metrics.Registry) *Store {
	s := &Store{policy: policy, ejectFor: ejectFor, now: now, metrics: m, pools: map[Key]*balance.Pool{}}
	s.cur.Store(compile(0, nil))
	return s
}

// AddApplier makes a take part in every later Set, in the order added.
func (s *Store) AddApplier(a Applier) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.appliers = append(s.appliers, a)
}

// Load returns the table in force. It never blocks.
func (s *Store) Load() *Table { return s.cur.Load() }

// Set replaces the whole table with rs, recorded as generation gen. Tables
// apply in the order Set is called, whatever their generation: the one
// pusher (the local scheduler) sends one at a time and counts again from 1
// when it restarts. Set refuses an invalid table (errkind.Invalid) and a
// table an applier cannot serve; a refused table leaves the one in force
// untouched. Setting the same table twice is harmless.
func (s *Store) Set(gen uint64, rs []Route) (*Table, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs = slices.Clone(rs)
	for i := range rs {
		rs[i].Backends = slices.Clone(rs[i].Backends)
		rs[i].Normalize()
	}
	if err := Validate(rs); err != nil {
		return nil, err
	}
	Sort(rs)
	entries := make([]*Entry, len(rs))
	targets := make([][]balance.Target, len(rs))
	for i, r := range rs {
		pool := s.pools[r.Key]
		if pool == nil {
			pool = balance.NewPool(s.policy, s.ejectFor, s.now)
		}
		entries[i] = &Entry{Route: r, Pool: pool, Stats: s.metrics.Endpoint(r.Deployment, r.Service, r.Endpoint)}
		for _, b := range r.Backends {
			targets[i] = append(targets[i], balance.Target{ID: b.ReplicaID, Addr: b.Addr, Node: b.Node, Healthy: b.Healthy, Ready: b.Ready})
		}
	}
	next := compile(gen, entries)

	var commits, aborts []func()
	for _, a := range s.appliers {
		commit, abort, err := a.Prepare(next)
		if err != nil {
			for i := len(aborts) - 1; i >= 0; i-- {
				aborts[i]()
			}
			for _, e := range entries { // counters made for new keys only
				if _, ok := s.pools[e.Key]; !ok {
					s.metrics.Remove(e.Deployment, e.Service, e.Endpoint)
				}
			}
			return nil, err
		}
		commits, aborts = append(commits, commit), append(aborts, abort)
	}
	for i, e := range entries {
		e.Pool.Update(targets[i])
	}
	s.cur.Store(next)
	for _, c := range commits {
		c()
	}
	s.forgetUnused(next)
	return next, nil
}

// forgetUnused records t's pools and drops the pools and counters of keys
// not in t (routes just removed).
func (s *Store) forgetUnused(t *Table) {
	keep := map[Key]bool{}
	for _, e := range t.Entries {
		keep[e.Key] = true
		s.pools[e.Key] = e.Pool
	}
	for k := range s.pools {
		if !keep[k] {
			delete(s.pools, k)
			s.metrics.Remove(k.Deployment, k.Service, k.Endpoint)
		}
	}
}
