package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"zlayer.dev/services/agent/internal/netns"
)

// poolSlots reads the node's idle warm slots from their files.
func (tn *testNode) poolSlots(t *testing.T) map[string]slot {
	t.Helper()
	dir := filepath.Join(tn.cfg.RunDir, "warm")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]slot{}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue // a file being written
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // taken meanwhile
		}
		var s slot
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatalf("slot file %s: %v", e.Name(), err)
		}
		out[s.ID] = s
	}
	return out
}

// waitPool waits until the pool has n idle slots, and returns them.
func (tn *testNode) waitPool(t *testing.T, n int) map[string]slot {
	t.Helper()
	var s map[string]slot
	eventually(t, 30*time.Second, "a full warm pool", func() bool {
		s = tn.poolSlots(t)
		return len(s) == n && tn.rn.pool.idleCount() == n
	})
	return s
}

// abandon stands in for an agent killed: it stops the runner's goroutines
// without releasing anything.
func (tn *testNode) abandon() {
	tn.rn.pool.close(false)
	tn.rn.cancel()
	tn.rn.bg.Wait()
}

// ownsNetwork reports whether CNI id still has an address lease and a pin.
func (tn *testNode) ownsNetwork(t *testing.T, id string) (lease, pin bool) {
	t.Helper()
	leases, err := tn.net.Leases()
	if err != nil {
		t.Fatal(err)
	}
	_, lease = leases[id]
	_, err = os.Stat(filepath.Join(tn.cfg.RunDir, "netns", id))
	return lease, err == nil
}

