package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestDependsAndPanicPolicies deploys an app whose api waits for its db to
// be healthy, and three services whose process dies, one per on_panic
// policy: restart (a crash loop with backoff), isolate (kept for
// inspection, replaced), shutdown (left stopped).
func TestDependsAndPanicPolicies(t *testing.T) {
	reg := demoRegistry(t)
	n := startNode(t, "--arg", "registry:--insecure-registry="+reg.Addr)
	n.explainOnFailure(t, "life")
	img := reg.Addr + "/demo-http:latest"
	file := filepath.Join(t.TempDir(), "life.yaml")
	text := fmt.Sprintf(`version: v1
deployment: life
services:
  db:
    image: {name: %[1]s}
    command: ["/bin/busybox", "sh", "-c", "sleep 2; exec /bin/busybox httpd -f -p 80 -h /var/www"]
    endpoints: [{name: http, protocol: http, port: 80}]
    scale: {mode: fixed, replicas: 1}
    health:
      start_grace: 10s
      interval: 1s
      check: {type: http, url: /health}
  api:
    image: {name: %[1]s}
    scale: {mode: fixed, replicas: 1}
    depends:
      - service: db
        condition: healthy
        timeout: 1m
  crashy:
    image: {name: %[1]s}
    command: ["/bin/busybox", "sh", "-c", "exit 3"]
    scale: {mode: fixed, replicas: 1}
  isolated:
    image: {name: %[1]s}
    command: ["/bin/busybox", "sh", "-c", "sleep 3; exit 4"]
    scale: {mode: fixed, replicas: 1}
    errors: {on_panic: {action: isolate}}
  flaky:
    image: {name: %[1]s}
    endpoints: [{name: http, protocol: http, port: 80}]
    scale: {mode: fixed, replicas: 1}
    health:
      start_grace: 1s
      interval: 1s
      retries: 2
      check: {type: http, url: /health}
  stopped:
    image: {name: %[1]s}
    command: ["/bin/busybox", "sh", "-c", "sleep 3; exit 5"]
    scale: {mode: fixed, replicas: 1}
    errors: {on_panic: {action: shutdown}}
`, img)
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := n.zlctl(t, "deploy", "--detach", file); code != 0 {
		t.Fatalf("deploy: exit %d\n%s", code, out)
	}

	// api starts only once db is healthy: its start event comes after db's
	// healthy event, and it waited meanwhile.
	eventually(t, 90*time.Second, "api running", func() bool {
		for _, r := range n.running(t, "life") {
			if r.Service == "api" {
				return true
			}
		}
		return false
	})
	events, _ := n.zlctl(t, "events", "life", "--limit", "500")
	dbHealthy := strings.Index(events, "life/db/")
	for _, line := range strings.Split(events, "\n") {
		if strings.Contains(line, "healthy") && strings.Contains(line, "life/db/") && !strings.Contains(line, "unhealthy") {
			dbHealthy = strings.Index(events, line)
			break
		}
	}
	apiStarted := -1
	for _, line := range strings.Split(events, "\n") {
		if strings.Contains(line, "started") && strings.Contains(line, "life/api/") {
			apiStarted = strings.Index(events, line)
			break
		}
	}
	if dbHealthy < 0 || apiStarted < dbHealthy {
		t.Errorf("api started before db was healthy:\n%s", events)
	}
	if !strings.Contains(events, "waiting for db to be healthy") {
		t.Errorf("api's wait for db is not in the events:\n%s", events)
	}

	byService := func() map[string][]replicaJSON { return n.byService(t, "life") }

	// restart: the crash loop restarts in place, with backoff.
	eventually(t, 60*time.Second, "crashy restarted at least 3 times", func() bool {
		rs := byService()["crashy"]
		return len(rs) == 1 && rs[0].Restarts >= 3
	})
	if rs := byService()["crashy"]; len(rs) != 1 {
		t.Errorf("crashy should be restarted in place, not replaced: %+v", rs)
	}

	// isolate: the dead replica is kept (its container too), and a new one
	// takes its place.
	eventually(t, 60*time.Second, "an isolated replica and its replacement", func() bool {
		held, others := 0, 0
		for _, r := range byService()["isolated"] {
			if r.Held == "isolate" {
				held++
			} else if !r.Stop {
				others++
			}
		}
		return held >= 1 && others >= 1
	})

	// shutdown: the dead replica stays stopped and is not replaced.
	eventually(t, 60*time.Second, "the shutdown replica held", func() bool {
		rs := byService()["stopped"]
		return len(rs) == 1 && rs[0].Held == "shutdown"
	})
	if rs := byService()["stopped"]; len(rs) != 1 {
		t.Errorf("a replica left stopped by on_panic: shutdown was replaced: %+v", rs)
	}

	// A health check that starts failing: unhealthy counts as a panic, and
	// the default policy restarts the replica in place, healthy again.
	eventually(t, 60*time.Second, "flaky healthy", func() bool {
		for _, r := range n.running(t, "life") {
			if r.Service == "flaky" && r.Health == "HEALTH_HEALTHY" {
				return true
			}
		}
		return false
	})
	if out, code := n.zlctl(t, "exec", "life/flaky", "--", "/bin/busybox", "rm", "/var/www/health"); code != 0 {
		t.Fatalf("break the service: exit %d: %s", code, out)
	}
	eventually(t, 60*time.Second, "flaky restarted and healthy again", func() bool {
		for _, r := range byService()["flaky"] {
			if r.Health == "HEALTH_HEALTHY" && r.Restarts >= 1 && r.Phase == "REPLICA_PHASE_RUNNING" {
				return true
			}
		}
		return false
	})
	if events, _ := n.zlctl(t, "events", "life", "--limit", "500"); !strings.Contains(events, "unhealthy") {
		t.Errorf("the unhealthy spell is not in the events:\n%s", events)
	}

	if out, code := n.zlctl(t, "delete", "life"); code != 0 {
		t.Fatalf("delete: %s", out)
	}
	n.waitAgentWithout(t, "life-")
}

