package e2e

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"zlayer.dev/libs/rpc"
	"zlayer.dev/libs/testkit/fixtures"
	"zlayer.dev/libs/testkit/netlab"
	"zlayer.dev/libs/testkit/registry"
)

type membersJSON struct {
	Self    string `json:"self"`
	Leader  string `json:"leader"`
	Term    uint64 `json:"term"`
	Members []struct {
		ID      string `json:"id"`
		Address string `json:"address"`
		Role    string `json:"role"`
	} `json:"members"`
}

func (n *node) members(t *testing.T) (membersJSON, bool) {
	var m membersJSON
	out, code := n.zlctl(t, "cluster", "members", "-o", "json")
	if code != 0 {
		return m, false
	}
	return m, json.Unmarshal([]byte(out), &m) == nil
}

// TestThreeNodeCluster runs three nodes, each in its own network namespace
// with its five daemons, as one cluster: it kills the leader, cuts a node
// off, and restarts everything, checking that the cluster keeps its state
// and its replicas.
func TestThreeNodeCluster(t *testing.T) {
	requireRoot(t)
	lab, err := netlab.New(fmt.Sprintf("c%d", os.Getpid()%10000), fmt.Sprintf("10.251.%d.0/24", os.Getpid()%200))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lab.Close() })

	// The registry listens on the bridge, so every node can pull from it.
	gw := lab.Prefix.Addr().Next().String()
	l, err := net.Listen("tcp", gw+":0")
	if err != nil {
		t.Fatal(err)
	}
	regAddr := l.Addr().String()
	l.Close()
	reg := registry.StartT(t, registry.Options{Dir: t.TempDir(), Addr: regAddr})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := fixtures.BuildAndPush(ctx, t.TempDir(), reg.Addr); err != nil {
		t.Fatal(err)
	}

	var nodes []*node
	peer := map[string]*node{} // peer address → node
	args := func(n *node, join string) []string {
		a := []string{"--arg", "registry:--insecure-registry=" + reg.Addr,
			"--arg", "scheduler:--peer-addr=" + n.host.Addr.String() + ":7946"}
		if join != "" {
			a = append(a, "--arg", "scheduler:--join="+join)
		}
		return a
	}
	for i := range 3 {
		h, err := lab.AddHost(fmt.Sprintf("n%d", i+1))
		if err != nil {
			t.Fatal(err)
		}
		n := &node{name: fmt.Sprintf("c%d-n%d", os.Getpid()%10000, i+1), runDir: t.TempDir(), dataDir: t.TempDir(), host: h}
		nodes = append(nodes, n)
		peer[h.Addr.String()+":7946"] = n
	}
	first := nodes[0]
	first.start(t, args(first, "")...)
	if out, code := first.zlctl(t, "cluster", "init", "--advertise-addr", first.host.Addr.String()+":7946"); code != 0 {
		t.Fatalf("cluster init: %s", out)
	}
	for _, n := range nodes[1:] {
		bundle := filepath.Join(t.TempDir(), "join.json")
		if out, code := first.zlctl(t, "cluster", "add-member", n.host.Addr.String()+":7946", "-f", bundle); code != 0 {
			t.Fatalf("add-member: %s", out)
		}
		n.start(t, args(n, bundle)...)
	}
	eventually(t, 60*time.Second, "three voting members", func() bool {
		m, ok := first.members(t)
		voters := 0
		for _, mm := range m.Members {
			if mm.Role == "voter" || mm.Role == "leader" {
				voters++
			}
		}
		return ok && voters == 3 && m.Leader != ""
	})
	eventually(t, 30*time.Second, "three ready nodes", func() bool {
		out, _ := first.zlctl(t, "node", "ls")
		return strings.Count(out, " ready ") == 3
	})

	// Deploy through a follower: the proposal is forwarded to the leader.
	file := filepath.Join(t.TempDir(), "app.yaml")
	writeApp := func(greeting string) {
		text := fmt.Sprintf(`version: v1
deployment: app
services:
  web:
    image:
      name: %s/demo-http:latest
    env:
      GREETING: %s
    endpoints:
      - name: http
        protocol: http
        port: 80
        expose: public
    scale:
      mode: fixed
      replicas: 3
`, reg.Addr, greeting)
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeApp("one")
	if out, code := nodes[1].zlctl(t, "deploy", file); code != 0 {
		t.Fatalf("deploy via a follower: exit %d\n%s", code, out)
	}
	spread := func(n *node) map[string]int {
		per := map[string]int{}
		for _, r := range n.running(t, "app") {
			per[r.Node]++
		}
		return per
	}
	if per := spread(first); len(per) != 3 {
		t.Fatalf("3 replicas should spread over 3 nodes, got %v", per)
	}
	checkMesh(t, first, spread)

	// logs and exec of a replica on another node: the local scheduler
	// reaches it through that node's scheduler.
	remoteChecked := false
	for _, r := range first.running(t, "app") {
		if r.Node == first.name {
			continue
		}
		target := fmt.Sprintf("app/web/%d", r.Index)
		out, code := first.zlctl(t, "exec", target, "--", "/bin/busybox", "sh", "-c",
			"/bin/busybox wget -q -O- http://127.0.0.1/ && echo greeting=$GREETING host=$(/bin/busybox hostname); exit 7")
		if code != 7 || !strings.Contains(out, "ZLayer demo") || !strings.Contains(out, "greeting=one") {
			t.Fatalf("exec in %s (on %s) from %s: exit %d, want 7 with the page and the greeting\n%s", target, r.Node, first.name, code, out)
		}
		var last string
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("last zlctl logs %s:\n%s", target, last)
			}
		})
		eventually(t, 10*time.Second, "the remote replica's log of that request", func() bool {
			out, code := first.zlctl(t, "logs", "--tail", "20", target)
			last = fmt.Sprintf("exit %d\n%s", code, out)
			return code == 0 && strings.Contains(out, "127.0.0.1]:") && strings.Contains(out, "response:200")
		})
		remoteChecked = true
		break
	}
	if !remoteChecked {
		t.Fatal("no replica of app/web runs on another node than the first")
	}

	testJoin(t, nodes, reg.Addr)

	// Kill -9 the leader's scheduler: a new leader is elected, a deploy
	// succeeds, and the old leader (restarted by devctl) catches up.
	m, _ := first.members(t)
	var leaderAddr string
	for _, mm := range m.Members {
		if mm.ID == m.Leader {
			leaderAddr = mm.Address
		}
	}
	old := peer[leaderAddr]
	if old == nil {
		t.Fatalf("leader %s at %q is none of the nodes", m.Leader, leaderAddr)
	}
	pid, err := tryPid(rpc.SocketPath(old.runDir, "scheduler"))
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var other *node
	for _, n := range nodes {
		if n != old {
			other = n
			break
		}
	}
	// A new term's leader: usually another member, but the killed one,
	// restarted by devctl, may win the election too.
	eventually(t, 30*time.Second, "a new leader", func() bool {
		m2, ok := other.members(t)
		return ok && m2.Leader != "" && (leaderOfAddr(m2) != leaderAddr || m2.Term > m.Term)
	})
	t.Logf("FAILOVER leader-kill: new leader seen %.2fs after kill -9", time.Since(killed).Seconds())
	writeApp("two")
	if out, code := other.zlctl(t, "deploy", "--detach", file); code != 0 {
		t.Fatalf("deploy after leader loss: exit %d\n%s", code, out)
	}
	t.Logf("FAILOVER leader-kill: next write committed %.2fs after kill -9", time.Since(killed).Seconds())
	eventually(t, 60*time.Second, "version 2 rolled out", func() bool {
		st := other.status(t, "app")
		return len(st.Deployments) == 1 && st.Deployments[0].Outcome == "ROLLOUT_OUTCOME_COMPLETE" && st.Deployments[0].Version == "2"
	})
	eventually(t, 60*time.Second, "the old leader to catch up", func() bool {
		out, code := old.zlctl(t, "history", "app")
		return code == 0 && strings.Contains(out, "* 2")
	})

	// Cut a node off: the other two keep serving and its replicas move to
	// them; the isolated member refuses writes.
	var cut *node
	m, _ = first.members(t)
	for _, n := range nodes {
		if peer[leaderOfAddr(m)] != n {
			cut = n
			break
		}
	}
	if err := cut.host.Cut(); err != nil {
		t.Fatal(err)
	}
	cutAt := time.Now()
	var (
		out  string
		code int
	)
	var rest []*node
	for _, n := range nodes {
		if n != cut {
			rest = append(rest, n)
		}
	}
	eventually(t, 60*time.Second, "the cut node's replicas to run elsewhere", func() bool {
		per := spread(rest[0])
		return per[cut.name] == 0 && per[rest[0].name]+per[rest[1].name] == 3
	})
	t.Logf("FAILOVER node-loss: replicas of the lost node running elsewhere %.2fs after its link was cut", time.Since(cutAt).Seconds())
	writeApp("three")
	out, code = cut.zlctl(t, "deploy", "--detach", file)
	if code == 0 || !strings.Contains(strings.ToLower(out), "unavailable") && !strings.Contains(out, "no leader") {
		t.Errorf("the isolated member accepted a write or said something unclear: exit %d\n%s", code, out)
	}
	if os.Getenv("ZLAYER_TEST_EVENTS") != "" {
		out, _ := rest[0].zlctl(t, "events", "--limit", "40")
		t.Logf("cut at %s; events:\n%s", cutAt.Format("15:04:05.000"), out)
	}
	if out, code := rest[0].zlctl(t, "deploy", file); code != 0 {
		t.Fatalf("deploy on the majority side: exit %d\n%s", code, out)
	}
	if err := cut.host.Restore(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "the cut node back and caught up", func() bool {
		out, code := cut.zlctl(t, "history", "app")
		return code == 0 && strings.Contains(out, "* 3")
	})

	// Stop all three, start all three: the state comes back from disk.
	before := rest[0].status(t, "app")
	for _, n := range nodes {
		n.stop(t)
	}
	for _, n := range nodes {
		n.start(t, args(n, "")...)
	}
	eventually(t, 60*time.Second, "a leader after the restart", func() bool {
		m, ok := first.members(t)
		return ok && m.Leader != ""
	})
	after := first.status(t, "app")
	if fmt.Sprint(ids(before)) != fmt.Sprint(ids(after)) || before.Deployments[0].Version != after.Deployments[0].Version {
		t.Errorf("state after restart differs:\nbefore %v version %s\nafter  %v version %s",
			ids(before), before.Deployments[0].Version, ids(after), after.Deployments[0].Version)
	}

	if out, code := first.zlctl(t, "delete", "app"); code != 0 {
		t.Fatalf("delete: %s", out)
	}
	for _, n := range nodes {
		n.waitAgentWithout(t, "app-web")
	}
}

