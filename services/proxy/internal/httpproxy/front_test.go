package httpproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"zlayer.dev/services/proxy/internal/proxytest"
	"zlayer.dev/services/proxy/internal/routes"
)

// tcpBackend is a TCP server on 127.0.0.1 running serve for each
// connection (which it closes afterwards); it returns the address.
func tcpBackend(t *testing.T, serve func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c, bufio.NewReader(c))
			}()
		}
	}()
	return ln.Addr().String()
}

// readHeadLines reads one request head; its first line, and the whole.
func readHeadLines(br *bufio.Reader) (first, head string, err error) {
	var b strings.Builder
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", "", err
		}
		b.WriteString(line)
		if first == "" {
			first = line
		}
		if line == "\r\n" {
			return first, b.String(), nil
		}
	}
}

// rawBackend is a TCP server answering each request head it reads with
// answer(head) written as is; it closes the connection when close says so.
func rawBackend(t *testing.T, answer func(head string) (resp string, close bool)) routes.Backend {
	t.Helper()
	addr := tcpBackend(t, func(c net.Conn, br *bufio.Reader) {
		for {
			_, head, err := readHeadLines(br)
			if err != nil {
				return
			}
			resp, closeIt := answer(head)
			if _, err := io.WriteString(c, resp); err != nil || closeIt {
				return
			}
		}
	})
	return routes.Backend{ReplicaID: "raw", Addr: addr, Healthy: true, Ready: true}
}

func rawRoute(b routes.Backend) routes.Route {
	return routes.Route{
		Key:      routes.Key{Deployment: "app", Service: "raw", Endpoint: "http"},
		Protocol: routes.HTTP, Path: "/", Public: true, Backends: []routes.Backend{b},
	}
}

// dialRaw opens a client connection to addr (TLS with HTTP/1.1 when tlsOn).
func dialRaw(t *testing.T, addr string, tlsOn bool) (net.Conn, *bufio.Reader) {
	t.Helper()
	var c net.Conn
	var err error
	if tlsOn {
		c, err = tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}) //nolint:gosec // test certificate
	} else {
		c, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second)) //nolint:errcheck // test bound
	return c, bufio.NewReader(c)
}

func readResp(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	resp.Body.Close()
	return resp, string(b)
}

