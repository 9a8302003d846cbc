package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/agent/internal/bundle"
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

// halfCreate does what Run does up to the monitor's go-ahead, for
// container id running command: namespace and address, root filesystem,
// bundle, a monitor waiting at its gate, and the record ("creating", with
// the monitor's pid).
func (tn *testNode) halfCreate(t *testing.T, id string, command ...string) *monitor.Pending {
	t.Helper()
	ctx := context.Background()
	rec := Record{Spec: Spec{ID: id, Image: "busybox"}, State: StateCreating, Netns: tn.rn.netnsPath(id), Cgroup: tn.rn.cgroupsPath(id)}
	dir := tn.rn.dir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := netns.Create(rec.Netns); err != nil {
		t.Fatal(err)
	}
	if _, err := tn.net.Attach(ctx, id, rec.Netns); err != nil {
		t.Fatal(err)
	}
	root, err := tn.img.Prepare(ctx, "busybox", 0, id)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := bundle.Spec(bundle.Config{
		Rootfs: root.Path, Hostname: id, Image: root.Config, Command: command,
		CgroupsPath: rec.Cgroup, NetnsPath: rec.Netns,
		Files: map[string]string{"/etc/hosts": filepath.Join(dir, "hosts")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hosts"), bundle.Hosts(id, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := bundle.Write(dir, spec); err != nil {
		t.Fatal(err)
	}
	pd, err := monitor.Start(tn.rn.cfg.Monitor, monitor.Options{
		ID: id, Bundle: dir, Runc: tn.rn.cfg.Runc, RuncRoot: tn.rn.runc.Root, Dir: dir,
		Log: filepath.Join(dir, LogFile), LogMax: tn.cfg.LogMax, LogKeep: tn.cfg.LogKeep, Start: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	rec.MonitorPid, rec.MonitorT0 = pd.Pid, pd.Start
	if err := tn.rn.save(&rec); err != nil {
		t.Fatal(err)
	}
	return pd
}

// An agent killed at any moment after a monitor's go-ahead leaks nothing,
// and its restart neither hangs on the container's lifetime nor leaves a
// container running:
//   - "raced": killed right after the go-ahead, its report unread, and
//     restarted at once, while the monitor's runc run may still be under
//     way. The monitor cannot deliver its report, so it deletes the
//     container itself; Recover waits for it, then removes the rest.
//   - "reported": killed after it read the report (the container runs)
//     but before it recorded the container as running. Recover deletes
//     the container, which ends the monitor.
func TestRecoverAfterGoAhead(t *testing.T) {
	tn := newTestNode(t, 24)
	raced := tn.halfCreate(t, "raced", "sleep", "1000")
	reported := tn.halfCreate(t, "reported", "sleep", "1000")
	if _, err := reported.Begin(context.Background()); err != nil {
		t.Fatal(err)
	}
	raced.Go()
	tn.abandon()
	raced.Close() // what the agent's death does to its pipe ends
	reported.Close()

	tn.start(t) // returns only once both monitors are gone
	for _, id := range []string{"raced", "reported"} {
		if _, err := tn.rn.Get(id); err == nil {
			t.Fatalf("interrupted create %s still listed", id)
		}
	}
	tn.assertClean(t)
}

// A Run whose context ends after the monitor's go-ahead (Begin gives up
// while runc runs) fails and leaves nothing: the monitor, unable to
// report, deletes the container it made, and the undo waits for it before
// it removes the rootfs, directory and network.
func TestRunCancelledAfterGoAhead(t *testing.T) {
	tn := newWarmTestNode(t, 24, 1) // a warm slot: no CNI that the cancel would fail first
	tn.waitPool(t, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := tn.rn.Run(context.WithValue(ctx, cancelInPrepare{}, cancel),
		Spec{ID: "cancelled", Image: "busybox", Command: []string{"sleep", "1000"}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("run: %v, want context.Canceled", err)
	}
	if _, err := tn.rn.Get("cancelled"); err == nil {
		t.Fatal("failed create still listed")
	}
	if l := withoutPool(tn.leftovers(t), tn.waitPool(t, 1)); len(l) > 0 {
		t.Fatalf("leftovers besides the warm pool:\n%s", strings.Join(l, "\n"))
	}
	if z := zombies(t); len(z) > 0 {
		t.Fatalf("zombie children: %v", z)
	}
}

// Recover runs once per runner: a second call is refused, and the warm
// pool keeps one filler (a second start is a no-op).
func TestRecoverTwice(t *testing.T) {
	tn := newWarmTestNode(t, 24, 1)
	if err := tn.rn.Recover(context.Background()); !errors.Is(err, errkind.Precondition) {
		t.Fatalf("second Recover: %v, want Precondition", err)
	}
	tn.rn.pool.start()
	tn.waitPool(t, 1)
	tn.rn.Close()
	tn.assertClean(t)
}

// A monitor whose report cannot be delivered (its agent died after the
// go-ahead) deletes the container it made and exits by itself, with no
// agent to clean up after it.
func TestMonitorWithdrawsUnreported(t *testing.T) {
	tn := newTestNode(t, 24)
	const id = "unreported"
	pd := tn.halfCreate(t, id, "sleep", "1000")
	pd.Go()
	pd.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pd.Wait(ctx); err != nil {
		t.Fatalf("the monitor did not exit: %v", err)
	}
	if _, err := tn.rn.runc.State(context.Background(), id); err == nil {
		t.Fatal("the container is still there")
	}
	b, _ := os.ReadFile(filepath.Join(tn.rn.dir(id), monitor.StderrFile))
	if !strings.Contains(string(b), "deleting the container") {
		t.Fatalf("monitor stderr %q, want it to say it deleted the container", b)
	}
	tn.abandon()
	tn.start(t) // removes the rest of the interrupted create
	tn.assertClean(t)
}

// An interrupted create whose monitor will not exit (here a process that
// is no monitor at all stands in for one whose runc hangs) holds up
// Recover only for a bounded time, and nothing it may use is removed
// under it: the record is kept as lost, with its network, and a removal
// finishes the cleanup once it has gone.
func TestRecoverMonitorStuck(t *testing.T) {
	tries, wait := endMonitorTries, endMonitorWait
	endMonitorTries, endMonitorWait = 2, 50*time.Millisecond
	t.Cleanup(func() { endMonitorTries, endMonitorWait = tries, wait })
	tn := newTestNode(t, 24)
	ctx := context.Background()
	const id = "stuck"
	stuck := exec.Command("sleep", "1000")
	if err := stuck.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stuck.Process.Kill(); stuck.Wait() })
	t0, err := monitor.StartTime(stuck.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	rec := Record{Spec: Spec{ID: id, Image: "busybox"}, State: StateCreating, Netns: tn.rn.netnsPath(id), Cgroup: tn.rn.cgroupsPath(id),
		MonitorPid: stuck.Process.Pid, MonitorT0: t0}
	if err := os.MkdirAll(tn.rn.dir(id), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := tn.rn.save(&rec); err != nil {
		t.Fatal(err)
	}
	if err := netns.Create(rec.Netns); err != nil {
		t.Fatal(err)
	}
	if _, err := tn.net.Attach(ctx, id, rec.Netns); err != nil {
		t.Fatal(err)
	}
	tn.abandon()

	tn.start(t)
	got, err := tn.rn.Get(id)
	if err != nil || got.State != StateLost || !strings.Contains(got.Reason, "monitor did not exit") {
		t.Fatalf("record %+v %v, want lost", got, err)
	}
	if disk, err := load(tn.rn.dir(id)); err != nil || disk.State != StateLost {
		t.Fatalf("state file %+v %v", disk, err)
	}
	if lease, pin := tn.ownsNetwork(t, id); !lease || !pin {
		t.Fatalf("network removed under a live monitor: lease %v, pin %v", lease, pin)
	}
	stuck.Process.Kill()
	stuck.Wait()
	if err := tn.rn.Remove(ctx, id, false); err != nil {
		t.Fatal(err)
	}
	tn.assertClean(t)
}
