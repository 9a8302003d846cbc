package app

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	proxyv1 "zlayer.dev/libs/api/zlayer/proxy/v1"
	"zlayer.dev/libs/rpc"
	"zlayer.dev/services/proxy/internal/certs"
	"zlayer.dev/services/proxy/internal/proxytest"
)

// node is zlayer-proxy running in-process, as its binary would.
type node struct {
	http, https string // listener addresses
	client      proxyv1.ProxyServiceClient
	stop        func()
}

func startNode(t *testing.T, dir string, httpPort, httpsPort int, extra ...string) *node {
	t.Helper()
	n := &node{http: fmt.Sprintf("127.0.0.1:%d", httpPort), https: fmt.Sprintf("127.0.0.1:%d", httpsPort)}
	args := append([]string{"--node", "n1", "--run-dir", filepath.Join(dir, "run"), "--data-dir", filepath.Join(dir, "data"),
		"--http-addr", n.http, "--https-addr", n.https, "--l4-host", "127.0.0.1", "--log-level", "warn", "--log-format", "console"}, extra...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Main(ctx, args, func(string) string { return "" }) }()
	var stopped bool
	n.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy stopped with %v", err)
		}
	}
	t.Cleanup(n.stop)
	cc, err := rpc.Dial(filepath.Join(dir, "run", "proxy.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	n.client = proxyv1.NewProxyServiceClient(cc)
	proxytest.Eventually(t, 10*time.Second, "proxy answers GetInfo", func() bool {
		select {
		case err := <-done:
			t.Fatalf("proxy exited: %v", err)
		default:
		}
		_, err := n.client.GetInfo(context.Background(), &proxyv1.GetInfoRequest{}, grpc.WaitForReady(false))
		return err == nil
	})
	return n
}

func backendRoute(svc string, p proxyv1.Protocol, addrs ...string) *proxyv1.Route {
	r := &proxyv1.Route{Deployment: "app", Service: svc, Endpoint: "main", Protocol: p, Expose: proxyv1.Expose_EXPOSE_PUBLIC}
	for i, a := range addrs {
		r.Backends = append(r.Backends, &proxyv1.Backend{ReplicaId: fmt.Sprintf("%s-%d", svc, i), Address: a, Node: "n1", Healthy: true, Ready: true})
	}
	return r
}

func TestDaemonServesPushedRoutes(t *testing.T) {
	dir := t.TempDir()
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", proxytest.FreePort(t))
	n := startNode(t, dir, proxytest.FreePort(t), proxytest.FreePort(t), "--metrics-addr", metricsAddr)
	ctx := context.Background()
	web := proxytest.StartBackend(t, "web-1", nil)
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }() //nolint:errcheck // echo until closed
		}
	}()
	tcpPort := proxytest.FreePort(t)
	tcp := backendRoute("db", proxyv1.Protocol_PROTOCOL_TCP, echo.Addr().String())
	tcp.PublicPort = uint32(tcpPort)
	job := backendRoute("report", proxyv1.Protocol_PROTOCOL_HTTP)
	job.Path, job.Rtype = "/report", proxyv1.ResourceType_RESOURCE_TYPE_JOB
	resp, err := n.client.SetRoutes(ctx, &proxyv1.SetRoutesRequest{Generation: 3, Routes: []*proxyv1.Route{
		backendRoute("web", proxyv1.Protocol_PROTOCOL_HTTP, web.Addr), tcp, job,
	}})
	if err != nil || resp.GetGeneration() != 3 {
		t.Fatalf("SetRoutes: %v %v", resp, err)
	}

	for range 5 {
		r, err := http.Get("http://" + n.http + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != 200 || string(body) != "web-1" {
			t.Fatalf("GET: %d %q", r.StatusCode, body)
		}
	}
	r, err := http.Post("http://"+n.http+"/report", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	// No scheduler runs beside this proxy: a job route says so (the run
	// itself is tested end to end in tests/e2e).
	if r.StatusCode != 503 || !strings.Contains(string(body), "scheduler is not reachable") {
		t.Fatalf("job with no scheduler: %d %q", r.StatusCode, body)
	}
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tcpPort))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(c, "ping")
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("tcp echo %q %v", line, err)
	}
	c.Close()

	stats, err := n.client.GetStats(ctx, &proxyv1.GetStatsRequest{Window: durationpb.New(30 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	byService := map[string]*proxyv1.EndpointStats{}
	for _, e := range stats.GetEndpoints() {
		byService[e.GetService()] = e
	}
	if w := byService["web"]; w.GetRequestsTotal() != 5 || w.GetResponses().GetSuccess() != 5 || w.GetRps() <= 0 || w.GetEligibleBackends() != 1 {
		t.Errorf("web stats %v", w)
	}
	if j := byService["report"]; j.GetRequestsTotal() != 1 || j.GetResponses().GetServerError() != 1 {
		t.Errorf("job stats %v", j)
	}
	proxytest.Eventually(t, 5*time.Second, "tcp connection counted and closed", func() bool {
		st, err := n.client.GetStats(ctx, &proxyv1.GetStatsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range st.GetEndpoints() {
			if e.GetService() == "db" {
				return e.GetRequestsTotal() == 1 && e.GetActive() == 0
			}
		}
		return false
	})

	mr, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	prom, _ := io.ReadAll(mr.Body)
	mr.Body.Close()
	for _, want := range []string{
		`zlayer_proxy_requests_total{class="2xx",deployment="app",endpoint="main",service="web"} 5`,
		`zlayer_proxy_requests_total{class="l4",deployment="app",endpoint="main",service="db"} 1`,
		`zlayer_proxy_request_duration_seconds_count{deployment="app",endpoint="main",service="web"} 5`,
		`zlayer_proxy_active_connections{deployment="app",endpoint="main",service="web"} 0`,
	} {
		if !strings.Contains(string(prom), want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	list, err := n.client.ListRoutes(ctx, &proxyv1.ListRoutesRequest{})
	if err != nil || list.GetGeneration() != 3 || len(list.GetRoutes()) != 3 {
		t.Fatalf("ListRoutes: %v %v", list, err)
	}
	if b := list.GetRoutes()[2].GetBackends()[0]; list.GetRoutes()[2].GetRoute().GetService() != "web" || b.GetRequestsTotal() != 5 || !b.GetEligible() {
		t.Errorf("web backend state %v", b)
	}

	_, err = n.client.SetRoutes(ctx, &proxyv1.SetRoutesRequest{Generation: 4, Routes: []*proxyv1.Route{{Deployment: "app"}}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "protocol") {
		t.Errorf("invalid table: %v", err)
	}
}

// pebble runs Debian's pebble and pebble-challtestsrv on 127.0.0.1. The
// challenge server only answers DNS: every name is 127.0.0.1, so pebble
// validates on the proxy's own HTTP (HTTP-01) and HTTPS (TLS-ALPN-01) ports.
type pebble struct {
	dir     string
	rootPEM string // file trusting pebble's API certificate
	mgmt    string // management address
	api     *http.Client
}

func startPebble(t *testing.T, httpPort, tlsPort int) *pebble {
	t.Helper()
	dir := t.TempDir()
	p := &pebble{dir: dir, rootPEM: filepath.Join(dir, "api.pem")}
	cert, err := certs.SelfSigned("127.0.0.1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("api.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}))
	write("api.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	apiPort, dnsPort := proxytest.FreePort(t), proxytest.FreePort(t)
	p.mgmt = fmt.Sprintf("127.0.0.1:%d", proxytest.FreePort(t))
	cfg, _ := json.Marshal(map[string]any{"pebble": map[string]any{
		"listenAddress": fmt.Sprintf("127.0.0.1:%d", apiPort), "managementListenAddress": p.mgmt,
		"certificate": filepath.Join(dir, "api.pem"), "privateKey": filepath.Join(dir, "api.key"),
		"httpPort": httpPort, "tlsPort": tlsPort, "ocspResponderURL": "", "externalAccountBindingRequired": false,
	}})
	write("pebble.json", cfg)
	run := func(name string, env []string, args ...string) {
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill() //nolint:errcheck // may have exited
			cmd.Wait()         //nolint:errcheck // killed
			out.Close()
			if t.Failed() {
				b, _ := os.ReadFile(filepath.Join(dir, name+".log"))
				t.Logf("%s log:\n%s", name, b)
			}
		})
	}
	chall := fmt.Sprintf("127.0.0.1:%d", proxytest.FreePort(t))
	run("pebble-challtestsrv", nil, "-dns01", fmt.Sprintf("127.0.0.1:%d", dnsPort), "-http01", "", "-https01", "",
		"-tlsalpn01", "", "-management", chall, "-defaultIPv6", "")
	proxytest.Eventually(t, 20*time.Second, "pebble-challtestsrv is up", func() bool {
		c, err := net.Dial("tcp", chall)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	run("pebble", []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0"}, "-config", filepath.Join(dir, "pebble.json"),
		"-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort), "-strict=false")
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	p.api = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	t.Cleanup(p.api.CloseIdleConnections)
	proxytest.Eventually(t, 20*time.Second, "pebble serves its directory", func() bool {
		r, err := p.api.Get(p.directory(apiPort))
		if err == nil {
			r.Body.Close()
		}
		return err == nil && r.StatusCode == 200
	})
	p.dir = p.directory(apiPort)
	return p
}

func (p *pebble) directory(port int) string { return fmt.Sprintf("https://127.0.0.1:%d/dir", port) }

// roots returns pebble's issuing root, for verifying what the proxy serves.
func (p *pebble) roots(t *testing.T) *x509.CertPool {
	t.Helper()
	r, err := p.api.Get("https://" + p.mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("pebble root: %q", b)
	}
	return pool
}

// servedCert returns the certificate the proxy presents for name.
func servedCert(addr, name string) ([]*x509.Certificate, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{ServerName: name, InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}}) //nolint:gosec // checked by the caller
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates, nil
}

func TestACMECertificateFromPebbleSurvivesRestart(t *testing.T) {
	const host = "shop.zlayer.test"
	httpPort, httpsPort := proxytest.FreePort(t), proxytest.FreePort(t)
	peb := startPebble(t, httpPort, httpsPort)
	dir := t.TempDir()
	args := []string{"--acme-ca", peb.dir, "--acme-ca-root", peb.rootPEM, "--acme-email", "ops@zlayer.test"}
	shop := proxytest.StartBackend(t, "shop-1", nil)
	route := backendRoute("shop", proxyv1.Protocol_PROTOCOL_HTTPS, shop.Addr)
	route.Host = host
	roots := peb.roots(t)

	issued := func(n *node) *x509.Certificate {
		t.Helper()
		if _, err := n.client.SetRoutes(context.Background(), &proxyv1.SetRoutesRequest{Generation: 1, Routes: []*proxyv1.Route{route}}); err != nil {
			t.Fatal(err)
		}
		var chain []*x509.Certificate
		proxytest.Eventually(t, 60*time.Second, "the proxy serves an ACME certificate for "+host, func() bool {
			cs, err := servedCert(n.https, host)
			if err != nil || len(cs) == 0 || len(cs[0].Subject.Organization) > 0 { // self-signed meanwhile
				return false
			}
			chain = cs
			return true
		})
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		if _, err := chain[0].Verify(x509.VerifyOptions{DNSName: host, Roots: roots, Intermediates: inter}); err != nil {
			t.Fatalf("served certificate does not verify against pebble's root: %v", err)
		}
		return chain[0]
	}

	n := startNode(t, dir, httpPort, httpsPort, args...)
	first := issued(n)

	// The https route answers through TLS with the ACME certificate, and
	// plain HTTP redirects there.
	pool := x509.NewCertPool()
	pool.AddCert(first)
	client := &http.Client{Timeout: 10 * time.Second,
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{ServerName: host, RootCAs: roots}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer client.CloseIdleConnections()
	req, _ := http.NewRequest("GET", "https://"+n.https+"/", nil)
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "shop-1" {
		t.Fatalf("https: %d %q", resp.StatusCode, body)
	}
	req, _ = http.NewRequest("GET", "http://"+n.http+"/cart", nil)
	req.Host = host
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); resp.StatusCode != 308 || loc != fmt.Sprintf("https://%s:%d/cart", host, httpsPort) {
		t.Fatalf("redirect: %d %q", resp.StatusCode, loc)
	}

	n.stop()
	n = startNode(t, dir, httpPort, httpsPort, args...)
	second := issued(n)
	if first.SerialNumber.Cmp(second.SerialNumber) != 0 {
		t.Fatalf("restart re-issued: serial %x, then %x", first.SerialNumber, second.SerialNumber)
	}
}
