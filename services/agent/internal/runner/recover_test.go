package runner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"zlayer.dev/services/agent/internal/monitor"
	"zlayer.dev/services/agent/internal/netns"
	"zlayer.dev/services/agent/internal/stats"
)

// A new runner on the same node re-adopts running containers, reports one
// that exited while no runner watched with its exit code, and cleans up a
// create that a crash interrupted.
func TestRecover(t *testing.T) {
	tn := newTestNode(t, 24)
	ctx := context.Background()
	for _, id := range []string{"a", "b", "c"} {
		if _, err := tn.rn.Run(ctx, Spec{ID: id, Image: "busybox", Command: []string{"sh", "-c", `trap "exit 42" USR1; sleep 1000 & wait`}}); err != nil {
			t.Fatal(err)
		}
	}
	tn.rn.Close() // the agent goes away; containers and monitors stay

	if err := tn.rn.runc.Kill(ctx, "b", int(syscall.SIGUSR1), nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b's exit file", func() bool {
		_, err := os.Stat(filepath.Join(tn.rn.dir("b"), "exit.json"))
		return err == nil
	})
	// An interrupted create: intent recorded, namespace pinned, address
	// leased, runc container created, then the agent died.
	half := Record{Spec: Spec{ID: "half", Image: "busybox"}, State: StateCreating, Netns: tn.rn.netnsPath("half"), Cgroup: tn.rn.cgroupsPath("half")}
	os.MkdirAll(tn.rn.dir("half"), 0o700)
	if err := tn.rn.save(&half); err != nil {
		t.Fatal(err)
	}
	if err := netns.Create(half.Netns); err != nil {
		t.Fatal(err)
	}
	if _, err := tn.net.Attach(ctx, "half", half.Netns); err != nil {
		t.Fatal(err)
	}
	// Orphans with no record at all.
	if err := netns.Create(tn.rn.netnsPath("orphan")); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(stats.Root, "memory", tn.cfg.CgroupParent, "orphan"), 0o755)

	tn.start(t)
	for id, want := range map[string]State{"a": StateRunning, "b": StateExited, "c": StateRunning} {
		rec, err := tn.rn.Get(id)
		if err != nil || rec.State != want {
			t.Fatalf("%s: %v %v, want %v", id, rec.State, err, want)
		}
	}
	rec, _ := tn.rn.Get("b")
	if rec.Exit == nil || rec.Exit.Code != 42 || rec.Exit.At.IsZero() {
		t.Fatalf("b's exit: %+v", rec.Exit)
	}
	if _, err := tn.rn.Get("half"); err == nil {
		t.Fatal("half-made container still listed")
	}
	// The re-adopted containers are watched: an exit now is seen.
	if err := tn.rn.runc.Kill(ctx, "a", int(syscall.SIGUSR1), nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "a exited", func() bool {
		r, _ := tn.rn.Get("a")
		return r.State == StateExited && r.Exit != nil && r.Exit.Code == 42
	})
	// And stopped.
	if r, err := tn.rn.Stop(ctx, "c", time.Second); err != nil || !r.State.Terminal() {
		t.Fatalf("stop c: %v %v", r.State, err)
	}
	for _, id := range []string{"a", "b", "c"} {
		if err := tn.rn.Remove(ctx, id, false); err != nil {
			t.Fatal(err)
		}
	}
	tn.assertClean(t)
}

