package raftnode

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/scheduler/internal/pki"
)

// FSM is the replicated state machine. Apply is called for every committed
// normal entry, in log order, from one goroutine — possibly again for
// entries applied before a crash (the FSM keeps its own applied index
// durably and ignores index <= it). It must be deterministic.
//
// Snapshot and Restore are called from that same goroutine, between
// applies, so a snapshot always matches the applied index exactly.
type FSM interface {
	Apply(index uint64, data []byte) any     // result handed back to the proposer
	Snapshot() ([]byte, error)               // whole state, for log compaction and slow followers
	Restore(index uint64, data []byte) error // replace state with a snapshot
	AppliedIndex() uint64
}

// Member is one member of the cluster as the applied log records it.
type Member struct {
	ID      uint64
	Addr    string // peer address (host:port); empty before the cluster is initialised
	Learner bool   // receives the log but does not vote (yet)
}

// Status is this member's view of the cluster.
type Status struct {
	ID       uint64
	Leader   uint64 // 0 when there is none
	Term     uint64
	Commit   uint64 // highest index known committed
	Applied  uint64 // highest index applied to the FSM on this member
	IsLeader bool
	Members  []Member // ordered by ID
}

// ErrRemoved is returned by Run when this member has been removed from the
// cluster. Its data dir cannot be used to rejoin.
var ErrRemoved = fmt.Errorf("member removed from the cluster: %w", errkind.Precondition)

// Node is one member of the scheduler's Raft cluster. Create it with New and
// call Run once; the other methods are safe for concurrent use.
type Node struct {
	cfg Config
	id  uint64
	log *zap.Logger
	fsm FSM

	rn   raft.Node
	mem  *raft.MemoryStorage
	disk *disk

	tr      atomic.Pointer[transport]
	enablec chan *transport // EnablePeers → the Ready loop, which starts serving
	done    chan struct{}   // closed when Run has returned
	running atomic.Bool

	leader atomic.Uint64 // from the latest SoftState
	reqSeq atomic.Uint64 // request IDs: random start, so a restart never reuses one

	confMu sync.Mutex // one membership change at a time from this member

	mu         sync.Mutex
	members    map[uint64]string // applied membership: id → address
	removed    map[uint64]bool
	seeds      map[uint64]string // addresses from the join bundle, until the log knows better
	confState  *raftpb.ConfState
	applied    uint64
	appliedc   chan struct{} // closed and replaced whenever applied advances
	snapIndex  uint64
	proposals  map[uint64]chan any
	reads      map[uint64]chan uint64
	confWaits  map[uint64]chan struct{}
	removedMe  bool
	promotedAt map[uint64]time.Time
	// confChanged asks for a snapshot at the end of this Ready: a member
	// added after the latest snapshot refuses a snapshot whose
	// configuration does not name it, so the snapshot raft sends to new
	// members must be taken after their addition.
	confChanged bool
}