// TestFastPathFraming: what the fast path passes through as it came —
// content-length, chunked with trailers, close-delimited, bodiless
// answers, 1xx before the final answer — and what it does with the
// connection after each.
func TestFastPathFraming(t *testing.T) {
	h := newHarness(t, nil)
	b := rawBackend(t, func(head string) (string, bool) {
		path := strings.Fields(head)[1]
		switch path {
		case "/cl":
			return "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello", false
		case "/chunked":
			return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n" +
				"3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Sum: 7\r\n\r\n", false
		case "/close":
			return "HTTP/1.0 200 OK\r\nX-B: 2\r\n\r\nuntil the end", true
		case "/nocontent":
			return "HTTP/1.1 204 No Content\r\n\r\n", false
		case "/hints":
			return "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false
		case "/hopbyhop":
			return "HTTP/1.1 200 OK\r\nConnection: close\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok", true
		case "/both":
			return "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", false
		case "/named":
			return "HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: secret\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\nok", false
		case "/echo":
			return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(head), head), false
		case "/plus":
			return "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", false
		case "/barelf":
			return "HTTP/1.1 200 OK\nContent-Length: 2\n\nok", false
		case "/badchunk":
			return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n", false
		}
		return "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false
	})
	h.set(t, rawRoute(b))
	c, br := dialRaw(t, h.plain, false)

	send := func(method, path string, extra string) {
		t.Helper()
		if _, err := fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: x.test\r\n%s\r\n", method, path, extra); err != nil {
			t.Fatal(err)
		}
	}
	// Pipelined: two requests at once, answered in order.
	send("GET", "/cl", "")
	send("GET", "/chunked", "")
	resp, body := readResp(t, br, "GET")
	if resp.StatusCode != 200 || body != "hello" || resp.Header.Get("X-A") != "1" {
		t.Errorf("/cl: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	resp, body = readResp(t, br, "GET")
	if body != "abcdefg" || resp.Trailer.Get("X-Sum") != "7" || len(resp.TransferEncoding) != 1 {
		t.Errorf("/chunked: %q trailer %v te %v", body, resp.Trailer, resp.TransferEncoding)
	}
	send("HEAD", "/cl", "")
	resp, body = readResp(t, br, "HEAD")
	if resp.StatusCode != 200 || body != "" || resp.ContentLength != 5 {
		t.Errorf("HEAD /cl: %d %q length %d", resp.StatusCode, body, resp.ContentLength)
	}
	send("GET", "/nocontent", "")
	if resp, _ = readResp(t, br, "GET"); resp.StatusCode != 204 {
		t.Errorf("/nocontent: %d", resp.StatusCode)
	}
	send("GET", "/hints", "")
	if resp, body = readResp(t, br, "GET"); resp.StatusCode != 200 || body != "ok" {
		t.Errorf("/hints: %d %q", resp.StatusCode, body)
	}
	// The replica closing its connection is its business: the client's
	// stays open, without the replica's hop-by-hop headers.
	send("GET", "/hopbyhop", "")
	resp, body = readResp(t, br, "GET")
	if body != "ok" || resp.Close || resp.Header.Get("Keep-Alive") != "" {
		t.Errorf("/hopbyhop: %q close %v headers %v", body, resp.Close, resp.Header)
	}
	// A close-delimited answer ends the client's connection too.
	send("GET", "/close", "")
	resp, body = readResp(t, br, "GET")
	if body != "until the end" || !resp.Close || resp.Header.Get("X-B") != "2" {
		t.Errorf("/close: %q close %v headers %v", body, resp.Close, resp.Header)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after a close-delimited answer the connection should be closed, got %v", err)
	}
	if n := h.px.fastRequests.Load(); n != 7 {
		t.Errorf("fast path served %d requests, want 7", n)
	}
	c, br = dialRaw(t, h.plain, false)

	// Chunked wins over a length, and the length does not reach the client.
	// (Read raw: Go's client would drop the length itself.)
	raw, rawBR := dialRaw(t, h.plain, false)
	io.WriteString(raw, "GET /both HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n") //nolint:errcheck // read below
	if b, _ := io.ReadAll(rawBR); strings.Contains(string(b), "Content-Length") || !strings.HasSuffix(string(b), "\r\n\r\n5\r\nhello\r\n0\r\n\r\n") {
		t.Errorf("/both: the client got\n%q", b)
	}
	// Headers the replica names in Connection are hop-by-hop.
	send("GET", "/named", "")
	if resp, body = readResp(t, br, "GET"); body != "ok" || resp.Header.Get("X-Hop") != "" || resp.Header.Get("X-Kept") != "1" {
		t.Errorf("/named: %q headers %v", body, resp.Header)
	}
	// Proxy-Authorization is for this proxy, not the replica.
	send("GET", "/echo", "Proxy-Authorization: Basic c2VjcmV0\r\nX-Mine: 1\r\n")
	if _, body = readResp(t, br, "GET"); strings.Contains(body, "Proxy-Authorization") || !strings.Contains(body, "X-Mine: 1") {
		t.Errorf("/echo: the replica got:\n%s", body)
	}
	// Heads a client could read differently than the proxy are refused.
	for _, path := range []string{"/plus", "/barelf"} {
		send("GET", path, "")
		if resp, body = readResp(t, br, "GET"); resp.StatusCode != http.StatusBadGateway {
			t.Errorf("%s: %d %q, want 502", path, resp.StatusCode, body)
		}
	}
	// A chunk not followed by CRLF ends the answer and the connection.
	c, br = dialRaw(t, h.plain, false)
	send("GET", "/badchunk", "")
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(resp.Body); err == nil {
		t.Errorf("/badchunk: read %q without an error", b)
	}

	// Connection: close from the client is honoured.
	c, br = dialRaw(t, h.plain, false)
	send("GET", "/cl", "Connection: close\r\n")
	if resp, body = readResp(t, br, "GET"); body != "hello" || !resp.Close {
		t.Errorf("client close: %q close %v", body, resp.Close)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("connection should be closed after Connection: close, got %v", err)
	}
}

// TestFastPathHandsOffMidConnection: one connection, on both listeners,
// carries a fast GET, then a POST (which the fast path hands to net/http
// with the bytes it read), then a GET that net/http serves from then on.
func TestFastPathHandsOffMidConnection(t *testing.T) {
	h := newHarness(t, nil)
	b := proxytest.StartBackend(t, "b", nil)
	h.set(t, route("web", "", "/", b))
	for _, tlsOn := range []bool{false, true} {
		addr, scheme := h.plain, "http"
		if tlsOn {
			addr, scheme = h.secure, "https"
		}
		c, br := dialRaw(t, addr, tlsOn)
		before := h.px.fastRequests.Load()
		reqs := "GET /one HTTP/1.1\r\nHost: x.test\r\n\r\n" +
			"POST /two HTTP/1.1\r\nHost: x.test\r\nContent-Length: 4\r\n\r\nbody" +
			"GET /three HTTP/1.1\r\nHost: x.test\r\n\r\n"
		if _, err := io.WriteString(c, reqs); err != nil {
			t.Fatal(err)
		}
		for i, path := range []string{"/one", "/two", "/three"} {
			resp, body := readResp(t, br, "GET")
			if resp.StatusCode != 200 || body != "b" || resp.Header.Get("X-Got-X-Forwarded-Proto") != scheme {
				t.Errorf("%s request %d (%s): %d %q proto %q", scheme, i, path, resp.StatusCode, body, resp.Header.Get("X-Got-X-Forwarded-Proto"))
			}
		}
		if n := h.px.fastRequests.Load() - before; n != 1 {
			t.Errorf("%s: fast path served %d of the three, want only the first", scheme, n)
		}
	}
}

// TestFrontShutdownClosesIdleConnections: Shutdown returns promptly with a
// keep-alive connection idle on the fast path, and that connection is
// closed.
func TestFrontShutdownClosesIdleConnections(t *testing.T) {
	b := proxytest.StartBackend(t, "b", nil)
	h := newHarness(t, nil)
	h.set(t, route("web", "", "/", b))
	px := h.px
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := px.NewFront(px.Handler(false), nil, Timeouts{ReadHeader: time.Minute, Idle: time.Hour}, px.cfg.Log)
	served := make(chan error, 1)
	go func() { served <- f.Serve(ln) }()
	c, br := dialRaw(t, ln.Addr().String(), false)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n") //nolint:errcheck // read below
	if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "b" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := f.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Shutdown took %v with one idle connection", d)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("idle connection after Shutdown: %v, want EOF", err)
	}
	if err := <-served; err != http.ErrServerClosed {
		t.Errorf("Serve returned %v, want ErrServerClosed", err)
	}
}

