package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/rpc"
	"zlayer.dev/libs/testkit/fixtures"
	"zlayer.dev/libs/testkit/registry"
)

// demoRegistry starts a registry holding the demo images.
func demoRegistry(t *testing.T) *registry.Registry {
	t.Helper()
	reg := registry.StartT(t, registry.Options{Dir: t.TempDir()})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := fixtures.BuildAndPush(ctx, t.TempDir(), reg.Addr); err != nil {
		t.Fatalf("build demo images: %v", err)
	}
	return reg
}

// demoFile writes a deployment of the demo image; extra is appended to the
// web service's YAML (indented by 4).
func demoFile(t *testing.T, reg *registry.Registry, name, extra string) string {
	return demoFileHealth(t, reg, name, extra, "    health:\n      check:\n        type: http\n        url: /health\n")
}

// demoFileHealth is demoFile with the web service's health section given.
func demoFileHealth(t *testing.T, reg *registry.Registry, name, extra, health string) string {
	t.Helper()
	text := fmt.Sprintf(`version: v1
deployment: %s
services:
  web:
    image:
      name: %s/demo-http:latest
    endpoints:
      - name: http
        protocol: http
        port: 80
        expose: public
    scale:
      mode: adaptive
      min: 1
      max: 5
%s%s`, name, reg.Addr, health, extra)
	path := filepath.Join(t.TempDir(), name+".yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

type replicaJSON struct {
	ID       string `json:"id"`
	Service  string `json:"service"`
	Index    int    `json:"index"`
	Version  string `json:"version"`
	Node     string `json:"node"`
	Phase    string `json:"phase"`
	Health   string `json:"health"`
	IP       string `json:"ip"`
	Stop     bool   `json:"desiredStop"`
	Held     string `json:"held"`
	Restarts int    `json:"restarts"`
}

type statusJSON struct {
	Deployments []struct {
		Name     string `json:"name"`
		Version  string `json:"version"`
		Outcome  string `json:"outcome"`
		Services []struct {
			Name    string `json:"name"`
			Desired int    `json:"desired"`
			Running int    `json:"running"`
			Healthy int    `json:"healthy"`
		} `json:"services"`
		Replicas []replicaJSON `json:"replicas"`
	} `json:"deployments"`
}

func (n *node) zlctl(t *testing.T, args ...string) (string, int) {
	t.Helper()
	return run(t, filepath.Join(binDir(t), "zlctl"), append([]string{"--run-dir", n.runDir}, args...)...)
}

func (n *node) status(t *testing.T, dep string) statusJSON {
	t.Helper()
	out, code := n.zlctl(t, "status", dep, "-o", "json")
	var st statusJSON
	if code != 0 {
		t.Fatalf("zlctl status: exit %d: %s", code, out)
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status json: %v\n%s", err, out)
	}
	return st
}

// running returns the deployment's running, not-stopping replicas.
func (n *node) running(t *testing.T, dep string) []replicaJSON {
	var out []replicaJSON
	for _, d := range n.status(t, dep).Deployments {
		for _, r := range d.Replicas {
			if r.Phase == "REPLICA_PHASE_RUNNING" && !r.Stop {
				out = append(out, r)
			}
		}
	}
	return out
}

func fetch(url string) (string, error) {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

func TestDeployServesPage(t *testing.T) {
	reg := demoRegistry(t)
	n := startNode(t, "--arg", "registry:--insecure-registry="+reg.Addr)
	n.explainOnFailure(t, "web1")

	// Deploy: the rollout completes and the page is served from the replica.
	file := demoFile(t, reg, "web1", "")
	out, code := n.zlctl(t, "deploy", file)
	if code != 0 || !strings.Contains(out, "rolled out") {
		t.Fatalf("deploy: exit %d\n%s\n%s", code, out, n.logs())
	}
	reps := n.running(t, "web1")
	if len(reps) != 1 || reps[0].IP == "" || reps[0].Health != "HEALTH_HEALTHY" {
		t.Fatalf("replicas after deploy: %+v", reps)
	}
	page, err := fetch("http://" + reps[0].IP + "/")
	if err != nil || !strings.Contains(page, "ZLayer") {
		t.Fatalf("page from %s: %q, %v", reps[0].IP, page, err)
	}

	// The proxy serves it too, on the node's HTTP listener.
	eventually(t, 30*time.Second, "the page through the proxy", func() bool {
		page, err := fetch("http://" + n.httpAddr + "/")
		return err == nil && strings.Contains(page, "ZLayer")
	})

	// Scale up and down.
	if out, code := n.zlctl(t, "scale", "web1/web", "3"); code != 0 {
		t.Fatalf("scale: %s", out)
	}
	eventually(t, 60*time.Second, "3 running replicas", func() bool { return len(n.running(t, "web1")) == 3 })
	if out, code := n.zlctl(t, "scale", "web1/web", "9"); code == 0 || !strings.Contains(out, "between 1 and 5") {
		t.Fatalf("scale beyond max: exit %d: %s", code, out)
	}
	if out, code := n.zlctl(t, "scale", "web1/web", "1"); code != 0 {
		t.Fatalf("scale: %s", out)
	}
	eventually(t, 60*time.Second, "1 replica left", func() bool {
		st := n.status(t, "web1")
		return len(st.Deployments) == 1 && len(st.Deployments[0].Replicas) == 1
	})

	// A changed spec rolls out; an unchanged one does nothing.
	file2 := demoFile(t, reg, "web1", "    env:\n      GREETING: hello\n")
	if out, code := n.zlctl(t, "deploy", file2); code != 0 || !strings.Contains(out, "version 2 deployed (changed: web)") {
		t.Fatalf("redeploy: exit %d\n%s", code, out)
	}
	if out, code := n.zlctl(t, "deploy", file2); code != 0 || !strings.Contains(out, "unchanged") {
		t.Fatalf("deploy of the same file: exit %d\n%s", code, out)
	}

	// A version whose process exits at once rolls back.
	bad := demoFile(t, reg, "web1", "    command: [\"/bin/busybox\", \"false\"]\n")
	out, code = n.zlctl(t, "deploy", bad)
	if code == 0 || !strings.Contains(out, "failed") || !strings.Contains(out, "rolled back") {
		t.Fatalf("broken deploy: exit %d (want 1)\n%s", code, out)
	}
	eventually(t, 60*time.Second, "the good version serving again", func() bool {
		r := n.running(t, "web1")
		if len(r) != 1 {
			return false
		}
		_, err := fetch("http://" + r[0].IP + "/health")
		return err == nil
	})
	// A version whose health check fails rolls back too, and is never routed.
	unhealthy := demoFileHealth(t, reg, "web1", "    env:\n      GREETING: unhealthy\n",
		"    health:\n      start_grace: 1s\n      interval: 1s\n      retries: 2\n      check:\n        type: http\n        url: /nope\n")
	out, code = n.zlctl(t, "deploy", unhealthy)
	if code == 0 || !strings.Contains(out, "unhealthy") || !strings.Contains(out, "rolled back") {
		t.Fatalf("unhealthy deploy: exit %d (want 1)\n%s", code, out)
	}
	out, _ = n.zlctl(t, "history", "web1")
	for _, want := range []string{"complete", "failed", "rollback from version 3", "rollback from version 5"} {
		if !strings.Contains(out, want) {
			t.Errorf("history lacks %q:\n%s", want, out)
		}
	}

	// The scheduler itself refuses invalid files (zlctl checks first, but
	// any client can call Deploy): every problem, with file:line:col.
	cc, err := rpc.Dial(rpc.SocketPath(n.runDir, "scheduler"))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = schedulerv1.NewSchedulerServiceClient(cc).Deploy(context.Background(), &schedulerv1.DeployRequest{
		FileName: "raw.yaml", SpecYaml: []byte("version: v1\ndeployment: web1\nservices:\n  web:\n    image: {name: x}\n    scale: {mode: fixed}\n    helth: {}\n"),
	})
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "raw.yaml:6:") || !strings.Contains(st.Message(), "raw.yaml:7:5") {
		t.Errorf("Deploy of an invalid file: %v %q, want InvalidArgument naming raw.yaml:6 and :7:5", st.Code(), st.Message())
	}
	var violations int
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			violations += len(br.FieldViolations)
		}
	}
	if violations != 2 {
		t.Errorf("Deploy error carries %d field violations, want 2", violations)
	}

	// Invalid files are refused before anything is proposed.
	badFile := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(badFile, []byte("version: v1\ndeployment: web1\nservices:\n  web:\n    image: {name: x}\n    scale: {mode: fixed}\n"), 0o644)
	out, code = n.zlctl(t, "deploy", badFile)
	if code != 1 || !strings.Contains(out, "bad.yaml:6:") {
		t.Errorf("invalid deploy: exit %d, want 1 with file:line errors\n%s", code, out)
	}
	out, _ = n.zlctl(t, "history", "web1")
	if strings.Contains(out, "bad.yaml") {
		t.Errorf("an invalid file became a version:\n%s", out)
	}

	// Events tell the story in order.
	out, _ = n.zlctl(t, "events", "web1")
	if i, j := strings.Index(out, "deployed"), strings.Index(out, "rollback"); i < 0 || j < i {
		t.Errorf("events out of order or missing:\n%s", out)
	}

	// A healthy single node is never declared down.
	if out, _ := n.zlctl(t, "events", "--limit", "500"); strings.Contains(out, "node-down") {
		t.Errorf("the node was marked down during the test:\n%s", out)
	}

	// Delete stops everything.
	if out, code := n.zlctl(t, "delete", "web1"); code != 0 || !strings.Contains(out, "deleted") {
		t.Fatalf("delete: exit %d: %s", code, out)
	}
	out, _ = n.zlctl(t, "status")
	if !strings.Contains(out, "no deployments") {
		t.Errorf("status after delete:\n%s", out)
	}
	n.waitAgentWithout(t, "web1")
}

