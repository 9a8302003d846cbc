package raftnode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/scheduler/internal/pki"
)

// kvFSM is the test state machine: "key=value" entries set a key. It keeps
// its state in memory, so after a restart it is rebuilt from the snapshot
// and the log, which is what the restart tests check.
type kvFSM struct {
	mu       sync.Mutex
	applied  uint64
	vals     map[string]string
	restores int
}

type kvState struct {
	Applied uint64            `json:"applied"`
	Vals    map[string]string `json:"vals"`
}

func newKV() *kvFSM { return &kvFSM{vals: map[string]string{}} }

func (f *kvFSM) Apply(index uint64, data []byte) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	if index <= f.applied {
		return nil
	}
	f.applied = index
	k, v, _ := strings.Cut(string(data), "=")
	f.vals[k] = v
	return fmt.Sprintf("%d:%s", index, k)
}

func (f *kvFSM) Snapshot() ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return json.Marshal(kvState{Applied: f.applied, Vals: f.vals})
}

func (f *kvFSM) Restore(index uint64, data []byte) error {
	var s kvState
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied, f.vals = index, s.Vals
	if f.vals == nil {
		f.vals = map[string]string{}
	}
	f.restores++
	return nil
}

func (f *kvFSM) AppliedIndex() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied
}

func (f *kvFSM) state() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.vals)
}

// Test timing: shorter ticks than the defaults keep the suite quick; the
// tests wait on conditions, never on durations.
const (
	testTick    = 20 * time.Millisecond
	testTimeout = 20 * time.Second
)

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// member is one in-process scheduler member with its own data dir, peer
// listener on 127.0.0.1 and credentials.
type member struct {
	t     testing.TB
	cfg   Config
	node  *Node
	fsm   *kvFSM
	stop  context.CancelFunc
	runc  chan error
	log   *zap.Logger
	alive bool
}

func startMember(t testing.TB, cfg Config, fsm *kvFSM) *member {
	t.Helper()
	if cfg.TickInterval == 0 {
		cfg.TickInterval = testTick
	}
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	n, err := New(cfg, fsm, log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{t: t, cfg: cfg, node: n, fsm: fsm, stop: cancel, runc: make(chan error, 1), log: log, alive: true}
	go func() { m.runc <- n.Run(ctx) }()
	t.Cleanup(func() { m.kill() })
	return m
}

// kill stops the member abruptly: its Run ends, its listener and streams
// are closed without draining, and nothing else is flushed (the WAL is
// already fsynced by then, exactly as after kill -9).
func (m *member) kill() {
	if !m.alive {
		return
	}
	m.alive = false
	m.stop()
	if err := <-m.runc; err != nil && !errors.Is(err, ErrRemoved) {
		m.t.Errorf("member %x Run: %v", m.node.ID(), err)
	}
}

// restart starts the member again from its data dir on the same address,
// with a fresh (empty) state machine.
func (m *member) restart() *member {
	m.t.Helper()
	cfg := m.cfg
	cfg.ID = m.node.ID()
	cfg.Bootstrap = BootstrapRestart
	cfg.PeerListener = nil
	if cfg.TLS != nil {
		cfg.PeerListener = relisten(m.t, cfg.AdvertiseAddr)
	}
	return startMember(m.t, cfg, newKV())
}

func relisten(t testing.TB, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	eventually(t, "rebinding "+addr, func() bool {
		var err error
		l, err = net.Listen("tcp", addr)
		return err == nil
	})
	return l
}

func listenLocal(t testing.TB) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// cluster is a test cluster sharing one CA.
type cluster struct {
	t       testing.TB
	ca      *pki.CA
	members []*member
	tune    func(*Config)
}

func newCluster(t testing.TB, tune func(*Config)) *cluster {
	ca, err := pki.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, ca: ca, tune: tune}
	l := listenLocal(t)
	id, _ := randomID(nil)
	cfg := Config{
		ID: id, DataDir: t.TempDir(), PeerListener: l, AdvertiseAddr: l.Addr().String(),
		TLS: c.creds(id, l.Addr().String()), Bootstrap: BootstrapNew,
	}
	if tune != nil {
		tune(&cfg)
	}
	c.members = append(c.members, startMember(t, cfg, newKV()))
	c.waitLeader(nil)
	return c
}

