package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/rpc"
)

// services each daemon must list through reflection, besides its own.
var commonServices = []string{"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"}

func ownService(c string) string {
	return fmt.Sprintf("zlayer.%s.v1.%sService", c, strings.ToUpper(c[:1])+c[1:])
}

func TestFiveDaemonsAnswer(t *testing.T) {
	n := startNode(t)
	for _, c := range components {
		t.Run(c, func(t *testing.T) {
			sock := rpc.SocketPath(n.runDir, c)
			out, code := run(t, "grpcurl", "-plaintext", "unix://"+sock, "list")
			if code != 0 {
				t.Fatalf("grpcurl list: exit %d: %s", code, out)
			}
			for _, want := range append([]string{ownService(c)}, commonServices...) {
				if !strings.Contains(out, want+"\n") {
					t.Errorf("grpcurl list on %s lacks %s:\n%s", sock, want, out)
				}
			}
			out, code = run(t, "grpcurl", "-plaintext", "unix://"+sock, "grpc.health.v1.Health/Check")
			if code != 0 || !strings.Contains(out, `"status": "SERVING"`) {
				t.Errorf("health check: exit %d: %s", code, out)
			}
			out, code = run(t, "grpcurl", "-plaintext", "unix://"+sock, ownService(c)+"/GetInfo")
			if code != 0 {
				t.Fatalf("GetInfo: exit %d: %s", code, out)
			}
			var resp struct {
				Info struct {
					Component, Version, Node string
					Pid                      int
				}
			}
			if err := json.Unmarshal([]byte(out), &resp); err != nil {
				t.Fatalf("GetInfo output: %v\n%s", err, out)
			}
			if resp.Info.Component != c || resp.Info.Node != n.name || resp.Info.Pid == 0 || resp.Info.Version == "" {
				t.Errorf("GetInfo = %+v, want component %s on node %s with a pid and version", resp.Info, c, n.name)
			}
			fi, err := os.Stat(sock)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm()&^0o660 != 0 {
				t.Errorf("socket %s mode %v, want 0660 or stricter", sock, fi.Mode().Perm())
			}
		})
	}

	t.Run("zlctl node status", func(t *testing.T) {
		zlctl := filepath.Join(binDir(t), "zlctl")
		out, code := run(t, zlctl, "--run-dir", n.runDir, "node", "status")
		if code != 0 {
			t.Fatalf("node status: exit %d\n%s", code, out)
		}
		for _, c := range components {
			if !strings.Contains(out, c) {
				t.Errorf("node status lacks %s:\n%s", c, out)
			}
		}
		if strings.Count(out, "serving") != len(components) {
			t.Errorf("node status should show %d serving daemons:\n%s", len(components), out)
		}
		out, code = run(t, zlctl, "--run-dir", n.runDir, "node", "status", "-o", "json")
		var rows []struct{ Component, Status, Node string }
		if err := json.Unmarshal([]byte(out), &rows); err != nil || code != 0 {
			t.Fatalf("node status -o json: exit %d, %v\n%s", code, err, out)
		}
		if len(rows) != len(components) {
			t.Fatalf("got %d rows, want %d", len(rows), len(components))
		}
		for _, r := range rows {
			if r.Status != "serving" || r.Node != n.name {
				t.Errorf("row %+v, want serving on %s", r, n.name)
			}
		}
	})

	t.Run("python stubs", func(t *testing.T) {
		script := filepath.Join(repoRoot(t), "tests", "python", "getinfo.py")
		cmd := exec.Command("/usr/bin/python3", script, rpc.SocketPath(n.runDir, "scheduler"), n.name)
		cmd.Env = append(os.Environ(), "PYTHONPATH="+filepath.Join(repoRoot(t), "libs", "api", "python"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("python stub call: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "component=scheduler node="+n.name) {
			t.Errorf("python output %q", out)
		}
	})

	t.Run("supervisor restarts a killed daemon", func(t *testing.T) {
		sock := rpc.SocketPath(n.runDir, "scheduler")
		before := schedulerPid(t, sock)
		if err := syscall.Kill(before, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "a new scheduler process", func() bool {
			pid, err := tryPid(sock)
			return err == nil && pid != before
		})
	})
}

func schedulerPid(t *testing.T, sock string) int {
	t.Helper()
	pid, err := tryPid(sock)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func tryPid(sock string) (int, error) {
	cc, err := rpc.Dial(sock)
	if err != nil {
		return 0, err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r, err := schedulerv1.NewSchedulerServiceClient(cc).GetInfo(ctx, &schedulerv1.GetInfoRequest{})
	if err != nil {
		return 0, err
	}
	return int(r.GetInfo().GetPid()), nil
}

// TestKillAndSecondCopy starts a daemon directly, kills it with SIGKILL so its
// socket stays behind, starts it again on the same run dir, and checks that a
// second copy is refused with a clear message.
func TestKillAndSecondCopy(t *testing.T) {
	requireRoot(t)
	bin := filepath.Join(binDir(t), "zlayer-scheduler")
	runDir, dataDir := t.TempDir(), t.TempDir()
	sock := rpc.SocketPath(runDir, "scheduler")
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "--run-dir", runDir, "--data-dir", dataDir, "--node", "k1")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		waitServing(t, sock, 30*time.Second, nil)
		return cmd
	}
	first := start()
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("SIGKILL should leave the socket file behind for this test: %v", err)
	}
	second := start()
	if pid, err := tryPid(sock); err != nil || pid != second.Process.Pid {
		t.Fatalf("restarted daemon pid = %d, %v; want %d", pid, err, second.Process.Pid)
	}

	out, code := run(t, bin, "--run-dir", runDir, "--data-dir", t.TempDir(), "--node", "k1")
	if code == 0 {
		t.Fatal("a second copy on the same run dir started")
	}
	want := "held by process " + strconv.Itoa(second.Process.Pid)
	if !strings.Contains(out, want) || !strings.Contains(out, "already running") {
		t.Errorf("second copy said %q; want it to name the running process (%q)", out, want)
	}

	// SIGTERM stops it gracefully and removes the socket.
	if err := second.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := second.Wait(); err != nil {
		t.Errorf("graceful stop exit: %v", err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket still present after SIGTERM: %v", err)
	}
}

func TestNodeStatusReportsDownDaemon(t *testing.T) {
	requireRoot(t)
	runDir := t.TempDir()
	out, code := run(t, filepath.Join(binDir(t), "zlctl"), "--run-dir", runDir, "node", "status")
	if code != 1 {
		t.Errorf("exit code %d with every daemon down, want 1", code)
	}
	sock := rpc.SocketPath(runDir, "agent")
	if !strings.Contains(out, "down") || !strings.Contains(out, sock) {
		t.Errorf("node status should say agent is down and name %s:\n%s", sock, out)
	}
	if strings.Contains(out, "goroutine") || strings.Contains(out, "panic") {
		t.Errorf("node status printed a stack trace:\n%s", out)
	}
}

func TestDevctlDown(t *testing.T) {
	n := startNode(t)
	out, code := run(t, filepath.Join(binDir(t), "devctl"), "down", "--node", n.name, "--run-dir", n.runDir)
	if code != 0 {
		t.Fatalf("devctl down: exit %d: %s", code, out)
	}
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		t.Fatal("devctl up still running after devctl down")
	}
	for _, c := range components {
		if _, err := os.Stat(rpc.SocketPath(n.runDir, c)); !os.IsNotExist(err) {
			t.Errorf("%s socket left after devctl down: %v", c, err)
		}
	}
}

func TestSystemdUnitsVerify(t *testing.T) {
	requireRoot(t)
	bin := binDir(t)
	src := filepath.Join(repoRoot(t), "deploy", "systemd")
	dir := t.TempDir()
	units, err := filepath.Glob(filepath.Join(src, "*@.*"))
	if err != nil || len(units) != len(components)+1 {
		t.Fatalf("want %d template units in %s, found %v (%v)", len(components)+1, src, units, err)
	}
	var args []string
	for _, u := range units {
		data, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		// Verify an instance of each template, with ExecStart pointing at
		// the binaries just built instead of the install location.
		text := strings.ReplaceAll(string(data), "/usr/local/bin/", bin+"/")
		name := strings.Replace(filepath.Base(u), "@.", "@ci1.", 1)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, filepath.Join(dir, name))
	}
	out, code := run(t, "systemd-analyze", append([]string{"verify"}, args...)...)
	if code != 0 || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify: exit %d\n%s", code, out)
	}
}
