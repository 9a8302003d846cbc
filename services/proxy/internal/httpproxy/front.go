package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"go.uber.org/zap"

	"zlayer.dev/services/proxy/internal/balance"
	"zlayer.dev/services/proxy/internal/routes"
)

// Front serves one listener. Each connection starts on a fast path that
// forwards plain HTTP/1.1 GET and HEAD requests to service routes itself,
// in the connection's goroutine, copying the request head to a pooled
// replica connection and the response back with no per-request
// allocation of requests, header maps or goroutines — the common case of
// a proxy, and where net/http's server spends most of its time. The first
// request the fast path does not take (a body, an upgrade, HTTP/2 or h2c,
// HTTP/1.0, an ACME challenge, a job route, anything unusual in its head)
// hands the connection, with the bytes already read, to the http.Server,
// which serves it from then on with the same Proxy.
type Front struct {
	p       *Proxy
	srv     *http.Server
	secure  bool
	tlsConf *tls.Config
	t       Timeouts
	log     *zap.Logger

	handoff *connListener
	ln      net.Listener

	// Loops is the number of event loops serving a plain listener (see
	// loop.go); 0 serves each connection from its own goroutine. Set it
	// before Serve.
	Loops      int
	loops      []*eventLoop
	lnDup      *os.File // the event loops' acceptor's listening socket
	loopTurn   atomic.Uint32
	acceptDone chan struct{} // closed when the event loops' acceptor stopped
	force      atomic.Bool   // Shutdown ran out of time

	mu       sync.Mutex
	conns    map[*frontConn]struct{}
	shutdown atomic.Bool
	wg       sync.WaitGroup
}

// NewFront returns the front of a listener: h serves what the fast path
// hands off (for the HTTP listener, with ACME's challenge handler around
// the proxy's); tlsConfig is nil for plain HTTP and h2c.
func (p *Proxy) NewFront(h http.Handler, tlsConfig *tls.Config, t Timeouts, log *zap.Logger) *Front {
	f := &Front{p: p, secure: tlsConfig != nil, t: t, log: log, conns: map[*frontConn]struct{}{}, acceptDone: make(chan struct{})}
	f.srv = Server(h, tlsConfig, t, log)
	f.srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if pc, ok := c.(*prefixConn); ok && pc.tls != nil {
			return context.WithValue(ctx, tlsStateKey{}, pc.tls)
		}
		return ctx
	}
	if tlsConfig != nil {
		f.tlsConf = tlsConfig.Clone()
		if !slices.Contains(f.tlsConf.NextProtos, "h2") {
			f.tlsConf.NextProtos = append([]string{"h2"}, f.tlsConf.NextProtos...)
		}
		if !slices.Contains(f.tlsConf.NextProtos, "http/1.1") {
			f.tlsConf.NextProtos = append(f.tlsConf.NextProtos, "http/1.1")
		}
	}
	return f
}

// tlsStateKey carries the TLS state of a handed-off TLS connection, which
// net/http sees as a plain one (it is wrapped to replay the bytes read).
type tlsStateKey struct{}

// Serve accepts connections on ln until ln is closed or Shutdown. It
// returns http.ErrServerClosed after Shutdown.
func (f *Front) Serve(ln net.Listener) error {
	f.mu.Lock()
	f.ln = ln
	f.handoff = newConnListener(ln.Addr())
	f.mu.Unlock()
	if f.shutdown.Load() {
		ln.Close()
		return http.ErrServerClosed
	}
	go func() {
		if err := f.srv.Serve(f.handoff); err != nil && !errors.Is(err, http.ErrServerClosed) {
			f.log.Error("serving handed-off connections failed", zap.Error(err))
		}
	}()
	if tl, ok := ln.(*net.TCPListener); ok && f.Loops > 0 {
		if f.tlsConf == nil {
			return f.serveLoops(tl)
		}
		// TLS: handshakes in goroutines, then HTTP/1.1 on the loops.
		loops, err := f.startLoops()
		if err != nil {
			return err
		}
		defer f.acceptorDone(loops)
	}
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if f.shutdown.Load() {
				return http.ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				f.log.Warn("accept failed; retrying", zap.Error(err), zap.Duration("in", delay))
				time.Sleep(delay)
				continue
			}
			f.handoff.Close()
			return err
		}
		delay = 0
		fc := &frontConn{f: f, c: c}
		if !f.track(fc) {
			c.Close()
			return http.ErrServerClosed
		}
		go fc.serve()
	}
}

// Shutdown closes the listener, stops the fast path's idle connections at
// once and its busy ones after their current response, and shuts the
// http.Server down, waiting for both until ctx is done.
func (f *Front) Shutdown(ctx context.Context) error {
	f.shutdown.Store(true)
	f.mu.Lock()
	if f.ln != nil {
		f.ln.Close()
	}
	if f.lnDup != nil {
		f.lnDup.Close()
	}
	for fc := range f.conns {
		fc.wake()
	}
	for _, l := range f.loops {
		l.wake()
	}
	f.mu.Unlock()
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	err := f.srv.Shutdown(ctx)
	select {
	case <-done:
	case <-ctx.Done():
		f.mu.Lock()
		f.force.Store(true)
		for _, l := range f.loops {
			l.wake()
		}
		for fc := range f.conns {
			fc.c.Close()
			if pc := fc.backend.Load(); pc != nil {
				pc.c.Close() // a replica that does not answer must not hold the request
			}
		}
		f.mu.Unlock()
		if err == nil {
			err = ctx.Err()
		}
	}
	return err
}