// leaderOfAddr is the peer address of the leader m names.
func leaderOfAddr(m membersJSON) string {
	for _, mm := range m.Members {
		if mm.ID == m.Leader {
			return mm.Address
		}
	}
	return ""
}

// ids lists the non-stopping replicas' ids with their node.
func ids(st statusJSON) []string {
	var out []string
	for _, d := range st.Deployments {
		for _, r := range d.Replicas {
			if !r.Stop {
				out = append(out, r.ID+"@"+r.Node)
			}
		}
	}
	return out
}

// testJoin: a node enrolled for a service with a join token gets its
// replicas (without it they spread); a wrong token, and joining without one,
// are refused.
func testJoin(t *testing.T, nodes []*node, regAddr string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "pinned.yaml")
	text := fmt.Sprintf(`version: v1
deployment: pinned
services:
  db:
    image:
      name: %[1]s/demo-http:latest
    network:
      join:
        mode: token
    scale:
      mode: manual
      replicas: 0
  solo:
    image:
      name: %[1]s/demo-http:latest
    network:
      overlays:
        global: {enabled: false}
    scale: {mode: fixed, replicas: 3}
`, regAddr)
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	first, joiner := nodes[0], nodes[2]
	if out, code := first.zlctl(t, "deploy", file); code != 0 {
		t.Fatalf("deploy pinned: exit %d\n%s", code, out)
	}
	if out, code := joiner.zlctl(t, "node", "join", "pinned/db"); code == 0 || !strings.Contains(out, "token") {
		t.Errorf("joining a token service without a token: exit %d, want a refusal naming the token\n%s", code, out)
	}
	if out, code := joiner.zlctl(t, "node", "join", "0123456789abcdef:db"); code == 0 || !strings.Contains(out, "unknown") {
		t.Errorf("joining with a made-up token: exit %d, want a refusal\n%s", code, out)
	}
	out, code := first.zlctl(t, "token", "create", "pinned/db")
	tok := strings.TrimSpace(out)
	if code != 0 || !strings.HasSuffix(tok, ":db") {
		t.Fatalf("token create: exit %d\n%s", code, out)
	}
	if out, code := joiner.zlctl(t, "node", "join", tok); code != 0 || !strings.Contains(out, "joined pinned/db") {
		t.Fatalf("node join with the token: exit %d\n%s", code, out)
	}
	if out, _ := first.zlctl(t, "node", "ls"); !strings.Contains(out, "pinned/db") {
		t.Errorf("node ls does not show the join:\n%s", out)
	}
	if out, code := first.zlctl(t, "scale", "pinned/db", "2"); code != 0 {
		t.Fatalf("scale pinned/db 2: exit %d\n%s", code, out)
	}
	eventually(t, 60*time.Second, "both db replicas running, and solo's three", func() bool { return len(first.running(t, "pinned")) == 5 })
	for _, r := range first.running(t, "pinned") {
		if r.Service == "db" && r.Node != joiner.name {
			t.Errorf("replica %d of pinned/db runs on %s, want the joined node %s", r.Index, r.Node, joiner.name)
		}
	}
	checkApart(t, first, joiner)
	if out, code := first.zlctl(t, "delete", "pinned"); code != 0 {
		t.Fatalf("delete pinned: %s", out)
	}
	eventually(t, 60*time.Second, "pinned gone", func() bool {
		out, _ := first.zlctl(t, "node", "ls")
		return !strings.Contains(out, "pinned/db")
	})
}

