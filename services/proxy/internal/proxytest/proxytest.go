// Package proxytest holds what the proxy's tests share: real backend servers
// on 127.0.0.1 that say who they are, free ports, and polling with a
// deadline. It is imported by tests only and fakes nothing.
package proxytest

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Eventually polls cond every few milliseconds until it is true, failing
// the test with msg when timeout passes first.
func Eventually(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", timeout, msg)
		}
		<-tick.C
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Backend is a real HTTP server on 127.0.0.1. By default it answers every
// request with its name in the body and in the X-Backend header, and echoes
// the forwarding headers it received as X-Got-<name>.
type Backend struct {
	Name     string
	Addr     string // ip:port
	Requests atomic.Int64

	srv  *http.Server
	ln   net.Listener
	once sync.Once
}

// StartBackend starts a backend serving h, or the default handler when h is
// nil. It stops at the end of the test.
func StartBackend(t testing.TB, name string, h http.Handler) *Backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &Backend{Name: name, Addr: ln.Addr().String(), ln: ln}
	if h == nil {
		h = http.HandlerFunc(b.identify)
	}
	b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.Requests.Add(1)
		h.ServeHTTP(w, r)
	}), ReadHeaderTimeout: 10 * time.Second}
	go b.srv.Serve(ln) //nolint:errcheck // ends with Kill
	t.Cleanup(b.Kill)
	return b
}

func (b *Backend) identify(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("X-Backend", b.Name)
	for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded"} {
		if v := r.Header.Values(h); len(v) > 0 {
			w.Header()["X-Got-"+h] = v
		}
	}
	w.Header().Set("X-Got-Host", r.Host)
	w.Header().Set("X-Got-Path", r.URL.Path)
	fmt.Fprint(w, b.Name)
}

// Port is the backend's port.
func (b *Backend) Port() int {
	_, p, _ := net.SplitHostPort(b.Addr)
	n, _ := strconv.Atoi(p)
	return n
}

// Kill stops the backend at once: the listener and every connection are
// closed, so requests in flight fail as with a crashed process.
func (b *Backend) Kill() {
	b.once.Do(func() { b.srv.Close() })
}