func (f *Front) track(fc *frontConn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.shutdown.Load() {
		return false
	}
	f.conns[fc] = struct{}{}
	f.wg.Add(1)
	return true
}

func (f *Front) untrack(fc *frontConn) {
	f.mu.Lock()
	delete(f.conns, fc)
	f.mu.Unlock()
	f.wg.Done()
}

// adopt serves a connection an event loop gave up in the middle of a
// request to e's replica be: it streams the answer, whose head is in
// fc.resp and whose body comes from pc, then serves the connection's next
// requests from a goroutine. raw is the client's socket (under fc.c's TLS
// session, if any), closed at once if Shutdown was forced.
func (f *Front) adopt(fc *frontConn, pc *h1Conn, addr string, e *routes.Entry, be *balance.Backend, start time.Time, raw net.Conn) {
	f.mu.Lock()
	if f.force.Load() { // Shutdown ran out of time and closed the rest
		f.mu.Unlock()
		raw.Close() // not a TLS session's Close, which would try to say goodbye

		pc.c.Close()
		be.Release()
		f.p.record(&fc.req, e, exchangeResult{status: statusClientGone, backend: be}, start, fc.c.RemoteAddr)
		return
	}
	f.conns[fc] = struct{}{} // even after Shutdown began: the answer is owed
	f.wg.Add(1)
	f.mu.Unlock()
	go func() {
		handedOff := false
		defer func() { fc.done(handedOff) }()
		fc.buffers()
		fc.backend.Store(pc)
		res := f.p.forward(fc, pc, addr)
		fc.backend.Store(nil)
		res.backend = be
		be.Release()
		f.p.record(&fc.req, e, res, start, fc.c.RemoteAddr)
		if res.keep && !fc.req.close && !f.shutdown.Load() {
			handedOff = fc.requests()
		}
	}()
}

// frontConn is one client connection on the fast path.
type frontConn struct {
	f      *Front
	c      net.Conn
	tls    *tls.ConnectionState
	remote string // client IP
	br     *bufio.Reader
	bw     *bufio.Writer
	head   []byte // the current request head as read
	req    request
	resp   response    // the current response head, reused
	idle   atomic.Bool // waiting for the next request
	// backend is the replica connection of the request in progress, for a
	// Shutdown that runs out of time.
	backend atomic.Pointer[h1Conn]
	rdl     time.Time // the read deadline last set
}

// wake makes an idle connection notice a shutdown.
func (fc *frontConn) wake() {
	if fc.idle.Load() {
		fc.c.SetReadDeadline(time.Unix(1, 0)) //nolint:errcheck // unblocks the read
	}
}

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 8<<10) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 8<<10) }}
)

// maxHead bounds a request head on the fast path; longer ones go to
// net/http, which answers 431.
const maxHead = 32 << 10

func (fc *frontConn) serve() {
	handedOff := false
	defer func() { fc.done(handedOff) }()
	if host, _, err := net.SplitHostPort(fc.c.RemoteAddr().String()); err == nil {
		fc.remote = host
	}
	if fc.f.tlsConf != nil {
		mc := &memConn{conn: fc.c}
		tc := tls.Server(mc, fc.f.tlsConf)
		if fc.f.t.ReadHeader > 0 {
			tc.SetDeadline(time.Now().Add(fc.f.t.ReadHeader)) //nolint:errcheck // a failed handshake reports it
		}
		if err := tc.Handshake(); err != nil {
			return
		}
		tc.SetDeadline(time.Time{}) //nolint:errcheck // best effort
		f := fc.f
		f.mu.Lock() // a forced Shutdown closes fc.c
		fc.c = tc
		f.mu.Unlock()
		st := tc.ConnectionState()
		fc.tls = &st
		switch st.NegotiatedProtocol {
		case "h2":
			handedOff = fc.f.handoff.give(tc)
			return
		case "", "http/1.1":
			if fc.f.toLoop(fc, tc, mc) {
				handedOff = true
				return
			}
		default: // acme-tls/1: the handshake was the answer
			return
		}
	}
	fc.buffers()
	handedOff = fc.requests()
}

// buffers gives fc its reader and writer.
func (fc *frontConn) buffers() {
	fc.br = readerPool.Get().(*bufio.Reader)
	fc.br.Reset(fc.c)
	fc.bw = writerPool.Get().(*bufio.Writer)
	fc.bw.Reset(fc.c)
}

// requests serves requests until the connection ends or is handed off
// (then it returns true).
func (fc *frontConn) requests() (handedOff bool) {
	for {
		ok, err := fc.readHead()
		if err != nil {
			return false
		}
		if !ok {
			return fc.handOff()
		}
		keep, taken := fc.f.p.fast(fc)
		if !taken {
			return fc.handOff()
		}
		if !keep || fc.f.shutdown.Load() {
			return false
		}
	}
}

