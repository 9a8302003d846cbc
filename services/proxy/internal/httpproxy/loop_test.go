package httpproxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"zlayer.dev/services/proxy/internal/routes"
)

// TestGoroutinePath runs the fast path's tests with a goroutine per
// connection (--event-loops 0) instead of event loops.
func TestGoroutinePath(t *testing.T) {
	harnessLoops = 0
	defer func() { harnessLoops = 2 }()
	for name, test := range map[string]func(*testing.T){
		"FastPathFraming":                  TestFastPathFraming,
		"FastPathHandsOffMidConnection":    TestFastPathHandsOffMidConnection,
		"FastPathSlowAnswers":              TestFastPathSlowAnswers,
		"ErrorsNameTheServiceAndNeverHang": TestErrorsNameTheServiceAndNeverHang,
		"ForwardingHeaders":                TestForwardingHeaders,
		"ReplicaClosingIdleConnections":    TestReplicaClosingIdleConnections,
		"AnswerSizes":                      TestLoopAnswerSizes,
		"SlowBodyAndHalfClose":             TestLoopSlowBodyAndHalfClose,
	} {
		t.Run(name, test)
	}
}

// sizedBackend answers GET /N with N bytes (a pattern that shows any
// reordering) and a Content-Length.
func sizedBackend(t *testing.T) routes.Backend {
	t.Helper()
	addr := tcpBackend(t, func(c net.Conn, br *bufio.Reader) {
		bw := bufio.NewWriter(c)
		for {
			first, _, err := readHeadLines(br)
			if err != nil {
				return
			}
			n, _ := strconv.Atoi(strings.TrimPrefix(strings.Fields(first)[1], "/"))
			fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", n)
			bw.Write(pattern(n)) //nolint:errcheck // flushed below
			if bw.Flush() != nil {
				return
			}
		}
	})
	return routes.Backend{ReplicaID: "sized", Addr: addr, Healthy: true, Ready: true}
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26 + i/26%7)
	}
	return b
}

// TestLoopAnswerSizes: answers around the size the loops forward
// themselves (loopMaxBody; larger ones stream from a goroutine), pipelined
// to a client that reads nothing until all are sent, so the proxy's writes
// to it fill the socket and must wait; on both listeners.
func TestLoopAnswerSizes(t *testing.T) {
	h := newHarness(t, nil)
	h.set(t, rawRoute(sizedBackend(t)))
	sizes := []int{0, 1, 1000, loopMaxBody - 1, loopMaxBody, loopMaxBody + 1, 60 << 10, 3 << 20, 5}
	for _, tlsOn := range []bool{false, true} {
		addr := h.plain
		if tlsOn {
			addr = h.secure
		}
		t.Run(fmt.Sprintf("tls=%v", tlsOn), func(t *testing.T) {
			c, br := dialRaw(t, addr, tlsOn)
			var reqs strings.Builder
			for range 3 { // the same sizes again on connections now served by a goroutine
				for _, n := range sizes {
					fmt.Fprintf(&reqs, "GET /%d HTTP/1.1\r\nHost: x.test\r\n\r\n", n)
				}
			}
			go io.WriteString(c, reqs.String()) //nolint:errcheck // the reads below fail if it does
			time.Sleep(300 * time.Millisecond)  // the proxy's answers pile up meanwhile
			for round := range 3 {
				for _, n := range sizes {
					resp, body := readResp(t, br, "GET")
					if resp.StatusCode != 200 || sha256.Sum256([]byte(body)) != sha256.Sum256(pattern(n)) {
						t.Fatalf("round %d, %d bytes: %d, %d bytes, intact %v", round, n, resp.StatusCode, len(body), body == string(pattern(n)))
					}
				}
			}
		})
	}
}

