// Package proxytest holds what the proxy's tests share: real backend servers
// on 127.0.0.1 that say who they are, free ports, and polling with a
// deadline. It is imported by tests only and fakes nothing.
package proxytest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// reusePort sets SO_REUSEPORT, so that a placeholder socket can share the
// port with the backend's listener.
func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}

// holdPort binds a socket that never listens to 127.0.0.1:port, with
// SO_REUSEPORT so it can sit beside the backend's listener. After Kill it
// keeps the port: nothing else (another test package's server, or the
// kernel choosing a source port for a dial) can take it, so a dial to a
// killed backend is refused, as with a crashed process on a real node,
// instead of reaching whatever took the port over.
func holdPort(t testing.TB, port int) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("hold port %d: %v", port, err)
	}
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		syscall.Close(fd)
		t.Fatalf("hold port %d: %v", port, err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		t.Fatalf("hold port %d: %v", port, err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
}

// StartBackend starts a backend serving h, or the default handler when h is
// nil. It stops at the end of the test.
func StartBackend(t testing.TB, name string, h http.Handler) *Backend {
	t.Helper()
	ln, err := (&net.ListenConfig{Control: reusePort}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	holdPort(t, ln.Addr().(*net.TCPAddr).Port)
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
// closed, so requests in flight fail as with a crashed process. The port
// stays held until the end of the test, so dials to it are refused.
func (b *Backend) Kill() {
	b.once.Do(func() { b.srv.Close() })
}