// done ends the connection's goroutine: it closes the connection unless it
// was handed off and gives the buffers back.
func (fc *frontConn) done(handedOff bool) {
	if !handedOff {
		fc.c.Close()
	}
	if fc.br != nil {
		fc.br.Reset(nil)
		readerPool.Put(fc.br)
	}
	if fc.bw != nil {
		fc.bw.Reset(nil)
		writerPool.Put(fc.bw)
	}
	fc.f.untrack(fc)
}

// handOff gives the connection to the http.Server with what was read.
func (fc *frontConn) handOff() bool {
	prefix := make([]byte, 0, len(fc.head)+fc.br.Buffered())
	prefix = append(prefix, fc.head...)
	rest, _ := fc.br.Peek(fc.br.Buffered())
	prefix = append(prefix, rest...)
	return fc.f.handoff.give(&prefixConn{Conn: fc.c, prefix: prefix, tls: fc.tls})
}

// readHead reads the next request head into fc.head and parses it. It
// returns false (no error) when the request is not for the fast path; the
// head read so far is kept for the hand-off.
func (fc *frontConn) readHead() (bool, error) {
	fc.head = fc.head[:0]
	// Shutdown sets its flag, then wakes idle connections: setting idle and
	// the deadline before looking at the flag means either this sees the
	// flag or Shutdown's wake-up comes after the deadline set here.
	fc.idle.Store(true)
	var deadline time.Time
	if fc.f.t.Idle > 0 {
		deadline = time.Now().Add(fc.f.t.Idle)
	}
	// Moving the deadline costs a timer update: keep the current one while
	// it is at most a quarter of the idle timeout early.
	if deadline.IsZero() != fc.rdl.IsZero() || deadline.Sub(fc.rdl) > fc.f.t.Idle/4 {
		fc.c.SetReadDeadline(deadline) //nolint:errcheck // a failed read reports it
		fc.rdl = deadline
	}
	if fc.f.shutdown.Load() {
		return false, errors.New("shutting down")
	}
	if _, err := fc.br.Peek(1); err != nil {
		fc.idle.Store(false)
		return false, err
	}
	fc.idle.Store(false)
	if b, _ := fc.br.Peek(fc.br.Buffered()); fc.f.t.ReadHeader > 0 && !bytes.Contains(b, crlfcrlf) {
		// The head did not come in one piece: the rest has ReadHeader.
		fc.rdl = time.Now().Add(fc.f.t.ReadHeader)
		fc.c.SetReadDeadline(fc.rdl) //nolint:errcheck // a failed read reports it
	}
	for {
		line, err := fc.br.ReadSlice('\n')
		fc.head = append(fc.head, line...)
		if errors.Is(err, bufio.ErrBufferFull) {
			if len(fc.head) > maxHead {
				return false, nil
			}
			continue
		}
		if err != nil {
			if len(fc.head) > 0 {
				return false, nil // let net/http answer what it can
			}
			return false, err
		}
		if len(fc.head) > maxHead {
			return false, nil
		}
		if len(line) <= 2 && (len(line) == 1 || line[0] == '\r') {
			if len(fc.head) == len(line) { // leading blank line (RFC 9112 2.2)
				return false, nil
			}
			break
		}
	}
	return fc.req.parse(fc.head), nil
}

var crlfcrlf = []byte("\r\n\r\n")

// request is a parsed request head; its slices point into the head.
type request struct {
	method, target, path, host []byte
	close                      bool
	lines                      [][2]int // header lines to forward, as offsets
	xff                        [][]byte // X-Forwarded-For values
	fwd                        [][]byte // Forwarded values
}

