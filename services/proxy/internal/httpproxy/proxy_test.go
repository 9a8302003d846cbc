package httpproxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"golang.org/x/net/websocket"

	"zlayer.dev/services/proxy/internal/balance"
	"zlayer.dev/services/proxy/internal/certs"
	"zlayer.dev/services/proxy/internal/metrics"
	"zlayer.dev/services/proxy/internal/proxytest"
	"zlayer.dev/services/proxy/internal/routes"
)

// harnessLoops is the event loops of each of the harness's listeners: 2,
// as the daemon has on two CPUs, or 0 for TestGoroutinePath.
var harnessLoops = 2

// harness is a proxy with its two listeners on 127.0.0.1.
type harness struct {
	px       *Proxy
	store    *routes.Store
	plain    string // host:port of the HTTP listener
	secure   string // host:port of the HTTPS listener
	gen      atomic.Uint64
	client   *http.Client // HTTP/1.1, trusts nothing but skips verification
	h2       *http.Client // HTTP/2 over TLS
	h2c      *http.Client // HTTP/2 with prior knowledge, cleartext
	accessed *zap.Logger
}

func newHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	reg := metrics.New(prometheus.NewRegistry(), time.Now)
	h := &harness{store: routes.NewStore(balance.RoundRobin, time.Minute, time.Now, reg)}
	cfg := Config{
		Routes: h.store, ConnectTimeout: 2 * time.Second, ResponseTimeout: 10 * time.Second,
		IdleBackendConns: 64, BackendIdleTimeout: time.Minute, JobOutputLimit: 1 << 20,
		Log: log, AccessLog: log.Named("access"),
	}
	if mod != nil {
		mod(&cfg)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.HTTPSPort = sl.Addr().(*net.TCPAddr).Port
	px := New(cfg)
	h.px = px
	cert, err := certs.SelfSigned("127.0.0.1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"h2", "http/1.1"}}
	to := Timeouts{ReadHeader: 5 * time.Second, Idle: time.Minute}
	ps := px.NewFront(px.Handler(false), nil, to, log)
	ss := px.NewFront(px.Handler(true), tc, to, log)
	ps.Loops, ss.Loops = harnessLoops, harnessLoops
	go ps.Serve(pl) //nolint:errcheck // ends with Shutdown
	go ss.Serve(sl) //nolint:errcheck // ends with Shutdown
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ps.Shutdown(ctx) //nolint:errcheck // test teardown
		ss.Shutdown(ctx) //nolint:errcheck // test teardown
		px.Close()
	})
	h.plain, h.secure = pl.Addr().String(), sl.Addr().String()

	insecure := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the proxy's self-signed test certificate
	h.client = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: h1TLS(insecure)},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	h.h2 = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: insecure.Clone(), ForceAttemptHTTP2: true}}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	h.h2c = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{Protocols: &p}}
	t.Cleanup(func() {
		for _, c := range []*http.Client{h.client, h.h2, h.h2c} {
			c.CloseIdleConnections()
		}
	})
	return h
}

func h1TLS(c *tls.Config) *tls.Config {
	c = c.Clone()
	c.NextProtos = []string{"http/1.1"}
	return c
}

func (h *harness) set(t *testing.T, rs ...routes.Route) {
	t.Helper()
	if _, err := h.store.Set(h.gen.Add(1), rs); err != nil {
		t.Fatal(err)
	}
}

func route(service, host, path string, bs ...*proxytest.Backend) routes.Route {
	r := routes.Route{
		Key:      routes.Key{Deployment: "app", Service: service, Endpoint: "http"},
		Protocol: routes.HTTP, Host: host, Path: path, Public: true,
	}
	for _, b := range bs {
		r.Backends = append(r.Backends, routes.Backend{ReplicaID: b.Name, Addr: b.Addr, Healthy: true, Ready: true})
	}
	return r
}

// get sends a request and returns status, body and headers.
func get(t *testing.T, c *http.Client, method, url, host string, body io.Reader) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s (host %s): %v", method, url, host, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b), resp.Header
}