// New opens (or creates) the Raft state in cfg.DataDir and starts the Raft
// state machine; Run must be called to make progress.
func New(cfg Config, fsm FSM, log *zap.Logger) (_ *Node, err error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Node{
		cfg:        cfg,
		fsm:        fsm,
		enablec:    make(chan *transport),
		done:       make(chan struct{}),
		members:    map[uint64]string{},
		removed:    map[uint64]bool{},
		seeds:      map[uint64]string{},
		confState:  &raftpb.ConfState{},
		appliedc:   make(chan struct{}),
		proposals:  map[uint64]chan any{},
		reads:      map[uint64]chan uint64{},
		confWaits:  map[uint64]chan struct{}{},
		promotedAt: map[uint64]time.Time{},
		mem:        raft.NewMemoryStorage(),
	}
	var start [8]byte
	if _, err := rand.Read(start[:]); err != nil {
		return nil, fmt.Errorf("random request ids: %w", err)
	}
	n.reqSeq.Store(binary.BigEndian.Uint64(start[:]))

	rc := &raft.Config{
		ElectionTick:              cfg.ElectionTicks,
		HeartbeatTick:             cfg.HeartbeatTicks,
		Storage:                   n.mem,
		MaxSizePerMsg:             1 << 20,
		MaxInflightMsgs:           256,
		MaxUncommittedEntriesSize: 1 << 30,
		CheckQuorum:               true, // a leader cut off from the majority steps down
		PreVote:                   true, // a member rejoining after a cut does not depose a healthy leader
		StepDownOnRemoval:         true,
	}
	var peers []raft.Peer
	created := false // a log made here is removed again if New fails
	defer func() {
		if err == nil {
			return
		}
		n.disk.close()
		if created {
			os.RemoveAll(walDir(cfg.DataDir))
			os.RemoveAll(snapDir(cfg.DataDir))
		}
	}()
	switch {
	case hasLog(cfg.DataDir):
		if err := n.restore(cfg, rc, log); err != nil {
			return nil, err
		}
	case cfg.Bootstrap == BootstrapRestart:
		return nil, fmt.Errorf("restart: no raft log in %s: %w", cfg.DataDir, errkind.NotFound)
	case cfg.Bootstrap == BootstrapNew:
		n.id = cfg.ID
		if n.id == 0 {
			if cfg.TLS != nil {
				n.id = cfg.TLS.MemberID()
			} else if n.id, err = randomID(nil); err != nil {
				return nil, err
			}
		}
		addr := ""
		if cfg.TLS != nil {
			addr = cfg.AdvertiseAddr
		}
		self := &schedulerv1.RaftMember{Id: n.id, Address: addr}
		ctxb, err := proto.Marshal(self)
		if err != nil {
			return nil, fmt.Errorf("encode member: %w", err)
		}
		peers = []raft.Peer{{ID: n.id, Context: ctxb}}
		if n.disk, err = createDisk(log, cfg.DataDir, self); err != nil {
			return nil, err
		}
		created = true
	case cfg.Bootstrap == BootstrapJoin:
		n.id = cfg.ID
		if n.disk, err = createDisk(log, cfg.DataDir, &schedulerv1.RaftMember{Id: n.id, Address: cfg.AdvertiseAddr}); err != nil {
			return nil, err
		}
		created = true
		for _, m := range cfg.Peers {
			if m.ID != n.id && m.Addr != "" {
				n.seeds[m.ID] = m.Addr
			}
		}
	}
	n.log = log.Named("raft").With(zap.String("member", idString(n.id)))
	rc.ID = n.id
	rc.Logger = &raftLogger{s: n.log.WithOptions(zap.AddCallerSkip(1)).Sugar()}

	if cfg.TLS != nil {
		if cfg.TLS.MemberID() != n.id {
			return nil, fmt.Errorf("tls: certificate is for member %x, not %x: %w", cfg.TLS.MemberID(), n.id, errkind.Invalid)
		}
		// Listen on --peer-addr, else where this member is reached: the
		// advertised address, else the one Raft recorded (restored from the
		// snapshot every membership change is followed by).
		listenAddr := cfg.PeerAddr
		if listenAddr == "" {
			listenAddr = cfg.AdvertiseAddr
		}
		if listenAddr == "" {
			listenAddr, _ = n.addrOf(n.id)
		}
		if listenAddr == "" && cfg.PeerListener == nil {
			return nil, fmt.Errorf("raft config: peer addr: unknown for member %x; set it: %w", n.id, errkind.Invalid)
		}
		tr, err := newTransport(n, cfg.TLS, cfg.PeerListener, listenAddr)
		if err != nil {
			return nil, err
		}
		n.tr.Store(tr)
	}
	if peers != nil {
		n.rn = raft.StartNode(rc, peers)
	} else {
		n.rn = raft.RestartNode(rc)
	}
	n.log.Info("raft member started", zap.Stringer("bootstrap", cfg.Bootstrap),
		zap.Uint64("applied", n.applied), zap.Uint64("snapshot", n.snapIndex),
		zap.Bool("peers", cfg.TLS != nil), zap.String("advertise_addr", cfg.AdvertiseAddr))
	return n, nil
}

// restore reads the log back from disk into n and the memory storage, and
// brings the FSM up to the snapshot if it is behind it. Entries after the
// snapshot are re-delivered by raft as committed entries on the first
// Ready; the FSM ignores those it has already applied.
func (n *Node) restore(cfg Config, rc *raft.Config, log *zap.Logger) error {
	d, rec, err := openDisk(log, cfg.DataDir)
	if err != nil {
		return err
	}
	n.disk = d // closed by New if restore fails
	n.id = rec.meta.GetId()
	if cfg.ID != 0 && cfg.ID != n.id {
		return fmt.Errorf("data dir %s belongs to member %x, not %x: %w", cfg.DataDir, n.id, cfg.ID, errkind.Invalid)
	}
	if s := rec.snapshot; s != nil {
		if err := n.mem.ApplySnapshot(s); err != nil {
			return fmt.Errorf("load snapshot into memory: %w", err)
		}
		if err := n.installSnapshot(s); err != nil {
			return err
		}
		rc.Applied = s.GetMetadata().GetIndex()
	}
	if err := n.mem.SetHardState(rec.hard); err != nil {
		return fmt.Errorf("load hard state: %w", err)
	}
	if err := n.mem.Append(rec.entries); err != nil {
		return fmt.Errorf("load entries: %w", err)
	}
	return nil
}