// TestJobsAndCron runs a job by hand (its output and exit code come back
// through zlctl) and a cron job every 2s whose runs take 3s: runs never
// overlap, and the ones that would are recorded as skipped.
func TestJobsAndCron(t *testing.T) {
	reg := demoRegistry(t)
	n := startNode(t, "--arg", "registry:--insecure-registry="+reg.Addr)
	n.explainOnFailure(t, "jobs")
	img := reg.Addr + "/demo-http:latest"
	file := filepath.Join(t.TempDir(), "jobs.yaml")
	text := fmt.Sprintf(`version: v1
deployment: jobs
services:
  hello:
    rtype: job
    image: {name: %[1]s}
    command: ["/bin/busybox", "sh", "-c", "echo hello from the job; exit 7"]
    endpoints: [{name: run, protocol: http, port: 80, path: /hello, expose: public}]
  tick:
    rtype: cron
    schedule: "@every 2s"
    image: {name: %[1]s}
    command: ["/bin/busybox", "sh", "-c", "sleep 3; echo tick"]
`, img)
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := n.zlctl(t, "deploy", file); code != 0 {
		t.Fatalf("deploy: exit %d\n%s", code, out)
	}

	out, code := n.zlctl(t, "job", "run", "jobs/hello")
	if code != 7 || !strings.Contains(out, "hello from the job") {
		t.Fatalf("job run: exit %d (want 7), output:\n%s", code, out)
	}
	out, _ = n.zlctl(t, "job", "runs", "jobs/hello")
	if !strings.Contains(out, "failed") || !strings.Contains(out, " 7 ") || !strings.Contains(out, "zlctl") {
		t.Errorf("job runs does not show the failed run with exit code 7:\n%s", out)
	}

	// A request to the job's endpoint runs it: output and exit code come back.
	eventually(t, 30*time.Second, "the job endpoint routed", func() bool {
		resp, err := http.Get("http://" + n.httpAddr + "/hello")
		if err != nil {
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			return false // the route is not pushed yet
		}
		if resp.StatusCode != http.StatusInternalServerError || resp.Header.Get("X-Zlayer-Exit-Code") != "7" || !strings.Contains(string(body), "hello from the job") {
			t.Fatalf("job endpoint: %s, exit code %q, body %q", resp.Status, resp.Header.Get("X-Zlayer-Exit-Code"), body)
		}
		return true
	})

	// Sample the cron job's runs for a while: never two at once.
	deadline := time.Now().Add(12 * time.Second)
	maxActive := 0
	for time.Now().Before(deadline) {
		active := 0
		for _, r := range n.running(t, "jobs") {
			if r.Service == "tick" {
				active++
			}
		}
		maxActive = max(maxActive, active)
		time.Sleep(200 * time.Millisecond)
	}
	if maxActive > 1 {
		t.Errorf("%d runs of the cron job ran at once", maxActive)
	}
	out, _ = n.zlctl(t, "job", "runs", "jobs/tick")
	if strings.Count(out, "succeeded") < 2 {
		t.Errorf("the cron job should have succeeded at least twice in 12s:\n%s", out)
	}
	events, _ := n.zlctl(t, "events", "jobs", "--limit", "500")
	if !strings.Contains(events, "cron-skipped") || !strings.Contains(events, "previous run is still running") {
		t.Errorf("no skipped run recorded:\n%s", events)
	}
	if out, code := n.zlctl(t, "delete", "jobs"); code != 0 {
		t.Fatalf("delete: %s", out)
	}
	n.waitAgentWithout(t, "jobs-")
}

