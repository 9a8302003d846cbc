package raftnode

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"

	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/scheduler/internal/pki"
)

// The process test runs each member as its own process (this test binary
// re-executed) and kills members with SIGKILL, so durability is checked
// against a real kill -9: nothing is closed or flushed, locks die with the
// process.

const childEnv = "RAFTNODE_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	// Every goroutine a member starts must end with its Run.
	goleak.VerifyTestMain(m)
}

// runChild is a member process: peer listener on fd 3, a small HTTP
// control API on fd 4, credentials in <dir>/pki.
func runChild() int {
	log, _ := zap.NewDevelopment()
	fail := func(err error) int {
		log.Error("child failed", zap.Error(err))
		return 1
	}
	dir := os.Getenv("RAFTNODE_DIR")
	creds, err := pki.LoadCredentials(filepath.Join(dir, "pki"))
	if err != nil {
		return fail(err)
	}
	peerL, err := net.FileListener(os.NewFile(3, "peer"))
	if err != nil {
		return fail(err)
	}
	httpL, err := net.FileListener(os.NewFile(4, "http"))
	if err != nil {
		return fail(err)
	}
	var peers []Member
	if err := json.Unmarshal([]byte(os.Getenv("RAFTNODE_PEERS")), &peers); err != nil {
		return fail(err)
	}
	boot := map[string]Bootstrap{"new": BootstrapNew, "join": BootstrapJoin, "restart": BootstrapRestart}[os.Getenv("RAFTNODE_BOOTSTRAP")]
	fsm := newKV()
	n, err := New(Config{
		ID: creds.MemberID(), DataDir: filepath.Join(dir, "raft"), PeerListener: peerL,
		AdvertiseAddr: peerL.Addr().String(), TLS: creds, Bootstrap: boot, Peers: peers,
		TickInterval: testTick,
	}, fsm, log)
	if err != nil {
		return fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /propose", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		res, err := n.Propose(ctx, body)
		if err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, errkind.Unavailable) {
				code = http.StatusServiceUnavailable
			}
			http.Error(w, err.Error(), code)
			return
		}
		fmt.Fprint(w, res)
	})
	mux.HandleFunc("POST /add", func(w http.ResponseWriter, r *http.Request) {
		id, err := n.AddMember(r.Context(), r.URL.Query().Get("addr"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, id)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(n.Status())
	})
	mux.HandleFunc("GET /state", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(fsm.state())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(httpL) }()
	err = n.Run(ctx)
	srv.Close()
	if err != nil {
		return fail(err)
	}
	return 0
}

// proc is one member process, restartable on the same ports.
type proc struct {
	t        *testing.T
	dir      string
	peerAddr string
	httpAddr string
	id       uint64
	cmd      *exec.Cmd
	logs     *bytes.Buffer
	waitc    chan struct{}
}

// freeAddr returns a loopback address nothing listens on now. The process
// listens on it again through an inherited descriptor (see start).
func freeAddr(t *testing.T) string {
	l := listenLocal(t)
	defer l.Close()
	return l.Addr().String()
}

func newProc(t *testing.T, ca *pki.CA, id uint64, peerAddr string) *proc {
	t.Helper()
	p := &proc{t: t, dir: t.TempDir(), id: id, peerAddr: peerAddr, httpAddr: freeAddr(t)}
	certPEM, keyPEM, err := ca.Issue(id, p.peerAddr)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := pki.NewCredentials(ca.CertPEM, certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.SaveCredentials(filepath.Join(p.dir, "pki"), creds); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *proc) start(bootstrap string, peers []Member) {
	p.t.Helper()
	files := make([]*os.File, 0, 2)
	for _, addr := range []string{p.peerAddr, p.httpAddr} {
		l := relisten(p.t, addr)
		f, err := l.(*net.TCPListener).File()
		if err != nil {
			p.t.Fatal(err)
		}
		l.Close()
		files = append(files, f)
	}
	peersJSON, _ := json.Marshal(peers)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", "RAFTNODE_DIR="+p.dir, "RAFTNODE_BOOTSTRAP="+bootstrap,
		"RAFTNODE_PEERS="+string(peersJSON))
	cmd.ExtraFiles = files
	p.logs = &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	for _, f := range files {
		f.Close()
	}
	p.cmd = cmd
	p.waitc = make(chan struct{})
	go func() { _ = cmd.Wait(); close(p.waitc) }()
	p.t.Cleanup(p.kill9)
}