// TestFastPathSlowAnswers: an answer slower than slowAnswer still arrives,
// with a request pipelined behind it intact; a client that leaves while
// the replica thinks makes the proxy drop the replica connection.
func TestFastPathSlowAnswers(t *testing.T) {
	h := newHarness(t, nil)
	dropped := make(chan string, 4) // paths whose connection the proxy closed before the answer
	addr := tcpBackend(t, func(c net.Conn, br *bufio.Reader) {
		for {
			first, _, err := readHeadLines(br)
			if err != nil {
				return
			}
			path := strings.Fields(first)[1]
			if path == "/slow" || path == "/forever" {
				wait := 1500 * time.Millisecond
				if path == "/forever" {
					wait = time.Minute
				}
				c.SetReadDeadline(time.Now().Add(wait)) //nolint:errcheck // the read below times out, or sees the close
				if _, err := br.ReadByte(); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
					dropped <- path
					return
				}
				c.SetReadDeadline(time.Time{}) //nolint:errcheck // test
			}
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(path), path)
		}
	})
	h.set(t, rawRoute(routes.Backend{ReplicaID: "slow", Addr: addr, Healthy: true, Ready: true}))

	c, br := dialRaw(t, h.plain, false)
	io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n") //nolint:errcheck // read below
	for _, want := range []string{"/slow", "/next"} {
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != want {
			t.Errorf("%s: %d %q", want, resp.StatusCode, body)
		}
	}

	for _, tlsOn := range []bool{false, true} { // over TLS, leaving is close_notify, then FIN
		addr := h.plain
		if tlsOn {
			addr = h.secure
		}
		c, _ = dialRaw(t, addr, tlsOn)
		io.WriteString(c, "GET /forever HTTP/1.1\r\nHost: x\r\n\r\n") //nolint:errcheck // no answer expected
		time.Sleep(1200 * time.Millisecond)                           // past slowAnswer: the watch is on
		c.Close()
		select {
		case path := <-dropped:
			if path != "/forever" {
				t.Errorf("tls=%v: dropped %s, want /forever", tlsOn, path)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("tls=%v: the replica connection of a client that left was kept", tlsOn)
		}
	}
}

// TestFastPathSlowBodyWithoutResponseTimeout: with no response timeout, a
// body that pauses longer than the answer watch's step still streams whole
// (the wait's deadline does not reach into the body).
func TestFastPathSlowBodyWithoutResponseTimeout(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ResponseTimeout = 0 })
	addr := tcpBackend(t, func(c net.Conn, br *bufio.Reader) {
		if _, _, err := readHeadLines(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n") //nolint:errcheck // test
		time.Sleep(1500 * time.Millisecond)
		io.WriteString(c, "4\r\nlast\r\n0\r\n\r\n") //nolint:errcheck // test
	})
	h.set(t, rawRoute(routes.Backend{ReplicaID: "pause", Addr: addr, Healthy: true, Ready: true}))
	c, br := dialRaw(t, h.plain, false)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n") //nolint:errcheck // read below
	if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "firstlast" {
		t.Errorf("%d %q, want 200 firstlast", resp.StatusCode, body)
	}
}