func (c *cluster) creds(id uint64, addr string) *pki.Credentials {
	c.t.Helper()
	certPEM, keyPEM, err := c.ca.Issue(id, addr)
	if err != nil {
		c.t.Fatal(err)
	}
	cr, err := pki.NewCredentials(c.ca.CertPEM, certPEM, keyPEM)
	if err != nil {
		c.t.Fatal(err)
	}
	return cr
}

// add adds a member through the leader, starts it with the credentials
// and peers a join bundle would carry, and waits until it is a voter.
func (c *cluster) add() *member {
	c.t.Helper()
	m := c.join()
	leader := c.waitLeader(nil)
	eventually(c.t, "new member to become a voter", func() bool {
		for _, mm := range leader.node.Members() {
			if mm.ID == m.node.ID() {
				return !mm.Learner
			}
		}
		return false
	})
	return m
}

// join adds a member through the leader and starts it, as add does, without
// waiting for its promotion.
func (c *cluster) join() *member {
	c.t.Helper()
	l := listenLocal(c.t)
	addr := l.Addr().String()
	leader := c.waitLeader(nil)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	id, err := leader.node.AddMember(ctx, addr)
	if err != nil {
		c.t.Fatalf("AddMember: %v", err)
	}
	cfg := Config{
		ID: id, DataDir: c.t.TempDir(), PeerListener: l, AdvertiseAddr: addr,
		TLS: c.creds(id, addr), Bootstrap: BootstrapJoin, Peers: leader.node.Members(),
	}
	if c.tune != nil {
		c.tune(&cfg)
	}
	m := startMember(c.t, cfg, newKV())
	c.members = append(c.members, m)
	return m
}

// waitLeader waits until some live member other than except is leader
// and every live member agrees on it.
func (c *cluster) waitLeader(except *member) *member {
	c.t.Helper()
	var leader *member
	eventually(c.t, "a leader", func() bool {
		leader = nil
		var lead uint64
		for _, m := range c.members {
			if !m.alive || m == except {
				continue
			}
			st := m.node.Status()
			if lead == 0 {
				lead = st.Leader
			}
			if st.Leader == 0 || st.Leader != lead {
				return false
			}
			if st.IsLeader {
				leader = m
			}
		}
		return leader != nil
	})
	return leader
}

// propose writes through m, retrying while the cluster has no leader.
func propose(t testing.TB, m *member, kv string) any {
	t.Helper()
	var res any
	eventually(t, "proposal "+kv+" to succeed", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var err error
		res, err = m.node.Propose(ctx, []byte(kv))
		if err != nil && !errors.Is(err, errkind.Unavailable) {
			t.Fatalf("Propose %s: %v", kv, err)
		}
		return err == nil
	})
	return res
}

// converged waits until every live member holds want.
func (c *cluster) converged(want map[string]string) {
	c.t.Helper()
	for _, m := range c.members {
		if !m.alive {
			continue
		}
		eventually(c.t, fmt.Sprintf("member %x to converge", m.node.ID()), func() bool {
			return maps.Equal(m.fsm.state(), want)
		})
	}
}