// parse reads head and reports whether the fast path takes the request:
// GET or HEAD, HTTP/1.1, origin-form target without escapes, one Host, no
// body, no upgrade, no Expect, no hop-by-hop headers beyond the usual, every
// line ending in CRLF and no control character anywhere (net/http judges
// everything else, so the fast path never forwards what it would refuse).
func (r *request) parse(head []byte) bool {
	*r = request{lines: r.lines[:0], xff: r.xff[:0], fwd: r.fwd[:0]}
	if !bytes.HasSuffix(head, crlfcrlf) || !cleanHead(head) {
		return false
	}
	eol := bytes.IndexByte(head, '\n')
	line := trimCR(head[:eol])
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 < 0 {
		return false
	}
	r.method = line[:sp1]
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 < 0 || !bytes.Equal(rest[sp2+1:], []byte("HTTP/1.1")) {
		return false
	}
	r.target = rest[:sp2]
	if string(r.method) != http.MethodGet && string(r.method) != http.MethodHead {
		return false
	}
	if len(r.target) == 0 || r.target[0] != '/' || bytes.IndexByte(r.target, '%') >= 0 {
		return false
	}
	r.path = r.target
	if q := bytes.IndexByte(r.target, '?'); q >= 0 {
		r.path = r.target[:q]
	}
	if bytes.IndexByte(r.target, '#') >= 0 {
		return false
	}
	hosts := 0
	off := eol + 1
	for off < len(head) {
		n := bytes.IndexByte(head[off:], '\n')
		if n < 0 {
			return false
		}
		start, end := off, off+n+1
		off = end
		l := trimCR(head[start : end-1])
		if len(l) == 0 {
			break
		}
		if l[0] == ' ' || l[0] == '\t' { // obsolete line folding
			return false
		}
		colon := bytes.IndexByte(l, ':')
		if colon <= 0 {
			return false
		}
		name, value := l[:colon], bytes.TrimSpace(l[colon+1:])
		if !isToken(name) {
			return false
		}
		switch {
		case equalFold(name, "Host"):
			hosts++
			r.host = value
			for _, c := range value {
				if !validHostByte(c) {
					return false
				}
			}
		case equalFold(name, "Connection"):
			for _, tok := range bytes.Split(value, []byte(",")) {
				tok = bytes.TrimSpace(tok)
				switch {
				case equalFold(tok, "close"):
					r.close = true
				case equalFold(tok, "keep-alive"), len(tok) == 0:
				default:
					return false // upgrade, or headers it names as hop-by-hop
				}
			}
			continue
		case equalFold(name, "Content-Length"):
			if string(value) != "0" {
				return false
			}
		case equalFold(name, "Transfer-Encoding"), equalFold(name, "Upgrade"), equalFold(name, "Expect"):
			return false
		case equalFold(name, "Keep-Alive"), equalFold(name, "Proxy-Connection"), equalFold(name, "TE"), equalFold(name, "Trailer"),
			equalFold(name, "Proxy-Authorization"),
			equalFold(name, "X-Forwarded-Host"), equalFold(name, "X-Forwarded-Proto"):
			continue
		case equalFold(name, "X-Forwarded-For"):
			r.xff = append(r.xff, value)
			continue
		case equalFold(name, "Forwarded"):
			r.fwd = append(r.fwd, value)
			continue
		}
		r.lines = append(r.lines, [2]int{start, end})
	}
	return hosts == 1 && len(r.host) > 0
}

// isToken reports whether b is an RFC 9110 token (a header name).
func isToken(b []byte) bool {
	for _, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return len(b) > 0
}

// validHostByte reports whether c may appear in a Host header (the
// characters of a reg-name, an IP literal and a port).
func validHostByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!$&'()*+,-.:;=[]_~%", c) >= 0
}

// cleanHead reports whether every line of head ends in CRLF and no other
// control character (tab aside) appears.
func cleanHead(head []byte) bool {
	for i, c := range head {
		switch {
		case c == '\n':
			if i == 0 || head[i-1] != '\r' {
				return false
			}
		case c == '\r':
			if i+1 >= len(head) || head[i+1] != '\n' {
				return false
			}
		case c < 0x20 && c != '\t', c == 0x7f:
			return false
		}
	}
	return true
}

func trimCR(b []byte) []byte {
	if len(b) > 0 && b[len(b)-1] == '\r' {
		return b[:len(b)-1]
	}
	return b
}

// equalFold is ASCII case-insensitive equality of a header name.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c, d := b[i], s[i]
		if c|0x20 != d|0x20 || (c|0x20 < 'a' || c|0x20 > 'z') && c != d {
			return false
		}
	}
	return true
}

