package cli

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	proxyv1 "zlayer.dev/libs/api/zlayer/proxy/v1"
	"zlayer.dev/libs/rpc"
)

// TestRoutesShowsTheProxyTable runs a real zlayer-proxy, pushes a table as
// the scheduler would, and reads it back with `zlctl routes`.
func TestRoutesShowsTheProxyTable(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "zlayer-proxy")
	if out, err := exec.Command("go", "build", "-o", bin, "zlayer.dev/services/proxy/cmd/zlayer-proxy").CombinedOutput(); err != nil {
		t.Fatalf("build zlayer-proxy: %v\n%s", err, out)
	}
	dir := t.TempDir()
	runDir := filepath.Join(dir, "run")
	ctx, cancel := context.WithCancel(context.Background())
	proxy := exec.CommandContext(ctx, bin, "--node", "n1", "--run-dir", runDir, "--data-dir", filepath.Join(dir, "data"),
		"--http-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0", "--log-level", "warn")
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		proxy.Wait() //nolint:errcheck // killed by cancel
	}()
	cc, err := rpc.Dial(filepath.Join(runDir, "proxy.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := proxyv1.NewProxyServiceClient(cc)
	table := &proxyv1.SetRoutesRequest{Generation: 7, Routes: []*proxyv1.Route{
		{Deployment: "shop", Service: "web", Endpoint: "http", Protocol: proxyv1.Protocol_PROTOCOL_HTTPS, Host: "shop.test", Path: "/",
			Expose: proxyv1.Expose_EXPOSE_PUBLIC, Backends: []*proxyv1.Backend{
				{ReplicaId: "web-1", Address: "10.1.0.2:8080", Healthy: true, Ready: true},
				{ReplicaId: "web-2", Address: "10.1.0.3:8080", Healthy: false, Ready: true},
			}},
		{Deployment: "shop", Service: "db", Endpoint: "pg", Protocol: proxyv1.Protocol_PROTOCOL_TCP, PublicPort: 0, Expose: proxyv1.Expose_EXPOSE_INTERNAL},
	}}
	sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
	defer scancel()
	if _, err := client.SetRoutes(sctx, table, grpc.WaitForReady(true)); err != nil { // waits for the proxy to start
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := newRoutesCmd(&globals{runDir: runDir, getenv: func(string) string { return "" }})
	cmd.SetOut(&out)
	cmd.SetArgs(nil)
	if err := cmd.ExecuteContext(ctx); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(out.String(), "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	for _, want := range []string{
		"generation 7",
		"shop db pg tcp internal :0 0/0 0.0 -",
		"shop web http https public shop.test/ 1/2 0.0 web-1@10.1.0.2:8080, web-2@10.1.0.3:8080 (out)",
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