// ID is this member's Raft ID.
func (n *Node) ID() uint64 { return n.id }

// Run drives the member until ctx is done: the Ready loop (persist, send,
// apply, Advance — in that order, on one goroutine), the peer transport
// and learner promotion. It returns nil when ctx is done, ErrRemoved if this
// member was removed, or the error that stopped it. It closes the log and
// the peer listener before returning; the Node cannot be run again (make a
// new one from the same data dir).
func (n *Node) Run(ctx context.Context) error {
	if !n.running.CompareAndSwap(false, true) {
		return errors.New("raft node: Run called twice")
	}
	defer close(n.done)
	g, gctx := errgroup.WithContext(ctx)
	if tr := n.tr.Load(); tr != nil {
		g.Go(func() error { return tr.serve(gctx) })
	}
	g.Go(func() error { return n.loop(gctx, g) })
	g.Go(func() error { return n.promoteLearners(gctx) })
	err := g.Wait()

	n.rn.Stop()
	if tr := n.tr.Load(); tr != nil {
		tr.close()
	} else if n.cfg.PeerListener != nil {
		n.cfg.PeerListener.Close() // never used: peers were not enabled
	}
	if cerr := n.disk.close(); cerr != nil && err == nil {
		err = cerr
	}
	n.log.Info("raft member stopped", zap.Error(err))
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return err
}

func (n *Node) loop(ctx context.Context, g *errgroup.Group) error {
	ticker := time.NewTicker(n.cfg.TickInterval)
	defer ticker.Stop()
	// The only voter need not wait an election timeout to lead: it
	// campaigns once, as soon as it knows it is alone.
	campaigned := false
	campaignAlone := func() error {
		if campaigned {
			return nil
		}
		n.mu.Lock()
		alone := len(n.confState.GetVoters()) == 1 && n.confState.GetVoters()[0] == n.id
		n.mu.Unlock()
		if !alone {
			return nil
		}
		campaigned = true
		if err := n.rn.Campaign(ctx); err != nil && ctx.Err() == nil {
			return fmt.Errorf("campaign: %w", err)
		}
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
			n.rn.Tick()
			if err := campaignAlone(); err != nil {
				return err
			}
		case tr := <-n.enablec:
			n.tr.Store(tr)
			g.Go(func() error { return tr.serve(ctx) })
		case rd := <-n.rn.Ready():
			if err := n.handleReady(rd); err != nil {
				return err
			}
			n.mu.Lock()
			gone := n.removedMe
			n.mu.Unlock()
			if gone {
				return ErrRemoved
			}
			if err := campaignAlone(); err != nil {
				return err
			}
		}
	}
}

// handleReady processes one Ready: persist, then send, then apply, then
// Advance. Messages leave only after the entries and hard state they
// depend on are on disk, as the library requires.
func (n *Node) handleReady(rd raft.Ready) error {
	if rd.SoftState != nil {
		if old := n.leader.Swap(rd.SoftState.Lead); old != rd.SoftState.Lead {
			n.log.Info("leader changed", zap.String("leader", idString(rd.SoftState.Lead)), zap.String("previous", idString(old)))
		}
	}
	// 1. Persist.
	if err := n.disk.save(rd.HardState, rd.Entries, rd.Snapshot); err != nil {
		return fmt.Errorf("persist ready: %w", err)
	}
	if !raft.IsEmptySnap(rd.Snapshot) {
		if err := n.mem.ApplySnapshot(rd.Snapshot); err != nil {
			return fmt.Errorf("apply snapshot to memory storage: %w", err)
		}
	}
	if err := n.mem.Append(rd.Entries); err != nil {
		return fmt.Errorf("append entries to memory storage: %w", err)
	}
	// 2. Send.
	if tr := n.tr.Load(); tr != nil {
		tr.send(rd.Messages)
	}
	// 3. Apply.
	if !raft.IsEmptySnap(rd.Snapshot) {
		if err := n.installSnapshot(rd.Snapshot); err != nil {
			return err
		}
		n.log.Info("installed snapshot from leader", zap.Uint64("index", rd.Snapshot.GetMetadata().GetIndex()))
	}
	for _, e := range rd.CommittedEntries {
		if err := n.applyEntry(e); err != nil {
			return err
		}
	}
	if len(rd.ReadStates) > 0 {
		n.mu.Lock()
		for _, rs := range rd.ReadStates {
			if len(rs.RequestCtx) == 8 {
				if ch, ok := n.reads[binary.BigEndian.Uint64(rs.RequestCtx)]; ok {
					ch <- rs.Index
				}
			}
		}
		n.mu.Unlock()
	}
	if err := n.maybeSnapshot(); err != nil {
		return err
	}
	// 4. Advance.
	n.rn.Advance()
	return nil
}

