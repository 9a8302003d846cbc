package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"zlayer.dev/libs/rpc"
	"zlayer.dev/libs/testkit/netlab"
	"zlayer.dev/libs/testkit/nodenet"
)

var components = []string{"scheduler", "agent", "registry", "proxy", "overlay"}

// repoRoot is the repository's top directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// binDir is where `make build` put the binaries.
func binDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("ZLAYER_BIN_DIR")
	if dir == "" {
		dir = filepath.Join(repoRoot(t), "bin")
	}
	for _, b := range []string{"devctl", "zlctl", "zlayer-agent"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			t.Fatalf("binary %s missing in %s: run `make build` (or set ZLAYER_BIN_DIR): %v", b, dir, err)
		}
	}
	return dir
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("these tests need root (make test runs as root)")
	}
}

// syncBuffer is a buffer that devctl's output copier and the test can use
// at the same time.
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

// nodeSeq numbers the nodes this test binary starts.
var nodeSeq int

// node is a local node started by `devctl up` for one test.
type node struct {
	name    string
	runDir  string
	dataDir string
	cmd     *exec.Cmd
	out     *syncBuffer
	done    chan error    // devctl's exit
	exited  chan struct{} // closed when devctl has exited
	cidr    string
	// httpAddr is the proxy's HTTP listener.
	httpAddr string
	// host, when set, is the network namespace the node runs in.
	host    *netlab.Host
	cleanup bool // t.Cleanup registered
}

// freeAddr returns a 127.0.0.1 address with a port free at the moment.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startNode runs `devctl up` on temp dirs and waits until every daemon serves.
func startNode(t *testing.T, extra ...string) *node {
	t.Helper()
	n := &node{
		name:    fmt.Sprintf("t%d", time.Now().UnixNano()%1_000_000),
		runDir:  t.TempDir(),
		dataDir: t.TempDir(),
	}
	n.start(t, extra...)
	return n
}

// start runs `devctl up` for n (inside n.host's network namespace when
// set) and waits until every daemon serves. A node stopped with stop can be
// started again on the same directories.
func (n *node) start(t *testing.T, extra ...string) {
	t.Helper()
	requireRoot(t)
	bin := binDir(t)
	n.out, n.done, n.exited = &syncBuffer{}, make(chan error, 1), make(chan struct{})
	nodeSeq++
	n.httpAddr = freeAddr(t)
	args := []string{"up", "--node", n.name, "--run-dir", n.runDir, "--data-dir", n.dataDir, "--bin-dir", bin,
		// Several test nodes must not share proxy ports or a container subnet.
		"--arg", "proxy:--http-addr=" + n.httpAddr, "--arg", "proxy:--https-addr=127.0.0.1:0",
		"--arg", fmt.Sprintf("agent:--container-cidr=10.%d.0.0/16", 200+nodeSeq%50)}
	// A node's containers outlive its daemons by design; reap removes
	// whatever a test left, and fails the test if that was anything.
	args = append(args, extra...)
	n.cmd = exec.Command(filepath.Join(bin, "devctl"), args...)
	if n.host != nil {
		n.cmd = n.host.Command(context.Background(), filepath.Join(bin, "devctl"), args...)
	}
	n.cmd.Stdout, n.cmd.Stderr = n.out, n.out
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := n.cmd.Wait()
		close(n.exited)
		n.done <- err
	}()
	n.cidr = fmt.Sprintf("10.%d.0.0/16", 200+nodeSeq%50)
	if !n.cleanup {
		n.cleanup = true
		t.Cleanup(func() {
			n.stop(t)
			n.reap(t)
		})
	}
	for _, c := range components {
		waitServing(t, rpc.SocketPath(n.runDir, c), 60*time.Second, n)
	}
}

// stop ends devctl with SIGTERM and waits for it and its daemons.
func (n *node) stop(t *testing.T) {
	t.Helper()
	if n.cmd == nil {
		return
	}
	select {
	case <-n.exited:
		return
	default:
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(60 * time.Second):
		_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
		t.Errorf("devctl did not stop within 60s; output:\n%s", n.out.String())
		<-n.done
	}
}

// logs returns the daemons' logs, for failure messages.
func (n *node) logs() string {
	var b strings.Builder
	b.WriteString("devctl:\n" + n.out.String())
	for _, c := range components {
		data, _ := os.ReadFile(filepath.Join(n.runDir, "log", c+".log"))
		fmt.Fprintf(&b, "\n--- %s.log\n%s", c, data)
	}
	return b.String()
}

