package cli

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	registryv1 "zlayer.dev/libs/api/zlayer/registry/v1"
	"zlayer.dev/libs/rpc"
	"zlayer.dev/libs/testkit/fixtures"
	"zlayer.dev/libs/testkit/registry"
)

// registryBuildTags are the tags containers/image needs to build without C
// libraries (see docs and the Makefile).
const registryBuildTags = "containers_image_openpgp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper"

// startRegistryDaemon builds zlayer-registry and runs it on a temp run dir,
// reaching the given docker-registry over plain HTTP.
func startRegistryDaemon(t *testing.T, insecure string) (runDir string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "zlayer-registry")
	build := exec.Command("go", "build", "-tags", registryBuildTags, "-o", bin, "zlayer.dev/services/registry/cmd/zlayer-registry")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build zlayer-registry: %v\n%s", err, out)
	}
	runDir = t.TempDir()
	cmd := exec.Command(bin, "--run-dir", runDir, "--data-dir", t.TempDir(), "--node", "test", "--insecure-registry", insecure)
	var logs bytes.Buffer
	cmd.Stderr = &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("zlayer-registry: %v\n%s", err, logs.String())
		}
	})
	cc, err := rpc.Dial(rpc.SocketPath(runDir, "registry"))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := registryv1.NewRegistryServiceClient(cc)
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := c.GetInfo(context.Background(), &registryv1.GetInfoRequest{}); err == nil {
			return runDir
		} else if time.Now().After(deadline) {
			t.Fatalf("zlayer-registry not serving: %v\n%s", err, logs.String())
		}
		<-tick.C
	}
}

func TestImageCommands(t *testing.T) {
	reg := registry.StartT(t, registry.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	base, err := fixtures.BusyboxLayer()
	if err != nil {
		t.Fatal(err)
	}
	img, err := fixtures.Build(ctx, t.TempDir(), reg.Addr, fixtures.Spec{Repo: "cli", Tag: "v1",
		Layers: [][]fixtures.Entry{base, {fixtures.File("etc/cli", 0o644, "cli\n")}}, Config: fixtures.Config{Cmd: []string{"sh"}}})
	if err != nil {
		t.Fatal(err)
	}
	g := &globals{runDir: startRegistryDaemon(t, reg.Addr), getenv: func(string) string { return "" }}

	run := func(stdin string, args ...string) (string, error) {
		t.Helper()
		cmd := newImageCmd(g)
		var out bytes.Buffer
		cmd.SetArgs(args)
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetIn(strings.NewReader(stdin))
		cmd.SilenceUsage, cmd.SilenceErrors = true, true
		err := cmd.ExecuteContext(ctx)
		return out.String(), err
	}

	out, err := run("", "pull", img.Ref)
	if err != nil {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	// Not a terminal: plain lines, one per layer state change.
	if !strings.Contains(out, "pulled "+img.Ref) || !strings.Contains(out, "digest: "+img.Digest) || strings.Count(out, ": done (") != 2 || strings.Contains(out, "\x1b[") {
		t.Errorf("pull output:\n%s", out)
	}
	out, err = run("", "pull", "--policy", "if_not_present", img.Ref)
	if err != nil || !strings.Contains(out, "is up to date") {
		t.Errorf("second pull: %v\n%s", err, out)
	}
	out, err = run("", "ls")
	if err != nil || !strings.Contains(out, img.Ref) || !strings.Contains(out, "sha256:"+strings.TrimPrefix(img.Digest, "sha256:")[:12]) ||
		!strings.HasPrefix(out, "NAME") || !strings.Contains(out, "2026-01-01T00:00:00Z") {
		t.Errorf("ls: %v\n%s", err, out)
	}
	out, err = run("", "inspect", img.Ref)
	if err != nil || !strings.Contains(out, `"diffId"`) || !strings.Contains(out, `"cmd"`) {
		t.Errorf("inspect: %v\n%s", err, out)
	}
	out, err = run("", "pull", reg.Addr+"/absent:v1")
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), reg.Addr+"/absent:v1") {
		t.Errorf("pull of an absent image: %v\n%s", err, out)
	}
	out, err = run("", "pull", "--policy", "sometimes", img.Ref)
	if err == nil || !strings.Contains(err.Error(), "--policy") {
		t.Errorf("bad policy: %v\n%s", err, out)
	}
	out, err = run("", "rm", img.Ref)
	if err != nil || !strings.Contains(out, "removed "+img.Ref) {
		t.Errorf("rm: %v\n%s", err, out)
	}
	out, err = run("", "prune")
	if err != nil || !strings.Contains(out, "removed 4 blobs and 2 layers") {
		t.Errorf("prune: %v\n%s", err, out)
	}
	// The test registry has no auth: any credentials are accepted.
	out, err = run("pw\n", "login", "-u", "bob", "--password-stdin", reg.Addr)
	if err != nil || !strings.Contains(out, "login to "+reg.Addr+" succeeded") {
		t.Errorf("login: %v\n%s", err, out)
	}
	if _, err := run("", "login", "-u", "bob", reg.Addr); err == nil || !strings.Contains(err.Error(), "--password-stdin") {
		t.Errorf("login without a terminal or --password-stdin: %v", err)
	}
}

func TestImageBarShowsBytesAndSpeed(t *testing.T) {
	var out bytes.Buffer
	b := &imageBarProgress{w: &out, start: map[string]time.Time{}}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	layer := func(cur int64, st registryv1.LayerState) []*registryv1.LayerProgress {
		return []*registryv1.LayerProgress{{Digest: "sha256:0123456789abcdef", Size: 10_000_000, Current: cur, State: st}}
	}
	b.update(layer(0, registryv1.LayerState_LAYER_STATE_DOWNLOADING), t0)
	b.update(layer(5_000_000, registryv1.LayerState_LAYER_STATE_DOWNLOADING), t0.Add(2*time.Second))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	last := lines[len(lines)-1]
	for _, want := range []string{"0123456789ab", "5.0MB/10.0MB", "2.5MB/s", "downloading", "[" + strings.Repeat("=", 15) + ">"} {
		if !strings.Contains(last, want) {
			t.Errorf("bar %q lacks %q", last, want)
		}
	}
	if !strings.Contains(out.String(), "\x1b[1A") {
		t.Error("the bar was not redrawn in place")
	}
}