// TestInitSteps runs init steps before a container's process: a wait for a
// TCP port and for an HTTP status the test opens late, a command run inside
// the container's filesystem, a failing step that goes on; and the
// on_init_failure policies fail and backoff.
func TestInitSteps(t *testing.T) {
	reg := demoRegistry(t)
	n := startNode(t, "--arg", "registry:--insecure-registry="+reg.Addr)
	n.explainOnFailure(t, "init")
	gw := strings.TrimSuffix(n.cidr, ".0.0/16") + ".0.1" // the node bridge's address, seen from containers
	tcpL, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	tcpPort := tcpL.Addr().(*net.TCPAddr).Port
	tcpL.Close() // closed until the test opens it again
	var ready atomic.Bool
	httpSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	httpL, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	httpSrv.Listener = httpL
	httpSrv.Start()
	defer httpSrv.Close()
	img := reg.Addr + "/demo-http:latest"
	file := filepath.Join(t.TempDir(), "init.yaml")
	text := fmt.Sprintf(`version: v1
deployment: init
services:
  api:
    image: {name: %[1]s}
    endpoints: [{name: http, protocol: http, port: 80}]
    scale: {mode: fixed, replicas: 1}
    init:
      steps:
        - id: wait-port
          uses: init.wait_tcp
          with: {host: %[2]s, port: %[3]d}
          timeout: 1m
        - id: wait-ready
          uses: init.wait_http
          with: {url: "http://%[2]s:%[4]d/ready"}
          timeout: 1m
        - id: migrate
          uses: init.run
          with: {command: "echo migrated > /var/www/migrated"}
        - id: optional
          uses: init.run
          with: {command: "exit 1"}
          on_failure: continue
        - id: advisory
          uses: init.run
          with: {command: "echo disk is getting full; exit 2"}
          retry: 1
          on_failure: warn
  broken:
    image: {name: %[1]s}
    scale: {mode: fixed, replicas: 1}
    init:
      steps:
        - id: check-config
          uses: init.run
          with: {command: "echo config missing >&2; exit 3"}
    errors: {on_init_failure: {action: fail}}
  retrying:
    image: {name: %[1]s}
    scale: {mode: fixed, replicas: 1}
    init:
      steps:
        - id: flaky
          uses: init.run
          with: {command: "exit 1"}
    errors: {on_init_failure: {action: backoff}}
`, img, gw, tcpPort, httpL.Addr().(*net.TCPAddr).Port)
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := n.zlctl(t, "deploy", "--detach", file); code != 0 {
		t.Fatalf("deploy: exit %d\n%s", code, out)
	}
	byService := func() map[string][]replicaJSON { return n.byService(t, "init") }
	// api waits: nothing listens on the port yet.
	eventually(t, 30*time.Second, "the broken service failed and held", func() bool {
		rs := byService()["broken"]
		return len(rs) == 1 && rs[0].Held == "init" && strings.Contains(rs[0].Phase, "FAILED")
	})
	if rs := byService()["api"]; len(rs) != 1 || rs[0].Phase == "REPLICA_PHASE_RUNNING" {
		t.Fatalf("api started before its wait_tcp target listened: %+v", rs)
	}
	tcpL, err = net.Listen("tcp", fmt.Sprintf("0.0.0.0:%d", tcpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer tcpL.Close()
	go func() {
		for {
			c, err := tcpL.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ready.Store(true)
	var api replicaJSON
	eventually(t, 60*time.Second, "api running after its init steps", func() bool {
		for _, r := range n.running(t, "init") {
			if r.Service == "api" {
				api = r
				return true
			}
		}
		return false
	})
	page, err := fetch("http://" + api.IP + "/migrated")
	if err != nil || !strings.Contains(page, "migrated") {
		t.Errorf("init.run did not write into the container's filesystem: %q, %v", page, err)
	}
	eventually(t, 30*time.Second, "retrying backing off", func() bool {
		rs := byService()["retrying"]
		return len(rs) == 1 && rs[0].Restarts >= 2
	})
	events, _ := n.zlctl(t, "events", "init", "--limit", "500")
	for _, want := range []string{
		"wait-port ok", "wait-ready ok", "migrate ok", "optional continued", "advisory warned (2 attempts", // the api's init results
		"check-config", "config missing", "on_init_failure: fail", // the broken one's reason, with its output
		"on_init_failure: backoff",
	} {
		if !strings.Contains(events, want) {
			t.Errorf("events lack %q:\n%s", want, events)
		}
	}
	if out, code := n.zlctl(t, "delete", "init"); code != 0 {
		t.Fatalf("delete: %s", out)
	}
	n.waitAgentWithout(t, "init-")
}

// TestExampleChain deploys deploy/examples/chain.yaml (with the test's
// registry): the api's init steps wait for db.global's port and health,
// names resolved from the cluster's running replicas; the front waits for
// the api to be ready. The start order shows in the events.
func TestExampleChain(t *testing.T) {
	reg := demoRegistry(t)
	n := startNode(t, "--arg", "registry:--insecure-registry="+reg.Addr)
	n.explainOnFailure(t, "chain")
	text, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "examples", "chain.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "chain.yaml")
	if err := os.WriteFile(file, []byte(strings.ReplaceAll(string(text), "127.0.0.1:5005", reg.Addr)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := n.zlctl(t, "deploy", file); code != 0 {
		t.Fatalf("deploy: exit %d\n%s", code, out)
	}
	events, _ := n.zlctl(t, "events", "chain", "--limit", "500")
	at := func(what string) int {
		for i, line := range strings.Split(events, "\n") {
			if strings.Contains(line, what) {
				return i
			}
		}
		t.Fatalf("no event %q:\n%s", what, events)
		return -1
	}
	// db's process starts first but listens 3s later; the api's process
	// starts only after its init steps reached db.global; the front only
	// once the api is ready.
	dbStarted, apiStarted, frontStarted := at("started     chain/db/"), at("started     chain/api/"), at("started     chain/front/")
	if !(dbStarted < apiStarted && apiStarted < frontStarted) {
		t.Errorf("start order db (%d) < api (%d) < front (%d) not kept:\n%s", dbStarted, apiStarted, frontStarted, events)
	}
	if !regexp.MustCompile(`wait-db-port ok \(\d+ attempts, [2-9][.\d]*s\)`).MatchString(events) {
		t.Errorf("the api's wait for db's port should have taken the 3s db needs to listen:\n%s", events)
	}
	for _, want := range []string{"wait-db-port ok", "wait-db-health ok"} {
		if !strings.Contains(events, want) {
			t.Errorf("api's init steps not in the events (%q):\n%s", want, events)
		}
	}
	out, code := n.zlctl(t, "exec", "chain/api", "--", "/bin/busybox", "cat", "/etc/hosts")
	if code != 0 || !strings.Contains(out, "db.global") || !strings.Contains(out, "front.global") {
		t.Errorf("the api's /etc/hosts lacks the deployment's names: exit %d\n%s", code, out)
	}
	if out, code := n.zlctl(t, "delete", "chain"); code != 0 {
		t.Fatalf("delete: %s", out)
	}
}