// prefixConn replays bytes already read before reading the connection.
type prefixConn struct {
	net.Conn
	prefix []byte
	tls    *tls.ConnectionState
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// connListener is the http.Server's listener: the connections the fast
// path hands off.
type connListener struct {
	addr   net.Addr
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newConnListener(addr net.Addr) *connListener {
	return &connListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) give(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.addr }

// fast serves the parsed request on fc if its route is a service route
// this listener serves; taken is false when it did not touch the request.
// keep says whether the connection can take another request.
func (p *Proxy) fast(fc *frontConn) (keep, taken bool) {
	r := &fc.req
	e := p.routeFast(r, fc.f.secure)
	if e == nil {
		return false, false
	}
	start := time.Now()
	p.fastRequests.Add(1)
	e.Stats.Begin()
	res := p.exchange(fc, e)
	p.record(r, e, res, start, fc.c.RemoteAddr)
	return res.keep && !r.close, true
}

// record counts a fast-path request that ended and logs it.
func (p *Proxy) record(r *request, e *routes.Entry, res exchangeResult, start time.Time, remote func() net.Addr) {
	e.Stats.End(res.status, time.Since(start))
	if p.cfg.AccessLog != nil {
		p.access(accessInfo{method: string(r.method), host: string(r.host), path: string(r.path), proto: "HTTP/1.1",
			remote: remote().String()}, e, res.backend, res.status, res.bytes, start)
	}
}

// routeFast returns the service route of a parsed request the fast path
// may serve on a listener (secure or not), or nil.
func (p *Proxy) routeFast(r *request, secure bool) *routes.Entry {
	if bytes.HasPrefix(r.path, []byte("/.well-known/acme-challenge/")) {
		return nil
	}
	// The strings only live for the lookup, while the head is untouched.
	e := p.cfg.Routes.Load().MatchHTTP(unsafe.String(unsafe.SliceData(r.host), len(r.host)), unsafe.String(unsafe.SliceData(r.path), len(r.path)))
	if e == nil || e.Kind != routes.Service || e.Protocol == routes.HTTPS && !secure {
		return nil
	}
	return e
}

// exchangeResult is how a fast-path request ended.
type exchangeResult struct {
	status  int
	bytes   int64
	keep    bool
	backend *balance.Backend
}

// writeError answers with a plain-text error like http.Error.
func (fc *frontConn) writeError(code int, msg string) exchangeResult {
	writeError(fc.bw, &fc.req, code, msg)
	err := fc.bw.Flush()
	return exchangeResult{status: code, keep: err == nil}
}

// headWriter is where the fast path writes heads: a bufio.Writer, or an
// event loop's outBuf.
type headWriter interface {
	io.Writer
	io.ByteWriter
	io.StringWriter
}

// writeError writes a plain-text error answer to r like http.Error.
func writeError(w headWriter, r *request, code int, msg string) {
	body := msg + "\n"
	fmt.Fprintf(w, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: %d\r\n",
		code, http.StatusText(code), len(body))
	if r.close {
		w.WriteString("Connection: close\r\n")
	}
	w.WriteString("\r\n")
	if string(r.method) != http.MethodHead {
		w.WriteString(body)
	}
}

// failureAnswer is the answer to a request whose replica be of e failed.
func failureAnswer(e *routes.Entry, be *balance.Backend, fail backendFailure, err error) (int, string) {
	what := fmt.Sprintf("service %q of deployment %q (endpoint %q)", e.Service, e.Deployment, e.Endpoint)
	if be == nil {
		return http.StatusServiceUnavailable, "zlayer-proxy: " + what + " has no healthy replica"
	}
	replica := fmt.Sprintf("replica %s at %s", be.ID, be.Addr)
	if fail == failTimeout {
		return http.StatusGatewayTimeout, fmt.Sprintf("zlayer-proxy: %s: %s did not answer in time", what, replica)
	}
	return http.StatusBadGateway, fmt.Sprintf("zlayer-proxy: %s: %s failed: %v", what, replica, err)
}

// writeRequest writes the request head for a replica to w.
func (p *Proxy) writeRequest(w headWriter, r *request, head []byte, remote string, secure bool) {
	w.Write(r.method)
	w.WriteByte(' ')
	w.Write(r.target)
	w.WriteString(" HTTP/1.1\r\n")
	for _, l := range r.lines {
		w.Write(head[l[0]:l[1]])
	}
	w.WriteString("X-Forwarded-For: ")
	if p.cfg.TrustForwarded {
		for _, v := range r.xff {
			w.Write(v)
			w.WriteString(", ")
		}
	}
	w.WriteString(remote)
	w.WriteString("\r\nX-Forwarded-Host: ")
	w.Write(r.host)
	proto := "http"
	if secure {
		proto = "https"
	}
	w.WriteString("\r\nX-Forwarded-Proto: ")
	w.WriteString(proto)
	w.WriteString("\r\n")
	if p.cfg.TrustForwarded {
		for _, v := range r.fwd {
			w.WriteString("Forwarded: ")
			w.Write(v)
			w.WriteString("\r\n")
		}
	}
	w.WriteString("Forwarded: ")
	if remote != "" {
		if strings.IndexByte(remote, ':') >= 0 {
			w.WriteString(`for="[`)
			w.WriteString(remote)
			w.WriteString(`]";`)
		} else {
			w.WriteString("for=")
			w.WriteString(remote)
			w.WriteByte(';')
		}
	}
	w.WriteString(`host="`)
	for _, c := range r.host {
		if c != '"' {
			w.WriteByte(c)
		}
	}
	w.WriteString(`";proto=`)
	w.WriteString(proto)
	w.WriteString("\r\n\r\n")
}

// backendFailure says how sending to a replica failed.
type backendFailure int

const (
	failNone    backendFailure = iota
	failDial                   // could not connect: eject, try another replica
	failStale                  // a pooled connection the replica had closed: try a fresh one
	failTimeout                // no response head in time: 504
	failOther                  // 502
)

// exchange sends the request to a replica of e and copies the response to
// the client.
func (p *Proxy) exchange(fc *frontConn, e *routes.Entry) exchangeResult {
	be := e.Pool.Pick(nil)
	if be == nil {
		return fc.writeError(failureAnswer(e, nil, failOther, nil))
	}
	retried := false
	for {
		res, fail, err := p.try(fc, be)
		res.backend = be
		if fail == failNone {
			be.Release()
			return res
		}
		if next := failover(e, be, fail, err, retried); next != nil {
			be, retried = next, true
			continue
		}
		out := fc.writeError(failureAnswer(e, be, fail, err))
		out.backend = be
		return out
	}
}

// failover ends a failed try on be, a replica of e: one that could not be
// reached is ejected and, once per request (retried says whether that was
// done), another replica is returned to try; otherwise the request has
// failed (a reset ejects the replica too) and failover returns nil.
func failover(e *routes.Entry, be *balance.Backend, fail backendFailure, err error, retried bool) *balance.Backend {
	be.Release()
	switch {
	case fail == failDial:
		e.Pool.Eject(be)
		if !retried {
			return e.Pool.Pick(be)
		}
	case isReset(err):
		e.Pool.Eject(be)
	}
	return nil
}

// try sends the request to be once (twice when a pooled connection turns
// out stale) and copies the response.
func (p *Proxy) try(fc *frontConn, be *balance.Backend) (exchangeResult, backendFailure, error) {
	for {
		pc, reused := p.h1.get(be.Addr)
		if pc == nil {
			c, err := p.h1.dial(context.Background(), "tcp", be.Addr)
			if err != nil {
				return exchangeResult{}, failDial, err
			}
			pc = &h1Conn{c: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 16<<10)}
		}
		res, fail, err := p.relay(fc, pc, be.Addr, reused)
		if fail == failStale && reused {
			continue
		}
		if fail == failStale {
			fail = failOther
		}
		return res, fail, err
	}
}

// relay writes the request on pc, reads the response head and copies the
// response to the client. pc goes back to the pool when it can serve again.
func (p *Proxy) relay(fc *frontConn, pc *h1Conn, addr string, reused bool) (exchangeResult, backendFailure, error) {
	fc.backend.Store(pc)
	defer fc.backend.Store(nil)
	p.writeRequest(pc.bw, &fc.req, fc.head, fc.remote, fc.f.secure)
	if err := pc.bw.Flush(); err != nil {
		pc.c.Close()
		return exchangeResult{}, failStale, err
	}
	// The answer is awaited in steps: an answer slower than slowAnswer
	// (a long poll) has a watcher notice a client that leaves meanwhile,
	// and the response timeout bounds the whole wait.
	sent := time.Now()
	pc.c.SetReadDeadline(sent.Add(slowAnswer(p.h1.responseTimeout))) //nolint:errcheck // a failed read reports it
	var watch *clientWatch
	defer func() { watch.stop() }()
	resp := &fc.resp
	for first := true; ; first = false {
		if _, err := pc.br.Peek(1); err != nil {
			var ne net.Error
			timeout := errors.As(err, &ne) && ne.Timeout()
			if timeout && watch == nil && (p.h1.responseTimeout <= 0 || time.Since(sent) < p.h1.responseTimeout) {
				watch = fc.watch(pc)
				var deadline time.Time
				if p.h1.responseTimeout > 0 {
					deadline = sent.Add(p.h1.responseTimeout)
				}
				pc.c.SetReadDeadline(deadline) //nolint:errcheck // a failed read reports it
				continue
			}
			pc.c.Close()
			if watch.left() {
				return exchangeResult{status: statusClientGone}, failNone, nil
			}
			if timeout {
				return exchangeResult{}, failTimeout, err
			}
			if errors.Is(err, io.EOF) || isReset(err) {
				return exchangeResult{}, failStale, err
			}
			return exchangeResult{}, failOther, err
		}
		if err := resp.read(pc.br); err != nil {
			pc.c.Close()
			if first && reused {
				// Bytes a replica sent after an earlier answer (a body
				// after HEAD or 204) spoil the connection, not the request.
				return exchangeResult{}, failStale, err
			}
			return exchangeResult{}, failOther, err
		}
		if resp.status >= 200 {
			watch.stop()
			break
		}
		if resp.status == http.StatusSwitchingProtocols {
			pc.c.Close()
			return exchangeResult{}, failOther, errors.New("replica switched protocols without being asked to")
		}
		// 1xx: the final response follows.
	}
	return p.forward(fc, pc, addr), failNone, nil
}

// bodiless reports whether the answer to r has no body whatever its head
// says, and closeDelimited whether its body ends when the replica closes.
func (resp *response) framing(r *request) (bodiless, closeDelimited bool) {
	bodiless = string(r.method) == http.MethodHead || resp.status == http.StatusNoContent || resp.status == http.StatusNotModified
	return bodiless, !bodiless && !resp.chunked && resp.length < 0
}

// writeHead writes the answer's head for the client.
func (resp *response) writeHead(w headWriter, closeConn bool) {
	w.WriteString("HTTP/1.1 ")
	w.Write(resp.statusText)
	if len(resp.statusText) == 3 { // no reason phrase: the space stays
		w.WriteByte(' ')
	}
	w.WriteString("\r\n")
	for _, l := range resp.lines {
		w.Write(resp.head[l[0]:l[1]])
	}
	if closeConn {
		w.WriteString("Connection: close\r\n")
	}
	w.WriteString("\r\n")
}

// forward copies the answer whose head is in fc.resp, and its body from
// pc, to the client. pc goes back to the pool when it can serve again.
func (p *Proxy) forward(fc *frontConn, pc *h1Conn, addr string) exchangeResult {
	resp := &fc.resp
	bodiless, closeDelimited := resp.framing(&fc.req)
	res := exchangeResult{status: resp.status}
	w := fc.bw
	resp.writeHead(w, closeDelimited || fc.req.close || fc.f.shutdown.Load())
	var err error
	switch {
	case bodiless:
	// The wait for the answer had a deadline; a body still to come has none
	// (a body already buffered needs no read, so the deadline stays, and the
	// next request on the connection sets its own).
	case resp.chunked:
		pc.c.SetReadDeadline(time.Time{}) //nolint:errcheck // streaming: no deadline on the body
		res.bytes, err = copyChunked(w, pc.br)
	case resp.length >= 0:
		if int64(pc.br.Buffered()) < resp.length {
			pc.c.SetReadDeadline(time.Time{}) //nolint:errcheck // streaming: no deadline on the body
		}
		res.bytes, err = copyN(w, pc.br, resp.length)
	default:
		pc.c.SetReadDeadline(time.Time{}) //nolint:errcheck // streaming: no deadline on the body
		res.bytes, err = io.Copy(w, pc.br)
	}
	if ferr := w.Flush(); err == nil && ferr != nil {
		err = ferr
	}
	reusable := err == nil && !closeDelimited && !resp.close && pc.br.Buffered() == 0
	if reusable {
		p.h1.put(addr, pc)
	} else {
		pc.c.Close()
	}
	res.keep = err == nil && !closeDelimited
	return res
}

// statusClientGone is what the metrics and the access log record for a
// request whose client left before the answer (as net/http's path does).
const statusClientGone = 499

// slowAnswer is how long the fast path waits for an answer before it
// watches the client: the response timeout when that is shorter.
func slowAnswer(responseTimeout time.Duration) time.Duration {
	const d = time.Second
	if responseTimeout > 0 && responseTimeout < d {
		return responseTimeout
	}
	return d
}

// clientWatch notices a client that closes its connection while the fast
// path waits for a slow answer: it closes the replica connection, which
// ends the wait. Bytes the client sends meanwhile (its next request) stay
// in the connection's reader.
type clientWatch struct {
	fc   *frontConn
	done chan struct{}
	gone atomic.Bool
}

func (fc *frontConn) watch(pc *h1Conn) *clientWatch {
	w := &clientWatch{fc: fc, done: make(chan struct{})}
	// The reader is the watcher's alone until stop: the request's
	// goroutine waits for the replica and only writes to the client.
	fc.c.SetReadDeadline(time.Time{}) //nolint:errcheck // a failed read is the answer
	go func() {
		defer close(w.done)
		if _, err := fc.br.Peek(1); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			w.gone.Store(true)
			pc.c.Close()
		}
	}()
	return w
}

