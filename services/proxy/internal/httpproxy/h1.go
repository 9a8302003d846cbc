package httpproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// h1Transport speaks HTTP/1.1 to replicas on pooled connections, one
// request at a time per connection, in the calling goroutine. It does what
// net/http.Transport does for the common case without its two goroutines
// and channel hand-offs per request, which is most of the proxy's own cost.
// Requests it does not handle (upgrades, Expect: 100-continue) go to the
// standard transport.
type h1Transport struct {
	dial            func(ctx context.Context, network, addr string) (net.Conn, error)
	responseTimeout time.Duration
	maxIdle         int
	idleTimeout     time.Duration
	std             http.RoundTripper

	mu        sync.Mutex
	idle      map[string][]*h1Conn // by replica address, most recent last
	lastSweep time.Time
}

type h1Conn struct {
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Time
}

func (t *h1Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	// Requests with a body, or not idempotent, go to the standard
	// transport: its connections notice a replica closing them while idle,
	// so such a request is never sent into a dead connection, where it could
	// not be sent again.
	idempotent := req.Method == http.MethodGet || req.Method == http.MethodHead || req.Method == http.MethodOptions
	if !idempotent || (req.Body != nil && req.Body != http.NoBody) || req.Header.Get("Upgrade") != "" || req.URL.Scheme != "http" {
		return t.std.RoundTrip(req)
	}
	addr := req.URL.Host
	for {
		pc, reused := t.get(addr)
		if pc == nil {
			c, err := t.dial(req.Context(), "tcp", addr)
			if err != nil {
				closeBody(req)
				return nil, err
			}
			pc = &h1Conn{c: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 16<<10)}
		}
		resp, err := t.exchange(pc, req)
		if err == nil {
			return resp, nil
		}
		pc.c.Close()
		// A pooled connection the replica closed meanwhile fails before any
		// byte of a response: send again on a fresh one when possible.
		if reused && errors.Is(err, errStaleConn) && req.Context().Err() == nil {
			continue
		}
		closeBody(req)
		return nil, err
	}
}

var errStaleConn = errors.New("replica closed the connection")

// errStale marks an error before any response byte: on a pooled
// connection, the replica had closed it.
func errStale(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return fmt.Errorf("%w: %w", errStaleConn, err)
	}
	return err
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// exchange writes req on pc and reads the response head.
func (t *h1Transport) exchange(pc *h1Conn, req *http.Request) (*http.Response, error) {
	stop := context.AfterFunc(req.Context(), func() { pc.c.SetDeadline(time.Unix(1, 0)) }) //nolint:errcheck // unblocks I/O
	if err := req.Write(pc.bw); err != nil {
		stop()
		return nil, errStale(err)
	}
	if err := pc.bw.Flush(); err != nil {
		stop()
		return nil, errStale(err)
	}
	// Always set: a pooled connection may carry the fast path's deadline.
	var deadline time.Time
	if t.responseTimeout > 0 {
		deadline = time.Now().Add(t.responseTimeout)
	}
	pc.c.SetReadDeadline(deadline) //nolint:errcheck // a failed read reports it
	if _, err := pc.br.Peek(1); err != nil {
		stop()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && req.Context().Err() == nil {
			return nil, &timeoutError{}
		}
		return nil, errStale(err)
	}
	var resp *http.Response
	var err error
	for {
		resp, err = http.ReadResponse(pc.br, req)
		if err != nil || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		resp.Body.Close() // 1xx: the final response follows
	}
	if err != nil {
		stop()
		return nil, err
	}
	pc.c.SetReadDeadline(time.Time{}) //nolint:errcheck // best effort
	reuse := !resp.Close && !req.Close && resp.ProtoAtLeast(1, 1)
	resp.Body = &h1Body{rc: resp.Body, pc: pc, t: t, addr: req.URL.Host, reuse: reuse, stop: stop}
	return resp, nil
}

// timeoutError is a replica that sent no response head in time.
type timeoutError struct{}

func (*timeoutError) Error() string   { return "timeout awaiting response headers" }
func (*timeoutError) Timeout() bool   { return true }
func (*timeoutError) Temporary() bool { return true }

// h1Body returns the connection to the pool once the body was read to its
// end, and closes it otherwise.
type h1Body struct {
	rc    io.ReadCloser
	pc    *h1Conn
	t     *h1Transport
	addr  string
	reuse bool
	stop  func() bool
	eof   bool
	done  atomic.Bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *h1Body) Close() error {
	if b.done.Swap(true) {
		return nil
	}
	err := b.rc.Close()
	if !b.stop() { // the request was cancelled meanwhile: the deadline is poisoned
		b.reuse = false
	}
	if b.reuse && b.eof && b.pc.br.Buffered() == 0 {
		b.t.put(b.addr, b.pc)
	} else {
		b.pc.c.Close()
	}
	return err
}

func (t *h1Transport) get(addr string) (*h1Conn, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	conns := t.idle[addr]
	for len(conns) > 0 {
		pc := conns[len(conns)-1]
		conns = conns[:len(conns)-1]
		if time.Since(pc.idleAt) < t.idleTimeout {
			t.idle[addr] = conns
			return pc, true
		}
		pc.c.Close()
	}
	delete(t.idle, addr)
	return nil, false
}

func (t *h1Transport) put(addr string, pc *h1Conn) {
	now := time.Now()
	pc.idleAt = now
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.idle == nil {
		t.idle = map[string][]*h1Conn{}
	}
	if now.Sub(t.lastSweep) > t.idleTimeout/2 {
		t.sweep(now)
	}
	if len(t.idle[addr]) >= t.maxIdle {
		pc.c.Close()
		return
	}
	t.idle[addr] = append(t.idle[addr], pc)
}

// sweep closes connections idle too long, so that those to replicas that
// get no more requests (removed ones) do not pile up. t.mu is held.
func (t *h1Transport) sweep(now time.Time) {
	t.lastSweep = now
	for addr, conns := range t.idle {
		keep := conns[:0]
		for _, pc := range conns {
			if now.Sub(pc.idleAt) < t.idleTimeout {
				keep = append(keep, pc)
			} else {
				pc.c.Close()
			}
		}
		if len(keep) == 0 {
			delete(t.idle, addr)
		} else {
			t.idle[addr] = keep
		}
	}
}

// CloseIdleConnections closes every pooled connection.
func (t *h1Transport) CloseIdleConnections() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for addr, conns := range t.idle {
		for _, pc := range conns {
			pc.c.Close()
		}
		delete(t.idle, addr)
	}
}
