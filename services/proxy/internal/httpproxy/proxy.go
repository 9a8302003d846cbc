// Package httpproxy serves the public HTTP routes: it matches a request to a
// route by host and longest path prefix, picks a replica from the route's
// pool, forwards the request (HTTP/1.1 to the replica; websocket upgrades
// pass through) with the standard forwarding headers, streams both bodies
// without buffering, retries once on another replica when the connection
// could not be made and the request can be sent again, counts and logs it.
// Requests to job routes start a run through a JobRunner. It answers 404
// when nothing routes, 503 when a service has no healthy replica, 502 when
// the replica failed, 504 when it did not answer in time, each naming the
// service. It does not own listeners or certificates: the caller builds the
// servers with Server and gives the TLS one its tls.Config.
package httpproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"zlayer.dev/libs/obs"
	"zlayer.dev/services/proxy/internal/balance"
	"zlayer.dev/services/proxy/internal/routes"
)

// Config configures a Proxy.
type Config struct {
	// Routes gives the table in force for each request.
	Routes interface{ Load() *routes.Table }
	// HTTPSPort is the public port of the HTTPS listener, for redirects of
	// https routes (443 is left out of the URL).
	HTTPSPort int
	// ConnectTimeout bounds connecting to a replica.
	ConnectTimeout time.Duration
	// ResponseTimeout bounds the wait for a replica's response headers
	// after the request was sent; past it the client gets 504.
	ResponseTimeout time.Duration
	// IdleBackendConns is how many idle connections to keep per replica.
	IdleBackendConns int
	// BackendIdleTimeout closes pooled replica connections idle this long.
	BackendIdleTimeout time.Duration
	// TrustForwarded appends to the client's X-Forwarded-For and Forwarded
	// headers instead of replacing them (set it behind another proxy).
	TrustForwarded bool
	// Jobs runs job and cron routes; nil answers them with 503.
	Jobs JobRunner
	// JobOutputLimit caps the job output returned in a response.
	JobOutputLimit int64
	// Log is the component's logger; AccessLog, when not nil, gets one line
	// per request.
	Log       *zap.Logger
	AccessLog *zap.Logger
}

// Proxy forwards requests to replicas. Its two handlers share one pool of
// connections to the replicas.
type Proxy struct {
	cfg       Config
	transport *http.Transport // requests with bodies, upgrades
	h1        *h1Transport    // everything else
	rp        *httputil.ReverseProxy
	// fastRequests counts requests the fast path (Front) served.
	fastRequests atomic.Uint64
}

// New returns a proxy for cfg.
func New(cfg Config) *Proxy {
	p := &Proxy{cfg: cfg}
	dialer := &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, &dialError{err: err}
		}
		return c, nil
	}
	p.transport = &http.Transport{
		DialContext:           dial,
		MaxIdleConnsPerHost:   cfg.IdleBackendConns,
		IdleConnTimeout:       cfg.BackendIdleTimeout,
		ResponseHeaderTimeout: cfg.ResponseTimeout,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
	p.h1 = &h1Transport{dial: dial, responseTimeout: cfg.ResponseTimeout, maxIdle: cfg.IdleBackendConns,
		idleTimeout: cfg.BackendIdleTimeout, std: p.transport}
	p.rp = &httputil.ReverseProxy{
		Rewrite:      p.rewrite,
		Transport:    &balancer{base: p.h1},
		ErrorHandler: p.proxyError,
		BufferPool:   bufferPool{},
		ErrorLog:     zap.NewStdLog(cfg.Log.Named("reverseproxy")),
	}
	return p
}

// Close closes idle connections to replicas.
func (p *Proxy) Close() {
	p.h1.CloseIdleConnections()
	p.transport.CloseIdleConnections()
}

// Handler returns the handler of the HTTP listener (secure false) or of the
// HTTPS listener (secure true). On the HTTP listener, https routes answer
// with a redirect to HTTPS.
func (p *Proxy) Handler(secure bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { p.serve(w, r, secure) })
}

// Timeouts of a listener.
type Timeouts struct {
	ReadHeader time.Duration // to read a request's headers
	Idle       time.Duration // keep-alive connection idle between requests
}