func TestRoutesByHostAndLongestPath(t *testing.T) {
	h := newHarness(t, nil)
	anyRoot := proxytest.StartBackend(t, "any-root", nil)
	apiRoot := proxytest.StartBackend(t, "api-root", nil)
	apiV2 := proxytest.StartBackend(t, "api-v2", nil)
	static := proxytest.StartBackend(t, "any-static", nil)
	h.set(t,
		route("web", "", "/", anyRoot),
		route("api", "api.example.test", "/", apiRoot),
		route("api2", "api.example.test", "/v2", apiV2),
		route("static", "", "/static/", static),
	)
	tests := []struct {
		host, path, want string
	}{
		{"other.test", "/", "any-root"},
		{"other.test", "/x/y", "any-root"},
		{"api.example.test", "/", "api-root"},
		{"API.Example.Test:8080", "/x", "api-root"},
		{"api.example.test", "/v2", "api-v2"},
		{"api.example.test", "/v2/users", "api-v2"},
		{"api.example.test", "/v2x", "api-root"},
		{"other.test", "/static/a.css", "any-static"},
		{"other.test", "/static", "any-root"},
		{"api.example.test", "/static/a.css", "api-root"},
	}
	for _, tt := range tests {
		t.Run(tt.host+tt.path, func(t *testing.T) {
			code, body, hdr := get(t, h.client, "GET", "http://"+h.plain+tt.path, tt.host, nil)
			if code != 200 || body != tt.want {
				t.Fatalf("got %d %q, want 200 %q", code, body, tt.want)
			}
			if got := hdr.Get("X-Got-Path"); got != tt.path {
				t.Errorf("backend saw path %q, want %q (no rewriting)", got, tt.path)
			}
		})
	}
	t.Run("no route", func(t *testing.T) {
		h.set(t, route("api", "api.example.test", "/", apiRoot))
		code, body, _ := get(t, h.client, "GET", "http://"+h.plain+"/", "other.test", nil)
		if code != 404 || !strings.Contains(body, "no route") {
			t.Fatalf("got %d %q, want 404 naming the missing route", code, body)
		}
	})
}

func TestForwardingHeaders(t *testing.T) {
	b := proxytest.StartBackend(t, "b", nil)
	for _, trust := range []bool{false, true} {
		t.Run(fmt.Sprintf("trust=%v", trust), func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.TrustForwarded = trust })
			h.set(t, route("web", "", "/", b))
			// GET takes the fast path, POST net/http's (Front hands it off).
			for _, c := range []struct{ scheme, method string }{{"http", "GET"}, {"https", "GET"}, {"http", "POST"}, {"https", "POST"}} {
				scheme := c.scheme
				addr := h.plain
				if scheme == "https" {
					addr = h.secure
				}
				fastBefore := h.px.fastRequests.Load()
				req, _ := http.NewRequest(c.method, scheme+"://"+addr+"/p", strings.NewReader("x"))
				if c.method == "GET" {
					req.Body, req.ContentLength = nil, 0
				}
				req.Host = "shop.example.test"
				req.Header.Set("X-Forwarded-For", "203.0.113.9")
				req.Header.Set("Forwarded", "for=203.0.113.9")
				resp, err := h.client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if fast := h.px.fastRequests.Load() > fastBefore; fast != (c.method == "GET") {
					t.Errorf("%s %s: served by the fast path: %v", scheme, c.method, fast)
				}
				g := resp.Header
				wantXFF, wantFwd := "127.0.0.1", `for=127.0.0.1;host="shop.example.test";proto=`+scheme
				if trust {
					wantXFF, wantFwd = "203.0.113.9, 127.0.0.1", "for=203.0.113.9,"+wantFwd
				}
				checks := map[string]string{
					"X-Got-X-Forwarded-For":   wantXFF,
					"X-Got-X-Forwarded-Proto": scheme,
					"X-Got-X-Forwarded-Host":  "shop.example.test",
					"X-Got-Host":              "shop.example.test",
					"X-Got-Forwarded":         wantFwd,
				}
				for k, want := range checks {
					if got := strings.Join(g.Values(k), ","); got != want {
						t.Errorf("%s %s: %s = %q, want %q", scheme, c.method, k, got, want)
					}
				}
			}
		})
	}
}