// checkMesh: the WireGuard mesh joins the nodes' container subnets. The
// first node's proxy balances over the replicas on the other nodes too
// (their logs show requests from the first node's overlay address), and a
// container on the first node fetches the page from a container on each
// other node by its address.
func checkMesh(t *testing.T, first *node, spread func(*node) map[string]int) {
	t.Helper()
	prefix, err := netip.ParsePrefix(first.cidr)
	if err != nil {
		t.Fatal(err)
	}
	// The last host address of the subnet, which the agent keeps for the
	// overlay's device.
	b := prefix.Masked().Addr().As4()
	hosts := uint32(1)<<(32-prefix.Bits()) - 2
	v := binary.BigEndian.Uint32(b[:]) | hosts
	var ov [4]byte
	binary.BigEndian.PutUint32(ov[:], v)
	overlayAddr := netip.AddrFrom4(ov).String()

	var local *replicaJSON
	reps := first.running(t, "app")
	for i := range reps {
		if reps[i].Node == first.name {
			local = &reps[i]
		}
	}
	if local == nil {
		t.Fatalf("no replica on the first node: %v", spread(first))
	}
	var last string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("mesh check, last try: %s", last)
		}
	})
	eventually(t, 90*time.Second, "requests through the first node's proxy at the replicas on the other nodes", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := first.host.Command(ctx, "sh", "-c",
			"for i in 1 2 3 4 5 6 7 8 9; do curl -s -m 3 -o /dev/null -w '%{http_code} ' http://"+first.httpAddr+"/; done").CombinedOutput()
		last = "proxy answers: " + string(out)
		if err != nil || strings.Count(string(out), "200") != 9 {
			return false
		}
		for _, r := range reps {
			if r.Node == first.name {
				continue
			}
			logs, code := first.zlctl(t, "logs", "--tail", "100", fmt.Sprintf("app/web/%d", r.Index))
			if code != 0 || !strings.Contains(logs, overlayAddr+":") && !strings.Contains(logs, overlayAddr+"]:") {
				last += fmt.Sprintf("\nno request from %s in the log of app/web/%d on %s:\n%s", overlayAddr, r.Index, r.Node, logs)
				return false
			}
		}
		return true
	})
	for _, r := range reps {
		if r.Node == first.name {
			continue
		}
		out, code := first.zlctl(t, "exec", fmt.Sprintf("app/web/%d", local.Index), "--", "/bin/busybox", "sh", "-c", "/bin/busybox wget -q -O- http://"+r.IP+"/")
		if code != 0 || !strings.Contains(out, "ZLayer demo") {
			t.Fatalf("a container on %s fetching http://%s/ (app/web/%d on %s): exit %d\n%s", first.name, r.IP, r.Index, r.Node, code, out)
		}
		// Not masqueraded: the replica sees the calling container's address.
		eventually(t, 10*time.Second, fmt.Sprintf("a request from %s in the log of app/web/%d", local.IP, r.Index), func() bool {
			logs, code := first.zlctl(t, "logs", "--tail", "100", fmt.Sprintf("app/web/%d", r.Index))
			last = logs
			return code == 0 && (strings.Contains(logs, local.IP+":") || strings.Contains(logs, local.IP+"]:"))
		})
	}
}