// TestAutoscaleOnRequests sends requests through the node's proxy to an
// adaptive service with a requests-per-second target: it scales up under
// the load and back to its minimum after.
func TestAutoscaleOnRequests(t *testing.T) {
	reg := demoRegistry(t)
	n := startNode(t, "--arg", "registry:--insecure-registry="+reg.Addr, "--arg", "scheduler:--load-interval=1s")
	n.explainOnFailure(t, "auto")
	file := demoFileHealth(t, reg, "auto", "", "")
	text, _ := os.ReadFile(file)
	text = []byte(strings.Replace(string(text), "      max: 5\n", "      max: 3\n      cooldown: 1s\n      targets:\n        rps: 2\n", 1))
	if err := os.WriteFile(file, text, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := n.zlctl(t, "deploy", file); code != 0 {
		t.Fatalf("deploy: exit %d\n%s", code, out)
	}
	desired := func() int {
		st := n.status(t, "auto")
		if len(st.Deployments) != 1 || len(st.Deployments[0].Services) != 1 {
			return -1
		}
		return st.Deployments[0].Services[0].Desired
	}
	// Four clients, each at most 20 requests/s for at most 30 s, to
	// 127.0.0.1 only, until the service has scaled to its maximum: even a
	// busy machine sends far more than the 3 × 2 requests/s that need 3
	// replicas.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := http.Client{Timeout: 2 * time.Second}
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for i := 0; i < 600; i++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if resp, err := c.Get("http://" + n.httpAddr + "/"); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	eventually(t, 30*time.Second, "scaled up to 3 under load", func() bool { return desired() == 3 })
	close(stop)
	wg.Wait()
	eventually(t, 30*time.Second, "back to 1 without load", func() bool { return desired() == 1 })
	events, _ := n.zlctl(t, "events", "auto")
	if !strings.Contains(events, "autoscaler:") {
		t.Errorf("no autoscaler event:\n%s", events)
	}
	if out, code := n.zlctl(t, "delete", "auto"); code != 0 {
		t.Fatalf("delete: %s", out)
	}
}