// kill9 sends SIGKILL and waits for the process to be gone.
func (p *proc) kill9() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.waitc
	p.cmd = nil
}

var httpClient = &http.Client{Timeout: 3 * time.Second}

func (p *proc) call(method, path, body string) (string, int) {
	req, _ := http.NewRequest(method, "http://"+p.httpAddr+path, strings.NewReader(body))
	resp, err := httpClient.Do(req)
	if err != nil {
		return err.Error(), 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode
}

func (p *proc) status() (Status, bool) {
	body, code := p.call("GET", "/status", "")
	var st Status
	return st, code == http.StatusOK && json.Unmarshal([]byte(body), &st) == nil
}

func (p *proc) state() map[string]string {
	body, code := p.call("GET", "/state", "")
	m := map[string]string{}
	if code != http.StatusOK || json.Unmarshal([]byte(body), &m) != nil {
		return nil
	}
	return m
}

func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("starts member processes")
	}
	ca, err := pki.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	procs := []*proc{newProc(t, ca, 0x1001, freeAddr(t))}
	procs[0].start("new", nil)
	var mu sync.Mutex
	dump := func() {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range procs {
			t.Logf("member %x logs:\n%s", p.id, p.logs.String())
		}
	}
	defer func() {
		if t.Failed() {
			dump()
		}
	}()
	leaderOf := func(except *proc) *proc {
		var leader *proc
		eventually(t, "a leader", func() bool {
			for _, p := range procs {
				if p == except || p.cmd == nil {
					continue
				}
				if st, ok := p.status(); ok && st.IsLeader {
					leader = p
					return true
				}
			}
			return false
		})
		return leader
	}
	write := func(p *proc, kv string) {
		eventually(t, "write "+kv, func() bool {
			_, code := p.call("POST", "/propose", kv)
			return code == http.StatusOK
		})
	}
	want := map[string]string{}
	converged := func() {
		for _, p := range procs {
			eventually(t, fmt.Sprintf("member %x to converge", p.id), func() bool {
				return maps.Equal(p.state(), want)
			})
		}
	}

	leaderOf(nil)
	for range 2 {
		leader := leaderOf(nil)
		addr := freeAddr(t)
		var idBody string
		eventually(t, "add member", func() bool {
			var code int
			idBody, code = leader.call("POST", "/add?addr="+addr, "")
			return code == http.StatusOK
		})
		id, err := strconv.ParseUint(idBody, 10, 64)
		if err != nil {
			t.Fatalf("add: %q", idBody)
		}
		p := newProc(t, ca, id, addr)
		st, _ := leader.status()
		mu.Lock()
		procs = append(procs, p)
		mu.Unlock()
		p.start("join", st.Members)
		eventually(t, "voter", func() bool {
			st, ok := leader.status()
			if !ok {
				return false
			}
			for _, m := range st.Members {
				if m.ID == id {
					return !m.Learner
				}
			}
			return false
		})
	}
	for i := range 10 {
		write(leaderOf(nil), fmt.Sprintf("k%d=%d", i, i))
		want[fmt.Sprintf("k%d", i)] = fmt.Sprint(i)
	}
	converged()

	// kill -9 the leader: a new one is elected, writes go on, and the old
	// leader restarts from its disk and catches up.
	old := leaderOf(nil)
	old.kill9()
	leader := leaderOf(old)
	write(leader, "after-kill=1")
	want["after-kill"] = "1"
	old.start("restart", nil)
	converged()

	// kill -9 all three, start all three: the same state, from disk.
	for _, p := range procs {
		p.kill9()
	}
	for _, p := range procs {
		p.start("restart", nil)
	}
	converged()
	write(leaderOf(nil), "after-restart=1")
	want["after-restart"] = "1"
	converged()
}
