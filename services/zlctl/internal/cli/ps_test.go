package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	"zlayer.dev/libs/rpc"
	"zlayer.dev/libs/testkit/fixtures"
	"zlayer.dev/libs/testkit/nodenet"
	"zlayer.dev/libs/testkit/registry"
)

// agentNode is a real zlayer-agent (with its monitor and the registry
// daemon) on a temp run dir, for the container commands' tests.
type agentNode struct {
	g      *globals
	c      agentv1.AgentServiceClient
	image  string
	node   string
	cidr   string
	runDir string
}

func startAgentDaemon(t *testing.T) *agentNode {
	t.Helper()
	if os.Getuid() != 0 {
		t.Fatal("the container commands' tests need root (runc, netns, cgroups)")
	}
	reg := registry.StartT(t, registry.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	base, err := fixtures.BusyboxLayer()
	if err != nil {
		t.Fatal(err)
	}
	img, err := fixtures.Build(ctx, t.TempDir(), reg.Addr, fixtures.Spec{Repo: "busybox", Tag: "latest",
		Layers: [][]fixtures.Entry{base}, Config: fixtures.Config{Cmd: []string{"sh"}, Env: []string{"PATH=/bin"}}})
	if err != nil {
		t.Fatal(err)
	}
	runDir := startRegistryDaemon(t, reg.Addr)
	bin := t.TempDir()
	for _, p := range []string{"zlayer-agent", "zlayer-monitor"} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, p), "zlayer.dev/services/agent/cmd/"+p).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", p, err, out)
		}
	}
	n := &agentNode{
		image:  img.Ref,
		node:   fmt.Sprintf("zlctl%d", os.Getpid()%100000),
		cidr:   fmt.Sprintf("10.215.%d.0/24", os.Getpid()%250),
		runDir: runDir,
	}
	n.g = &globals{runDir: runDir, getenv: func(string) string { return "" }}
	cmd := exec.Command(filepath.Join(bin, "zlayer-agent"), "--node", n.node, "--run-dir", runDir,
		"--data-dir", t.TempDir(), "--container-cidr", n.cidr, "--log-format", "console")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cc, err := rpc.Dial(rpc.SocketPath(runDir, "agent"))
	if err != nil {
		t.Fatal(err)
	}
	n.c = agentv1.NewAgentServiceClient(cc)
	t.Cleanup(func() {
		bg := context.Background()
		if l, err := n.c.ListReplicas(bg, &agentv1.ListReplicasRequest{}); err == nil {
			for _, r := range l.GetReplicas() {
				n.c.RemoveReplica(bg, &agentv1.RemoveReplicaRequest{Id: r.GetSpec().GetId(), Force: true})
			}
		}
		cc.Close()
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("zlayer-agent: %v\n%s", err, logs.String())
		}
		// The node's NAT rule, isolation rules, bridge and cgroup parent
		// outlive agents by design; the test removes them.
		exec.Command("iptables", "-w", "-t", "nat", "-D", "POSTROUTING", "-s", n.cidr, "!", "-d", n.cidr,
			"-m", "comment", "--comment", "zlayer "+n.node, "-j", "MASQUERADE").Run()
		if brs, _ := filepath.Glob("/sys/class/net/zl*/brif"); len(brs) > 0 {
			for _, b := range brs {
				br := filepath.Base(filepath.Dir(b))
				if ents, _ := os.ReadDir(b); len(ents) == 0 && bridgeOwner(br, n.node) {
					if err := nodenet.RemoveIsolation(br); err != nil {
						t.Errorf("cleanup: %v", err)
					}
					exec.Command("ip", "link", "del", br).Run()
				}
			}
		}
		for _, c := range []string{"blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids", "systemd", "unified"} {
			os.Remove(filepath.Join("/sys/fs/cgroup", c, "zlayer", n.node))
		}
	})
	hc := healthpb.NewHealthClient(cc)
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		r, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
		if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("zlayer-agent not serving: %v\n%s", err, logs.String())
		}
		<-tick.C
	}
}

// bridgeOwner reports whether br is the bridge of node: the bridge's
// address is the gateway of the node's subnet, which only this test uses.
func bridgeOwner(br, node string) bool {
	out, _ := exec.Command("ip", "-br", "addr", "show", "dev", br).Output()
	return strings.Contains(string(out), fmt.Sprintf("10.215.%d.1/", os.Getpid()%250))
}

// run starts a container through the agent API.
func (n *agentNode) run(t *testing.T, id string, argv ...string) *agentv1.Replica {
	t.Helper()
	r, err := n.c.RunReplica(context.Background(), &agentv1.RunReplicaRequest{Spec: &agentv1.ReplicaSpec{
		Id: id, Image: n.image, Command: &agentv1.Argv{Values: argv},
		Identity:  &agentv1.ReplicaIdentity{Deployment: "app", Service: "svc", Index: 0},
		Resources: &agentv1.Resources{Cpu: 0.5, MemoryBytes: 32 << 20},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetReplica()
}

// execute runs one command built by newCmd and returns its outputs.
func execute(t *testing.T, cmd *cobra.Command, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.SetArgs(args)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = cmd.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

func TestPs(t *testing.T) {
	n := startAgentDaemon(t)
	r := n.run(t, "ps-1", "sleep", "1000")
	out, _, err := execute(t, newPsCmd(n.g), "")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "ID") {
		t.Fatalf("ps output:\n%s", out)
	}
	f := strings.Fields(lines[1])
	want := []string{"ps-1", "app/svc/0", n.image, "running", r.GetIp()}
	for i, w := range want {
		if f[i] != w {
			t.Fatalf("column %d = %q, want %q\n%s", i, f[i], w, out)
		}
	}
	if !strings.HasSuffix(f[len(f)-1], "/32.0Mi") || !strings.HasSuffix(f[len(f)-2], "%") {
		t.Fatalf("cpu/mem columns:\n%s", out)
	}
	if _, _, err := execute(t, newPsCmd(n.g), "", "-o", "yaml"); err == nil {
		t.Fatal("ps -o yaml accepted")
	}
}