// A process allocating past its memory limit is OOM-killed and reported
// as such.
func TestOOMKill(t *testing.T) {
	tn := newTestNode(t, 24)
	ctx := context.Background()
	if _, err := tn.rn.Run(ctx, Spec{ID: "oom", Image: "busybox", Memory: 16 << 20,
		Command: []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "oom exit", func() bool {
		r, _ := tn.rn.Get("oom")
		return r.State == StateExited
	})
	r, _ := tn.rn.Get("oom")
	if !r.Exit.OOMKilled || r.Exit.Signal != int(syscall.SIGKILL) || r.Exit.Code != 137 {
		t.Fatalf("exit %+v, want OOM kill", r.Exit)
	}
	// An exec'd process past the limit is killed too; the container lives
	// and its stats count the kill.
	if _, err := tn.rn.Run(ctx, Spec{ID: "oom2", Image: "busybox", Memory: 16 << 20, Command: []string{"sleep", "1000"}}); err != nil {
		t.Fatal(err)
	}
	code, err := tn.rn.Exec(ctx, "oom2", ExecSpec{Args: []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"}}, ExecIO{Stdout: os.Stderr, Stderr: os.Stderr})
	if err != nil || code != 137 {
		t.Fatalf("exec: %d %v", code, err)
	}
	u, err := tn.rn.Stats("oom2")
	if err != nil || u.OOMKills < 1 {
		t.Fatalf("stats %+v %v", u, err)
	}
}

// Create, start, stop and remove 100 times, without and with a warm pool:
// nothing accumulates. With the pool, once it has refilled, what exists
// besides its idle slots is nothing, and after a graceful stop nothing at
// all.
func TestLeak(t *testing.T) {
	for _, warm := range []int{0, 2} {
		t.Run(fmt.Sprintf("warm=%d", warm), func(t *testing.T) { testLeak(t, warm) })
	}
}

func testLeak(t *testing.T, warm int) {
	tn := newWarmTestNode(t, 24, warm)
	ctx := context.Background()
	before := withoutPool(tn.leftovers(t), tn.waitPool(t, warm))
	fdsBefore := countFDs(t)
	for i := range 100 {
		id := "leak-" + strings.Repeat("x", i%3)
		if _, err := tn.rn.Run(ctx, Spec{ID: id, Image: "busybox", Command: []string{"sleep", "1000"}, Memory: 32 << 20, CPU: 0.5}); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		if _, err := tn.rn.Stop(ctx, id, 0); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		if err := tn.rn.Remove(ctx, id, false); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
	}
	if len(before) != 0 {
		t.Fatalf("leftovers before: %v", before)
	}
	if l := withoutPool(tn.leftovers(t), tn.waitPool(t, warm)); len(l) > 0 {
		t.Fatalf("leftovers besides the warm pool:\n%s", strings.Join(l, "\n"))
	}
	if after := countFDs(t); after > fdsBefore+2 {
		t.Fatalf("file descriptors: %d before, %d after", fdsBefore, after)
	}
	tn.rn.Close() // a graceful stop releases the pool
	tn.assertClean(t)
	if after := countFDs(t); after > fdsBefore+2 {
		t.Fatalf("file descriptors: %d before, %d after", fdsBefore, after)
	}
	if z := zombies(t); len(z) > 0 {
		t.Fatalf("zombie children: %v", z)
	}
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// zombies lists this process's unreaped children.
func zombies(t *testing.T) []string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	self := ") Z " + strconv.Itoa(os.Getpid()) + " "
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), self) {
			out = append(out, string(b))
		}
	}
	return out
}

// A create interrupted after the monitor started but before its
// go-ahead: the record is "creating" with the monitor's pid. The agent's
// end of the gate closes with it, so the monitor exits having made no
// container, and Recover removes the rest (namespace, lease, files).
func TestRecoverBeforeGoAhead(t *testing.T) {
	tn := newTestNode(t, 24)
	ctx := context.Background()
	const id = "gated"
	rec := Record{Spec: Spec{ID: id, Image: "busybox"}, State: StateCreating, Netns: tn.rn.netnsPath(id), Cgroup: tn.rn.cgroupsPath(id)}
	dir := tn.rn.dir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	pd, err := monitor.Start(tn.rn.cfg.Monitor, monitor.Options{
		ID: id, Bundle: dir, Runc: tn.rn.cfg.Runc, RuncRoot: tn.rn.runc.Root, Dir: dir,
		Log: filepath.Join(dir, LogFile), Start: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	rec.MonitorPid, rec.MonitorT0 = pd.Pid, pd.Start
	if err := tn.rn.save(&rec); err != nil {
		t.Fatal(err)
	}
	if err := netns.Create(rec.Netns); err != nil {
		t.Fatal(err)
	}
	if _, err := tn.net.Attach(ctx, id, rec.Netns); err != nil {
		t.Fatal(err)
	}
	tn.rn.Close()
	pd.Abort() // what the agent's exit does to the gate
	if _, err := os.Stat(filepath.Join(dir, monitor.PidFile)); err == nil {
		t.Fatal("the monitor ran runc without a go-ahead")
	}

	tn.start(t)
	if _, err := tn.rn.Get(id); err == nil {
		t.Fatal("interrupted create still listed")
	}
	tn.assertClean(t)
}