// TestLoopShutdown: Shutdown lets a request in flight on an event loop
// finish and closes the idle connection at once; when its context ends
// first, it closes the connection of a request whose replica never
// answers, and Serve returns.
func TestLoopShutdown(t *testing.T) {
	h := newHarness(t, nil)
	release := make(chan struct{})
	addr := tcpBackend(t, func(c net.Conn, br *bufio.Reader) {
		for {
			first, _, err := readHeadLines(br)
			if err != nil {
				return
			}
			switch strings.Fields(first)[1] {
			case "/slow":
				<-release
			case "/never":
				io.Copy(io.Discard, br) //nolint:errcheck // until the proxy closes
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") //nolint:errcheck // test
		}
	})
	h.set(t, rawRoute(routes.Backend{ReplicaID: "r", Addr: addr, Healthy: true, Ready: true}))
	px := h.px
	for _, force := range []bool{false, true} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		f := px.NewFront(px.Handler(false), nil, Timeouts{ReadHeader: time.Minute, Idle: time.Hour}, px.cfg.Log)
		f.Loops = 2
		served := make(chan error, 1)
		go func() { served <- f.Serve(ln) }()
		idle, idleBR := dialRaw(t, ln.Addr().String(), false)
		io.WriteString(idle, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n") //nolint:errcheck // read below
		if resp, body := readResp(t, idleBR, "GET"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		busy, busyBR := dialRaw(t, ln.Addr().String(), false)
		path := "/slow"
		if force {
			path = "/never"
		}
		io.WriteString(busy, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n") //nolint:errcheck // read below
		time.Sleep(200 * time.Millisecond)                               // the request reaches the replica
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if force {
			ctx, cancel = context.WithTimeout(context.Background(), 500*time.Millisecond)
		}
		shut := make(chan error, 1)
		go func() { shut <- f.Shutdown(ctx) }()
		if _, err := idleBR.ReadByte(); err != io.EOF {
			t.Errorf("idle connection at Shutdown: %v, want EOF", err)
		}
		if !force {
			time.Sleep(200 * time.Millisecond)
			release <- struct{}{}
			if resp, body := readResp(t, busyBR, "GET"); resp.StatusCode != 200 || body != "ok" || !resp.Close {
				t.Errorf("request in flight at Shutdown: %d %q close %v", resp.StatusCode, body, resp.Close)
			}
		} else if b, err := io.ReadAll(busyBR); err != nil && !errors.Is(err, io.EOF) && !isReset(err) || len(b) > 0 {
			t.Errorf("forced Shutdown: the client read %q, %v", b, err)
		}
		if err := <-shut; (err != nil) != force {
			t.Errorf("force=%v: Shutdown returned %v", force, err)
		}
		if err := <-served; err != http.ErrServerClosed {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		cancel()
	}
}

// TestLoopRequestHeadInPieces: a head that arrives a few bytes at a time
// (over TLS, a record each) is put together; one that stops half way is
// closed after the header timeout.
func TestLoopRequestHeadInPieces(t *testing.T) {
	h := newHarness(t, nil)
	h.set(t, rawRoute(sizedBackend(t)))
	for _, tlsOn := range []bool{false, true} {
		addr := h.plain
		if tlsOn {
			addr = h.secure
		}
		c, br := dialRaw(t, addr, tlsOn)
		head := []byte("GET /7 HTTP/1.1\r\nHost: x.test\r\nX-Long: " + strings.Repeat("y", 20<<10) + "\r\n\r\n")
		for chunk := range slices.Chunk(head, 997) {
			if _, err := c.Write(chunk); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond)
		}
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != string(pattern(7)) {
			t.Errorf("tls=%v: %d %q", tlsOn, resp.StatusCode, body)
		}
	}
}

// TestLoopSlowBodyAndHalfClose: the response timeout bounds the wait for
// an answer's head, not a body that trickles in after it; a client that
// pipelines two requests and then shuts its sending side gets both
// answers, however slow the first (it did not leave).
func TestLoopSlowBodyAndHalfClose(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ResponseTimeout = 1500 * time.Millisecond })
	addr := tcpBackend(t, func(c net.Conn, br *bufio.Reader) {
		for {
			first, _, err := readHeadLines(br)
			if err != nil {
				return
			}
			switch strings.Fields(first)[1] {
			case "/trickle":
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst") //nolint:errcheck // test
				time.Sleep(1800 * time.Millisecond)                                     // past the response timeout
				io.WriteString(c, "later")                                              //nolint:errcheck // test
			case "/thinks":
				time.Sleep(1200 * time.Millisecond)                                     // past slowAnswer: the client is watched
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nthinks") //nolint:errcheck // test
			default:
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfast") //nolint:errcheck // test
			}
		}
	})
	h.set(t, rawRoute(routes.Backend{ReplicaID: "r", Addr: addr, Healthy: true, Ready: true}))
	for _, tlsOn := range []bool{false, true} {
		addr := h.plain
		if tlsOn {
			addr = h.secure
		}
		c, br := dialRaw(t, addr, tlsOn)
		io.WriteString(c, "GET /trickle HTTP/1.1\r\nHost: x\r\n\r\n") //nolint:errcheck // read below
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "firstlater" {
			t.Errorf("tls=%v: slow body: %d %q, want 200 firstlater", tlsOn, resp.StatusCode, body)
		}
	}
	// Half-close (plain only: TLS has no half-close short of close_notify).
	c, br := dialRaw(t, h.plain, false)
	io.WriteString(c, "GET /thinks HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n") //nolint:errcheck // read below
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"thinks", "fast"} {
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != want {
			t.Errorf("after a half-close: %d %q, want 200 %q", resp.StatusCode, body, want)
		}
	}
}
