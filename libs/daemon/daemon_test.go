package daemon

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"zlayer.dev/libs/rpc"
)

// syncBuffer is a bytes.Buffer safe for the daemon's logger and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func noEnv(string) string { return "" }

func testComponent(started chan<- Env) Component {
	return Component{
		Name: "test",
		Start: func(ctx context.Context, env Env, srv *grpc.Server) (func(context.Context) error, error) {
			started <- env
			return nil, nil
		},
	}
}

// startDaemon runs a daemon in-process and returns when it serves.
func startDaemon(t *testing.T, runDir string, extra ...string) (cancel func() error) {
	t.Helper()
	started := make(chan Env, 1)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	args := append([]string{"--run-dir", runDir, "--data-dir", t.TempDir(), "--node", "n1"}, extra...)
	var logs syncBuffer
	go func() { done <- run(ctx, args, noEnv, &logs, testComponent(started)) }()
	select {
	case <-started:
	case err := <-done:
		stop()
		t.Fatalf("daemon exited during start: %v\n%s", err, logs.String())
	}
	waitServing(t, rpc.SocketPath(runDir, "test"))
	return func() error { stop(); return <-done }
}

func waitServing(t *testing.T, sock string) {
	t.Helper()
	cc, err := rpc.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not SERVING: %v %v", sock, resp, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestServeAndStop(t *testing.T) {
	runDir := t.TempDir()
	stop := startDaemon(t, runDir)
	sock := rpc.SocketPath(runDir, "test")
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&0o007 != 0 {
		t.Errorf("socket mode %v is open to others", perm)
	}
	if err := stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind after stop: %v", err)
	}
}

func TestSecondInstanceRefused(t *testing.T) {
	runDir := t.TempDir()
	stop := startDaemon(t, runDir)
	defer stop()
	var logs syncBuffer
	err := run(context.Background(), []string{"--run-dir", runDir, "--data-dir", t.TempDir()}, noEnv, &logs, testComponent(make(chan Env, 1)))
	if err == nil || !strings.Contains(err.Error(), "is held by process") || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("second instance error = %v, want a clear 'already running' error", err)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	runDir := t.TempDir()
	sock := rpc.SocketPath(runDir, "test")
	// A socket file with nobody listening, as a SIGKILLed daemon leaves it.
	l, err := rpc.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("stale socket not present for the test: %v", err)
	}
	stop := startDaemon(t, runDir)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(file, []byte("node: from-file\nlog-format: console\nextra: [a, b]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"ZLAYER_NODE": "from-env", "ZLAYER_RUN_DIR": "/env/run"}
	tests := []struct {
		name     string
		args     []string
		wantNode string
		wantRun  string
		wantErr  string
		env      map[string]string // overrides of the base environment
	}{
		{name: "env", args: nil, wantNode: "from-env", wantRun: "/env/run"},
		{name: "env over file", args: []string{"--config", file}, wantNode: "from-env", wantRun: "/env/run"},
		{name: "component env over node-wide env", args: []string{"--config", file}, env: map[string]string{"ZLAYER_TEST_NODE": "comp"}, wantNode: "comp", wantRun: "/env/run"},
		{name: "file over default", args: []string{"--config", file}, env: map[string]string{"ZLAYER_NODE": ""}, wantNode: "from-file", wantRun: "/env/run"},
		{name: "flag over all", args: []string{"--config", file, "--node", "from-flag"}, wantNode: "from-flag", wantRun: "/env/run"},
		{name: "bad format", args: []string{"--log-format", "xml"}, wantErr: `log-format: "xml" is not one of json, console`},
		{name: "bad format from env", env: map[string]string{"ZLAYER_LOG_FORMAT": "xml"}, wantErr: `log-format: "xml" is not one of json, console`},
		{name: "stray argument", args: []string{"oops"}, wantErr: `unexpected argument "oops"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			var extra []string
			fs.Func("extra", "repeatable", func(s string) error { extra = append(extra, s); return nil })
			var cfg Config
			getenv := func(k string) string {
				if v, ok := tt.env[k]; ok {
					return v
				}
				return env[k]
			}
			err := parseConfig(fs, tt.args, getenv, "test", &cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Node != tt.wantNode || cfg.RunDir != tt.wantRun {
				t.Fatalf("node, run dir = %q, %q; want %q, %q", cfg.Node, cfg.RunDir, tt.wantNode, tt.wantRun)
			}
		})
	}
}

func TestConfigUnknownKey(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("nodee: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var cfg Config
	err := parseConfig(flag.NewFlagSet("t", flag.ContinueOnError), []string{"--config", file}, noEnv, "test", &cfg)
	if err == nil || !strings.Contains(err.Error(), `unknown key "nodee"`) {
		t.Fatalf("error = %v, want unknown key", err)
	}
}
