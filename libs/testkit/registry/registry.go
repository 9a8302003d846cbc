// Package registry runs Debian's docker-registry (distribution 2.x) on
// 127.0.0.1 for tests and for devctl: a free port, storage in a directory
// the caller owns, optional htpasswd basic auth and optional TLS. Start and
// Stop return errors so devctl can use them; StartT wraps them for tests and
// stops the registry in t.Cleanup.
//
// It does not build or push images; package fixtures does.
package registry

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Binary is the registry executable (Debian package docker-registry).
const Binary = "docker-registry"

// Options configure a registry.
type Options struct {
	// Dir holds the configuration, the storage and the log. Required.
	Dir string
	// Users, if not empty, turns on htpasswd basic auth with these
	// user → password pairs.
	Users map[string]string
	// TLSCert and TLSKey (PEM files), if set, make the registry serve
	// HTTPS.
	TLSCert, TLSKey string
	// Addr is host:port to listen on; default 127.0.0.1 and a free port.
	Addr string
}

// Registry is a running docker-registry.
type Registry struct {
	// Addr is host:port, e.g. 127.0.0.1:41234.
	Addr string
	// Dir is the directory given in Options.
	Dir string
	// Log is the registry's log file.
	Log string

	cmd    *exec.Cmd
	exited chan struct{}
	tls    bool
}

// Start writes a configuration into opts.Dir, starts the registry and
// waits until it answers on /v2/.
func Start(ctx context.Context, opts Options) (*Registry, error) {
	if opts.Dir == "" {
		return nil, errors.New("registry: Options.Dir is required")
	}
	if _, err := exec.LookPath(Binary); err != nil {
		return nil, fmt.Errorf("registry: %w (apt-get install docker-registry)", err)
	}
	if err := os.MkdirAll(filepath.Join(opts.Dir, "storage"), 0o755); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ { // a free port can be taken between probe and bind
		addr := opts.Addr
		if addr == "" {
			p, err := freePort()
			if err != nil {
				return nil, err
			}
			addr = fmt.Sprintf("127.0.0.1:%d", p)
		}
		r, err := start(ctx, opts, addr)
		if err == nil {
			return r, nil
		}
		lastErr = err
		if opts.Addr != "" {
			break
		}
	}
	return nil, lastErr
}

func start(ctx context.Context, opts Options, addr string) (*Registry, error) {
	conf := filepath.Join(opts.Dir, "config.yml")
	var b strings.Builder
	fmt.Fprintf(&b, "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n")
	fmt.Fprintf(&b, "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n", filepath.Join(opts.Dir, "storage"))
	fmt.Fprintf(&b, "http:\n  addr: %s\n", addr)
	if opts.TLSCert != "" {
		fmt.Fprintf(&b, "  tls:\n    certificate: %s\n    key: %s\n", opts.TLSCert, opts.TLSKey)
	}
	if len(opts.Users) > 0 {
		htp := filepath.Join(opts.Dir, "htpasswd")
		var lines bytes.Buffer
		for u, p := range opts.Users {
			h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
			if err != nil {
				return nil, fmt.Errorf("registry: hash password: %w", err)
			}
			fmt.Fprintf(&lines, "%s:%s\n", u, h)
		}
		if err := os.WriteFile(htp, lines.Bytes(), 0o600); err != nil {
			return nil, fmt.Errorf("registry: %w", err)
		}
		fmt.Fprintf(&b, "auth:\n  htpasswd:\n    realm: zlayer-test\n    path: %s\n", htp)
	}
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	logPath := filepath.Join(opts.Dir, "registry.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(Binary, "serve", conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The registry dies with whoever started it, even on SIGKILL.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("registry: start: %w", err)
	}
	r := &Registry{Addr: addr, Dir: opts.Dir, Log: logPath, cmd: cmd, exited: make(chan struct{}), tls: opts.TLSCert != ""}
	go func() { _ = cmd.Wait(); close(r.exited) }()

	if err := r.waitReady(ctx, opts); err != nil {
		_ = r.Stop()
		return nil, err
	}
	return r, nil
}

func (r *Registry) waitReady(ctx context.Context, opts Options) error {
	client := &http.Client{Timeout: 2 * time.Second}
	if r.tls {
		pool := x509.NewCertPool()
		pem, err := os.ReadFile(opts.TLSCert)
		if err != nil {
			return fmt.Errorf("registry: %w", err)
		}
		pool.AppendCertsFromPEM(pem)
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	}
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := client.Get(r.URL() + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return nil
			}
		}
		select {
		case <-r.exited:
			log, _ := os.ReadFile(r.Log)
			return fmt.Errorf("registry: exited at start: %s", lastLines(string(log), 5))
		case <-deadline.C:
			return fmt.Errorf("registry: not answering on %s after 20s (log %s)", r.Addr, r.Log)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// URL is the registry's base URL (http or https).
func (r *Registry) URL() string {
	if r.tls {
		return "https://" + r.Addr
	}
	return "http://" + r.Addr
}

// Stop kills the registry and waits for it to exit. The storage stays.
func (r *Registry) Stop() error {
	select {
	case <-r.exited:
		return nil
	default:
	}
	if err := r.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("registry: kill: %w", err)
	}
	<-r.exited
	return nil
}

// StartT starts a registry in a temp dir of t (plus opts) and stops it when
// the test ends.
func StartT(t testing.TB, opts Options) *Registry {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("start registry: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Errorf("stop registry: %v", err)
		}
	})
	return r
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("registry: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
