package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/agent/internal/bundle"
	"zlayer.dev/services/agent/internal/images"
	"zlayer.dev/services/agent/internal/netns"
	"zlayer.dev/services/agent/internal/stats"
)

var (
	monitorBin string // built once by TestMain
	lowerDir   string // busybox rootfs shared by the local images
)

func TestMain(m *testing.M) {
	if os.Getuid() != 0 {
		fmt.Fprintln(os.Stderr, "runner tests need root (runc, netns, cgroups)")
		os.Exit(1)
	}
	tmp, err := os.MkdirTemp("", "runner-test-")
	if err != nil {
		panic(err)
	}
	monitorBin = filepath.Join(tmp, "zlayer-monitor")
	out, err := exec.Command("go", "build", "-o", monitorBin, "../../cmd/zlayer-monitor").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build monitor: %v\n%s", err, out)
		os.Exit(1)
	}
	lowerDir = filepath.Join(tmp, "lower")
	if err := makeBusyboxRootfs(lowerDir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(tmp)
	os.Exit(code)
}

// makeBusyboxRootfs makes a small userland from busybox-static.
func makeBusyboxRootfs(dir string) error {
	for _, d := range []string{"bin", "etc", "tmp", "www", "proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	b, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("busybox-static: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), b, 0o755); err != nil {
		return err
	}
	list, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return err
	}
	for _, a := range strings.Fields(string(list)) {
		if a != "busybox" {
			os.Symlink("busybox", filepath.Join(dir, "bin", a))
		}
	}
	files := map[string]string{
		"etc/passwd":     "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/www:/bin/sh\n",
		"etc/group":      "root:x:0:\nwww:x:33:\n",
		"www/index.html": "hello from zlayer\n",
		"bin/bad":        "this is not a program\n",
	}
	for p, body := range files {
		if err := os.WriteFile(filepath.Join(dir, p), []byte(body), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// localImages is images.Images over real overlay mounts of the busybox
// rootfs. It stands in for the registry daemon, which these unit tests of
// the runner do not start (the app tests use the real one); it has the
// same contract: NotFound for an unknown image, idempotent Release.
type localImages struct {
	dir     string
	mu      sync.Mutex
	mounted map[string]string
	// etcFile makes image "broken" have /etc as a file, so runc cannot
	// mount /etc/hosts: a real runc failure.
}

// cancelInPrepare is a context key: a context.CancelFunc under it is
// called by localImages.Prepare, so a test can cancel a Run's context at a
// known point (after the network and the monitor were started, before the
// monitor's go-ahead).
type cancelInPrepare struct{}

func (l *localImages) Prepare(ctx context.Context, ref string, p images.Policy, id string) (images.Rootfs, error) {
	if cancel, ok := ctx.Value(cancelInPrepare{}).(context.CancelFunc); ok {
		cancel()
	}
	cfg := bundle.Image{Cmd: []string{"sh"}, Env: []string{"IMAGE_VAR=1"}}
	lower := lowerDir
	switch ref {
	case "busybox":
	case "broken":
		lower = filepath.Join(filepath.Dir(l.dir), "broken-lower")
		os.MkdirAll(filepath.Join(lower, "bin"), 0o755)
		os.WriteFile(filepath.Join(lower, "etc"), []byte("not a directory"), 0o644)
		b, _ := os.ReadFile("/bin/busybox")
		os.WriteFile(filepath.Join(lower, "bin", "sh"), b, 0o755)
	default:
		return images.Rootfs{}, fmt.Errorf("image %s: %w", ref, errkind.NotFound)
	}
	base := filepath.Join(l.dir, id)
	for _, d := range []string{"upper", "work", "merged"} {
		if err := os.MkdirAll(filepath.Join(base, d), 0o755); err != nil {
			return images.Rootfs{}, err
		}
	}
	merged := filepath.Join(base, "merged")
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lower, base, base)
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		os.RemoveAll(base)
		return images.Rootfs{}, fmt.Errorf("mount overlay: %w", err)
	}
	l.mu.Lock()
	l.mounted[id] = merged
	l.mu.Unlock()
	return images.Rootfs{Path: merged, Config: cfg, Digest: "sha256:local"}, nil
}

func (l *localImages) Release(ctx context.Context, id string) error {
	base := filepath.Join(l.dir, id)
	if err := unix.Unmount(filepath.Join(base, "merged"), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return err
	}
	l.mu.Lock()
	delete(l.mounted, id)
	l.mu.Unlock()
	return os.RemoveAll(base)
}

var nodeSeq atomic.Int32

// testNode is one node's runner on a fresh subnet, torn down by Cleanup.
type testNode struct {
	rn   *Runner
	cfg  Config
	net  *netns.Network
	img  *localImages
	cidr string
}

func newTestNode(t *testing.T, cidrBits int) *testNode {
	t.Helper()
	return newWarmTestNode(t, cidrBits, 0)
}