func TestErrorsNameTheServiceAndNeverHang(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ResponseTimeout = 300 * time.Millisecond })
	dead := proxytest.StartBackend(t, "dead", nil)
	dead.Kill()
	release := make(chan struct{})
	defer close(release)
	slow := proxytest.StartBackend(t, "slow", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	unhealthy := route("sick", "", "/sick", slow)
	unhealthy.Backends[0].Healthy = false
	notReady := route("draining", "", "/draining", slow)
	notReady.Backends[0].Ready = false
	h.set(t, route("gone", "", "/gone", dead), route("slow", "", "/slow", slow), unhealthy, notReady,
		route("empty", "", "/empty"))
	tests := []struct {
		path string
		code int
		want string
	}{
		{"/gone", 502, `service "gone" of deployment "app"`},
		{"/slow", 504, `service "slow" of deployment "app" (endpoint "http"): replica slow at`},
		{"/sick", 503, `service "sick" of deployment "app" (endpoint "http") has no healthy replica`},
		{"/draining", 503, `service "draining"`},
		{"/empty", 503, `service "empty"`},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			code, body, _ := get(t, h.client, "GET", "http://"+h.plain+tt.path, "", nil)
			if code != tt.code || !strings.Contains(body, tt.want) {
				t.Fatalf("got %d %q, want %d containing %q", code, body, tt.code, tt.want)
			}
		})
	}
}

func TestHTTP2FromTheClientSide(t *testing.T) {
	h := newHarness(t, nil)
	b := proxytest.StartBackend(t, "b", nil)
	h.set(t, route("web", "", "/", b))
	for name, c := range map[string]struct {
		client *http.Client
		url    string
	}{
		"h2 over TLS by ALPN": {h.h2, "https://" + h.secure + "/"},
		"h2c prior knowledge": {h.h2c, "http://" + h.plain + "/"},
	} {
		t.Run(name, func(t *testing.T) {
			resp, err := c.client.Get(c.url)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.ProtoMajor != 2 || string(body) != "b" {
				t.Fatalf("got %s %q, want HTTP/2 answered by b", resp.Proto, body)
			}
		})
	}
	t.Run("HTTP/1.1 over TLS", func(t *testing.T) {
		resp, err := h.client.Get("https://" + h.secure + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.ProtoMajor != 1 || resp.TLS == nil || resp.TLS.NegotiatedProtocol != "http/1.1" {
			t.Fatalf("got %s, ALPN %q", resp.Proto, resp.TLS.NegotiatedProtocol)
		}
	})
}

func TestWebsocketEcho(t *testing.T) {
	h := newHarness(t, nil)
	echo := proxytest.StartBackend(t, "ws", websocket.Handler(func(c *websocket.Conn) { io.Copy(c, c) })) //nolint:errcheck // echo until closed
	ws := route("chat", "", "/ws", echo)
	ws.Protocol = routes.WebSocket
	up := route("web", "", "/", echo) // an upgrade on a plain http endpoint
	h.set(t, ws, up)
	for _, path := range []string{"/ws", "/upgrade"} {
		t.Run(path, func(t *testing.T) {
			c, err := websocket.Dial("ws://"+h.plain+path, "", "http://"+h.plain+"/")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for i := range 5 {
				msg := fmt.Sprintf("message %d through %s", i, path)
				if err := websocket.Message.Send(c, msg); err != nil {
					t.Fatal(err)
				}
				var got string
				if err := websocket.Message.Receive(c, &got); err != nil {
					t.Fatal(err)
				}
				if got != msg {
					t.Fatalf("echo %q, want %q", got, msg)
				}
			}
		})
	}
}

// TestStreamsLargeBodies sends and receives bodies far larger than any
// buffer, and proves neither is buffered whole: the backend answers the
// start of an upload before the client sends the rest, and the client reads
// the start of a download before the backend writes the rest.
func TestStreamsLargeBodies(t *testing.T) {
	h := newHarness(t, nil)
	const size = 64 << 20
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	gotFirst := make(chan struct{})
	sendRest := make(chan struct{})
	b := proxytest.StartBackend(t, "stream", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case "POST": // count and hash the upload; say when the first chunk arrived
			hash := sha256.New()
			first := make([]byte, len(chunk))
			if _, err := io.ReadFull(r.Body, first); err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			close(gotFirst)
			hash.Write(first)
			n, err := io.Copy(hash, r.Body)
			if err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			fmt.Fprintf(w, "%d %x", n+int64(len(first)), hash.Sum(nil))
		case "GET": // the first chunk, then the rest once the client has it
			w.Header().Set("Content-Length", strconv.Itoa(size))
			w.Write(chunk)                        //nolint:errcheck // client checks
			http.NewResponseController(w).Flush() //nolint:errcheck // client checks
			<-sendRest
			for written := len(chunk); written < size; written += len(chunk) {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}
	}))
	h.set(t, route("files", "", "/", b))

	t.Run("upload", func(t *testing.T) {
		pr, pw := io.Pipe()
		want := sha256.New()
		go func() {
			pw.Write(chunk) //nolint:errcheck // the request reports failures
			want.Write(chunk)
			<-gotFirst // the backend has the start while the rest is unsent
			for sent := len(chunk); sent < size; sent += len(chunk) {
				if _, err := pw.Write(chunk); err != nil {
					return
				}
				want.Write(chunk)
			}
			pw.Close()
		}()
		code, body, _ := get(t, h.client, "POST", "http://"+h.plain+"/up", "", pr)
		if w := fmt.Sprintf("%d %x", size, want.Sum(nil)); code != 200 || body != w {
			t.Fatalf("got %d %q, want 200 %q", code, body, w)
		}
	})
	t.Run("download", func(t *testing.T) {
		resp, err := h.client.Get("http://" + h.plain + "/down")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		first := make([]byte, len(chunk))
		if _, err := io.ReadFull(resp.Body, first); err != nil {
			t.Fatal(err)
		}
		close(sendRest) // the client has the start while the rest is unwritten
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil || n+int64(len(first)) != size {
			t.Fatalf("downloaded %d bytes (%v), want %d", n+int64(len(first)), err, size)
		}
	})
}