func TestSingleMember(t *testing.T) {
	dir := t.TempDir()
	l := listenLocal(t) // unused until EnablePeers
	m := startMember(t, Config{DataDir: dir, Bootstrap: BootstrapNew, PeerListener: l}, newKV())
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	eventually(t, "leader", func() bool { return m.node.Status().IsLeader })

	res, err := m.node.Propose(ctx, []byte("a=1"))
	if err != nil {
		t.Fatalf("Propose: %v", err)
	}
	if s, _ := res.(string); !strings.HasSuffix(s, ":a") {
		t.Fatalf("Propose result = %v, want the FSM's result", res)
	}
	propose(t, m, "b=2")
	if err := m.node.LinearizableRead(ctx); err != nil {
		t.Fatalf("LinearizableRead: %v", err)
	}
	if got := m.fsm.state(); got["a"] != "1" || got["b"] != "2" {
		t.Fatalf("state after read = %v", got)
	}
	st := m.node.Status()
	if st.ID == 0 || st.Leader != st.ID || st.Applied < 3 || len(st.Members) != 1 || st.Members[0].Addr != "" {
		t.Fatalf("Status = %+v", st)
	}
	if _, err := m.node.AddMember(ctx, "127.0.0.1:1"); !errors.Is(err, errkind.Precondition) {
		t.Fatalf("AddMember before peers are enabled: err = %v, want Precondition", err)
	}
	if err := m.node.RemoveMember(ctx, 12345); !errors.Is(err, errkind.NotFound) {
		t.Fatalf("RemoveMember unknown: err = %v, want NotFound", err)
	}

	// Init for peers: the member's address is recorded through Raft.
	ca, err := pki.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(st.ID, l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	creds, err := pki.NewCredentials(ca.CertPEM, certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.node.EnablePeers(ctx, creds, l.Addr().String()); err != nil {
		t.Fatalf("EnablePeers: %v", err)
	}
	if got := m.node.Members(); len(got) != 1 || got[0].Addr != l.Addr().String() {
		t.Fatalf("Members after EnablePeers = %+v", got)
	}
	want := m.fsm.state()

	// Restart from disk with the credentials and no address at all: the
	// same state, the same member, listening on the address Raft recorded.
	m.kill()
	m2 := startMember(t, Config{DataDir: dir, Bootstrap: BootstrapRestart, TLS: creds}, newKV())
	eventually(t, "restarted leader", func() bool { return m2.node.Status().IsLeader })
	if err := m2.node.LinearizableRead(ctx); err != nil {
		t.Fatalf("LinearizableRead after restart: %v", err)
	}
	if got := m2.fsm.state(); !maps.Equal(got, want) {
		t.Fatalf("state after restart = %v, want %v", got, want)
	}
	if m2.node.ID() != st.ID || m2.node.Members()[0].Addr != l.Addr().String() ||
		m2.node.tr.Load().lis.Addr().String() != l.Addr().String() {
		t.Fatalf("after restart: id %x members %+v", m2.node.ID(), m2.node.Members())
	}
}

func TestRestartWithoutLogFails(t *testing.T) {
	_, err := New(Config{DataDir: t.TempDir(), Bootstrap: BootstrapRestart}, newKV(), zap.NewNop())
	if !errors.Is(err, errkind.NotFound) {
		t.Fatalf("New(restart, empty dir) err = %v, want NotFound", err)
	}
}

// TestThreeMembers walks one cluster through the failure scenarios of the
// issue: replication and forwarding, leader loss, a partitioned member,
// and a full stop and restart.
func TestThreeMembers(t *testing.T) {
	c := newCluster(t, nil)
	c.add()
	c.add()
	want := map[string]string{}

	t.Run("replicate and forward", func(t *testing.T) {
		leader := c.waitLeader(nil)
		propose(t, leader, "x=1")
		want["x"] = "1"
		for _, m := range c.members {
			if m == leader {
				continue
			}
			kv := fmt.Sprintf("from-%x=y", m.node.ID())
			res := propose(t, m, kv)
			if s, _ := res.(string); !strings.HasSuffix(s, fmt.Sprintf(":from-%x", m.node.ID())) {
				t.Fatalf("follower proposal result = %v", res)
			}
			want[fmt.Sprintf("from-%x", m.node.ID())] = "y"
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			if err := m.node.LinearizableRead(ctx); err != nil {
				t.Fatalf("follower LinearizableRead: %v", err)
			}
			cancel()
			if got := m.fsm.state(); got[fmt.Sprintf("from-%x", m.node.ID())] != "y" {
				t.Fatalf("follower state after read = %v", got)
			}
		}
		c.converged(want)
		for _, m := range c.members {
			if ms := m.node.Members(); len(ms) != 3 || ms[0].Learner || ms[1].Learner || ms[2].Learner {
				t.Fatalf("member %x sees members %+v", m.node.ID(), ms)
			}
		}
	})

	t.Run("leader killed", func(t *testing.T) {
		old := c.waitLeader(nil)
		old.kill()
		leader := c.waitLeader(old)
		if leader == old {
			t.Fatal("killed member still leader")
		}
		propose(t, leader, "after-kill=1")
		want["after-kill"] = "1"
		restarted := old.restart()
		for i, m := range c.members {
			if m == old {
				c.members[i] = restarted
			}
		}
		c.converged(want)
	})

	t.Run("member partitioned", func(t *testing.T) {
		leader := c.waitLeader(nil)
		var cut *member
		for _, m := range c.members {
			if m != leader {
				cut = m
				break
			}
		}
		cut.node.tr.Load().setPartitioned(true)
		propose(t, leader, "during-cut=1")
		var other *member
		for _, m := range c.members {
			if m != leader && m != cut {
				other = m
			}
		}
		propose(t, other, "during-cut-2=1")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cut.node.Propose(ctx, []byte("isolated=1"))
		cancel()
		if !errors.Is(err, errkind.Unavailable) {
			t.Fatalf("isolated Propose err = %v, want Unavailable", err)
		}
		ctx, cancel = context.WithTimeout(context.Background(), 2*time.Second)
		err = cut.node.LinearizableRead(ctx)
		cancel()
		if !errors.Is(err, errkind.Unavailable) {
			t.Fatalf("isolated LinearizableRead err = %v, want Unavailable", err)
		}
		want["during-cut"], want["during-cut-2"] = "1", "1"
		cut.node.tr.Load().setPartitioned(false)
		c.converged(want) // "isolated" may or may not have committed; checked below
		if v, ok := c.waitLeader(nil).fsm.state()["isolated"]; ok {
			want["isolated"] = v
		}
		c.converged(want)
	})

	t.Run("leader partitioned", func(t *testing.T) {
		old := c.waitLeader(nil)
		old.node.tr.Load().setPartitioned(true)
		// The other two elect a leader between them and keep writing.
		leader := c.waitLeader(old)
		propose(t, leader, "leader-cut=1")
		want["leader-cut"] = "1"
		// The old leader cannot commit: CheckQuorum makes it step down, and
		// until then its proposals wait for acknowledgements that never come.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := old.node.Propose(ctx, []byte("stale-leader=1"))
		cancel()
		if !errors.Is(err, errkind.Unavailable) {
			t.Fatalf("partitioned leader Propose err = %v, want Unavailable", err)
		}
		old.node.tr.Load().setPartitioned(false)
		c.converged(want)
		if _, ok := old.fsm.state()["stale-leader"]; ok {
			t.Fatal("a write to the partitioned leader was applied")
		}
	})

	t.Run("stop all and restart all", func(t *testing.T) {
		leader := c.waitLeader(nil)
		for i := range 20 {
			propose(t, leader, fmt.Sprintf("bulk-%d=%d", i, i))
			want[fmt.Sprintf("bulk-%d", i)] = fmt.Sprint(i)
		}
		c.converged(want)
		for _, m := range c.members {
			m.kill()
		}
		for i, m := range c.members {
			c.members[i] = m.restart()
		}
		leader = c.waitLeader(nil)
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := leader.node.LinearizableRead(ctx); err != nil {
			t.Fatalf("LinearizableRead: %v", err)
		}
		c.converged(want)
		propose(t, leader, "after-restart=1")
		want["after-restart"] = "1"
		c.converged(want)
	})

	t.Run("remove member", func(t *testing.T) {
		leader := c.waitLeader(nil)
		var victim *member
		for _, m := range c.members {
			if m != leader {
				victim = m
				break
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := leader.node.RemoveMember(ctx, 999); !errors.Is(err, errkind.NotFound) {
			t.Fatalf("RemoveMember unknown err = %v, want NotFound", err)
		}
		if err := leader.node.RemoveMember(ctx, victim.node.ID()); err != nil {
			t.Fatalf("RemoveMember: %v", err)
		}
		if got := leader.node.Members(); len(got) != 2 {
			t.Fatalf("Members after removal = %+v", got)
		}
		victim.kill()
		propose(t, leader, "after-remove=1")
	})
}

// TestSnapshotCatchUp checks that the log is compacted behind snapshots and
// that a member added later catches up from a snapshot, not the log.
func TestSnapshotCatchUp(t *testing.T) {
	tune := func(c *Config) { c.SnapshotEntries, c.CatchUpEntries = 8, 2 }
	c := newCluster(t, tune)
	first := c.members[0]
	want := map[string]string{}
	for i := range 30 {
		propose(t, first, fmt.Sprintf("k%d=%d", i, i))
		want[fmt.Sprintf("k%d", i)] = fmt.Sprint(i)
	}
	if fi, _ := first.node.mem.FirstIndex(); fi <= 2 {
		t.Fatalf("log not compacted: first index %d", fi)
	}
	snaps, _ := filepath.Glob(filepath.Join(first.cfg.DataDir, "snap", "*.snap"))
	// One more than kept may exist for a moment: the Ready loop may be
	// between writing a snapshot and purging the oldest.
	if len(snaps) == 0 || len(snaps) > keepSnapFiles+1 {
		t.Fatalf("snapshot files = %v, want 1..%d", snaps, keepSnapFiles+1)
	}
	m := c.add()
	c.converged(want)
	m.fsm.mu.Lock()
	restores := m.fsm.restores
	m.fsm.mu.Unlock()
	if restores == 0 {
		t.Fatal("new member caught up without a snapshot")
	}
	// And a restart of the new member comes back from its own disk.
	m.kill()
	c.members[1] = m.restart()
	propose(t, first, "last=1")
	want["last"] = "1"
	c.converged(want)
}

// TestWrongCA checks that a member whose certificate comes from another CA
// cannot join, even with a member ID the cluster has added.
func TestWrongCA(t *testing.T) {
	c := newCluster(t, nil)
	leader := c.members[0]
	propose(t, leader, "a=1")

	l := listenLocal(t)
	addr := l.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	id, err := leader.node.AddMember(ctx, addr)
	if err != nil {
		t.Fatalf("AddMember: %v", err)
	}
	other, err := pki.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := other.Issue(id, addr)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := pki.NewCredentials(other.CertPEM, certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	intruder := startMember(t, Config{
		ID: id, DataDir: t.TempDir(), PeerListener: l, AdvertiseAddr: addr, TLS: foreign,
		Bootstrap: BootstrapJoin, Peers: leader.node.Members(),
	}, newKV())
	// The leader keeps trying to reach the new member and every TLS
	// handshake fails; after several attempts it still has nothing.
	eventually(t, "repeated refused connections", func() bool {
		return leader.node.tr.Load().connectFailures(id) >= 3
	})
	if st := intruder.node.Status(); st.Applied != 0 || len(intruder.fsm.state()) != 0 {
		t.Fatalf("member with a foreign CA received state: %+v", st)
	}
	if ms := leader.node.Members(); len(ms) != 2 || !ms[0].Learner && !ms[1].Learner {
		t.Fatalf("foreign member was promoted: %+v", ms)
	}
}

// TestNewLeavesNothingOnFailure: a member that cannot start (here: its peer
// port is taken) leaves no log behind, so the next start is a first start.
func TestNewLeavesNothingOnFailure(t *testing.T) {
	busy := listenLocal(t)
	defer busy.Close()
	ca, err := pki.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(7, busy.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	creds, err := pki.NewCredentials(ca.CertPEM, certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	_, err = New(Config{DataDir: dir, Bootstrap: BootstrapNew, TLS: creds, PeerAddr: busy.Addr().String()}, newKV(), zap.NewNop())
	if err == nil {
		t.Fatal("New succeeded on a taken port")
	}
	if HasLog(dir) {
		t.Fatal("failed New left a raft log behind")
	}
}
