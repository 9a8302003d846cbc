package raftnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/errkind"
	"zlayer.dev/libs/rpc"
	"zlayer.dev/services/scheduler/internal/pki"
)

// Transport limits.
const (
	peerQueue      = 4096      // messages waiting for one peer before new ones are dropped
	maxBatch       = 64        // messages per SendMessagesRequest
	maxMessageSize = 512 << 20 // snapshots travel as one message
)

// transport is the peer side of a member: it serves RaftService on the peer
// listener with mutual TLS, and keeps one outgoing stream per peer. Raft
// tolerates lost messages, so a full queue or a broken stream drops
// messages and tells raft the peer is unreachable; it never blocks the
// Ready loop.
type transport struct {
	n     *Node
	log   *zap.Logger
	creds *pki.Credentials
	lis   net.Listener
	srv   *grpc.Server

	mu     sync.Mutex
	peers  map[uint64]*peerConn
	closed bool

	// partitioned drops every message in and out. It is the one fault
	// injected in code: the tests run every member in one process on
	// loopback, where a real network cut between two members cannot be
	// made without root and network namespaces per member; dropping at the
	// transport is what a cut looks like to raft.
	partitioned atomic.Bool
}

func newTransport(n *Node, creds *pki.Credentials, l net.Listener, addr string) (*transport, error) {
	lis, err := listen(l, addr)
	if err != nil {
		return nil, err
	}
	t := &transport{
		n:     n,
		log:   n.log.Named("transport"),
		creds: creds,
		lis:   lis,
		peers: map[uint64]*peerConn{},
	}
	t.srv = grpc.NewServer(
		grpc.Creds(credentials.NewTLS(creds.ServerTLS())),
		grpc.MaxRecvMsgSize(maxMessageSize),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := t.checkMember(ctx, info.FullMethod); err != nil {
				return nil, err
			}
			res, err := h(ctx, req)
			return res, rpc.ToStatus(err)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := t.checkMember(ss.Context(), info.FullMethod); err != nil {
				return err
			}
			return rpc.ToStatus(h(srv, ss))
		}),
	)
	schedulerv1.RegisterRaftServiceServer(t.srv, &raftService{t: t})
	if n.cfg.PeerServices != nil {
		n.cfg.PeerServices(t.srv)
	}
	return t, nil
}

// checkMember lets current members call the services other than
// RaftService (which checks every message's sender itself): the certificate
// was verified against the cluster CA by TLS; its member must not have been
// removed and must be in the membership.
func (t *transport) checkMember(ctx context.Context, method string) error {
	if strings.HasPrefix(method, "/"+schedulerv1.RaftService_ServiceDesc.ServiceName+"/") {
		return nil
	}
	id, err := callerID(ctx)
	if err != nil {
		return status.Error(codes.Unauthenticated, err.Error())
	}
	t.n.mu.Lock()
	_, member := t.n.members[id]
	removed := t.n.removed[id]
	t.n.mu.Unlock()
	if removed || !member {
		return status.Errorf(codes.PermissionDenied, "%s: caller %s is not a member of the cluster", method, idString(id))
	}
	return nil
}

// DialMember connects to member id's peer listener with this member's
// credentials, for the services registered with Config.PeerServices. The
// caller closes the connection.
func (n *Node) DialMember(id uint64) (*grpc.ClientConn, error) {
	t := n.tr.Load()
	if t == nil {
		return nil, fmt.Errorf("dial member %s: this scheduler is not part of a cluster (zlctl cluster init): %w", idString(id), errkind.Precondition)
	}
	n.mu.Lock()
	addr := n.members[id]
	if addr == "" {
		addr = n.seeds[id]
	}
	n.mu.Unlock()
	if addr == "" {
		return nil, fmt.Errorf("dial member %s: no address known: %w", idString(id), errkind.NotFound)
	}
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(credentials.NewTLS(t.creds.ClientTLS())),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}),
	)
	if err != nil {
		return nil, fmt.Errorf("dial member %s at %s: %w", idString(id), addr, err)
	}
	return cc, nil
}

