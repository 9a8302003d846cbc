package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/agent/internal/netns"
)

// Init step actions and failure modes (SPEC.md init.steps).
const (
	ActionWaitTCP  = "init.wait_tcp"
	ActionWaitHTTP = "init.wait_http"
	ActionRun      = "init.run"
)

// InitStep is one pre-start action. It runs after runc has created the
// container and before its own process starts: wait_tcp and wait_http in
// the container's network namespace, run inside the container itself (its
// filesystem, environment, user and namespaces).
type InitStep struct {
	ID           string        `json:"id"`
	Action       string        `json:"action"`
	Host         string        `json:"host,omitempty"`
	Port         int           `json:"port,omitempty"`
	URL          string        `json:"url,omitempty"`
	ExpectStatus int           `json:"expect_status,omitempty"`
	Command      []string      `json:"command,omitempty"`
	Retry        int           `json:"retry,omitempty"`
	Timeout      time.Duration `json:"timeout,omitempty"`    // per attempt
	OnFailure    string        `json:"on_failure,omitempty"` // fail (default), warn, continue
}

// InitResult is how one step went.
type InitResult struct {
	ID       string        `json:"id"`
	Outcome  string        `json:"outcome"` // ok, failed, warned (failed, went on with a warning), continued
	Attempts int           `json:"attempts"`
	Duration time.Duration `json:"duration"`
	Output   string        `json:"output,omitempty"` // the last attempt's output or error, its tail
}

// ErrInit marks a replica whose init steps failed; it wraps
// errkind.Precondition, so callers can tell it from other start failures.
var ErrInit = fmt.Errorf("init step failed: %w", errkind.Precondition)

const initOutputTail = 1024

// runInit runs steps in order for container id. It returns every step's
// result and, when a step with on_failure fail failed, an error wrapping
// ErrInit that names it.
func (rn *Runner) runInit(ctx context.Context, log *zap.Logger, id, deployment, netnsPath string, steps []InitStep) ([]InitResult, error) {
	var results []InitResult
	for _, st := range steps {
		start := time.Now()
		res := InitResult{ID: st.ID}
		var out string
		var err error
		for attempt := 0; attempt <= st.Retry; attempt++ {
			res.Attempts++
			actx, cancel := context.WithTimeout(ctx, cmp(st.Timeout, 30*time.Second))
			out, err = rn.initAttempt(actx, id, deployment, netnsPath, st)
			cancel()
			if err == nil || ctx.Err() != nil {
				break
			}
		}
		res.Duration = time.Since(start)
		if err != nil {
			out = tail(out+"\n"+err.Error(), initOutputTail)
		} else {
			out = tail(out, initOutputTail)
		}
		res.Output = out
		switch {
		case err == nil:
			res.Outcome = "ok"
		case st.OnFailure == "warn":
			res.Outcome = "warned"
			log.Warn("init step failed; going on (on_failure: warn)", zap.String("step", st.ID), zap.Error(err))
		case st.OnFailure == "continue":
			res.Outcome = "continued"
		default:
			res.Outcome = "failed"
		}
		log.Info("init step done", zap.String("step", st.ID), zap.String("outcome", res.Outcome),
			zap.Int("attempts", res.Attempts), zap.Duration("took", res.Duration))
		results = append(results, res)
		if res.Outcome == "failed" {
			return results, fmt.Errorf("%w: %s (%s, %d attempts): %s", ErrInit, st.ID, st.Action, res.Attempts, res.Output)
		}
	}
	return results, nil
}

func cmp(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// initAttempt runs one attempt of a step and returns its output.
func (rn *Runner) initAttempt(ctx context.Context, id, deployment, netnsPath string, st InitStep) (string, error) {
	// Service names (db.global) come from the scheduler's table, looked up
	// again on every try: the service may start while this one waits.
	resolve := func(host string) string { return rn.resolve(deployment, host) }
	switch st.Action {
	case ActionWaitTCP:
		return "", waitTCP(ctx, netnsPath, func() string { return net.JoinHostPort(resolve(st.Host), strconv.Itoa(st.Port)) })
	case ActionWaitHTTP:
		return "", waitHTTP(ctx, netnsPath, st.URL, st.ExpectStatus, resolve)
	case ActionRun:
		var out bytes.Buffer
		code, err := rn.exec(ctx, id, ExecSpec{Args: st.Command}, ExecIO{Stdout: &out, Stderr: &out})
		if err != nil {
			return out.String(), err
		}
		if code != 0 {
			return out.String(), fmt.Errorf("exit code %d", code)
		}
		return out.String(), nil
	}
	return "", fmt.Errorf("unknown init action %q: %w", st.Action, errkind.Invalid)
}

// waitTCP connects to addr() from the container's network until it answers.
func waitTCP(ctx context.Context, netnsPath string, target func() string) error {
	for {
		addr := target()
		var conn net.Conn
		err := netns.Do(netnsPath, func() error {
			var d net.Dialer
			dctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			var err error
			conn, err = d.DialContext(dctx, "tcp", addr)
			return err
		})
		if err == nil {
			return conn.Close()
		}
		if werr := sleepCtx(ctx, 200*time.Millisecond); werr != nil {
			return fmt.Errorf("connect %s: %w", addr, err)
		}
	}
}

// waitHTTP polls url from the container's network until it answers want.
func waitHTTP(ctx context.Context, netnsPath, url string, want int, resolve func(string) string) error {
	if want == 0 {
		want = http.StatusOK
	}
	client := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if host, port, err := net.SplitHostPort(addr); err == nil {
				addr = net.JoinHostPort(resolve(host), port)
			}
			var conn net.Conn
			err := netns.Do(netnsPath, func() error {
				var d net.Dialer
				var err error
				conn, err = d.DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == want {
				return nil
			}
			err = fmt.Errorf("GET %s: status %d, want %d", url, resp.StatusCode, want)
		}
		last = err
		if werr := sleepCtx(ctx, 200*time.Millisecond); werr != nil {
			if errors.Is(last, context.DeadlineExceeded) || last == nil {
				return werr
			}
			return last
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
