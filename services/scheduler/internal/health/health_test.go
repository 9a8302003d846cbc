package health

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/spec"
)

// shellExec runs check commands as local processes. It stands in for the
// agent's exec, which needs a running container; the end-to-end tests run
// command checks through the real agent.
type shellExec struct{}

func (shellExec) Exec(ctx context.Context, _ string, argv []string) (int, error) {
	err := exec.CommandContext(ctx, argv[0], argv[1:]...).Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), nil
	}
	return 0, err
}

func hc(check spec.Check) *spec.Health {
	return &spec.Health{StartGrace: 0, Interval: spec.Duration(50 * time.Millisecond), Timeout: spec.Duration(time.Second), Retries: 2, Check: check}
}

func waitHealth(t *testing.T, p *Prober, id string, want schedulerv1.Health) Result {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, _ := p.Result(id)
		if r.Health == want {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: health %v (%s), want %v", id, r.Health, r.Reason, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHTTPCheckFlips(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" || r.Host != "api.example" || !healthy.Load() {
			w.WriteHeader(503)
			return
		}
		w.WriteHeader(204)
	}))
	defer srv.Close()
	host, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p := New(shellExec{})
	defer p.Stop()
	n, _ := strconv.Atoi(port)
	p.Sync(context.Background(), []Target{{ID: "r1", IP: host, Health: hc(spec.Check{Type: spec.CheckHTTP, URL: "http://api.example/health", ExpectStatus: 204}),
		Endpoints: []spec.Endpoint{{Name: "http", Protocol: spec.ProtocolHTTP, Port: n}}}})
	waitHealth(t, p, "r1", schedulerv1.Health_HEALTH_HEALTHY)
	healthy.Store(false)
	r := waitHealth(t, p, "r1", schedulerv1.Health_HEALTH_UNHEALTHY)
	if r.Reason == "" {
		t.Error("unhealthy without a reason")
	}
	healthy.Store(true)
	waitHealth(t, p, "r1", schedulerv1.Health_HEALTH_HEALTHY)
}

func TestTCPAndCommandChecks(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	p := New(shellExec{})
	defer p.Stop()
	p.Sync(context.Background(), []Target{
		{ID: "tcp", IP: "127.0.0.1", Health: hc(spec.Check{Type: spec.CheckTCP, Port: port})},
		{ID: "ok", Health: hc(spec.Check{Type: spec.CheckCommand, Command: spec.Command{Shell: "exit 0"}})},
		{ID: "bad", Health: hc(spec.Check{Type: spec.CheckCommand, Command: spec.Command{Shell: "exit 3"}})},
	})
	waitHealth(t, p, "tcp", schedulerv1.Health_HEALTH_HEALTHY)
	waitHealth(t, p, "ok", schedulerv1.Health_HEALTH_HEALTHY)
	if r := waitHealth(t, p, "bad", schedulerv1.Health_HEALTH_UNHEALTHY); r.Reason != "health check failed 2 times: command exited with code 3" {
		t.Errorf("reason %q", r.Reason)
	}
	l.Close()
	waitHealth(t, p, "tcp", schedulerv1.Health_HEALTH_UNHEALTHY)
	// Sync without a target stops checking it.
	p.Sync(context.Background(), nil)
	if _, ok := p.Result("tcp"); ok {
		t.Error("still checking after the target left")
	}
}

// countingExec counts the checks run.
type countingExec struct {
	shellExec
	n atomic.Int32
}

func (c *countingExec) Exec(ctx context.Context, id string, argv []string) (int, error) {
	c.n.Add(1)
	return c.shellExec.Exec(ctx, id, argv)
}

func TestStartGraceHidesEarlyFailures(t *testing.T) {
	ex := &countingExec{}
	p := New(ex)
	defer p.Stop()
	h := hc(spec.Check{Type: spec.CheckCommand, Command: spec.Command{Shell: "exit 1"}})
	h.StartGrace = spec.Duration(time.Hour)
	p.Sync(context.Background(), []Target{{ID: "slow", Health: h}})
	deadline := time.Now().Add(10 * time.Second)
	for ex.n.Load() < 4 { // more failed checks than retries, all inside the grace period
		if time.Now().After(deadline) {
			t.Fatal("checks did not run")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r, _ := p.Result("slow"); r.Health != schedulerv1.Health_HEALTH_STARTING {
		t.Fatalf("health %v inside start_grace, want starting", r.Health)
	}
}