// Server returns an http.Server for h. A plain server speaks HTTP/1.1 and
// h2c (HTTP/2 with prior knowledge); a TLS server (tlsConfig not nil) speaks
// HTTP/1.1 and HTTP/2, chosen by ALPN.
func Server(h http.Handler, tlsConfig *tls.Config, t Timeouts, log *zap.Logger) *http.Server {
	var protos http.Protocols
	protos.SetHTTP1(true)
	if tlsConfig == nil {
		protos.SetUnencryptedHTTP2(true)
	} else {
		protos.SetHTTP2(true)
	}
	return &http.Server{
		Handler:           h,
		TLSConfig:         tlsConfig,
		Protocols:         &protos,
		ReadHeaderTimeout: t.ReadHeader,
		IdleTimeout:       t.Idle,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
}

type ctxKey struct{}

// state is one request's routing state, shared with the transport through
// the request context.
type state struct {
	entry   *routes.Entry
	backend *balance.Backend // the last replica tried
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request, secure bool) {
	start := time.Now()
	if r.TLS == nil {
		// A TLS connection the fast path handed off reaches net/http
		// wrapped, as a plain one; its state came along in the context.
		r.TLS, _ = r.Context().Value(tlsStateKey{}).(*tls.ConnectionState)
	}
	e := p.cfg.Routes.Load().MatchHTTP(r.Host, r.URL.Path)
	sw := &statusWriter{ResponseWriter: w}
	if e == nil {
		http.Error(sw, fmt.Sprintf("zlayer-proxy: no route for host %q and path %q", r.Host, r.URL.Path), http.StatusNotFound)
		p.access(requestInfo(r), nil, nil, sw.status, sw.bytes, start)
		return
	}
	e.Stats.Begin()
	st := &state{entry: e}
	switch {
	case e.Protocol == routes.HTTPS && !secure:
		p.redirect(sw, r)
	case e.Kind != routes.Service:
		p.serveJob(sw, r, e)
	default:
		p.rp.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), ctxKey{}, st)))
	}
	if sw.status == 0 {
		sw.status = http.StatusOK
	}
	e.Stats.End(sw.status, time.Since(start))
	p.access(requestInfo(r), e, st.backend, sw.status, sw.bytes, start)
}

func (p *Proxy) redirect(w http.ResponseWriter, r *http.Request) {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if strings.Contains(host, ":") { // IPv6 literal
		host = "[" + host + "]"
	}
	if p.cfg.HTTPSPort != 443 && p.cfg.HTTPSPort != 0 {
		host += ":" + strconv.Itoa(p.cfg.HTTPSPort)
	}
	http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), http.StatusPermanentRedirect)
}

// accessInfo is what the access log says of the request.
type accessInfo struct {
	method, host, path, proto, remote string
}

func requestInfo(r *http.Request) accessInfo {
	return accessInfo{method: r.Method, host: r.Host, path: r.URL.Path, proto: r.Proto, remote: r.RemoteAddr}
}

func (p *Proxy) access(r accessInfo, e *routes.Entry, b *balance.Backend, status int, bytes int64, start time.Time) {
	if p.cfg.AccessLog == nil {
		return
	}
	fields := make([]zap.Field, 0, 14)
	if e != nil {
		fields = append(fields, zap.String(obs.KeyDeployment, e.Deployment), zap.String(obs.KeyService, e.Service),
			zap.String("endpoint", e.Endpoint))
	}
	if b != nil {
		fields = append(fields, zap.String(obs.KeyReplica, b.ID), zap.String("backend", b.Addr))
	}
	fields = append(fields,
		zap.String("method", r.method), zap.String("host", r.host), zap.String("path", r.path),
		zap.String("proto", r.proto), zap.Int("status", status), zap.Int64("bytes", bytes),
		zap.Duration("duration", time.Since(start)), zap.String("remote", r.remote))
	p.cfg.AccessLog.Info("request", fields...)
}