// stop ends the watch (if any) and gives the reader back; the next request
// head sets its own deadline.
func (w *clientWatch) stop() {
	if w == nil || w.fc == nil {
		return
	}
	w.fc.c.SetReadDeadline(time.Unix(1, 0)) //nolint:errcheck // unblocks the watcher
	<-w.done
	w.fc.rdl = time.Unix(1, 0)
	w.fc = nil
}

// left reports whether the client left during the watch.
func (w *clientWatch) left() bool {
	if w == nil {
		return false
	}
	w.stop()
	return w.gone.Load()
}

// copyN copies n body bytes, flushing w whenever the replica has no more
// buffered, so a slow body streams instead of waiting for a full buffer.
func copyN(w *bufio.Writer, r *bufio.Reader, n int64) (int64, error) {
	var done int64
	for done < n {
		if r.Buffered() == 0 && w.Buffered() > 0 {
			if err := w.Flush(); err != nil {
				return done, err
			}
		}
		b, err := r.Peek(min(max(r.Buffered(), 1), int(min(n-done, int64(r.Size())))))
		if len(b) > 0 {
			m, werr := w.Write(b)
			r.Discard(m) //nolint:errcheck // m bytes are buffered
			done += int64(m)
			if werr != nil {
				return done, werr
			}
		}
		if err != nil && len(b) == 0 {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return done, err
		}
	}
	return done, nil
}

