package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	"zlayer.dev/libs/rpc"
	"zlayer.dev/libs/testkit/fixtures"
	"zlayer.dev/libs/testkit/nodenet"
	"zlayer.dev/libs/testkit/registry"
	"zlayer.dev/services/agent/internal/netns"
)

// Shared by every test: binaries, a docker-registry with the fixture
// images, and one zlayer-registry daemon the agents get rootfs from.
var (
	binDir      string
	busyboxRef  string
	demoHTTPRef string
	brokenRef   string
	regRunDir   string
	regDataDir  string
	regPid      int // the zlayer-registry daemon
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Getuid() != 0 {
		fmt.Fprintln(os.Stderr, "agent tests need root (runc, netns, cgroups)")
		return 1
	}
	// Monitors orphaned by a killed agent come to us, not to an init that
	// may not reap them; reapOrphans collects them.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	tmp, err := os.MkdirTemp("", "agent-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	binDir = filepath.Join(tmp, "bin")
	for out, pkg := range map[string]string{
		"zlayer-agent":    "zlayer.dev/services/agent/cmd/zlayer-agent",
		"zlayer-monitor":  "zlayer.dev/services/agent/cmd/zlayer-monitor",
		"zlayer-registry": "zlayer.dev/services/registry/cmd/zlayer-registry",
	} {
		// The registry's containers/image needs these tags to build
		// without C libraries.
		b, err := exec.Command("go", "build", "-tags", "containers_image_openpgp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper",
			"-o", filepath.Join(binDir, out), pkg).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, b)
			return 1
		}
	}
	ctx := context.Background()
	reg, err := registry.Start(ctx, registry.Options{Dir: filepath.Join(tmp, "docker-registry")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer reg.Stop()
	base, err := fixtures.BusyboxLayer()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bb, err := fixtures.Build(ctx, filepath.Join(tmp, "fixtures"), reg.Addr, fixtures.Spec{
		Repo: "busybox", Tag: "latest", Layers: [][]fixtures.Entry{base},
		Config: fixtures.Config{Cmd: []string{"sh"}, Env: []string{"PATH=/bin"}},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	web, err := fixtures.Build(ctx, filepath.Join(tmp, "fixtures"), reg.Addr, fixtures.Spec{
		Repo: "demo-http", Tag: "latest", Layers: [][]fixtures.Entry{base, fixtures.DemoHTTPLayer()},
		Config: fixtures.Config{
			Entrypoint:   []string{"/bin/busybox", "httpd", "-f", "-v", "-p", "80", "-h", "/var/www"},
			Env:          []string{"PATH=/bin"},
			ExposedPorts: []string{"80/tcp"},
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// broken has /etc as a file: runc cannot mount /etc/hosts there, a
	// real runc failure.
	bin, err := os.ReadFile("/bin/busybox")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	broken, err := fixtures.Build(ctx, filepath.Join(tmp, "fixtures"), reg.Addr, fixtures.Spec{
		Repo: "broken", Tag: "latest",
		Layers: [][]fixtures.Entry{{fixtures.Dir("bin", 0o755), fixtures.File("bin/sh", 0o755, string(bin)), fixtures.File("etc", 0o644, "not a directory\n")}},
		Config: fixtures.Config{Cmd: []string{"/bin/sh"}},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	busyboxRef, demoHTTPRef, brokenRef = bb.Ref, web.Ref, broken.Ref

	regRunDir, regDataDir = filepath.Join(tmp, "reg-run"), filepath.Join(tmp, "reg-data")
	rcmd := exec.Command(filepath.Join(binDir, "zlayer-registry"), "--node", "agent-e2e", "--run-dir", regRunDir,
		"--data-dir", regDataDir, "--log-format", "console", "--insecure-registry", reg.Addr)
	rlog, _ := os.Create(filepath.Join(tmp, "registry.log"))
	rcmd.Stdout, rcmd.Stderr = rlog, rlog
	if err := rcmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	regPid = rcmd.Process.Pid
	defer func() {
		rcmd.Process.Signal(syscall.SIGTERM)
		rcmd.Wait()
	}()
	if err := waitServing(rpc.SocketPath(regRunDir, "registry"), 30*time.Second); err != nil {
		b, _ := os.ReadFile(rlog.Name())
		fmt.Fprintf(os.Stderr, "zlayer-registry: %v\n%s", err, b)
		return 1
	}
	code := m.Run()
	if code != 0 {
		b, _ := os.ReadFile(rlog.Name())
		fmt.Fprintf(os.Stderr, "--- zlayer-registry log ---\n%s", b)
	}
	return code
}

// waitServing polls a daemon's health service until it serves.
func waitServing(sock string, d time.Duration) error {
	cc, err := rpc.Dial(sock)
	if err != nil {
		return err
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	deadline := time.Now().Add(d)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not serving after %v: %v", sock, d, err)
		}
		<-tick.C
	}
}

var nodeSeq atomic.Int32

// agent is one zlayer-agent process on its own node name and subnet.
type agent struct {
	t       testing.TB
	node    string
	cidr    string
	runDir  string
	dataDir string
	logPath string
	warm    int // --warm-netns
	cmd     *exec.Cmd
	cc      *grpc.ClientConn
	c       agentv1.AgentServiceClient
}

func startAgent(t testing.TB) *agent {
	t.Helper()
	return startAgentWarm(t, 2) // the agent's default
}

// startAgentWarm starts an agent with a warm netns pool of warm.
func startAgentWarm(t testing.TB, warm int) *agent {
	t.Helper()
	n := nodeSeq.Add(1)
	dir := t.TempDir()
	a := &agent{
		t:       t,
		node:    fmt.Sprintf("e2e%d-%d", os.Getpid()%10000, n),
		cidr:    fmt.Sprintf("10.214.%d.0/24", (os.Getpid()+int(n)*11)%250),
		runDir:  filepath.Join(dir, "run"),
		dataDir: filepath.Join(dir, "data"),
		logPath: filepath.Join(dir, "agent.log"),
		warm:    warm,
	}
	a.start()
	t.Cleanup(func() {
		ctx := context.Background()
		if a.cmd == nil {
			a.start()
		}
		if l, err := a.c.ListReplicas(ctx, &agentv1.ListReplicasRequest{}); err == nil {
			for _, r := range l.GetReplicas() {
				if _, err := a.c.RemoveReplica(ctx, &agentv1.RemoveReplicaRequest{Id: r.GetSpec().GetId(), Force: true}); err != nil {
					t.Errorf("cleanup: remove %s: %v", r.GetSpec().GetId(), err)
				}
			}
		}
		a.stop(syscall.SIGTERM)
		// The node's NAT rule, isolation chains and bridge outlive agents
		// by design; the test removes them.
		comment := "zlayer " + a.node
		exec.Command("iptables", "-w", "-t", "nat", "-D", "POSTROUTING", "-s", a.cidr, "!", "-d", a.cidr,
			"-m", "comment", "--comment", comment, "-j", "MASQUERADE").Run()
		for _, l := range a.leftovers() {
			if strings.HasPrefix(l, "bridge") {
				if err := nodenet.RemoveIsolation(strings.Fields(l)[1]); err != nil {
					t.Errorf("cleanup: %v", err)
				}
				exec.Command("ip", "link", "del", strings.Fields(l)[1]).Run()
			}
		}
		for _, c := range []string{"blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids", "systemd", "unified"} {
			os.Remove(filepath.Join("/sys/fs/cgroup", c, "zlayer", a.node))
		}
		reapOrphans()
		if t.Failed() {
			b, _ := os.ReadFile(a.logPath)
			t.Logf("--- agent log ---\n%s", b)
		}
	})
	return a
}

func (a *agent) start() {
	a.t.Helper()
	logf, err := os.OpenFile(a.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		a.t.Fatal(err)
	}
	defer logf.Close()
	a.cmd = exec.Command(filepath.Join(binDir, "zlayer-agent"), "--node", a.node, "--run-dir", a.runDir,
		"--data-dir", a.dataDir, "--log-format", "console", "--container-cidr", a.cidr,
		"--registry-socket", rpc.SocketPath(regRunDir, "registry"), "--stop-grace", "5s",
		"--warm-netns", strconv.Itoa(a.warm))
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	sock := rpc.SocketPath(a.runDir, "agent")
	if err := waitServing(sock, 30*time.Second); err != nil {
		b, _ := os.ReadFile(a.logPath)
		a.t.Fatalf("agent: %v\n%s", err, b)
	}
	if a.cc, err = rpc.Dial(sock); err != nil {
		a.t.Fatal(err)
	}
	a.c = agentv1.NewAgentServiceClient(a.cc)
}

// stop ends the agent process with sig (SIGKILL for a crash).
func (a *agent) stop(sig syscall.Signal) {
	if a.cmd == nil {
		return
	}
	a.cc.Close()
	a.cmd.Process.Signal(sig)
	a.cmd.Wait()
	a.cmd = nil
}

// run starts a replica and fails the test on error.
func (a *agent) run(spec *agentv1.ReplicaSpec) *agentv1.Replica {
	a.t.Helper()
	r, err := a.c.RunReplica(context.Background(), &agentv1.RunReplicaRequest{Spec: spec})
	if err != nil {
		a.t.Fatalf("run %s: %v", spec.GetId(), err)
	}
	return r.GetReplica()
}

// leftovers lists the node's mounts, cgroups, veths, netns pins, address
// leases, container files and monitor processes.
func (a *agent) leftovers() []string {
	var out []string
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, a.runDir) || strings.Contains(l, filepath.Join(regDataDir, "rootfs")) {
			out = append(out, "mount: "+l)
		}
	}
	for _, c := range []string{"cpu", "cpuacct", "memory", "pids", "devices", "freezer", "blkio", "cpuset", "systemd", "unified"} {
		ents, _ := os.ReadDir(filepath.Join("/sys/fs/cgroup", c, "zlayer", a.node))
		for _, e := range ents {
			if e.IsDir() {
				out = append(out, "cgroup: "+c+"/"+e.Name())
			}
		}
	}
	for _, d := range []string{filepath.Join(a.runDir, "agent", "netns"), filepath.Join(a.runDir, "agent", "warm"), filepath.Join(a.dataDir, "containers"), filepath.Join(a.runDir, "agent", "runc")} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			out = append(out, "file: "+filepath.Join(d, e.Name()))
		}
	}
	leases, _ := filepath.Glob(filepath.Join(a.dataDir, "cni", "ipam", "*", "*"))
	for _, l := range leases {
		if base := filepath.Base(l); base != "lock" && !strings.HasPrefix(base, "last_reserved_ip") {
			out = append(out, "lease: "+base)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), a.dataDir) && strings.Contains(string(b), "zlayer-monitor") {
			out = append(out, "process: "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	links, _ := filepath.Glob("/sys/class/net/*/brif")
	for _, l := range links {
		br := filepath.Base(filepath.Dir(l))
		ifs, _ := os.ReadDir(l)
		if strings.HasPrefix(br, "zl") && netns.BridgeName(a.node) == br {
			out = append(out, "bridge "+br)
			for _, i := range ifs {
				out = append(out, "veth: "+i.Name())
			}
		}
	}
	return out
}

// poolSlots returns the agent's idle warm netns slots (CNI id → address)
// from their files in the run directory.
func (a *agent) poolSlots() map[string]string {
	dir := filepath.Join(a.runDir, "agent", "warm")
	ents, _ := os.ReadDir(dir)
	out := map[string]string{}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue // being written
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // taken meanwhile
		}
		var s struct {
			ID string              `json:"cni_id"`
			A  struct{ IP string } `json:"attachment"`
		}
		if err := json.Unmarshal(b, &s); err != nil || s.ID != e.Name() || s.A.IP == "" {
			a.t.Fatalf("slot file %s: %v: %s", e.Name(), err, b)
		}
		out[s.ID] = s.A.IP
	}
	return out
}

// waitPool waits until the agent's warm pool is full again (it refills
// in the background after a start) and returns its slots.
func (a *agent) waitPool() map[string]string {
	a.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := a.poolSlots()
		if len(s) == a.warm {
			return s
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("warm pool: %d idle slots after 30s, want %d", len(s), a.warm)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// leftoversBesidesPool is leftovers once the warm pool is full, without
// the idle slots' parts: their pins (files and mounts) and slot files (by
// CNI id), their leases (by address) and as many veths as there are
// slots. A slot that was taken has no file, so whatever of it is left is
// listed.
func (a *agent) leftoversBesidesPool() []string {
	a.t.Helper()
	slots := a.waitPool()
	var out []string
	veths := len(slots)
	for _, e := range a.leftovers() {
		if strings.HasPrefix(e, "veth: ") && veths > 0 {
			veths--
			continue
		}
		owned := false
		for id, ip := range slots {
			if strings.Contains(e, "/netns/"+id) || strings.HasSuffix(e, "/warm/"+id) || e == "lease: "+ip {
				owned = true
			}
		}
		if !owned {
			out = append(out, e)
		}
	}
	return out
}

// leaseOwners returns the CNI ids holding an address lease.
func (a *agent) leaseOwners() map[string]bool {
	out := map[string]bool{}
	leases, _ := filepath.Glob(filepath.Join(a.dataDir, "cni", "ipam", "*", "*"))
	for _, l := range leases {
		if base := filepath.Base(l); base == "lock" || strings.HasPrefix(base, "last_reserved_ip") {
			continue
		}
		b, _ := os.ReadFile(l)
		id, _, _ := strings.Cut(string(b), "\n")
		out[strings.TrimSpace(id)] = true
	}
	return out
}

// veths is the number of veths on the node's bridge.
func (a *agent) veths() int {
	ifs, _ := os.ReadDir(filepath.Join("/sys/class/net", netns.BridgeName(a.node), "brif"))
	return len(ifs)
}

// reapOrphans reaps monitors that a killed agent left to us.
func reapOrphans() {
	for {
		pid, err := unix.Wait4(-1, nil, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

// get fetches url (a container's address) with a short client timeout.
func get(url string) (string, error) {
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("status %d", resp.StatusCode)
	}
	return string(b), err
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", d, what)
		case <-tick.C:
		}
	}
}