// serve runs the RaftService server until ctx is done, then stops it
// abruptly: raft needs no draining.
func (t *transport) serve(ctx context.Context) error {
	t.log.Info("serving raft peers", zap.String("addr", t.lis.Addr().String()))
	errc := make(chan error, 1)
	go func() { errc <- t.srv.Serve(t.lis) }()
	select {
	case <-ctx.Done():
		t.close()
		<-errc
		return nil
	case err := <-errc:
		if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serve raft peers on %s: %w", t.lis.Addr(), err)
		}
		return nil
	}
}

// close stops the server and every outgoing stream.
func (t *transport) close() {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.closed = true
	peers := t.peers
	t.peers = map[uint64]*peerConn{}
	t.mu.Unlock()
	t.srv.Stop()
	t.lis.Close()
	for _, p := range peers {
		p.stop()
	}
}

// setPartitioned cuts this member off (or reconnects it); see partitioned.
func (t *transport) setPartitioned(on bool) { t.partitioned.Store(on) }

// send queues messages for their peers without blocking.
func (t *transport) send(msgs []*raftpb.Message) {
	for _, m := range msgs {
		to := m.GetTo()
		if t.partitioned.Load() {
			t.failed(m)
			continue
		}
		p := t.peer(to)
		if p == nil {
			t.failed(m)
			continue
		}
		select {
		case p.q <- m:
		default:
			t.failed(m)
		}
	}
}

// failed tells raft a message did not leave.
func (t *transport) failed(m *raftpb.Message) {
	t.n.rn.ReportUnreachable(m.GetTo())
	if m.GetType() == raftpb.MsgSnap {
		t.n.rn.ReportSnapshot(m.GetTo(), raft.SnapshotFailure)
	}
}

// peer returns the connection to member id, creating it (or replacing it
// when the member's address changed). Nil if the address is unknown.
func (t *transport) peer(id uint64) *peerConn {
	addr, ok := t.n.addrOf(id)
	if !ok {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	if p, ok := t.peers[id]; ok {
		if p.addr == addr {
			return p
		}
		p.stop()
	}
	p := newPeerConn(t, id, addr)
	t.peers[id] = p
	return p
}

// dropPeer stops the stream to a removed member.
func (t *transport) dropPeer(id uint64) {
	t.mu.Lock()
	p := t.peers[id]
	delete(t.peers, id)
	t.mu.Unlock()
	if p != nil {
		p.stop()
	}
}

// connectFailures counts failed attempts to reach member id (tests).
func (t *transport) connectFailures(id uint64) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.peers[id]; ok {
		return p.failures.Load()
	}
	return 0
}

// peerConn is the outgoing stream to one member.
type peerConn struct {
	t        *transport
	id       uint64
	addr     string
	log      *zap.Logger
	q        chan *raftpb.Message
	cancel   context.CancelFunc
	done     chan struct{}
	failures atomic.Uint64
}

func newPeerConn(t *transport, id uint64, addr string) *peerConn {
	ctx, cancel := context.WithCancel(context.Background())
	p := &peerConn{
		t: t, id: id, addr: addr,
		log:    t.log.With(zap.String("peer", idString(id)), zap.String("addr", addr)),
		q:      make(chan *raftpb.Message, peerQueue),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	// Owned by the transport: stopped by stop(), which waits for it.
	go p.run(ctx)
	return p
}

func (p *peerConn) stop() {
	p.cancel()
	<-p.done
}

func (p *peerConn) run(ctx context.Context) {
	defer close(p.done)
	cc, err := grpc.NewClient("passthrough:///"+p.addr,
		grpc.WithTransportCredentials(credentials.NewTLS(p.t.creds.ClientTLS())),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(maxMessageSize)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 2 * time.Second,
		}),
	)
	if err != nil {
		p.log.Error("peer client not created", zap.Error(err))
		p.drain(ctx)
		return
	}
	defer cc.Close()
	client := schedulerv1.NewRaftServiceClient(cc)
	delay := 50 * time.Millisecond
	for ctx.Err() == nil {
		err := p.stream(ctx, client)
		if ctx.Err() != nil {
			return
		}
		p.failures.Add(1)
		p.t.n.rn.ReportUnreachable(p.id)
		p.log.Debug("raft stream to peer broken", zap.Error(err))
		// Messages queued meanwhile are stale; raft resends what matters.
		p.flush()
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, time.Second)
	}
}

