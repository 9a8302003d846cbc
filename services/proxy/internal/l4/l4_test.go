package l4

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/proxy/internal/balance"
	"zlayer.dev/services/proxy/internal/metrics"
	"zlayer.dev/services/proxy/internal/proxytest"
	"zlayer.dev/services/proxy/internal/routes"
)

// tcpEcho is a real TCP server answering each line with "NAME: line".
func tcpEcho(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				s := bufio.NewScanner(c)
				for s.Scan() {
					fmt.Fprintf(c, "%s: %s\n", name, s.Text())
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// udpEcho is a real UDP server answering each datagram with "NAME: data".
func udpEcho(t *testing.T, name string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(name+": "+string(buf[:n])), addr) //nolint:errcheck // the client notices
		}
	}()
	return pc.LocalAddr().String()
}

func newManager(t *testing.T) (*Manager, *routes.Store) {
	t.Helper()
	m := New(Config{Host: "127.0.0.1", ConnectTimeout: 2 * time.Second, UDPFlowTimeout: time.Minute, Log: zaptest.NewLogger(t)})
	t.Cleanup(m.Close)
	s := routes.NewStore(balance.RoundRobin, time.Minute, time.Now, metrics.New(prometheus.NewRegistry(), time.Now))
	s.AddApplier(m)
	return m, s
}

func l4Route(p routes.Protocol, port int, addrs ...string) routes.Route {
	r := routes.Route{Key: routes.Key{Deployment: "app", Service: "db", Endpoint: p.String()}, Protocol: p, PublicPort: uint16(port), Public: true}
	for i, a := range addrs {
		r.Backends = append(r.Backends, routes.Backend{ReplicaID: fmt.Sprintf("r%d", i), Addr: a, Healthy: true, Ready: true})
	}
	return r
}

func TestTCPEchoBalancedOverReplicas(t *testing.T) {
	_, s := newManager(t)
	port := proxytest.FreePort(t)
	dead := proxytest.FreePort(t) // nothing listens: connecting is refused
	if _, err := s.Set(1, []routes.Route{l4Route(routes.TCP, port, tcpEcho(t, "a"), tcpEcho(t, "b"), fmt.Sprintf("127.0.0.1:%d", dead))}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for i := range 12 {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "hello %d\n", i)
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		name, rest, _ := strings.Cut(strings.TrimSpace(line), ": ")
		if rest != fmt.Sprintf("hello %d", i) {
			t.Fatalf("echo %q", line)
		}
		seen[name]++
	}
	if seen["a"] == 0 || seen["b"] == 0 || len(seen) != 2 {
		t.Fatalf("connections per replica %v, want both a and b (the refusing one retried elsewhere)", seen)
	}
}

func TestTCPConnectionSurvivesRouteRemoval(t *testing.T) {
	_, s := newManager(t)
	port := proxytest.FreePort(t)
	if _, err := s.Set(1, []routes.Route{l4Route(routes.TCP, port, tcpEcho(t, "a"))}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	fmt.Fprintln(c, "one")
	if l, err := r.ReadString('\n'); err != nil || l != "a: one\n" {
		t.Fatalf("%q %v", l, err)
	}
	if _, err := s.Set(2, nil); err != nil {
		t.Fatal(err)
	}
	proxytest.Eventually(t, 5*time.Second, "port closed for new connections", func() bool {
		c2, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c2.Close()
		}
		return err != nil
	})
	fmt.Fprintln(c, "two")
	if l, err := r.ReadString('\n'); err != nil || l != "a: two\n" {
		t.Fatalf("open connection after removal: %q %v", l, err)
	}
}

func TestUDPEchoByClientFlow(t *testing.T) {
	_, s := newManager(t)
	port := proxytest.FreePort(t)
	if _, err := s.Set(1, []routes.Route{l4Route(routes.UDP, port, udpEcho(t, "a"), udpEcho(t, "b"))}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for client := range 4 {
		c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		var flowTo string
		for i := range 5 {
			msg := fmt.Sprintf("client %d datagram %d", client, i)
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck // bounded wait, not a threshold
			buf := make([]byte, 2048)
			n, err := c.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			name, rest, _ := strings.Cut(string(buf[:n]), ": ")
			if rest != msg {
				t.Fatalf("echo %q", buf[:n])
			}
			if flowTo == "" {
				flowTo = name
			} else if name != flowTo {
				t.Fatalf("client %d moved from %s to %s within its flow", client, flowTo, name)
			}
		}
		seen[flowTo]++
		c.Close()
	}
	if seen["a"] != 2 || seen["b"] != 2 {
		t.Fatalf("flows per replica %v, want 2 each", seen)
	}
}

func TestRefusesTableWhenPortIsTaken(t *testing.T) {
	_, s := newManager(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free := proxytest.FreePort(t)
	good := l4Route(routes.TCP, free, tcpEcho(t, "a"))
	if _, err := s.Set(1, []routes.Route{good}); err != nil {
		t.Fatal(err)
	}
	bad := l4Route(routes.TCP, taken.Addr().(*net.TCPAddr).Port, tcpEcho(t, "b"))
	bad.Endpoint = "other"
	_, err = s.Set(2, []routes.Route{good, bad})
	if !errors.Is(err, errkind.Unavailable) {
		t.Fatalf("got %v, want Unavailable", err)
	}
	if g := s.Load().Generation; g != 1 {
		t.Fatalf("generation %d in force, want 1", g)
	}
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", free))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintln(c, "still")
	if l, err := bufio.NewReader(c).ReadString('\n'); err != nil || l != "a: still\n" {
		t.Fatalf("%q %v", l, err)
	}
}