func waitServing(t *testing.T, sock string, timeout time.Duration, n *node) {
	t.Helper()
	cc, err := rpc.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return
		}
		if n != nil {
			select {
			case <-n.exited:
				t.Fatalf("devctl exited while waiting for %s:\n%s", sock, n.logs())
			default:
			}
		}
		if time.Now().After(deadline) {
			logs := ""
			if n != nil {
				logs = n.logs()
			}
			t.Fatalf("%s not SERVING after %s: %v\n%s", sock, timeout, err, logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// run runs a command and returns its combined output and exit code.
func run(t *testing.T, name string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(name, args...)
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("%s %v: %v", name, args, err)
		}
		code = ee.ExitCode()
	}
	return string(out), code
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// reap removes what a node left on the host after its daemons stopped —
// containers, monitor processes, mounts, cgroups, its bridge — and reports
// each container, process and mount as a leak: a test that deleted its
// deployments must leave none.
func (n *node) reap(t *testing.T) {
	t.Helper()
	var leaks []string
	runcRoot := filepath.Join(n.runDir, "agent", "runc")
	if out, err := exec.Command("runc", "--root", runcRoot, "list", "-q").Output(); err == nil {
		for _, id := range strings.Fields(string(out)) {
			leaks = append(leaks, "container "+id)
			_ = exec.Command("runc", "--root", runcRoot, "kill", id, "KILL").Run()
			_ = exec.Command("runc", "--root", runcRoot, "delete", "-f", id).Run()
		}
	}
	if out, err := exec.Command("pgrep", "-f", n.dataDir).Output(); err == nil {
		for _, pid := range strings.Fields(string(out)) {
			leaks = append(leaks, "process "+pid)
			_ = exec.Command("kill", "-9", pid).Run()
		}
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	var points []string
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && (strings.HasPrefix(f[1], n.runDir+"/") || strings.HasPrefix(f[1], n.dataDir+"/")) {
			points = append(points, f[1])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		leaks = append(leaks, "mount "+points[i])
		_ = syscall.Unmount(points[i], syscall.MNT_DETACH)
	}
	cgroups, _ := filepath.Glob("/sys/fs/cgroup/*/zlayer/" + n.name)
	for _, cg := range cgroups {
		kids, _ := filepath.Glob(cg + "/*/cgroup.procs")
		for _, k := range kids {
			leaks = append(leaks, "cgroup "+filepath.Dir(k))
			_ = os.Remove(filepath.Dir(k))
		}
		_ = os.Remove(cg)
	}
	if out, err := exec.Command("ip", "-o", "route", "show", n.cidr).Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 2 && f[1] == "dev" {
				if err := nodenet.RemoveIsolation(f[2]); err != nil {
					t.Errorf("node %s: %v", n.name, err)
				}
				_ = exec.Command("ip", "link", "del", f[2]).Run()
			}
		}
	}
	// The node's NAT rule outlives the agent on purpose (its containers
	// would need it); the test's node is gone for good.
	for exec.Command("iptables", "-t", "nat", "-D", "POSTROUTING", "-s", n.cidr, "!", "-d", n.cidr,
		"-m", "comment", "--comment", "zlayer "+n.name, "-j", "MASQUERADE").Run() == nil {
	}
	if len(leaks) > 0 {
		t.Errorf("node %s left behind: %s\n%s", n.name, strings.Join(leaks, ", "), n.logs())
	}
}

// explainOnFailure registers a cleanup (run before the node stops) that
// prints the deployment's status and events when the test has failed.
func (n *node) explainOnFailure(t *testing.T, dep string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		st, _ := n.zlctl(t, "status", dep)
		ev, _ := n.zlctl(t, "events", dep, "--limit", "300")
		routes, _ := n.zlctl(t, "routes")
		nodes, _ := n.zlctl(t, "node", "ls", "-o", "json")
		t.Logf("status of %s:\n%s\nevents:\n%s\nroutes:\n%s\nnodes:\n%s", dep, st, ev, routes, nodes)
	})
}

// waitAgentWithout waits until the node's agent has no replica whose id
// contains prefix: what a deleted deployment ran is gone.
func (n *node) waitAgentWithout(t *testing.T, prefix string) {
	t.Helper()
	eventually(t, 60*time.Second, "the agent of "+n.name+" to run no "+prefix+" replica", func() bool {
		out, code := run(t, "grpcurl", "-plaintext", "unix://"+n.runDir+"/agent.sock", "zlayer.agent.v1.AgentService/ListReplicas")
		return code == 0 && !strings.Contains(out, prefix)
	})
}

// byService returns the deployment's replicas by service.
func (n *node) byService(t *testing.T, dep string) map[string][]replicaJSON {
	t.Helper()
	out := map[string][]replicaJSON{}
	for _, d := range n.status(t, dep).Deployments {
		for _, r := range d.Replicas {
			out[r.Service] = append(out[r.Service], r)
		}
	}
	return out
}