// copyChunked copies a chunked body as it is, chunk sizes, extensions and
// trailers included, up to and including its last CRLF. It checks the
// framing strictly (CRLF line ends, hexadecimal sizes, CRLF after each
// chunk, trailer fields that are name: value): the client must find the
// body's end exactly where the proxy did, so anything else is an error and
// the connections are closed.
func copyChunked(w *bufio.Writer, r *bufio.Reader) (int64, error) {
	var total int64
	for {
		line, err := readLine(w, r)
		if err != nil {
			return total, err
		}
		size := line[:len(line)-2]
		if i := bytes.IndexByte(size, ';'); i >= 0 {
			size = size[:i]
		}
		n, ok := parseHex(size)
		if !ok {
			return total, fmt.Errorf("bad chunk size line %q", line)
		}
		if n == 0 {
			// Trailers, then the final empty line.
			for {
				line, err := readLine(w, r)
				if err != nil {
					return total, err
				}
				field := line[:len(line)-2]
				if len(field) == 0 {
					return total, nil
				}
				if colon := bytes.IndexByte(field, ':'); colon <= 0 || !isToken(field[:colon]) {
					return total, fmt.Errorf("bad trailer line %q", line)
				}
			}
		}
		m, err := copyN(w, r, int64(n))
		total += m
		if err != nil {
			return total, err
		}
		crlf, err := r.Peek(2)
		if err != nil || crlf[0] != '\r' || crlf[1] != '\n' {
			return total, fmt.Errorf("chunk of %d bytes not followed by CRLF", n)
		}
		w.Write(crlf) //nolint:errcheck // the writer's error shows at the next write or flush
		r.Discard(2)  //nolint:errcheck // two bytes are buffered
	}
}

// parseHex parses a chunk size: 1 to 15 hexadecimal digits, nothing else.
func parseHex(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 15 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		n = n<<4 | uint64(d)
	}
	return n, true
}