// installSnapshot replaces the membership and the FSM's state with a
// snapshot's. The FSM is restored only if it is behind the snapshot.
func (n *Node) installSnapshot(s *raftpb.Snapshot) error {
	md := s.GetMetadata()
	var data schedulerv1.RaftSnapshotData
	if err := proto.Unmarshal(s.GetData(), &data); err != nil {
		return fmt.Errorf("decode snapshot %d: %w", md.GetIndex(), err)
	}
	if md.GetIndex() > n.fsm.AppliedIndex() {
		if err := n.fsm.Restore(md.GetIndex(), data.GetState()); err != nil {
			return fmt.Errorf("restore state machine from snapshot %d: %w", md.GetIndex(), err)
		}
	}
	n.mu.Lock()
	n.members = map[uint64]string{}
	for _, m := range data.GetMembers() {
		n.members[m.GetId()] = m.GetAddress()
	}
	n.removed = map[uint64]bool{}
	for _, id := range data.GetRemovedIds() {
		n.removed[id] = true
	}
	n.confState = proto.Clone(md.GetConfState()).(*raftpb.ConfState)
	n.snapIndex = md.GetIndex()
	n.setAppliedLocked(md.GetIndex())
	n.mu.Unlock()
	return nil
}

// Entry data is a header naming the proposing member and its request,
// followed by the FSM's payload, so the result can be handed back to the
// proposer when the entry is applied on its member.
const (
	entryMagic   = 0x5a // 'Z'
	entryVersion = 1
	entryHeader  = 2 + 8 + 8
)

func encodeEntry(origin, req uint64, payload []byte) []byte {
	b := make([]byte, entryHeader+len(payload))
	b[0], b[1] = entryMagic, entryVersion
	binary.BigEndian.PutUint64(b[2:], origin)
	binary.BigEndian.PutUint64(b[10:], req)
	copy(b[entryHeader:], payload)
	return b
}

func decodeEntry(b []byte) (origin, req uint64, payload []byte, err error) {
	if len(b) < entryHeader || b[0] != entryMagic || b[1] != entryVersion {
		return 0, 0, nil, fmt.Errorf("entry header: unknown format")
	}
	return binary.BigEndian.Uint64(b[2:]), binary.BigEndian.Uint64(b[10:]), b[entryHeader:], nil
}

func (n *Node) applyEntry(e *raftpb.Entry) error {
	idx := e.GetIndex()
	n.mu.Lock()
	skip := idx <= n.applied
	n.mu.Unlock()
	if skip {
		return nil
	}
	switch e.GetType() {
	case raftpb.EntryNormal:
		if len(e.GetData()) > 0 { // empty entries are appended by new leaders
			origin, req, payload, err := decodeEntry(e.GetData())
			if err != nil {
				return fmt.Errorf("apply entry %d: %w", idx, err)
			}
			res := n.fsm.Apply(idx, payload)
			if origin == n.id {
				n.mu.Lock()
				if ch, ok := n.proposals[req]; ok {
					ch <- res
				}
				n.mu.Unlock()
			}
		}
	case raftpb.EntryConfChange:
		var cc raftpb.ConfChange
		if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
			return fmt.Errorf("decode conf change %d: %w", idx, err)
		}
		n.applyConfChange(idx, &cc)
	case raftpb.EntryConfChangeV2:
		// Never proposed by this package; applied so that raft's own
		// configuration stays consistent should one appear.
		var cc raftpb.ConfChangeV2
		if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
			return fmt.Errorf("decode conf change %d: %w", idx, err)
		}
		cs := n.rn.ApplyConfChange(&cc)
		n.mu.Lock()
		n.confState = cs
		n.mu.Unlock()
	}
	n.mu.Lock()
	n.setAppliedLocked(idx)
	n.mu.Unlock()
	return nil
}

