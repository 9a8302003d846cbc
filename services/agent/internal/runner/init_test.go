package runner

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

// A container with init steps is created first, the steps run in it (its
// network is up, its process not started yet), then it starts; its
// record keeps how the steps went. With and without a warm namespace.
func TestInitSteps(t *testing.T) {
	for _, warm := range []int{0, 1} {
		t.Run(fmt.Sprintf("warm=%d", warm), func(t *testing.T) { testInitSteps(t, warm) })
	}
}

func testInitSteps(t *testing.T, warm int) {
	tn := newWarmTestNode(t, 24, warm)
	ctx := context.Background()
	tn.waitPool(t, warm)
	rec, err := tn.rn.Run(ctx, Spec{ID: "with-init", Image: "busybox", Command: []string{"sleep", "1000"},
		Init: []InitStep{
			// The address is on eth0 when the steps run; the main process
			// (sleep) is not running yet.
			{ID: "net", Action: ActionRun, Command: []string{"sh", "-c", "ip -4 addr show eth0 | grep -q inet && cat /etc/hosts"}},
			{ID: "not-started", Action: ActionRun, Command: []string{"sh", "-c", "! pgrep sleep"}},
		}})
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != StateRunning || rec.IP == "" || len(rec.Init) != 2 || (rec.CNIID != "") != (warm > 0) {
		t.Fatalf("record: %+v", rec)
	}
	for _, r := range rec.Init {
		if r.Outcome != "ok" {
			t.Fatalf("step %s: %+v", r.ID, r)
		}
	}
	if !strings.Contains(rec.Init[0].Output, rec.IP) {
		t.Fatalf("hosts during init lacks %s: %q", rec.IP, rec.Init[0].Output)
	}
	if err := tn.rn.Remove(ctx, "with-init", true); err != nil {
		t.Fatal(err)
	}
	tn.waitPool(t, warm)
	tn.rn.Close()
	tn.assertClean(t)
}