// The warm pool: a create takes a slot (its record names the slot's CNI
// id, pin and address before runc runs, and the container has that
// address); the pool refills; a crash with idle, half-taken and taken
// slots leaks nothing (Recover releases the orphans and the interrupted
// create's slot, the running container keeps its own); removal releases a
// taken slot by its CNI id; a graceful stop releases the idle slots.
func TestWarmPool(t *testing.T) {
	tn := newWarmTestNode(t, 24, 2)
	ctx := context.Background()
	first := tn.waitPool(t, 2)
	for id, s := range first {
		if !isPoolID(id) || s.Netns != filepath.Join(tn.cfg.RunDir, "netns", id) || s.A.IP == nil {
			t.Fatalf("slot %+v", s)
		}
		if lease, pin := tn.ownsNetwork(t, id); !lease || !pin {
			t.Fatalf("slot %s: lease %v, pin %v", id, lease, pin)
		}
	}

	rec, err := tn.rn.Run(ctx, Spec{ID: "a", Image: "busybox", Command: []string{"sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	s, ok := first[rec.CNIID]
	if !ok || rec.Netns != s.Netns || rec.IP != s.A.IP.String() {
		t.Fatalf("record %s %s %s, want one of the slots %+v", rec.CNIID, rec.Netns, rec.IP, first)
	}
	if disk, err := load(tn.rn.dir("a")); err != nil || disk.CNIID != rec.CNIID || disk.Netns != rec.Netns || disk.IP != rec.IP {
		t.Fatalf("state file %+v %v", disk, err)
	}
	var out bytes.Buffer
	if code, err := tn.rn.Exec(ctx, "a", ExecSpec{Args: []string{"ip", "-4", "addr", "show", "eth0"}}, ExecIO{Stdout: &out, Stderr: &out}); err != nil || code != 0 {
		t.Fatalf("exec: %d %v %s", code, err, out.String())
	}
	if !strings.Contains(out.String(), "inet "+rec.IP+"/") {
		t.Fatalf("container's eth0 %q, want %s", out.String(), rec.IP)
	}

	// Refilled with new slots.
	second := tn.waitPool(t, 2)
	if _, ok := second[rec.CNIID]; ok {
		t.Fatalf("taken slot %s still in the pool", rec.CNIID)
	}

	// A create interrupted right after its intent (the record names the
	// slot) and one interrupted before (a slot taken, nothing recorded).
	half, ok := tn.rn.pool.take()
	if !ok {
		t.Fatal("no slot")
	}
	halfRec := Record{Spec: Spec{ID: "half", Image: "busybox"}, State: StateCreating, Cgroup: tn.rn.cgroupsPath("half"),
		Netns: half.Netns, CNIID: half.ID, IP: half.A.IP.String()}
	os.MkdirAll(tn.rn.dir("half"), 0o700)
	if err := tn.rn.save(&halfRec); err != nil {
		t.Fatal(err)
	}
	lost, ok := tn.rn.pool.take()
	if !ok {
		t.Fatal("no slot")
	}
	tn.rn.pool.kick()
	third := tn.waitPool(t, 2)
	tn.abandon()

	tn.start(t)
	for id := range third {
		if lease, pin := tn.ownsNetwork(t, id); lease || pin {
			t.Fatalf("idle slot %s after restart: lease %v, pin %v", id, lease, pin)
		}
	}
	for _, id := range []string{half.ID, lost.ID} {
		if lease, pin := tn.ownsNetwork(t, id); lease || pin {
			t.Fatalf("taken slot %s after restart: lease %v, pin %v", id, lease, pin)
		}
	}
	if _, err := tn.rn.Get("half"); err == nil {
		t.Fatal("interrupted create still listed")
	}
	if r, err := tn.rn.Get("a"); err != nil || r.State != StateRunning || r.CNIID != rec.CNIID {
		t.Fatalf("a after restart: %+v %v", r, err)
	}
	if lease, pin := tn.ownsNetwork(t, rec.CNIID); !lease || !pin {
		t.Fatalf("a's network after restart: lease %v, pin %v", lease, pin)
	}
	fourth := tn.waitPool(t, 2)
	for id := range fourth {
		if _, ok := third[id]; ok {
			t.Fatalf("slot %s survived the restart", id)
		}
	}
	if v := tn.veths(); v != 3 {
		t.Fatalf("%d veths, want 3 (a and 2 idle slots)", v)
	}

	if err := tn.rn.Remove(ctx, "a", true); err != nil {
		t.Fatal(err)
	}
	if lease, pin := tn.ownsNetwork(t, rec.CNIID); lease || pin {
		t.Fatalf("a's network after removal: lease %v, pin %v", lease, pin)
	}
	tn.waitPool(t, 2)
	tn.rn.Close() // a graceful stop
	tn.assertClean(t)
}

// A pool of 0 makes nothing; creates run CNI themselves and record no
// slot.
func TestWarmPoolOff(t *testing.T) {
	tn := newTestNode(t, 24)
	rec, err := tn.rn.Run(context.Background(), Spec{ID: "cold", Image: "busybox", Command: []string{"sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	if rec.CNIID != "" || rec.Netns != tn.rn.netnsPath("cold") {
		t.Fatalf("record %s %s", rec.CNIID, rec.Netns)
	}
	if s := tn.poolSlots(t); len(s) != 0 {
		t.Fatalf("slots %v", s)
	}
}

func (tn *testNode) veths() int {
	ents, _ := os.ReadDir(filepath.Join("/sys/class/net", netns.BridgeName(tn.cfg.Node), "brif"))
	return len(ents)
}

// withoutPool drops the idle slots' parts from leftovers: each slot's
// pin (file and mount), file and lease (by its id), and as many veths as
// there are slots.
func withoutPool(l []string, slots map[string]slot) []string {
	var out []string
	veths := len(slots)
	for _, e := range l {
		if strings.HasPrefix(e, "veth: ") && veths > 0 {
			veths--
			continue
		}
		owned := false
		for id := range slots {
			if strings.Contains(e, "/netns/"+id) || strings.HasSuffix(e, "/warm/"+id) || strings.HasPrefix(e, "lease: "+id+" ") {
				owned = true
			}
		}
		if !owned {
			out = append(out, e)
		}
	}
	return out
}

// Two nodes on one host keep their pools apart: a node's restart (its
// sweep) and its graceful stop touch none of the other's slots.
func TestWarmPoolTwoNodes(t *testing.T) {
	a := newWarmTestNode(t, 24, 2)
	b := newWarmTestNode(t, 24, 2)
	slotsB := b.waitPool(t, 2)
	a.waitPool(t, 2)
	a.abandon()
	a.start(t)
	a.waitPool(t, 2)
	a.rn.Close()
	a.assertClean(t)
	for id := range slotsB {
		if lease, pin := b.ownsNetwork(t, id); !lease || !pin {
			t.Fatalf("node b's slot %s after node a's restart and stop: lease %v, pin %v", id, lease, pin)
		}
	}
	if got := b.waitPool(t, 2); len(got) != 2 || b.veths() != 2 {
		t.Fatalf("node b's pool %v, %d veths", got, b.veths())
	}
	for id := range slotsB {
		if _, ok := b.poolSlots(t)[id]; !ok {
			t.Fatalf("node b's slot %s left its pool", id)
		}
	}
}

// cniDir makes a CNI plugin directory like /usr/lib/cni whose bridge
// plugin is script (sh; $REAL is the real bridge plugin, $MARK a file
// next to it the script may use), and returns it with the mark's path.
func cniDir(t *testing.T, script string) (dir, mark string) {
	t.Helper()
	dir = t.TempDir()
	ents, err := os.ReadDir("/usr/lib/cni")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() != "bridge" {
			if err := os.Symlink(filepath.Join("/usr/lib/cni", e.Name()), filepath.Join(dir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	mark = filepath.Join(dir, "mark")
	body := "#!/bin/sh\nREAL=/usr/lib/cni/bridge\nMARK=" + mark + "\n" + script + "\n"
	if err := os.WriteFile(filepath.Join(dir, "bridge"), []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, mark
}

// setPoolTimings shortens the pool's timings for one test (before its
// node is made, so restored after the node is gone).
func setPoolTimings(t *testing.T, attach, closeWait, retry time.Duration) {
	t.Helper()
	a, c, r := warmAttachTimeout, warmCloseWait, warmRetryMin
	warmAttachTimeout, warmCloseWait, warmRetryMin = attach, closeWait, retry
	t.Cleanup(func() { warmAttachTimeout, warmCloseWait, warmRetryMin = a, c, r })
}

// A CNI plugin that hangs on ADD does not hang the runner's Close: the
// pool's ADD is killed after its timeout and close stops waiting; the
// slot being made leaves nothing.
func TestWarmPoolHungCNI(t *testing.T) {
	bin, mark := cniDir(t, `if [ "$CNI_COMMAND" = ADD ]; then touch "$MARK"; exec sleep 1000; fi
exec "$REAL"`)
	setPoolTimings(t, 300*time.Millisecond, 5*time.Second, time.Hour)
	tn := newCNITestNode(t, 24, 1, bin)
	eventually(t, 30*time.Second, "the pool's CNI ADD under way", func() bool {
		_, err := os.Stat(mark)
		return err == nil
	})
	tn.rn.Close() // must return
	tn.assertClean(t)
}

// A fill that fails (a transient CNI error right at startup) does not
// leave the pool empty until some container is removed: the next create
// kicks it, and without any create it is retried after a backoff.
func TestWarmPoolRefillAfterFailure(t *testing.T) {
	// The first ADD fails, every later one succeeds.
	const flaky = `if [ "$CNI_COMMAND" = ADD ] && [ ! -e "$MARK" ]; then
	touch "$MARK"
	echo '{"cniVersion":"1.0.0","code":11,"msg":"transient failure (test)"}'
	exit 1
fi
exec "$REAL"`
	t.Run("kicked by a create", func(t *testing.T) {
		bin, mark := cniDir(t, flaky)
		setPoolTimings(t, 30*time.Second, 30*time.Second, time.Hour) // no retry within the test
		tn := newCNITestNode(t, 24, 1, bin)
		eventually(t, 30*time.Second, "the failed fill", func() bool {
			_, err := os.Stat(mark)
			return err == nil
		})
		eventually(t, 30*time.Second, "the filler idle again", func() bool { return len(tn.rn.pool.kickc) == 0 })
		rec, err := tn.rn.Run(context.Background(), Spec{ID: "kicker", Image: "busybox", Command: []string{"sleep", "1000"}})
		if err != nil {
			t.Fatal(err)
		}
		tn.waitPool(t, 1)
		if err := tn.rn.Remove(context.Background(), rec.ID(), true); err != nil {
			t.Fatal(err)
		}
		tn.rn.Close()
		tn.assertClean(t)
	})
	t.Run("retried", func(t *testing.T) {
		bin, _ := cniDir(t, flaky)
		setPoolTimings(t, 30*time.Second, 30*time.Second, 10*time.Millisecond)
		tn := newCNITestNode(t, 24, 1, bin)
		tn.waitPool(t, 1)
		tn.rn.Close()
		tn.assertClean(t)
	})
}