func TestRetriesAnotherReplicaWhenConnectFails(t *testing.T) {
	h := newHarness(t, nil)
	dead := proxytest.StartBackend(t, "dead", nil)
	dead.Kill()
	live := proxytest.StartBackend(t, "live", nil)
	h.set(t, route("web", "", "/", dead, live))
	for i := range 20 {
		code, body, _ := get(t, h.client, "GET", "http://"+h.plain+"/", "", nil)
		if code != 200 || body != "live" {
			t.Fatalf("request %d: got %d %q, want 200 from live", i, code, body)
		}
	}
	e := h.store.Load().MatchHTTP("x", "/")
	for _, b := range e.Pool.Backends() {
		if ejected := !b.EjectedUntil(time.Now()).IsZero(); ejected != (b.ID == "dead") {
			t.Errorf("backend %s ejected = %v", b.ID, ejected)
		}
	}
	if dead.Requests.Load() != 0 || live.Requests.Load() != 20 {
		t.Errorf("dead got %d, live %d requests", dead.Requests.Load(), live.Requests.Load())
	}
}

// TestBackendKilledUnderLoad kills one of three backends while workers send
// requests: each worker has at most one request in flight, so at most that
// many fail; after the kill every request succeeds on the others.
func TestBackendKilledUnderLoad(t *testing.T) {
	h := newHarness(t, nil)
	bs := []*proxytest.Backend{
		proxytest.StartBackend(t, "a", nil), proxytest.StartBackend(t, "b", nil), proxytest.StartBackend(t, "c", nil),
	}
	h.set(t, route("web", "", "/", bs...))
	const workers = 8
	var ok, failed, afterKill atomic.Int64
	var killed atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				wasKilled := killed.Load()
				resp, err := h.client.Get("http://" + h.plain + "/")
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				switch {
				case err != nil && wasKilled:
					t.Errorf("request sent after the kill failed: %v", err)
					failed.Add(1)
				case err != nil:
					failed.Add(1)
				case wasKilled:
					afterKill.Add(1)
				default:
					ok.Add(1)
				}
			}
		}()
	}
	proxytest.Eventually(t, 10*time.Second, "load flowing", func() bool { return ok.Load() > 300 })
	bs[1].Kill()
	killed.Store(true)
	proxytest.Eventually(t, 10*time.Second, "load flowing after the kill", func() bool { return afterKill.Load() > 1000 })
	close(stop)
	wg.Wait()
	if f := failed.Load(); f > workers {
		t.Fatalf("%d requests failed, more than the %d that could be in flight at the kill", f, workers)
	}
	t.Logf("ok before kill %d, failed %d, ok after kill %d; per backend a=%d b=%d c=%d", ok.Load(), failed.Load(),
		afterKill.Load(), bs[0].Requests.Load(), bs[1].Requests.Load(), bs[2].Requests.Load())
}