// checkApart: deployments, and services off the global overlay, are kept
// apart. The two replicas of pinned/db (both on joiner) reach each other,
// but neither reaches a replica of app, on their node or on another, and
// app's replica on the first node does not reach them; pinned/solo's two
// replicas reach each other and nothing else of pinned.
func checkApart(t *testing.T, first, joiner *node) {
	t.Helper()
	fetch := func(from string, to replicaJSON) (string, int) {
		// (busybox-static's wget -T crashes; timeout bounds a dropped try.)
		return first.zlctl(t, "exec", from, "--", "/bin/busybox", "timeout", "5", "/bin/busybox", "wget", "-q", "-O-", "http://"+to.IP+"/")
	}
	var db, solo []replicaJSON
	for _, r := range first.running(t, "pinned") {
		switch r.Service {
		case "db":
			db = append(db, r)
		case "solo":
			solo = append(solo, r)
		}
	}
	if len(db) != 2 || len(solo) != 3 {
		t.Fatalf("pinned: %d db and %d solo replicas running, want 2 and 3", len(db), len(solo))
	}
	from := fmt.Sprintf("pinned/db/%d", db[0].Index)
	if out, code := fetch(from, db[1]); code != 0 || !strings.Contains(out, "ZLayer demo") {
		t.Fatalf("%s fetching from pinned/db/%d (same deployment): exit %d\n%s", from, db[1].Index, code, out)
	}
	var onJoiner, onFirst *replicaJSON
	app := first.running(t, "app")
	for i := range app {
		switch app[i].Node {
		case joiner.name:
			onJoiner = &app[i]
		case first.name:
			onFirst = &app[i]
		}
	}
	if onJoiner == nil || onFirst == nil {
		t.Fatalf("app/web should have a replica on %s and on %s: %+v", joiner.name, first.name, app)
	}
	for _, to := range []*replicaJSON{onJoiner, onFirst} {
		if out, code := fetch(from, *to); code == 0 || !strings.Contains(out, "can't connect") {
			t.Errorf("%s (on %s) fetching from app/web/%d on %s: exit %d, want a refused connection\n%s", from, joiner.name, to.Index, to.Node, code, out)
		}
	}
	if out, code := fetch(fmt.Sprintf("app/web/%d", onFirst.Index), db[0]); code == 0 || !strings.Contains(out, "can't connect") {
		t.Errorf("app/web/%d (on %s) fetching from %s on %s: exit %d, want a refused connection\n%s", onFirst.Index, first.name, from, joiner.name, code, out)
	}
	// solo is off the global overlay: its replicas reach each other (its
	// service overlay) and nothing else of pinned, nor pinned them, on
	// joiner's bridge too (three replicas spread over the three nodes).
	var soloJ, soloElse *replicaJSON
	for i := range solo {
		if solo[i].Node == joiner.name {
			soloJ = &solo[i]
		} else {
			soloElse = &solo[i]
		}
	}
	if soloJ == nil || soloElse == nil {
		t.Fatalf("pinned/solo should run on %s and elsewhere: %+v", joiner.name, solo)
	}
	soloFrom := fmt.Sprintf("pinned/solo/%d", soloJ.Index)
	var last string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last fetch from %s: %s", soloFrom, last)
		}
	})
	eventually(t, 30*time.Second, soloFrom+" fetching from pinned/solo on another node (same service)", func() bool {
		out, code := fetch(soloFrom, *soloElse)
		last = fmt.Sprintf("exit %d\n%s", code, out)
		return code == 0 && strings.Contains(out, "ZLayer demo")
	})
	if out, code := fetch(soloFrom, db[0]); code == 0 || !strings.Contains(out, "can't connect") {
		t.Errorf("%s fetching from %s (global overlay, solo off it; same node): exit %d, want a refused connection\n%s", soloFrom, from, code, out)
	}
	if out, code := first.zlctl(t, "exec", from, "--", "/bin/busybox", "cat", "/etc/hosts"); code != 0 || strings.Contains(out, "solo.global") || !strings.Contains(out, "db.global") {
		t.Errorf("%s's /etc/hosts: exit %d, want db.global and no solo.global (off the global overlay)\n%s", from, code, out)
	}
	if out, code := fetch(from, *soloJ); code == 0 || !strings.Contains(out, "can't connect") {
		t.Errorf("%s fetching from %s (solo off the global overlay): exit %d, want a refused connection\n%s", from, soloFrom, code, out)
	}
}
