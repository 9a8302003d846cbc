package app_test

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	registryv1 "zlayer.dev/libs/api/zlayer/registry/v1"
	"zlayer.dev/libs/rpc"
	"zlayer.dev/libs/testkit/fixtures"
	"zlayer.dev/libs/testkit/registry"
	"zlayer.dev/services/registry/internal/app"
)

// TestDaemonServesTheAgentFlow runs zlayer-registry in-process against a
// real docker-registry and walks the calls the agent and zlctl make:
// PullImage (streamed progress), PrepareRootfs, ReleaseRootfs, List,
// Inspect, Remove, Prune, with the status codes clients decide on.
func TestDaemonServesTheAgentFlow(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (overlay mounts)")
	}
	reg := registry.StartT(t, registry.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	img, err := fixtures.Build(ctx, t.TempDir(), reg.Addr, fixtures.Spec{Repo: "demo-http", Tag: "latest",
		Layers: [][]fixtures.Entry{mustBusybox(t), fixtures.DemoHTTPLayer()},
		Config: fixtures.Config{Entrypoint: []string{"/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/var/www"},
			Env: []string{"PATH=/bin"}, ExposedPorts: []string{"80/tcp"}, WorkingDir: "/var/www", User: "www"}})
	if err != nil {
		t.Fatal(err)
	}

	run, data := t.TempDir(), t.TempDir()
	dctx, dcancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- app.Main(dctx, []string{"--run-dir", run, "--data-dir", data, "--node", "n1", "--insecure-registry", reg.Addr}, func(string) string { return "" })
	}()
	t.Cleanup(func() {
		dcancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	cc, err := rpc.Dial(rpc.SocketPath(run, "registry"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() }) // after the release below, before the daemon stops
	c := registryv1.NewRegistryServiceClient(cc)
	waitServing(t, c)

	stream, err := c.PullImage(ctx, &registryv1.PullImageRequest{Image: img.Ref})
	if err != nil {
		t.Fatal(err)
	}
	var last *registryv1.PullImageResponse
	progress := 0
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("PullImage: %v", err)
		}
		if len(m.GetLayers()) > 0 {
			progress++
		}
		last = m
	}
	if progress == 0 || last.GetImage().GetDigest() != img.Digest || last.GetImage().GetLayerCount() != 2 {
		t.Fatalf("pull stream: %d progress messages, last %v", progress, last)
	}

	prep, err := c.PrepareRootfs(ctx, &registryv1.PrepareRootfsRequest{Image: img.Ref, ContainerId: "web-1"})
	if err != nil {
		t.Fatalf("PrepareRootfs: %v", err)
	}
	cfg := prep.GetConfig()
	if prep.GetImageDigest() != img.Digest || cfg.GetEntrypoint()[1] != "httpd" || cfg.GetExposedPorts()[0] != "80/tcp" ||
		cfg.GetWorkingDir() != "/var/www" || cfg.GetUser() != "www" || cfg.GetEnv()[0] != "PATH=/bin" {
		t.Errorf("PrepareRootfs response: %v", prep)
	}
	if b, err := os.ReadFile(filepath.Join(prep.GetRootfsPath(), "var/www/health")); err != nil || string(b) != "ok\n" {
		t.Errorf("rootfs content: %q %v", b, err)
	}
	if out, err := exec.Command("chroot", prep.GetRootfsPath(), "/bin/busybox", "true").CombinedOutput(); err != nil {
		t.Errorf("run in rootfs: %v %s", err, out)
	}
	t.Cleanup(func() {
		_, _ = c.ReleaseRootfs(context.Background(), &registryv1.ReleaseRootfsRequest{ContainerId: "web-1"})
	})

	ls, err := c.ListImages(ctx, &registryv1.ListImagesRequest{})
	if err != nil || len(ls.GetImages()) != 1 || ls.GetImages()[0].GetName() != img.Ref {
		t.Errorf("ListImages: %v %v", ls, err)
	}
	ins, err := c.InspectImage(ctx, &registryv1.InspectImageRequest{Image: img.Ref})
	if err != nil || len(ins.GetLayers()) != 2 || !strings.HasPrefix(ins.GetLayers()[0].GetDiffId(), "sha256:") {
		t.Errorf("InspectImage: %v %v", ins, err)
	}

	codeOf := func(err error) codes.Code { return status.Code(err) }
	if _, err := c.PrepareRootfs(ctx, &registryv1.PrepareRootfsRequest{Image: reg.Addr + "/absent:1", ContainerId: "x"}); codeOf(err) != codes.NotFound {
		t.Errorf("PrepareRootfs of an absent image: %v", err)
	}
	if _, err := c.PrepareRootfs(ctx, &registryv1.PrepareRootfsRequest{Image: img.Ref, ContainerId: "../x"}); codeOf(err) != codes.InvalidArgument {
		t.Errorf("PrepareRootfs with a bad id: %v", err)
	}
	s2, err := c.PullImage(ctx, &registryv1.PullImageRequest{Image: reg.Addr + "/absent:1"})
	if err == nil {
		_, err = s2.Recv()
	}
	if codeOf(err) != codes.NotFound || !strings.Contains(err.Error(), reg.Addr+"/absent:1") {
		t.Errorf("PullImage of an absent image: %v", err)
	}

	// Removed but mounted: prune keeps the layers, release lets them go.
	if _, err := c.RemoveImage(ctx, &registryv1.RemoveImageRequest{Image: img.Ref}); err != nil {
		t.Fatal(err)
	}
	pr, err := c.PruneImages(ctx, &registryv1.PruneImagesRequest{})
	if err != nil || len(pr.GetRemovedLayers()) != 0 || len(pr.GetRemovedBlobs()) == 0 {
		t.Errorf("prune while mounted: %v %v", pr, err)
	}
	if _, err := c.ReleaseRootfs(ctx, &registryv1.ReleaseRootfsRequest{ContainerId: "web-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(prep.GetRootfsPath()); !os.IsNotExist(err) {
		t.Errorf("rootfs still there after release: %v", err)
	}
	pr, err = c.PruneImages(ctx, &registryv1.PruneImagesRequest{})
	if err != nil || len(pr.GetRemovedLayers()) != 2 || pr.GetFreedBytes() == 0 {
		t.Errorf("prune after release: %v %v", pr, err)
	}
}

func mustBusybox(t *testing.T) []fixtures.Entry {
	l, err := fixtures.BusyboxLayer()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func waitServing(t *testing.T, c registryv1.RegistryServiceClient) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := c.GetInfo(context.Background(), &registryv1.GetInfoRequest{})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon not serving: %v", err)
		}
		<-tick.C
	}
}