func (n *Node) applyConfChange(idx uint64, cc *raftpb.ConfChange) {
	id := cc.GetNodeId()
	var m schedulerv1.RaftMember
	_ = proto.Unmarshal(cc.GetContext(), &m) // empty for removals
	n.mu.Lock()
	// A removed ID never comes back, and adding a learner never demotes a
	// voter (which makes a retried AddMember harmless). Such changes are
	// no-ops: raft is not told about them, as the library allows. The
	// decision depends only on the log, so every member makes the same.
	// Nor may the only voter go (raft cannot run without one; two removals
	// proposed from different members could otherwise get there).
	refused := (n.removed[id] && cc.GetType() != raftpb.ConfChangeRemoveNode) ||
		(cc.GetType() == raftpb.ConfChangeAddLearnerNode && slices.Contains(n.confState.GetVoters(), id)) ||
		(cc.GetType() == raftpb.ConfChangeRemoveNode && n.onlyVoter(id))
	n.mu.Unlock()
	if refused {
		n.log.Warn("ignored conf change", zap.Stringer("change", cc.GetType()), zap.String("target", idString(id)), zap.Uint64("index", idx))
		n.notifyConf(cc.GetId())
		return
	}
	cs := n.rn.ApplyConfChange(cc)
	n.mu.Lock()
	n.confState = cs
	n.confChanged = true
	switch cc.GetType() {
	case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode, raftpb.ConfChangeUpdateNode:
		if m.GetId() == id {
			n.members[id] = m.GetAddress()
		} else if _, ok := n.members[id]; !ok {
			n.members[id] = ""
		}
		delete(n.seeds, id)
	case raftpb.ConfChangeRemoveNode:
		delete(n.members, id)
		n.removed[id] = true
		if id == n.id {
			n.removedMe = true
		}
	}
	n.mu.Unlock()
	if cc.GetType() == raftpb.ConfChangeRemoveNode {
		if tr := n.tr.Load(); tr != nil {
			tr.dropPeer(id)
		}
	}
	n.log.Info("membership changed", zap.Stringer("change", cc.GetType()), zap.String("target", idString(id)),
		zap.String("addr", m.GetAddress()), zap.Uint64("index", idx))
	n.notifyConf(cc.GetId())
}

func (n *Node) notifyConf(reqID uint64) {
	n.mu.Lock()
	if ch, ok := n.confWaits[reqID]; ok {
		close(ch)
		delete(n.confWaits, reqID)
	}
	n.mu.Unlock()
}

func (n *Node) setAppliedLocked(idx uint64) {
	if idx > n.applied {
		n.applied = idx
		close(n.appliedc)
		n.appliedc = make(chan struct{})
	}
}

// maybeSnapshot takes a snapshot once SnapshotEntries entries have been
// applied since the last one, persists it, and compacts the in-memory log,
// keeping CatchUpEntries entries behind it for lagging members.
func (n *Node) maybeSnapshot() error {
	n.mu.Lock()
	applied, last, forced := n.applied, n.snapIndex, n.confChanged
	n.confChanged = false
	n.mu.Unlock()
	if applied <= last || (applied-last < n.cfg.SnapshotEntries && !forced) {
		return nil
	}
	state, err := n.fsm.Snapshot()
	if err != nil {
		return fmt.Errorf("state machine snapshot at %d: %w", applied, err)
	}
	n.mu.Lock()
	data := &schedulerv1.RaftSnapshotData{State: state}
	for _, id := range sortedKeys(n.members) {
		data.Members = append(data.Members, &schedulerv1.RaftMember{Id: id, Address: n.members[id]})
	}
	data.RemovedIds = sortedKeys(n.removed)
	cs := proto.Clone(n.confState).(*raftpb.ConfState)
	n.mu.Unlock()
	b, err := proto.Marshal(data)
	if err != nil {
		return fmt.Errorf("encode snapshot %d: %w", applied, err)
	}
	s, err := n.mem.CreateSnapshot(applied, cs, b)
	if err != nil {
		return fmt.Errorf("create snapshot %d: %w", applied, err)
	}
	if err := n.disk.saveSnapshot(s); err != nil {
		return err
	}
	if applied > n.cfg.CatchUpEntries {
		compact := applied - n.cfg.CatchUpEntries
		if err := n.mem.Compact(compact); err != nil && !errors.Is(err, raft.ErrCompacted) {
			return fmt.Errorf("compact log to %d: %w", compact, err)
		}
	}
	n.mu.Lock()
	n.snapIndex = applied
	n.mu.Unlock()
	n.log.Info("snapshot taken", zap.Uint64("index", applied), zap.Int("bytes", len(b)))
	return nil
}

// Propose replicates data and returns the FSM's result once the entry is
// applied on this member. On a follower the proposal is forwarded to the
// leader by raft (a MsgProp over the peer transport). It fails with
// errkind.Unavailable when there is no leader, when this member is cut off
// from the majority, or when the entry is not applied before ctx's deadline
// (or ProposalTimeout): the write may still commit later in that last case.
func (n *Node) Propose(ctx context.Context, data []byte) (any, error) {
	if err := n.usable(); err != nil {
		return nil, err
	}
	ctx, cancel := n.bound(ctx)
	defer cancel()
	req := n.reqSeq.Add(1)
	ch := make(chan any, 1)
	n.mu.Lock()
	n.proposals[req] = ch
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.proposals, req)
		n.mu.Unlock()
	}()
	if err := n.rn.Propose(ctx, encodeEntry(n.id, req, data)); err != nil {
		return nil, n.unavailable("propose", err)
	}
	select {
	case res := <-ch:
		return res, nil
	case <-ctx.Done():
		return nil, n.unavailable("proposal not applied", ctx.Err())
	case <-n.done:
		return nil, n.unavailable("proposal not applied", raft.ErrStopped)
	}
}

