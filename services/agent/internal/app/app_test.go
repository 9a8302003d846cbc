package app_test

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gorunc "github.com/containerd/go-runc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
)

func webSpec(id string) *agentv1.ReplicaSpec {
	return &agentv1.ReplicaSpec{
		Id: id, Image: demoHTTPRef,
		Identity:  &agentv1.ReplicaIdentity{Deployment: "demo", Service: "web"},
		Endpoints: []*agentv1.Endpoint{{Name: "http", Protocol: "http", Port: 80}},
	}
}

// The demo image serves its page on the container's address; exec, logs
// -f, stats and the cgroup limits work.
func TestDemoHTTP(t *testing.T) {
	a := startAgent(t)
	ctx := context.Background()
	spec := webSpec("web-0")
	spec.Resources = &agentv1.Resources{Cpu: 0.25, MemoryBytes: 64 << 20}
	r := a.run(spec)
	if r.GetState() != agentv1.ReplicaState_REPLICA_STATE_RUNNING || r.GetIp() == "" {
		t.Fatalf("replica %v", r)
	}
	url := "http://" + r.GetIp() + "/"
	var body string
	eventually(t, 10*time.Second, "the page", func() bool {
		b, err := get(url)
		body = b
		return err == nil
	})
	if !strings.Contains(body, "ZLayer demo") {
		t.Fatalf("page %q", body)
	}

	// logs -f: httpd -v logs each response on stderr. Following with tail
	// 0 shows only what comes after the call.
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	zero := int32(0)
	ls, err := a.c.StreamLogs(lctx, &agentv1.StreamLogsRequest{Id: "web-0", Follow: true, Tail: &zero})
	if err != nil {
		t.Fatal(err)
	}
	// The stream is set up on the agent's side after the call returns: a
	// request made at once could land before the follow begins. So requests
	// go on until one shows up in the followed log.
	reqDone := make(chan struct{})
	defer close(reqDone)
	go func() {
		for {
			get("http://" + r.GetIp() + "/health")
			select {
			case <-reqDone:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	eventually(t, 10*time.Second, "the request in the followed log", func() bool {
		m, err := ls.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range m.GetEntries() {
			if strings.Contains(string(e.GetText()), "response:200") && e.GetStream() == agentv1.LogStream_LOG_STREAM_STDERR {
				return true
			}
		}
		return false
	})

	// exec with exit code passthrough
	out, code := execIn(t, a, "web-0", "sh", "-c", "cat /var/www/health; exit 5")
	if out != "ok\n" || code != 5 {
		t.Fatalf("exec: %q, code %d", out, code)
	}

	// cpu limit in the cgroup
	q, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/cpu/zlayer", a.node, "web-0", "cpu.cfs_quota_us"))
	if err != nil || strings.TrimSpace(string(q)) != "25000" {
		t.Fatalf("cfs quota %q %v", q, err)
	}
	st, err := a.c.GetStats(ctx, &agentv1.GetStatsRequest{Ids: []string{"web-0"}})
	if err != nil || len(st.GetStats()) != 1 || st.GetStats()[0].GetMemoryLimitBytes() != 64<<20 || st.GetStats()[0].GetCpuLimit() != 0.25 {
		t.Fatalf("stats %v %v", st, err)
	}

	// Stop: httpd as pid 1 ignores SIGTERM, so the grace ends in SIGKILL.
	sr, err := a.c.StopReplica(ctx, &agentv1.StopReplicaRequest{Id: "web-0", Grace: durationpb.New(200 * time.Millisecond)})
	if err != nil || sr.GetReplica().GetState() != agentv1.ReplicaState_REPLICA_STATE_EXITED || sr.GetReplica().GetExit().GetSignal() != int32(syscall.SIGKILL) {
		t.Fatalf("stop: %v %v", sr, err)
	}
	if _, err := a.c.RemoveReplica(ctx, &agentv1.RemoveReplicaRequest{Id: "web-0"}); err != nil {
		t.Fatal(err)
	}
	if l := a.leftoversBesidesPool(); len(l) > 1 { // the node's bridge stays
		t.Fatalf("leftovers: %v", l)
	}
}

// execIn runs a command through the Exec RPC and returns stdout+stderr and
// the exit code.
func execIn(t *testing.T, a *agent, id string, args ...string) (string, int) {
	t.Helper()
	st, err := a.c.Exec(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&agentv1.ExecRequest{Input: &agentv1.ExecRequest_Start{Start: &agentv1.ExecStart{Id: id, Args: args}}}); err != nil {
		t.Fatal(err)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for {
		m, err := st.Recv()
		if err != nil {
			t.Fatalf("exec: %v (output %q)", err, out.String())
		}
		switch o := m.GetOutput().(type) {
		case *agentv1.ExecResponse_Stdout:
			out.Write(o.Stdout)
		case *agentv1.ExecResponse_Stderr:
			out.Write(o.Stderr)
		case *agentv1.ExecResponse_ExitCode:
			if _, err := st.Recv(); !errors.Is(err, io.EOF) {
				t.Fatalf("after exit code: %v", err)
			}
			return out.String(), int(o.ExitCode)
		}
	}
}

// A process past its memory limit is OOM-killed and reported so.
func TestOOM(t *testing.T) {
	a := startAgent(t)
	a.run(&agentv1.ReplicaSpec{Id: "hog", Image: busyboxRef,
		Command:   &agentv1.Argv{Values: []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"}},
		Resources: &agentv1.Resources{MemoryBytes: 16 << 20}})
	var r *agentv1.Replica
	eventually(t, 20*time.Second, "the OOM kill", func() bool {
		g, err := a.c.GetReplica(context.Background(), &agentv1.GetReplicaRequest{Id: "hog"})
		r = g.GetReplica()
		return err == nil && r.GetState() == agentv1.ReplicaState_REPLICA_STATE_EXITED
	})
	if !r.GetExit().GetOomKilled() || r.GetExit().GetCode() != 137 {
		t.Fatalf("exit %v, want an OOM kill", r.GetExit())
	}
}

// SIGKILL the agent with 3 containers running: they keep serving; one
// exits while the agent is down; the restarted agent re-adopts the others
// and reports that one's exit code.
func TestAgentCrash(t *testing.T) {
	a := startAgent(t)
	ctx := context.Background()
	var ips []string
	for _, id := range []string{"web-a", "web-b"} {
		ips = append(ips, a.run(webSpec(id)).GetIp())
	}
	a.run(&agentv1.ReplicaSpec{Id: "worker", Image: busyboxRef,
		Command: &agentv1.Argv{Values: []string{"sh", "-c", `trap "exit 42" USR1; echo working; sleep 100000 & wait`}}})
	for _, ip := range ips {
		eventually(t, 10*time.Second, "web up", func() bool { _, err := get("http://" + ip + "/"); return err == nil })
	}

	a.stop(syscall.SIGKILL)
	for _, ip := range ips {
		if _, err := get("http://" + ip + "/health"); err != nil {
			t.Fatalf("%s after the agent died: %v", ip, err)
		}
	}
	rc := &gorunc.Runc{Root: filepath.Join(a.runDir, "agent", "runc")}
	if err := rc.Kill(ctx, "worker", int(syscall.SIGUSR1), nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the worker's exit record", func() bool {
		_, err := os.Stat(filepath.Join(a.dataDir, "containers", "worker", "exit.json"))
		return err == nil
	})

	a.start()
	l, err := a.c.ListReplicas(ctx, &agentv1.ListReplicasRequest{})
	if err != nil || len(l.GetReplicas()) != 3 {
		t.Fatalf("list after restart: %v %v", l, err)
	}
	for _, r := range l.GetReplicas() {
		switch r.GetSpec().GetId() {
		case "worker":
			if r.GetState() != agentv1.ReplicaState_REPLICA_STATE_EXITED || r.GetExit().GetCode() != 42 || r.GetExit().GetExitedAt() == nil {
				t.Fatalf("worker: %v", r)
			}
		default:
			if r.GetState() != agentv1.ReplicaState_REPLICA_STATE_RUNNING {
				t.Fatalf("%s: %v", r.GetSpec().GetId(), r)
			}
		}
	}
	// Re-adopted: logs, exec and stop work on them.
	if out, code := execIn(t, a, "web-a", "cat", "/var/www/health"); out != "ok\n" || code != 0 {
		t.Fatalf("exec after restart: %q %d", out, code)
	}
	ls, err := a.c.StreamLogs(ctx, &agentv1.StreamLogsRequest{Id: "worker"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := ls.Recv()
	if err != nil || len(m.GetEntries()) == 0 || string(m.GetEntries()[0].GetText()) != "working" {
		t.Fatalf("worker logs: %v %v", m, err)
	}
	sr, err := a.c.StopReplica(ctx, &agentv1.StopReplicaRequest{Id: "web-b", Grace: durationpb.New(0)})
	if err != nil || sr.GetReplica().GetState() != agentv1.ReplicaState_REPLICA_STATE_EXITED {
		t.Fatalf("stop re-adopted: %v %v", sr, err)
	}
}

// Bad image, bad command and a runc failure are clear errors with the
// right codes, and leave nothing behind.
func TestFailures(t *testing.T) {
	a := startAgent(t)
	tests := []struct {
		name string
		spec *agentv1.ReplicaSpec
		code codes.Code
		msg  string
	}{
		{"missing image", &agentv1.ReplicaSpec{Id: "f1", Image: strings.Replace(busyboxRef, "busybox", "nosuch", 1)}, codes.NotFound, "nosuch"},
		{"missing entrypoint", &agentv1.ReplicaSpec{Id: "f2", Image: busyboxRef, Command: &agentv1.Argv{Values: []string{"/bin/nosuch"}}}, codes.InvalidArgument, "no such executable file in the image"},
		{"exec format error", &agentv1.ReplicaSpec{Id: "f3", Image: busyboxRef, Command: &agentv1.Argv{Values: []string{"/etc/passwd"}}}, codes.InvalidArgument, "no such executable"},
		{"invalid limits", &agentv1.ReplicaSpec{Id: "f4", Image: busyboxRef, Resources: &agentv1.Resources{MemoryBytes: 1000}}, codes.InvalidArgument, "below the minimum"},
		{"runc failure", &agentv1.ReplicaSpec{Id: "f5", Image: brokenRef}, codes.Unknown, "runc run failed: unable to start container process"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.c.RunReplica(context.Background(), &agentv1.RunReplicaRequest{Spec: tt.spec})
			if status.Code(err) != tt.code || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %v, want %v containing %q", err, tt.code, tt.msg)
			}
			if l := a.leftoversBesidesPool(); len(l) > 1 { // the node's bridge stays
				t.Fatalf("leftovers: %v", l)
			}
		})
	}
}

// An agent whose runc is missing refuses to start, saying so.
func TestRuncMissing(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(filepath.Join(binDir, "zlayer-agent"), "--node", "norunc", "--run-dir", filepath.Join(dir, "run"),
		"--data-dir", filepath.Join(dir, "data"), "--log-format", "console", "--container-cidr", "10.214.251.0/24",
		"--registry-socket", filepath.Join(dir, "none.sock"), "--runc", "/nonexistent/runc")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(string(out), `runc "/nonexistent/runc"`) {
		t.Fatalf("agent without runc: %v\n%s", err, out)
	}
	exec.Command("iptables", "-w", "-t", "nat", "-D", "POSTROUTING", "-s", "10.214.251.0/24", "!", "-d", "10.214.251.0/24",
		"-m", "comment", "--comment", "zlayer norunc", "-j", "MASQUERADE").Run()
}

// 100 create/start/stop/remove cycles through the API, with real images,
// leave nothing behind: while the agent runs, nothing besides its full
// warm pool; once it has stopped, nothing but the node's bridge.
func TestLeak(t *testing.T) {
	a := startAgent(t)
	ctx := context.Background()
	a.run(webSpec("warmup"))
	if _, err := a.c.RemoveReplica(ctx, &agentv1.RemoveReplicaRequest{Id: "warmup", Force: true}); err != nil {
		t.Fatal(err)
	}
	before := a.leftoversBesidesPool()
	fds := countFDs(a.cmd.Process.Pid)
	for i := range 100 {
		id := "leak"
		a.run(&agentv1.ReplicaSpec{Id: id, Image: busyboxRef, Command: &agentv1.Argv{Values: []string{"sleep", "1000"}},
			Resources: &agentv1.Resources{Cpu: 0.5, MemoryBytes: 32 << 20}})
		if _, err := a.c.StopReplica(ctx, &agentv1.StopReplicaRequest{Id: id, Grace: durationpb.New(0)}); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		if _, err := a.c.RemoveReplica(ctx, &agentv1.RemoveReplicaRequest{Id: id}); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
	}
	after := a.leftoversBesidesPool()
	if strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Fatalf("before:\n%s\nafter:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
	if n := countFDs(a.cmd.Process.Pid); n > fds+2 {
		t.Fatalf("agent file descriptors: %d before, %d after", fds, n)
	}
	// A graceful stop releases the warm pool: no pin, slot file, lease or
	// veth of it is left, nor anything else but the bridge.
	a.stop(syscall.SIGTERM)
	if l := a.leftovers(); len(l) != 1 || !strings.HasPrefix(l[0], "bridge ") {
		t.Fatalf("after the agent stopped:\n%s", strings.Join(l, "\n"))
	}
}

// The warm pool through the agent process: a start takes a slot (the
// replica gets the slot's address) and the pool refills; the agent is
// killed with idle slots present and the restarted agent releases them
// and makes new ones; the replica keeps its address and its removal
// releases it; a graceful stop releases the pool.
func TestWarmPool(t *testing.T) {
	a := startAgent(t)
	ctx := context.Background()
	first := a.waitPool()
	r := a.run(webSpec("web-0"))
	taken := ""
	for id, ip := range first {
		if ip == r.GetIp() {
			taken = id
		}
	}
	if taken == "" {
		t.Fatalf("replica's address %s is none of the pool's %v", r.GetIp(), first)
	}
	eventually(t, 10*time.Second, "the page", func() bool { _, err := get("http://" + r.GetIp() + "/"); return err == nil })
	second := a.waitPool()
	if _, ok := second[taken]; ok {
		t.Fatalf("taken slot %s still in the pool", taken)
	}

	a.stop(syscall.SIGKILL)
	a.start()
	third := a.waitPool()
	owners := a.leaseOwners()
	for id := range second {
		if _, ok := third[id]; ok || owners[id] {
			t.Fatalf("slot %s of the killed agent is still there (lease %v)", id, owners[id])
		}
		if _, err := os.Stat(filepath.Join(a.runDir, "agent", "netns", id)); err == nil {
			t.Fatalf("slot %s of the killed agent is still pinned", id)
		}
	}
	if !owners[taken] {
		t.Fatalf("the replica's address (slot %s) was released by the restart", taken)
	}
	if _, err := get("http://" + r.GetIp() + "/"); err != nil {
		t.Fatalf("replica after the restart: %v", err)
	}
	if _, err := a.c.RemoveReplica(ctx, &agentv1.RemoveReplicaRequest{Id: "web-0", Force: true}); err != nil {
		t.Fatal(err)
	}
	if a.leaseOwners()[taken] {
		t.Fatalf("the replica's address (slot %s) survived its removal", taken)
	}
	if l := a.leftoversBesidesPool(); len(l) != 1 {
		t.Fatalf("leftovers: %v", l)
	}
	a.stop(syscall.SIGTERM)
	if l := a.leftovers(); len(l) != 1 || !strings.HasPrefix(l[0], "bridge ") {
		t.Fatalf("after the agent stopped:\n%s", strings.Join(l, "\n"))
	}
}

func countFDs(pid int) int {
	ents, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	return len(ents)
}
