package pull_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"zlayer.dev/libs/testkit/fixtures"
	"zlayer.dev/libs/testkit/registry"
	"zlayer.dev/services/registry/internal/pull"
	"zlayer.dev/services/registry/internal/store"
)

// One registry with the standard images serves every test in the package;
// tests that change a registry (corruption, auth, stopping it) start their
// own.
var (
	reg  *registry.Registry
	imgs map[string]fixtures.Image // by repo:tag
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	os.Exit(func() int {
		if os.Geteuid() != 0 {
			fmt.Fprintln(os.Stderr, "these tests need root (ownership, device nodes, xattrs, mounts)")
			return 1
		}
		dir, err := os.MkdirTemp("", "pull-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		reg, err = registry.Start(ctx, registry.Options{Dir: filepath.Join(dir, "registry")})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer reg.Stop()
		list, err := fixtures.BuildAndPush(ctx, filepath.Join(dir, "build"), reg.Addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		imgs = map[string]fixtures.Image{}
		for _, i := range list {
			imgs[i.Repo+":"+i.Tag] = i
		}
		return m.Run()
	}())
}

type env struct {
	st *store.Store
	p  *pull.Puller
}

// newEnv opens a store in a fresh data dir and a Puller that treats the
// given registries as plain HTTP.
func newEnv(t *testing.T, dataDir string, opts pull.Options, insecure ...string) env {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	log := zaptest.NewLogger(t)
	st, err := store.Open(filepath.Join(dataDir, "store"), log)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	if opts.Platform == "" {
		opts.Platform = "linux/" + runtime.GOARCH
	}
	if opts.AuthFile == "" {
		opts.AuthFile = filepath.Join(dataDir, "auth.json")
	}
	opts.ConfigDir = filepath.Join(dataDir, "config")
	opts.InsecureRegistries = append(opts.InsecureRegistries, insecure...)
	if len(insecure) == 0 {
		opts.InsecureRegistries = append(opts.InsecureRegistries, reg.Addr)
	}
	p, err := pull.New(st, log, opts)
	if err != nil {
		t.Fatalf("new puller: %v", err)
	}
	return env{st: st, p: p}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
