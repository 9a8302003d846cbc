// Package balance chooses a replica for each request or connection. A Pool
// holds one endpoint's backends and picks among those that are healthy,
// ready and not ejected by passive health, by round robin or by least
// outstanding requests (power of two random choices). It never dials or
// proxies anything itself: callers report connect failures and resets with
// Eject, and finished requests with Backend.Release.
package balance

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Policy is a way of choosing among eligible backends.
type Policy uint8

const (
	// RoundRobin takes eligible backends in turn.
	RoundRobin Policy = iota + 1
	// LeastOutstanding samples two eligible backends at random and takes the
	// one with fewer requests in flight.
	LeastOutstanding
)

// ParsePolicy reads a --lb value.
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "round_robin":
		return RoundRobin, nil
	case "least_outstanding":
		return LeastOutstanding, nil
	}
	return 0, fmt.Errorf("load balancing policy %q is not one of round_robin, least_outstanding", s)
}

func (p Policy) String() string {
	switch p {
	case RoundRobin:
		return "round_robin"
	case LeastOutstanding:
		return "least_outstanding"
	}
	return fmt.Sprintf("Policy(%d)", uint8(p))
}

// Target is one replica as the scheduler describes it.
type Target struct {
	ID      string // replica id; state follows it across updates
	Addr    string // ip:port
	Node    string
	Healthy bool
	Ready   bool
}

// Backend is a target with its live state. Its counters survive Pool.Update
// as long as the replica id and address stay.
type Backend struct {
	// ID and Addr identify the backend; they never change.
	ID, Addr string

	target       atomic.Pointer[Target]
	outstanding  atomic.Int64
	requests     atomic.Uint64
	ejectedUntil atomic.Int64 // unix nanoseconds; 0 when never ejected
}

// Target is the backend as last described by the scheduler.
func (b *Backend) Target() Target { return *b.target.Load() }

// Release ends one request or connection taken with Pick.
func (b *Backend) Release() { b.outstanding.Add(-1) }

// Outstanding is the number of requests or connections in flight.
func (b *Backend) Outstanding() int64 { return b.outstanding.Load() }

// Requests counts the requests or connections ever sent to b.
func (b *Backend) Requests() uint64 { return b.requests.Load() }

// EjectedUntil is when passive-health ejection ends; zero if b is not
// ejected at now.
func (b *Backend) EjectedUntil(now time.Time) time.Time {
	u := b.ejectedUntil.Load()
	if u == 0 || u <= now.UnixNano() {
		return time.Time{}
	}
	return time.Unix(0, u)
}

func (b *Backend) ejected(now int64) bool {
	u := b.ejectedUntil.Load()
	return u != 0 && u > now
}

// set is an immutable snapshot of a pool's backends.
type set struct {
	all       []*Backend // in update order
	available []*Backend // healthy and ready
}

// Pool balances over one endpoint's backends. It is safe for concurrent use;
// Pick never blocks on Update.
type Pool struct {
	policy   Policy
	ejectFor time.Duration
	now      func() time.Time

	cur      atomic.Pointer[set]
	rr       atomic.Uint64
	updateMu sync.Mutex
}

// NewPool returns an empty pool. ejectFor is how long a backend that refused
// or reset a connection stays out; now is the clock (time.Now outside tests).
func NewPool(policy Policy, ejectFor time.Duration, now func() time.Time) *Pool {
	p := &Pool{policy: policy, ejectFor: ejectFor, now: now}
	p.cur.Store(&set{})
	return p
}

// Update replaces the pool's targets. A target whose id and address were
// already in the pool keeps its Backend (counters, ejection); requests in
// flight to removed targets finish normally.
func (p *Pool) Update(targets []Target) {
	p.updateMu.Lock()
	defer p.updateMu.Unlock()
	old := map[string]*Backend{}
	for _, b := range p.cur.Load().all {
		old[b.ID+"\x00"+b.Addr] = b
	}
	next := &set{all: make([]*Backend, 0, len(targets))}
	for _, t := range targets {
		b := old[t.ID+"\x00"+t.Addr]
		if b == nil {
			b = &Backend{ID: t.ID, Addr: t.Addr}
		}
		tc := t
		b.target.Store(&tc)
		next.all = append(next.all, b)
		if t.Healthy && t.Ready {
			next.available = append(next.available, b)
		}
	}
	p.cur.Store(next)
}

// Backends returns every backend in update order.
func (p *Pool) Backends() []*Backend { return p.cur.Load().all }

// Available is the number of healthy, ready backends, ejected or not.
func (p *Pool) Available() int { return len(p.cur.Load().available) }

// Eligible is the number of backends new traffic may go to now.
func (p *Pool) Eligible() int {
	now := p.now().UnixNano()
	n := 0
	for _, b := range p.cur.Load().available {
		if !b.ejected(now) {
			n++
		}
	}
	return n
}

// Pick chooses a backend other than not (which may be nil), counts a request
// on it and returns it; the caller must call Release once the request or
// connection ends. Ejected backends are skipped unless every available one
// is ejected, in which case ejection is ignored rather than failing
// everything. Pick returns nil when no backend is healthy and ready.
func (p *Pool) Pick(not *Backend) *Backend {
	s := p.cur.Load()
	var b *Backend
	switch p.policy {
	case LeastOutstanding:
		b = p.pickP2C(s.available, not)
	default:
		b = p.pickRR(s.available, not)
	}
	if b != nil {
		b.outstanding.Add(1)
		b.requests.Add(1)
	}
	return b
}

// anyEjected reports whether some backend of bs is ejected at now; it reads
// the clock only when some backend was ever ejected.
func anyEjected(bs []*Backend) bool {
	for _, b := range bs {
		if b.ejectedUntil.Load() != 0 {
			return true
		}
	}
	return false
}

func (p *Pool) pickRR(bs []*Backend, not *Backend) *Backend {
	n := len(bs)
	if n == 0 {
		return nil
	}
	start := int(p.rr.Add(1) % uint64(n))
	if !anyEjected(bs) {
		for i := range n {
			if b := bs[(start+i)%n]; b != not {
				return b
			}
		}
		return nil
	}
	now := p.now().UnixNano()
	var fallback *Backend
	for i := range n {
		b := bs[(start+i)%n]
		if b == not {
			continue
		}
		if !b.ejected(now) {
			return b
		}
		if fallback == nil {
			fallback = b
		}
	}
	return fallback
}

func (p *Pool) pickP2C(bs []*Backend, not *Backend) *Backend {
	cands := bs
	if not != nil || anyEjected(bs) {
		now := p.now().UnixNano()
		cands = make([]*Backend, 0, len(bs))
		for _, b := range bs {
			if b != not && !b.ejected(now) {
				cands = append(cands, b)
			}
		}
		if len(cands) == 0 { // everything ejected: ignore ejection
			for _, b := range bs {
				if b != not {
					cands = append(cands, b)
				}
			}
		}
	}
	switch len(cands) {
	case 0:
		return nil
	case 1:
		return cands[0]
	}
	i := rand.IntN(len(cands))
	j := rand.IntN(len(cands) - 1)
	if j >= i {
		j++
	}
	a, b := cands[i], cands[j]
	if b.outstanding.Load() < a.outstanding.Load() {
		return b
	}
	return a
}

// Eject keeps b out of new traffic for the pool's ejection time, after it
// refused or reset a connection.
func (p *Pool) Eject(b *Backend) {
	b.ejectedUntil.Store(p.now().Add(p.ejectFor).UnixNano())
}
