package rootfs_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"zlayer.dev/libs/errkind"
	"zlayer.dev/libs/testkit/fixtures"
	"zlayer.dev/libs/testkit/registry"
	"zlayer.dev/services/registry/internal/pull"
	"zlayer.dev/services/registry/internal/rootfs"
	"zlayer.dev/services/registry/internal/store"
)

type env struct {
	st    *store.Store
	m     *rootfs.Manager
	multi store.Image
	bb    store.Image
	dir   string
}

// One registry with the standard images serves every test.
var (
	reg  *registry.Registry
	imgs []fixtures.Image
)

func TestMain(m *testing.M) {
	os.Exit(func() int {
		if os.Geteuid() != 0 {
			fmt.Fprintln(os.Stderr, "these tests need root (overlay mounts)")
			return 1
		}
		dir, err := os.MkdirTemp("", "rootfs-test-")
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
		imgs, err = fixtures.BuildAndPush(ctx, filepath.Join(dir, "build"), reg.Addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}())
}

func setup(t *testing.T) env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	checkNoMounts(t, dir)
	log := zaptest.NewLogger(t)
	st, err := store.Open(filepath.Join(dir, "store"), log)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pull.New(st, log, pull.Options{Platform: "linux/" + runtime.GOARCH, ConfigDir: filepath.Join(dir, "config"),
		AuthFile: filepath.Join(dir, "auth.json"), InsecureRegistries: []string{reg.Addr}})
	if err != nil {
		t.Fatal(err)
	}
	e := env{st: st, dir: dir}
	for _, i := range imgs {
		switch i.Repo + ":" + i.Tag {
		case fixtures.Multilayer:
			e.multi, _, err = p.Pull(ctx, i.Ref, pull.IfNotPresent, nil)
		case fixtures.Busybox:
			e.bb, _, err = p.Pull(ctx, i.Ref, pull.IfNotPresent, nil)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	e.m, err = rootfs.New(filepath.Join(dir, "rootfs"), st, log)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// checkNoMounts fails the test if anything is still mounted under dir when
// it ends.
func checkNoMounts(t *testing.T, dir string) {
	t.Cleanup(func() {
		b, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir) {
				t.Errorf("left mounted: %s", f[4])
			}
		}
	})
}

func TestPrepareMergesLayers(t *testing.T) {
	e := setup(t)
	r, err := e.m.Prepare(e.multi, "c1")
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	t.Cleanup(func() { _ = e.m.Release("c1") })

	read := func(rel string) string {
		b, err := os.ReadFile(filepath.Join(r.Path, rel))
		if err != nil {
			t.Errorf("read %s: %v", rel, err)
		}
		return string(b)
	}
	if read("data/a.txt") != "a\n" || read("data/a-link") != "a\n" || read("data/c.txt") != fixtures.MultilayerMessage {
		t.Error("merged view lacks layer 2 or 3 files")
	}
	if _, err := os.Lstat(filepath.Join(r.Path, "data/b.txt")); !os.IsNotExist(err) {
		t.Errorf("data/b.txt is visible through its whiteout (%v)", err)
	}
	ents, err := os.ReadDir(filepath.Join(r.Path, "opt/old"))
	if err != nil || len(ents) != 1 || ents[0].Name() != "new.txt" {
		t.Errorf("opt/old is not opaque: %v %v", ents, err)
	}
	// The root filesystem runs programs.
	out, err := exec.Command("chroot", r.Path, "/bin/sh", "-c", "cat /data/c.txt; echo written > /tmp/new").CombinedOutput()
	if err != nil || string(out) != fixtures.MultilayerMessage {
		t.Errorf("chroot sh: %q, %v", out, err)
	}
	// Writes go to the container's upper dir, never into a shared layer.
	if _, err := os.Stat(filepath.Join(filepath.Dir(r.Path), "upper/tmp/new")); err != nil {
		t.Errorf("write not in the upper dir: %v", err)
	}
	for _, l := range e.multi.Layers {
		if _, err := os.Stat(filepath.Join(e.st.LayerPath(l.DiffID), "tmp/new")); err == nil {
			t.Errorf("write reached layer %s", l.DiffID)
		}
	}

	// Idempotent for the same image, a conflict for another.
	again, err := e.m.Prepare(e.multi, "c1")
	if err != nil || again.Path != r.Path {
		t.Errorf("second Prepare: %v, %v", again.Path, err)
	}
	if _, err := e.m.Prepare(e.bb, "c1"); !errors.Is(err, errkind.Conflict) {
		t.Errorf("Prepare with another image = %v, want Conflict", err)
	}
	inUse, err := e.m.InUseLayers()
	if err != nil || len(inUse) != 3 {
		t.Errorf("InUseLayers = %v, %v", inUse, err)
	}

	// Two containers of one image share its layers.
	r2, err := e.m.Prepare(e.multi, "c2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.m.Release("c2") })
	if _, err := os.Stat(filepath.Join(r2.Path, "tmp/new")); !os.IsNotExist(err) {
		t.Error("c2 sees c1's write")
	}

	if err := e.m.Release("c1"); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(r.Path)); !os.IsNotExist(err) {
		t.Errorf("container dir still there: %v", err)
	}
	if err := e.m.Release("c1"); err != nil {
		t.Errorf("second Release = %v, want nil", err)
	}
	if _, err := e.m.Get("c1"); !errors.Is(err, errkind.NotFound) {
		t.Errorf("Get after Release = %v", err)
	}
	if err := e.m.Release("c2"); err != nil {
		t.Fatal(err)
	}
}

func TestPrepareKeepsLayersFromPrune(t *testing.T) {
	e := setup(t)
	if _, err := e.m.Prepare(e.multi, "keep"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.m.Release("keep") })
	if err := e.st.Remove(e.multi.Name); err != nil {
		t.Fatal(err)
	}
	res, err := e.st.Prune(e.m.InUseLayers)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Layers) != 0 {
		t.Errorf("prune removed layers %v of a mounted root filesystem", res.Layers)
	}
	if err := e.m.Release("keep"); err != nil {
		t.Fatal(err)
	}
	res, err = e.st.Prune(e.m.InUseLayers)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{e.multi.Layers[1].DiffID.String(), e.multi.Layers[2].DiffID.String()}
	slices.Sort(want)
	var got []string
	for _, d := range res.Layers {
		got = append(got, d.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("after release, prune removed %v, want %v (busybox keeps the base)", got, want)
	}
}

func TestBadContainerIDs(t *testing.T) {
	e := setup(t)
	for _, id := range []string{"", "..", "../x", "a/b", strings.Repeat("x", 129)} {
		if _, err := e.m.Prepare(e.bb, id); !errors.Is(err, errkind.Invalid) {
			t.Errorf("Prepare(%q) = %v, want Invalid", id, err)
		}
	}
}

func TestNewRemovesIncomplete(t *testing.T) {
	e := setup(t)
	if _, err := e.m.Prepare(e.bb, "complete"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.m.Release("complete") })
	half := filepath.Join(e.dir, "rootfs", "half")
	if err := os.MkdirAll(filepath.Join(half, "upper"), 0o700); err != nil {
		t.Fatal(err)
	}
	m2, err := rootfs.New(filepath.Join(e.dir, "rootfs"), e.st, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(half); !os.IsNotExist(err) {
		t.Error("a root filesystem without a record survived a restart")
	}
	if r, err := m2.Get("complete"); err != nil {
		t.Errorf("complete root filesystem lost: %v", err)
	} else if _, err := os.Stat(filepath.Join(r.Path, "bin/busybox")); err != nil {
		t.Errorf("complete root filesystem unmounted: %v", err)
	}
}