// TestRouteUpdatesUnderLoad runs wrk through the proxy while the table is
// replaced again and again with other replica sets; wrk must see no error
// and no non-2xx answer.
func TestRouteUpdatesUnderLoad(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.AccessLog = nil })
	bs := []*proxytest.Backend{
		proxytest.StartBackend(t, "a", nil), proxytest.StartBackend(t, "b", nil), proxytest.StartBackend(t, "c", nil),
	}
	h.set(t, route("web", "", "/", bs[0], bs[1]))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wrk := exec.CommandContext(ctx, "wrk", "-t2", "-c16", "-d2s", "http://"+h.plain+"/")
	var out bytes.Buffer
	wrk.Stdout, wrk.Stderr = &out, &out
	if err := wrk.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- wrk.Wait() }()
	updates := 0
	var werr error
	pace := time.NewTicker(time.Millisecond)
	defer pace.Stop()
loop:
	for i := 0; ; i++ {
		select {
		case werr = <-done:
			break loop
		case <-pace.C:
		}
		// Every update changes the replica set; the old one stays alive, as
		// in a rollout where the old replica drains.
		h.set(t, route("web", "", "/", bs[i%3], bs[(i+1)%3]), route(fmt.Sprintf("other%d", i%5), "other.test", "/"))
		updates++
	}
	if werr != nil {
		t.Fatalf("wrk: %v\n%s", werr, out.String())
	}
	rps := regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`).FindStringSubmatch(out.String())
	if strings.Contains(out.String(), "Socket errors") || strings.Contains(out.String(), "Non-2xx") || rps == nil {
		t.Fatalf("wrk saw errors during %d route updates:\n%s", updates, out.String())
	}
	t.Logf("%d route updates under %s req/s, no errors; requests per backend a=%d b=%d c=%d", updates, rps[1],
		bs[0].Requests.Load(), bs[1].Requests.Load(), bs[2].Requests.Load())
	if bs[0].Requests.Load() == 0 || bs[1].Requests.Load() == 0 || bs[2].Requests.Load() == 0 {
		t.Errorf("every replica set should have served")
	}
}

func TestInFlightRequestSurvivesItsRouteRemoval(t *testing.T) {
	h := newHarness(t, nil)
	entered := make(chan struct{})
	release := make(chan struct{})
	old := proxytest.StartBackend(t, "old", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		fmt.Fprint(w, "old finished")
	}))
	h.set(t, route("web", "", "/", old))
	type result struct {
		code int
		body string
	}
	res := make(chan result, 1)
	go func() {
		resp, err := h.client.Get("http://" + h.plain + "/")
		if err != nil {
			res <- result{body: err.Error()}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{resp.StatusCode, string(b)}
	}()
	<-entered
	next := proxytest.StartBackend(t, "next", nil)
	h.set(t, route("web", "", "/", next))
	if code, body, _ := get(t, h.client, "GET", "http://"+h.plain+"/", "", nil); code != 200 || body != "next" {
		t.Fatalf("new request: %d %q, want next", code, body)
	}
	close(release)
	if r := <-res; r.code != 200 || r.body != "old finished" {
		t.Fatalf("in-flight request: %d %q, want 200 from old", r.code, r.body)
	}
}

func TestRedirectsHTTPSRoutesToHTTPS(t *testing.T) {
	h := newHarness(t, nil)
	b := proxytest.StartBackend(t, "b", nil)
	r := route("shop", "shop.example.test", "/", b)
	r.Protocol = routes.HTTPS
	h.set(t, r)
	code, _, hdr := get(t, h.client, "GET", "http://"+h.plain+"/cart?id=7", "shop.example.test", nil)
	_, port, _ := net.SplitHostPort(h.secure)
	if want := "https://shop.example.test:" + port + "/cart?id=7"; code != http.StatusPermanentRedirect || hdr.Get("Location") != want {
		t.Fatalf("got %d to %q, want 308 to %q", code, hdr.Get("Location"), want)
	}
	code, body, _ := get(t, h.client, "GET", "https://"+h.secure+"/cart", "shop.example.test", nil)
	if code != 200 || body != "b" {
		t.Fatalf("over https: %d %q", code, body)
	}
}

func TestCountsPerEndpoint(t *testing.T) {
	h := newHarness(t, nil)
	b := proxytest.StartBackend(t, "b", nil)
	h.set(t, route("web", "", "/", b), route("none", "", "/none"))
	for range 7 {
		get(t, h.client, "GET", "http://"+h.plain+"/", "", nil)
	}
	get(t, h.client, "GET", "http://"+h.plain+"/none", "", nil)
	// The fast path counts a request once its answer is written: the
	// client may read it a moment before.
	var web, none metrics.Snapshot
	proxytest.Eventually(t, 5*time.Second, "requests counted", func() bool {
		now := time.Now()
		web = h.store.Load().MatchHTTP("x", "/").Stats.Snapshot(now, time.Minute)
		none = h.store.Load().MatchHTTP("x", "/none").Stats.Snapshot(now, time.Minute)
		return web.Total == 7 && none.Total == 1 && web.Active == 0 && none.Active == 0
	})
	if web.Class[2] != 7 || web.RPS <= 0 {
		t.Errorf("web: %+v", web)
	}
	if none.Class[5] != 1 {
		t.Errorf("none: %+v", none)
	}
}

// shellJobs runs each job as `sh -c SCRIPT`, a real process fed the request
// body. It stands in for zlayer-agent until the agent offers a job API.
type shellJobs map[string]string

func (s shellJobs) RunJob(ctx context.Context, req JobRequest) (JobRun, error) {
	script, ok := s[req.Service]
	if !ok {
		return JobRun{}, fmt.Errorf("no job %s", req.Service)
	}
	cmd := exec.CommandContext(ctx, "sh", "-c", script)
	cmd.Stdin = req.Input
	out, err := cmd.StdoutPipe()
	if err != nil {
		return JobRun{}, err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return JobRun{}, err
	}
	return JobRun{Output: out, Wait: func() (int, error) {
		err := cmd.Wait()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), nil
		}
		return 0, err
	}}, nil
}

func TestJobEndpointAnswersWithOutputAndExitCode(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.Jobs = shellJobs{"report": `echo "got: $(cat)"; echo "to stderr" >&2`, "fail": `echo partial; exit 3`}
	})
	job := func(svc string) routes.Route {
		r := route(svc, "", "/"+svc)
		r.Kind = routes.Job
		return r
	}
	h.set(t, job("report"), job("fail"))
	code, body, hdr := get(t, h.client, "POST", "http://"+h.plain+"/report", "", strings.NewReader("input data"))
	if code != 200 || hdr.Get(ExitCodeHeader) != "0" || body != "got: input data\nto stderr\n" {
		t.Fatalf("report: %d exit %q body %q", code, hdr.Get(ExitCodeHeader), body)
	}
	code, body, hdr = get(t, h.client, "POST", "http://"+h.plain+"/fail", "", nil)
	if code != 500 || hdr.Get(ExitCodeHeader) != "3" || body != "partial\n" {
		t.Fatalf("fail: %d exit %q body %q", code, hdr.Get(ExitCodeHeader), body)
	}
}

// TestReplicaClosingIdleConnections: a replica that drops keep-alive
// connections between requests (here after 1ms idle, or by answering
// "Connection: close") costs no request.
func TestReplicaClosingIdleConnections(t *testing.T) {
	h := newHarness(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	srv := &http.Server{IdleTimeout: time.Millisecond, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%3 == 0 {
			w.Header().Set("Connection", "close")
		}
		fmt.Fprint(w, "ok")
	})}
	go srv.Serve(ln) //nolint:errcheck // ends with Close
	defer srv.Close()
	r := route("web", "", "/")
	r.Backends = []routes.Backend{{ReplicaID: "r", Addr: ln.Addr().String(), Healthy: true, Ready: true}}
	h.set(t, r)
	for i := range 100 {
		method := "GET"
		if i%4 == 0 {
			method = "HEAD"
		}
		code, body, _ := get(t, h.client, method, "http://"+h.plain+"/", "", nil)
		if code != 200 || (method == "GET" && body != "ok") {
			t.Fatalf("request %d (%s): %d %q", i, method, code, body)
		}
	}
}
