// Package health runs the health checks of the replicas on this node
// (SPEC.md `health`): tcp and http probes against the replica's address,
// command checks run inside the container through the agent. Each replica
// gets one goroutine that waits start_grace, then checks every interval
// with a timeout; retries consecutive failures make it unhealthy, one
// success makes it healthy again.
//
// It lives beside the scheduler's node side until the agent runs its own
// lifecycle (issue 6); it only reads replica addresses and runs commands
// through the agent's public API, so it moves without changes to callers.
package health

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/spec"
)

// Execer runs a command inside a replica's container and returns its exit code.
type Execer interface {
	Exec(ctx context.Context, replica string, argv []string) (int, error)
}

// Target is one replica to check.
type Target struct {
	ID        string
	IP        string
	Health    *spec.Health
	Endpoints []spec.Endpoint
}

// Result is a replica's current health and why.
type Result struct {
	Health schedulerv1.Health
	Reason string
}

// Prober checks a changing set of replicas.
type Prober struct {
	exec Execer
	mu   sync.Mutex
	runs map[string]*run
}

type run struct {
	cancel context.CancelFunc
	mu     sync.Mutex
	res    Result
}

// New returns a Prober that runs command checks through exec.
func New(exec Execer) *Prober {
	return &Prober{exec: exec, runs: map[string]*run{}}
}

// Sync starts checking targets not checked yet and stops checking replicas
// not in targets.
func (p *Prober) Sync(ctx context.Context, targets []Target) {
	p.mu.Lock()
	defer p.mu.Unlock()
	want := map[string]bool{}
	for _, t := range targets {
		want[t.ID] = true
		if _, ok := p.runs[t.ID]; ok {
			continue
		}
		rctx, cancel := context.WithCancel(ctx)
		r := &run{cancel: cancel, res: Result{Health: schedulerv1.Health_HEALTH_STARTING}}
		p.runs[t.ID] = r
		go p.loop(rctx, r, t)
	}
	for id, r := range p.runs {
		if !want[id] {
			r.cancel()
			delete(p.runs, id)
		}
	}
}

// Result returns the replica's health; ok is false when it is not checked.
func (p *Prober) Result(id string) (Result, bool) {
	p.mu.Lock()
	r, ok := p.runs[id]
	p.mu.Unlock()
	if !ok {
		return Result{}, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.res, true
}

// Stop ends every check.
func (p *Prober) Stop() { p.Sync(context.Background(), nil) }

func (p *Prober) loop(ctx context.Context, r *run, t Target) {
	h := t.Health
	started := time.Now()
	failures := 0
	interval := max(h.Interval.D(), 100*time.Millisecond)
	// The first check runs at once; failures inside start_grace do not count.
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		cctx, cancel := context.WithTimeout(ctx, h.Timeout.D())
		err := p.check(cctx, t)
		cancel()
		if ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		switch {
		case err == nil:
			failures = 0
			r.res = Result{Health: schedulerv1.Health_HEALTH_HEALTHY}
		case time.Since(started) < h.StartGrace.D():
			// Still starting: not counted.
		default:
			failures++
			if failures >= max(h.Retries, 1) {
				r.res = Result{Health: schedulerv1.Health_HEALTH_UNHEALTHY,
					Reason: fmt.Sprintf("health check failed %d times: %v", failures, err)}
			}
		}
		r.mu.Unlock()
		next := interval
		if r.res.Health == schedulerv1.Health_HEALTH_STARTING {
			// Until the first success, check often: a rollout waits on it.
			next = min(interval, time.Second)
		}
		timer.Reset(next)
	}
}

func (p *Prober) check(ctx context.Context, t Target) error {
	c := t.Health.Check
	switch c.Type {
	case spec.CheckTCP:
		port := c.Port
		if port == 0 {
			port = firstPort(t.Endpoints, func(e spec.Endpoint) bool { return e.Protocol != spec.ProtocolUDP })
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(t.IP, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case spec.CheckHTTP:
		return p.checkHTTP(ctx, t)
	case spec.CheckCommand:
		code, err := p.exec.Exec(ctx, t.ID, c.Command.Argv())
		if err != nil {
			return err
		}
		if code != 0 {
			return fmt.Errorf("command exited with code %d", code)
		}
		return nil
	}
	return fmt.Errorf("unknown check type %q", c.Type)
}

func (p *Prober) checkHTTP(ctx context.Context, t Target) error {
	c := t.Health.Check
	port := c.Port
	if port == 0 {
		port = firstPort(t.Endpoints, func(e spec.Endpoint) bool { return e.Protocol.IsHTTP() })
	}
	target := &url.URL{Scheme: "http", Host: net.JoinHostPort(t.IP, strconv.Itoa(port)), Path: c.URL}
	host := ""
	if u, err := url.Parse(c.URL); err == nil && u.IsAbs() {
		// A full URL names the virtual host and path; the replica is still
		// the one dialled.
		target.Path, target.RawQuery, host = u.Path, u.RawQuery, u.Host
	} else if err == nil {
		target.Path, target.RawQuery = u.Path, u.RawQuery
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.String(), nil)
	if err != nil {
		return err
	}
	if host != "" {
		req.Host = host
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	want := c.ExpectStatus
	if want == 0 {
		want = http.StatusOK
	}
	if resp.StatusCode != want {
		return fmt.Errorf("GET %s: status %d, want %d", c.URL, resp.StatusCode, want)
	}
	return nil
}

func firstPort(eps []spec.Endpoint, ok func(spec.Endpoint) bool) int {
	for _, e := range eps {
		if ok(e) {
			return e.Port
		}
	}
	return 0
}