// readLine copies one line, which must end in CRLF and hold no other
// control character than tab, from r to w and returns it; the slice is
// valid until the next read of r.
func readLine(w *bufio.Writer, r *bufio.Reader) ([]byte, error) {
	if r.Buffered() == 0 && w.Buffered() > 0 {
		if err := w.Flush(); err != nil {
			return nil, err
		}
	}
	line, err := r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if !cleanHead(line) {
		return nil, fmt.Errorf("malformed line %q in a chunked body", line)
	}
	if _, err := w.Write(line); err != nil {
		return nil, err
	}
	return line, nil
}

// response is a parsed response head.
type response struct {
	head       []byte
	status     int
	statusText []byte   // "200 OK"
	lines      [][2]int // header lines to pass on, as offsets into head
	hop        [][]byte // header names the replica's Connection header lists
	length     int64    // -1: none
	chunked    bool
	close      bool
}

// read reads and parses one response head from br.
func (resp *response) read(br *bufio.Reader) error {
	resp.head = resp.head[:0]
	for {
		line, err := br.ReadSlice('\n')
		resp.head = append(resp.head, line...)
		if errors.Is(err, bufio.ErrBufferFull) {
			if len(resp.head) > maxHead {
				return errors.New("response head too large")
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("read response head: %w", err)
		}
		if len(trimCR(line[:len(line)-1])) == 0 {
			break
		}
	}
	return resp.parse()
}

// parse parses the response head in resp.head, which ends with its blank
// line.
func (resp *response) parse() error {
	*resp = response{head: resp.head, lines: resp.lines[:0], hop: resp.hop[:0], length: -1}
	// What passes on must read the same to the client as to the proxy:
	// CRLF line ends, no control characters, token names, one framing.
	if !cleanHead(resp.head) {
		return fmt.Errorf("malformed response head %q", resp.head)
	}
	eol := bytes.IndexByte(resp.head, '\n')
	status := resp.head[:eol-1]
	proto, rest, ok := bytes.Cut(status, []byte(" "))
	if !ok || !bytes.HasPrefix(proto, []byte("HTTP/1.")) || len(rest) < 3 {
		return fmt.Errorf("malformed status line %q", status)
	}
	code, err := strconv.Atoi(string(rest[:3]))
	if err != nil || code < 100 || code > 999 || len(rest) > 3 && rest[3] != ' ' {
		return fmt.Errorf("malformed status line %q", status)
	}
	resp.status, resp.statusText = code, rest
	resp.close = string(proto) == "HTTP/1.0"
	var lengthLine = -1 // index in resp.lines of the Content-Length line
	off := eol + 1
	for off < len(resp.head) {
		n := bytes.IndexByte(resp.head[off:], '\n')
		start, end := off, off+n+1
		off = end
		l := resp.head[start : end-2]
		if len(l) == 0 {
			break
		}
		colon := bytes.IndexByte(l, ':')
		if colon <= 0 || !isToken(l[:colon]) {
			return fmt.Errorf("malformed response header %q", l)
		}
		name, value := l[:colon], bytes.TrimSpace(l[colon+1:])
		switch {
		case equalFold(name, "Connection"):
			for _, tok := range bytes.Split(value, []byte(",")) {
				tok = bytes.TrimSpace(tok)
				switch {
				case equalFold(tok, "close"):
					resp.close = true
				case equalFold(tok, "keep-alive"):
					if string(proto) == "HTTP/1.0" {
						resp.close = false
					}
				case len(tok) > 0:
					resp.hop = append(resp.hop, tok) // a header the replica made hop-by-hop
				}
			}
			continue
		case equalFold(name, "Keep-Alive"), equalFold(name, "Proxy-Connection"), equalFold(name, "Upgrade"),
			equalFold(name, "TE"), equalFold(name, "Proxy-Authenticate"):
			continue
		case equalFold(name, "Transfer-Encoding"):
			if resp.chunked || !equalFold(value, "chunked") {
				return fmt.Errorf("unsupported transfer-encoding %q", value)
			}
			resp.chunked = true
		case equalFold(name, "Content-Length"):
			n, ok := parseDecimal(value)
			if !ok || resp.length >= 0 && resp.length != n {
				return fmt.Errorf("bad content-length %q", value)
			}
			if resp.length >= 0 {
				continue // the same length again: once is enough
			}
			resp.length = n
			lengthLine = len(resp.lines)
		}
		resp.lines = append(resp.lines, [2]int{start, end})
	}
	if resp.chunked {
		// Chunked wins (RFC 9112 6.3); the length must not reach the client.
		resp.length = -1
		if lengthLine >= 0 {
			resp.lines = slices.Delete(resp.lines, lengthLine, lengthLine+1)
		}
	}
	if len(resp.hop) > 0 {
		resp.lines = slices.DeleteFunc(resp.lines, func(o [2]int) bool {
			l := resp.head[o[0]:o[1]]
			name := l[:bytes.IndexByte(l, ':')]
			return slices.ContainsFunc(resp.hop, func(h []byte) bool { return bytes.EqualFold(h, name) })
		})
	}
	return nil
}

// parseDecimal parses a Content-Length: 1 to 18 decimal digits, nothing else.
func parseDecimal(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
