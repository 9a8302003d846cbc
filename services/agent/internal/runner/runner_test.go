package runner

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/agent/internal/logs"
	"zlayer.dev/services/agent/internal/stats"
)

func logText(t *testing.T, rn *Runner, id string) string {
	t.Helper()
	p, err := rn.LogPath(id)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := logs.Read(context.Background(), p, logs.ReadOptions{Tail: -1}, func(e logs.Entry) error {
		b.WriteString(string(e.Stream) + ":" + string(e.Text) + "\n")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestRunExecLogsStop(t *testing.T) {
	tn := newTestNode(t, 24)
	ctx := context.Background()
	rec, err := tn.rn.Run(ctx, Spec{
		ID: "web-1", Image: "busybox", Identity: Identity{Deployment: "d", Service: "web", Index: 1},
		Command: []string{"sh", "-c", `trap "exit 7" TERM; echo hello $SECRET $IMAGE_VAR; echo oops >&2; sleep 1000 & wait`},
		Env:     map[string]string{"SECRET": "$E:ZL_TEST_SECRET"},
		CPU:     0.5, Memory: 64 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != StateRunning {
		t.Fatalf("state %v", rec.State)
	}
	_, subnet, _ := net.ParseCIDR(tn.cidr)
	if !subnet.Contains(rec.Addr()) {
		t.Fatalf("ip %s not in %s", rec.IP, tn.cidr)
	}
	eventually(t, 10*time.Second, "logs", func() bool {
		s := logText(t, tn.rn, "web-1")
		return strings.Contains(s, "stdout:hello s3cret 1") && strings.Contains(s, "stderr:oops")
	})
	// cpu limit visible in the cgroup
	q, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/cpu", rec.Cgroup, "cpu.cfs_quota_us"))
	if err != nil || strings.TrimSpace(string(q)) != "50000" {
		t.Fatalf("cfs quota %q, %v", q, err)
	}
	var out, errb bytes.Buffer
	code, err := tn.rn.Exec(ctx, "web-1", ExecSpec{Args: []string{"sh", "-c", "hostname; cat /etc/hosts; echo e >&2; exit 3"}}, ExecIO{Stdout: &out, Stderr: &errb})
	if err != nil || code != 3 {
		t.Fatalf("exec: code %d, %v", code, err)
	}
	if !strings.Contains(out.String(), "web-1") || !strings.Contains(out.String(), rec.IP) || errb.String() != "e\n" {
		t.Fatalf("exec output %q / %q", out.String(), errb.String())
	}
	u, err := tn.rn.Stats("web-1")
	if err != nil || u.MemoryLimit != 64<<20 || u.CPULimit != 0.5 {
		t.Fatalf("stats %+v, %v", u, err)
	}
	// The Prometheus collector reads the same cgroup.
	reg := prometheus.NewRegistry()
	reg.MustRegister(stats.NewCollector(func() []stats.Target {
		return []stats.Target{{ID: "web-1", Deployment: "d", Service: "web", Index: 1, Cgroup: rec.Cgroup}}
	}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			got[mf.GetName()] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	if got["zlayer_container_memory_limit_bytes"] != 64<<20 || got["zlayer_container_cpu_limit_cpus"] != 0.5 || got["zlayer_container_memory_bytes"] <= 0 {
		t.Fatalf("metrics %v", got)
	}
	rec, err = tn.rn.Stop(ctx, "web-1", -1)
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != StateExited || rec.Exit == nil || rec.Exit.Code != 7 {
		t.Fatalf("after stop: %+v %+v", rec, rec.Exit)
	}
	if err := tn.rn.Remove(ctx, "web-1", false); err != nil {
		t.Fatal(err)
	}
	if _, err := tn.rn.Get("web-1"); !errors.Is(err, errkind.NotFound) {
		t.Fatalf("get after remove: %v", err)
	}
	tn.assertClean(t)
}