// newWarmTestNode is newTestNode with a warm pool of warm namespaces.
func newWarmTestNode(t *testing.T, cidrBits, warm int) *testNode {
	t.Helper()
	return newCNITestNode(t, cidrBits, warm, "/usr/lib/cni")
}

// newCNITestNode is newWarmTestNode with the CNI plugins in cniBin.
func newCNITestNode(t *testing.T, cidrBits, warm int, cniBin string) *testNode {
	t.Helper()
	n := nodeSeq.Add(1)
	node := fmt.Sprintf("rt%d-%d", os.Getpid()%10000, n)
	base := t.TempDir()
	cidr := fmt.Sprintf("10.213.%d.0/%d", (os.Getpid()+int(n)*7)%250, cidrBits)
	nw, err := netns.New(netns.Config{Node: node, CIDR: cidr, BinDir: cniBin, StateDir: filepath.Join(base, "data", "cni")})
	if err != nil {
		t.Fatal(err)
	}
	if err := nw.Setup(); err != nil {
		t.Fatal(err)
	}
	tn := &testNode{
		net:  nw,
		img:  &localImages{dir: filepath.Join(base, "images"), mounted: map[string]string{}},
		cidr: cidr,
		cfg: Config{
			Node: node, StateDir: filepath.Join(base, "data", "agent"), RunDir: filepath.Join(base, "run"),
			Runc: "runc", Monitor: monitorBin, CgroupParent: "zlayer-test/" + node,
			StopGrace: 5 * time.Second, LogMax: 1 << 20, LogKeep: 1, WarmNetns: warm,
			LookupEnv: func(k string) (string, bool) {
				if k == "ZL_TEST_SECRET" {
					return "s3cret", true
				}
				return "", false
			},
		},
	}
	tn.start(t)
	t.Cleanup(func() {
		ctx := context.Background()
		if tn.rn != nil {
			for _, r := range tn.rn.List() {
				if err := tn.rn.Remove(ctx, r.ID(), true); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			}
			tn.rn.Close()
		}
		if err := nw.Teardown(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		for _, c := range cgroupControllers {
			os.Remove(filepath.Join(stats.Root, c, "zlayer-test", node))
			os.Remove(filepath.Join(stats.Root, c, "zlayer-test"))
		}
		for id := range tn.img.mounted {
			tn.img.Release(ctx, id)
		}
		// A stopped runner's monitors were our children: reap them.
		for {
			if pid, _ := unix.Wait4(-1, nil, unix.WNOHANG, nil); pid <= 0 {
				break
			}
		}
	})
	return tn
}

// start (re)starts the node's runner, as an agent start would.
func (tn *testNode) start(t *testing.T) {
	t.Helper()
	rn, err := New(tn.cfg, zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)), tn.img, tn.net)
	if err != nil {
		t.Fatal(err)
	}
	if err := rn.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	tn.rn = rn
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", d, what)
		case <-tick.C:
		}
	}
}

// leftovers lists what of the node exists besides its known containers'
// parts: mounts, cgroups, netns pins, address leases, runc containers,
// state directories and monitor processes.
func (tn *testNode) leftovers(t *testing.T) []string {
	t.Helper()
	var out []string
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, tn.img.dir) || strings.Contains(l, tn.cfg.RunDir) {
			out = append(out, "mount: "+l)
		}
	}
	for _, c := range cgroupControllers {
		ents, _ := os.ReadDir(filepath.Join(stats.Root, c, tn.cfg.CgroupParent))
		for _, e := range ents {
			if e.IsDir() {
				out = append(out, "cgroup: "+c+"/"+e.Name())
			}
		}
	}
	for _, d := range []string{filepath.Join(tn.cfg.RunDir, "netns"), filepath.Join(tn.cfg.RunDir, "warm"), filepath.Join(tn.cfg.StateDir, "containers"), tn.img.dir} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			out = append(out, "file: "+filepath.Join(d, e.Name()))
		}
	}
	leases, _ := tn.net.Leases()
	for id, ip := range leases {
		out = append(out, fmt.Sprintf("lease: %s %s", id, ip))
	}
	if list, err := tn.rn.runc.List(context.Background()); err == nil {
		for _, c := range list {
			out = append(out, "runc: "+c.ID)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), tn.cfg.StateDir) {
			out = append(out, "process: "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	veths, _ := filepath.Glob("/sys/class/net/" + netns.BridgeName(tn.cfg.Node) + "/brif/*")
	for _, v := range veths {
		out = append(out, "veth: "+filepath.Base(v))
	}
	return out
}

func (tn *testNode) assertClean(t *testing.T) {
	t.Helper()
	if l := tn.leftovers(t); len(l) > 0 {
		t.Fatalf("leftovers:\n%s", strings.Join(l, "\n"))
	}
}