// stream opens one SendMessages stream and feeds it from the queue until
// it breaks or ctx ends.
func (p *peerConn) stream(ctx context.Context, client schedulerv1.RaftServiceClient) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := client.SendMessages(sctx)
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	for {
		var m *raftpb.Message
		select {
		case <-ctx.Done():
			return ctx.Err()
		case m = <-p.q:
		}
		batch := []*raftpb.Message{m}
	more:
		for len(batch) < maxBatch {
			select {
			case m := <-p.q:
				batch = append(batch, m)
			default:
				break more
			}
		}
		req := &schedulerv1.SendMessagesRequest{Messages: make([][]byte, 0, len(batch))}
		for _, m := range batch {
			b, err := proto.Marshal(m)
			if err != nil {
				return fmt.Errorf("encode raft message: %w", err)
			}
			req.Messages = append(req.Messages, b)
		}
		if p.t.partitioned.Load() {
			for _, m := range batch {
				p.t.failed(m)
			}
			continue
		}
		if err := st.Send(req); err != nil {
			for _, m := range batch {
				p.t.failed(m)
			}
			if errors.Is(err, io.EOF) {
				_, err = st.CloseAndRecv()
			}
			return fmt.Errorf("send: %w", err)
		}
		for _, m := range batch {
			if m.GetType() == raftpb.MsgSnap {
				p.t.n.rn.ReportSnapshot(p.id, raft.SnapshotFinish)
			}
		}
	}
}

// flush drops queued messages, reporting snapshots as failed.
func (p *peerConn) flush() {
	for {
		select {
		case m := <-p.q:
			if m.GetType() == raftpb.MsgSnap {
				p.t.n.rn.ReportSnapshot(p.id, raft.SnapshotFailure)
			}
		default:
			return
		}
	}
}

func (p *peerConn) drain(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-p.q:
			p.t.failed(m)
		}
	}
}

// raftService serves RaftService for one member.
type raftService struct {
	schedulerv1.UnimplementedRaftServiceServer
	t *transport
}

// SendMessages steps every message of the stream into raft, after checking
// that the caller's certificate names the message's sender and that the
// sender was not removed.
func (s *raftService) SendMessages(st grpc.ClientStreamingServer[schedulerv1.SendMessagesRequest, schedulerv1.SendMessagesResponse]) error {
	from, err := callerID(st.Context())
	if err != nil {
		return status.Error(codes.Unauthenticated, err.Error())
	}
	n := s.t.n
	for {
		req, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return st.SendAndClose(&schedulerv1.SendMessagesResponse{})
		}
		if err != nil {
			return err
		}
		if n.isRemoved(from) {
			return status.Errorf(codes.PermissionDenied, "member %s was removed from the cluster", idString(from))
		}
		if s.t.partitioned.Load() {
			continue
		}
		for _, b := range req.GetMessages() {
			m := &raftpb.Message{}
			if err := proto.Unmarshal(b, m); err != nil {
				return status.Errorf(codes.InvalidArgument, "decode raft message: %v", err)
			}
			if m.GetFrom() != from {
				return status.Errorf(codes.PermissionDenied, "message from %s on a stream authenticated as %s", idString(m.GetFrom()), idString(from))
			}
			if m.GetTo() != n.id || raft.IsLocalMsg(m.GetType()) {
				continue
			}
			if err := n.rn.Step(st.Context(), m); err != nil {
				if errors.Is(err, raft.ErrStopped) {
					return status.Error(codes.Unavailable, "raft member stopped")
				}
				if st.Context().Err() != nil {
					return st.Context().Err()
				}
			}
		}
	}
}

// callerID is the member ID in the verified client certificate.
func callerID(ctx context.Context) (uint64, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return 0, errors.New("no peer information")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.PeerCertificates) == 0 {
		return 0, errors.New("no verified client certificate")
	}
	return pki.MemberID(ti.State.PeerCertificates[0])
}