// LinearizableRead returns once this member has applied everything that was
// committed when it was called (raft ReadIndex, confirmed by a quorum of
// heartbeats). Reads of the FSM after it see at least that state.
func (n *Node) LinearizableRead(ctx context.Context) error {
	if err := n.usable(); err != nil {
		return err
	}
	ctx, cancel := n.bound(ctx)
	defer cancel()
	req := n.reqSeq.Add(1)
	ch := make(chan uint64, 1)
	n.mu.Lock()
	n.reads[req] = ch
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.reads, req)
		n.mu.Unlock()
	}()
	var rctx [8]byte
	binary.BigEndian.PutUint64(rctx[:], req)
	if err := n.rn.ReadIndex(ctx, rctx[:]); err != nil {
		return n.unavailable("read index", err)
	}
	var idx uint64
	select {
	case idx = <-ch:
	case <-ctx.Done():
		return n.unavailable("read index not confirmed", ctx.Err())
	case <-n.done:
		return n.unavailable("read index", raft.ErrStopped)
	}
	return n.waitApplied(ctx, idx)
}

func (n *Node) waitApplied(ctx context.Context, idx uint64) error {
	for {
		n.mu.Lock()
		applied, ch := n.applied, n.appliedc
		n.mu.Unlock()
		if applied >= idx {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return n.unavailable(fmt.Sprintf("apply up to %d", idx), ctx.Err())
		case <-n.done:
			return n.unavailable("apply", raft.ErrStopped)
		}
	}
}

// usable fails fast when a request cannot succeed: the member is stopped
// or removed, or knows no leader (raft would otherwise hold a proposal
// until the context ends).
func (n *Node) usable() error {
	select {
	case <-n.done:
		return fmt.Errorf("raft member %s stopped: %w", idString(n.id), errkind.Unavailable)
	default:
	}
	n.mu.Lock()
	gone := n.removedMe
	n.mu.Unlock()
	if gone {
		return ErrRemoved
	}
	// The Ready loop's view of the leader can trail raft's by one Ready;
	// ask raft before refusing.
	if n.leader.Load() == raft.None && n.rn.Status().Lead == raft.None {
		return fmt.Errorf("raft member %s: no leader: %w", idString(n.id), errkind.Unavailable)
	}
	return nil
}

func (n *Node) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, n.cfg.ProposalTimeout)
}

func (n *Node) unavailable(what string, err error) error {
	return fmt.Errorf("raft member %s: %s: %w: %w", idString(n.id), what, errkind.Unavailable, err)
}

// Status is this member's view of the cluster.
func (n *Node) Status() Status {
	st := n.rn.Status()
	s := Status{
		ID:      n.id,
		Leader:  st.Lead,
		Term:    st.HardState.GetTerm(),
		Commit:  st.HardState.GetCommit(),
		Members: n.Members(),
	}
	s.IsLeader = s.Leader == n.id && st.RaftState == raft.StateLeader
	n.mu.Lock()
	s.Applied = n.applied
	n.mu.Unlock()
	return s
}

// Members returns the applied membership, ordered by ID.
func (n *Node) Members() []Member {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]Member, 0, len(n.members))
	for _, id := range sortedKeys(n.members) {
		out = append(out, Member{ID: id, Addr: n.members[id], Learner: slices.Contains(n.confState.GetLearners(), id)})
	}
	return out
}

// AddMember adds a member reachable at addr (host:port) as a learner and
// returns its new ID once the change is applied on this member. The leader
// promotes it to a voter when it has caught up, so adding a member never
// costs the cluster its quorum while the new scheduler starts. The caller
// issues the new member's certificate for the returned ID.
func (n *Node) AddMember(ctx context.Context, addr string) (uint64, error) {
	if err := checkAddr(addr); err != nil {
		return 0, fmt.Errorf("add member: %w: %w", errkind.Invalid, err)
	}
	if n.tr.Load() == nil {
		return 0, fmt.Errorf("add member: peers are not enabled on this member (run zlctl cluster init): %w", errkind.Precondition)
	}
	n.confMu.Lock()
	defer n.confMu.Unlock()
	n.mu.Lock()
	for id, a := range n.members {
		if a == addr {
			n.mu.Unlock()
			return 0, fmt.Errorf("add member %s: member %s already has that address: %w", addr, idString(id), errkind.Conflict)
		}
	}
	id, err := randomID(func(id uint64) bool { _, in := n.members[id]; return in || n.removed[id] })
	n.mu.Unlock()
	if err != nil {
		return 0, err
	}
	ctxb, err := proto.Marshal(&schedulerv1.RaftMember{Id: id, Address: addr})
	if err != nil {
		return 0, fmt.Errorf("encode member: %w", err)
	}
	cc := &raftpb.ConfChange{Type: new(raftpb.ConfChangeAddLearnerNode), NodeId: new(id), Context: ctxb}
	if err := n.changeConf(ctx, cc); err != nil {
		return 0, fmt.Errorf("add member %s: %w", addr, err)
	}
	return id, nil
}

// RemoveMember removes member id. errkind.NotFound if there is no such
// member; errkind.Precondition for the last member or the only voter.
func (n *Node) RemoveMember(ctx context.Context, id uint64) error {
	n.confMu.Lock()
	defer n.confMu.Unlock()
	n.mu.Lock()
	_, ok := n.members[id]
	count := len(n.members)
	onlyVoter := n.onlyVoter(id)
	n.mu.Unlock()
	if !ok {
		return fmt.Errorf("remove member %s: %w", idString(id), errkind.NotFound)
	}
	if count == 1 {
		return fmt.Errorf("remove member %s: it is the last member: %w", idString(id), errkind.Precondition)
	}
	if onlyVoter {
		return fmt.Errorf("remove member %s: it is the only voting member (raise --max-voters so that a learner is promoted first): %w", idString(id), errkind.Precondition)
	}
	cc := &raftpb.ConfChange{Type: new(raftpb.ConfChangeRemoveNode), NodeId: new(id)}
	if err := n.changeConf(ctx, cc); err != nil {
		return fmt.Errorf("remove member %s: %w", idString(id), err)
	}
	return nil
}

// onlyVoter reports whether id is the one voter of the applied
// configuration. n.mu is held.
func (n *Node) onlyVoter(id uint64) bool {
	v := n.confState.GetVoters()
	return len(v) == 1 && v[0] == id
}

// EnablePeers turns on the peer transport of a member started without
// credentials (InitCluster): it starts serving RaftService with creds on
// the configured peer address (or on advertise when none is configured) and
// records advertise as this member's address in Raft. Before Run restarts
// with peers on, the caller must keep creds where the next start finds
// them (internal/clusterserver stores them under <data-dir>/pki).
func (n *Node) EnablePeers(ctx context.Context, creds *pki.Credentials, advertise string) error {
	if err := checkAddr(advertise); err != nil {
		return fmt.Errorf("enable peers: advertise address: %w: %w", errkind.Invalid, err)
	}
	if creds.MemberID() != n.id {
		return fmt.Errorf("enable peers: certificate is for member %x, not %x: %w", creds.MemberID(), n.id, errkind.Invalid)
	}
	if err := n.usable(); err != nil {
		return err
	}
	n.confMu.Lock()
	defer n.confMu.Unlock()
	if n.tr.Load() != nil {
		// Already on (a restart after an init interrupted by a crash):
		// only the address may be missing from Raft.
		n.mu.Lock()
		recorded := n.members[n.id]
		n.mu.Unlock()
		if recorded != "" {
			return fmt.Errorf("enable peers: already enabled at %s: %w", recorded, errkind.Conflict)
		}
	} else {
		listenAddr := n.cfg.PeerAddr
		if listenAddr == "" {
			listenAddr = advertise // no --peer-addr: listen where we are reached
		}
		tr, err := newTransport(n, creds, n.cfg.PeerListener, listenAddr)
		if err != nil {
			return err
		}
		select {
		case n.enablec <- tr:
		case <-ctx.Done():
			tr.close()
			return n.unavailable("enable peers", ctx.Err())
		case <-n.done:
			tr.close()
			return n.unavailable("enable peers", raft.ErrStopped)
		}
	}
	ctxb, err := proto.Marshal(&schedulerv1.RaftMember{Id: n.id, Address: advertise})
	if err != nil {
		return fmt.Errorf("encode member: %w", err)
	}
	cc := &raftpb.ConfChange{Type: new(raftpb.ConfChangeUpdateNode), NodeId: new(n.id), Context: ctxb}
	if err := n.changeConf(ctx, cc); err != nil {
		return fmt.Errorf("enable peers: record address: %w", err)
	}
	return nil
}

// changeConf proposes a configuration change and waits until it is applied
// on this member.
func (n *Node) changeConf(ctx context.Context, cc *raftpb.ConfChange) error {
	if err := n.usable(); err != nil {
		return err
	}
	ctx, cancel := n.bound(ctx)
	defer cancel()
	req := n.reqSeq.Add(1)
	cc.Id = new(req)
	ch := make(chan struct{})
	n.mu.Lock()
	n.confWaits[req] = ch
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.confWaits, req)
		n.mu.Unlock()
	}()
	// raft silently drops a configuration change while another is pending
	// (including one applied here but not yet acknowledged by Advance), so
	// an unapplied change is proposed again; every change this package
	// makes is idempotent when applied twice.
	retry := time.NewTicker(2 * time.Duration(n.cfg.ElectionTicks) * n.cfg.TickInterval)
	defer retry.Stop()
	for {
		if err := n.rn.ProposeConfChange(ctx, cc); err != nil {
			return n.unavailable("propose conf change", err)
		}
		select {
		case <-ch:
			return nil
		case <-retry.C:
		case <-ctx.Done():
			return n.unavailable("conf change not applied", ctx.Err())
		case <-n.done:
			return n.unavailable("conf change", raft.ErrStopped)
		}
	}
}

// promoteLearners runs on every member but acts only on the leader: while
// there are fewer than Config.MaxVoters voters, a learner whose log has
// caught up with the commit index is proposed as a voter. A promotion that
// raft drops (another change pending) is retried after a few election
// timeouts.
func (n *Node) promoteLearners(ctx context.Context) error {
	t := time.NewTicker(max(n.cfg.TickInterval*time.Duration(n.cfg.HeartbeatTicks)*2, n.cfg.TickInterval))
	defer t.Stop()
	retry := 3 * time.Duration(n.cfg.ElectionTicks) * n.cfg.TickInterval
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		st := n.rn.Status()
		if st.RaftState != raft.StateLeader {
			continue
		}
		if len(st.Config.Voters[0]) >= n.cfg.MaxVoters || len(st.Config.Voters[1]) > 0 {
			continue // enough voters, or a joint change in progress
		}
		commit := st.HardState.GetCommit()
		for id := range st.Config.Learners {
			pr, ok := st.Progress[id]
			// Replicate state means the learner has acknowledged appends;
			// probing learners (unreachable, or refusing us) stay learners.
			if !ok || !pr.RecentActive || pr.State != tracker.StateReplicate || pr.Match+16 < commit {
				continue
			}
			n.mu.Lock()
			addr, known := n.members[id]
			last := n.promotedAt[id]
			if known && time.Since(last) > retry {
				n.promotedAt[id] = time.Now()
			} else {
				known = false
			}
			n.mu.Unlock()
			if !known {
				continue
			}
			ctxb, err := proto.Marshal(&schedulerv1.RaftMember{Id: id, Address: addr})
			if err != nil {
				return fmt.Errorf("encode member: %w", err)
			}
			cc := &raftpb.ConfChange{Type: new(raftpb.ConfChangeAddNode), NodeId: new(id), Context: ctxb}
			pctx, cancel := context.WithTimeout(ctx, retry)
			err = n.rn.ProposeConfChange(pctx, cc)
			cancel()
			if err != nil {
				n.log.Warn("learner promotion not proposed", zap.String("target", idString(id)), zap.Error(err))
				continue
			}
			n.log.Info("learner caught up; proposed promotion to voter", zap.String("target", idString(id)), zap.Uint64("match", pr.Match))
			break // one change at a time
		}
	}
}

// addrOf is where member id is reached: the applied membership, else the
// join bundle's seeds.
func (n *Node) addrOf(id uint64) (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if a, ok := n.members[id]; ok && a != "" {
		return a, true
	}
	a, ok := n.seeds[id]
	return a, ok && a != ""
}

func (n *Node) isRemoved(id uint64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.removed[id]
}

// randomID returns a random non-zero member ID for which taken is false.
func randomID(taken func(uint64) bool) (uint64, error) {
	for {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return 0, fmt.Errorf("random member id: %w", err)
		}
		id := binary.BigEndian.Uint64(b[:]) >> 1 // keep IDs positive as int64 for JSON/proto users
		if id != 0 && (taken == nil || !taken(id)) {
			return id, nil
		}
	}
}

func idString(id uint64) string { return fmt.Sprintf("%x", id) }

func sortedKeys[V any](m map[uint64]V) []uint64 {
	ks := make([]uint64, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// listen opens the peer listener.
func listen(l net.Listener, addr string) (net.Listener, error) {
	if l != nil {
		return l, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("peer listen %s: %w", addr, err)
	}
	return l, nil
}