// rewrite builds the outbound request. The replica's address is filled in
// by the balancer for each attempt.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = "replica.invalid"
	pr.Out.Host = pr.In.Host
	// ReverseProxy has removed the client's X-Forwarded-* and Forwarded.
	if p.cfg.TrustForwarded {
		for _, k := range []string{"X-Forwarded-For", "Forwarded"} {
			if v := pr.In.Header[k]; len(v) > 0 {
				pr.Out.Header[k] = slices.Clone(v)
			}
		}
	} else {
		pr.Out.Header.Del("Forwarded")
	}
	pr.SetXForwarded()
	pr.Out.Header.Add("Forwarded", forwarded(pr.In))
}

// forwarded is the RFC 7239 element describing the client's hop.
func forwarded(r *http.Request) string {
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	var b strings.Builder
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if strings.Contains(ip, ":") {
			b.WriteString(`for="[` + ip + `]";`)
		} else {
			b.WriteString("for=" + ip + ";")
		}
	}
	b.WriteString(`host="` + strings.ReplaceAll(r.Host, `"`, "") + `";proto=` + proto)
	return b.String()
}

// proxyError answers a request that got no response from a replica.
func (p *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st, _ := r.Context().Value(ctxKey{}).(*state)
	e := st.entry
	what := fmt.Sprintf("service %q of deployment %q (endpoint %q)", e.Service, e.Deployment, e.Endpoint)
	var replica string
	if st.backend != nil {
		replica = fmt.Sprintf("replica %s at %s", st.backend.ID, st.backend.Addr)
	}
	var ne net.Error
	switch {
	case errors.Is(err, errNoBackend):
		http.Error(w, "zlayer-proxy: "+what+" has no healthy replica", http.StatusServiceUnavailable)
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		w.WriteHeader(499) // the client went away; nobody reads this
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		http.Error(w, fmt.Sprintf("zlayer-proxy: %s: %s did not answer in time", what, replica), http.StatusGatewayTimeout)
	default:
		http.Error(w, fmt.Sprintf("zlayer-proxy: %s: %s failed: %v", what, replica, err), http.StatusBadGateway)
	}
}

// errNoBackend: the route's pool has no healthy, ready replica.
var errNoBackend = errors.New("no healthy replica")

// dialError marks a failure to connect, which is safe to retry elsewhere.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// balancer is the proxy's transport: it picks the replica for each attempt.
type balancer struct {
	base http.RoundTripper
}

func (b *balancer) RoundTrip(out *http.Request) (*http.Response, error) {
	st := out.Context().Value(ctxKey{}).(*state)
	pool := st.entry.Pool
	be := pool.Pick(nil)
	if be == nil {
		return nil, errNoBackend
	}
	for attempt := 0; ; attempt++ {
		st.backend = be
		out.URL.Host = be.Addr
		resp, err := b.base.RoundTrip(out)
		if err == nil {
			if rwc, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
				resp.Body = &upgradedBody{ReadWriteCloser: rwc, release: releaser(be)}
			} else {
				resp.Body = &releaseBody{ReadCloser: resp.Body, release: releaser(be)}
			}
			return resp, nil
		}
		be.Release()
		var de *dialError
		switch {
		case errors.As(err, &de):
			pool.Eject(be)
			if attempt == 0 && (out.Body == nil || out.Body == http.NoBody) {
				if next := pool.Pick(be); next != nil {
					be = next
					continue
				}
			}
		case isReset(err):
			pool.Eject(be)
		}
		return nil, err
	}
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func releaser(b *balance.Backend) func() {
	var once sync.Once
	return func() { once.Do(b.Release) }
}

// releaseBody ends the replica's request when the proxy closes the body.
type releaseBody struct {
	io.ReadCloser
	release func()
}

func (b *releaseBody) Close() error {
	b.release()
	return b.ReadCloser.Close()
}

// upgradedBody is releaseBody for a 101 response, whose body is the
// replica's connection.
type upgradedBody struct {
	io.ReadWriteCloser
	release func()
}

func (b *upgradedBody) Close() error {
	b.release()
	return b.ReadWriteCloser.Close()
}

// bufferPool recycles the 32 KiB copy buffers of streamed bodies.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *buffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }
