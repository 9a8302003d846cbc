// Package clusterserver serves ClusterService (zlctl cluster …) on the
// scheduler's local socket and prepares a scheduler's Raft configuration
// from its flags and data dir: the cluster CA, member credentials and join
// bundles live here, on top of internal/pki and internal/raftnode. It adds
// nothing to the replicated state; membership itself is raftnode's.
package clusterserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/scheduler/internal/pki"
	"zlayer.dev/services/scheduler/internal/raftnode"
)

// Layout of the scheduler's data dir used here.
const (
	RaftDir = "raft" // raftnode.Config.DataDir: WAL and snapshots
	PKIDir  = "pki"  // ca.crt, ca.key, member.crt, member.key
)

// Flags are the scheduler's cluster flags, as internal/app parses them.
type Flags struct {
	// DataDir is the scheduler's data dir (--data-dir).
	DataDir string
	// PeerAddr is where RaftService listens (--peer-addr).
	PeerAddr string
	// AdvertiseAddr is how other members reach this one (--advertise-addr).
	AdvertiseAddr string
	// JoinFile is a join bundle written by `zlctl cluster add-member`
	// (--join); used only when the data dir holds no Raft log yet.
	JoinFile string
	// TickInterval, ElectionTicks, HeartbeatTicks and SnapshotEntries are
	// passed to raftnode (--raft-tick, --snapshot-entries, …); zero takes
	// the defaults.
	TickInterval    time.Duration
	ElectionTicks   int
	HeartbeatTicks  int
	SnapshotEntries uint64
}

// NodeConfig decides how this scheduler's Raft member starts, from its
// flags and data dir:
//   - a Raft log on disk: restart from it (the join file is ignored);
//   - else --join FILE: install the bundle's credentials under
//     <data-dir>/pki and join as the member it names;
//   - else: a new single-member cluster (peers off until InitCluster, or
//     on if credentials are already in <data-dir>/pki).
//
// Credentials found in <data-dir>/pki turn the peer transport on.
func NodeConfig(f Flags) (raftnode.Config, error) {
	cfg := raftnode.Config{
		DataDir:         filepath.Join(f.DataDir, RaftDir),
		PeerAddr:        f.PeerAddr,
		AdvertiseAddr:   f.AdvertiseAddr,
		Bootstrap:       raftnode.BootstrapNew,
		TickInterval:    f.TickInterval,
		ElectionTicks:   f.ElectionTicks,
		HeartbeatTicks:  f.HeartbeatTicks,
		SnapshotEntries: f.SnapshotEntries,
	}
	pkiDir := filepath.Join(f.DataDir, PKIDir)
	if f.JoinFile != "" && !raftnode.HasLog(cfg.DataDir) {
		b, err := ReadJoinBundle(f.JoinFile)
		if err != nil {
			return raftnode.Config{}, err
		}
		if err := installBundle(pkiDir, b); err != nil {
			return raftnode.Config{}, err
		}
		cfg.Bootstrap = raftnode.BootstrapJoin
		cfg.ID = b.GetMemberId()
		if cfg.AdvertiseAddr == "" {
			cfg.AdvertiseAddr = b.GetAddress()
		}
		for _, m := range b.GetMembers() {
			cfg.Peers = append(cfg.Peers, raftnode.Member{ID: m.GetId(), Addr: m.GetAddress(), Learner: m.GetLearner()})
		}
	}
	creds, err := pki.LoadCredentials(pkiDir)
	switch {
	case errors.Is(err, errkind.NotFound):
	case err != nil:
		return raftnode.Config{}, err
	default:
		cfg.TLS = creds
		cfg.ID = creds.MemberID()
	}
	return cfg, nil
}

// ReadJoinBundle reads a join bundle file (JSON, as zlctl writes it).
func ReadJoinBundle(path string) (*schedulerv1.JoinBundle, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read join bundle: %w", err)
	}
	b := &schedulerv1.JoinBundle{}
	if err := protojson.Unmarshal(raw, b); err != nil {
		return nil, fmt.Errorf("join bundle %s: %w: %w", path, errkind.Invalid, err)
	}
	if b.GetMemberId() == 0 {
		return nil, fmt.Errorf("join bundle %s: no member id: %w", path, errkind.Invalid)
	}
	return b, nil
}

// installBundle checks a bundle's credentials and writes them, with the CA
// key, into dir.
func installBundle(dir string, b *schedulerv1.JoinBundle) error {
	creds, err := pki.NewCredentials(b.GetCaCertPem(), b.GetCertPem(), b.GetKeyPem())
	if err != nil {
		return fmt.Errorf("join bundle: %w", err)
	}
	if creds.MemberID() != b.GetMemberId() {
		return fmt.Errorf("join bundle: certificate is for member %x, not %x: %w", creds.MemberID(), b.GetMemberId(), errkind.Invalid)
	}
	if fp := b.GetCaFingerprint(); fp != "" && fp != creds.CAFingerprint() {
		return fmt.Errorf("join bundle: CA fingerprint %s does not match its CA certificate %s: %w", fp, creds.CAFingerprint(), errkind.Invalid)
	}
	if len(b.GetCaKeyPem()) > 0 {
		ca, err := pki.ParseCA(b.GetCaCertPem(), b.GetCaKeyPem())
		if err != nil {
			return fmt.Errorf("join bundle: %w", err)
		}
		if err := pki.SaveCA(dir, ca); err != nil {
			return err
		}
	}
	return pki.SaveCredentials(dir, creds)
}

// Options are what the server needs besides the node.
type Options struct {
	// DataDir is the scheduler's data dir; the CA and credentials are under
	// DataDir/pki.
	DataDir string
	// AdvertiseAddr is InitCluster's default advertised address
	// (--advertise-addr); PeerAddr is the next fallback (--peer-addr).
	AdvertiseAddr string
	PeerAddr      string
	Log           *zap.Logger
}

// Server implements ClusterService.
type Server struct {
	schedulerv1.UnimplementedClusterServiceServer
	n    *raftnode.Node
	opts Options
	log  *zap.Logger
	mu   sync.Mutex // one InitCluster/AddMember at a time
}

var _ schedulerv1.ClusterServiceServer = (*Server)(nil)

// Register serves ClusterService for n on srv.
func Register(srv *grpc.Server, n *raftnode.Node, opts Options) *Server {
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	s := &Server{n: n, opts: opts, log: opts.Log.Named("cluster").With(zap.String("member", fmt.Sprintf("%x", n.ID())))}
	schedulerv1.RegisterClusterServiceServer(srv, s)
	return s
}

func (s *Server) pkiDir() string { return filepath.Join(s.opts.DataDir, PKIDir) }

// InitCluster creates the CA and this member's certificate, then turns on
// the peer transport and records the advertised address in Raft. On
// failure the files written are removed again.
func (s *Server) InitCluster(ctx context.Context, req *schedulerv1.InitClusterRequest) (resp *schedulerv1.InitClusterResponse, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	addr := req.GetAdvertiseAddress()
	if addr == "" {
		addr = s.opts.AdvertiseAddr
	}
	if addr == "" {
		if h, _, err := net.SplitHostPort(s.opts.PeerAddr); err == nil && h != "" && !net.ParseIP(h).IsUnspecified() {
			addr = s.opts.PeerAddr
		}
	}
	if addr == "" {
		return nil, fmt.Errorf("init cluster: no advertise address: pass one or start the scheduler with --advertise-addr: %w", errkind.Invalid)
	}
	if creds, err := pki.LoadCredentials(s.pkiDir()); err == nil {
		if s.selfAddr() != "" {
			return nil, fmt.Errorf("cluster already initialised (CA %s): %w", creds.CAFingerprint(), errkind.Conflict)
		}
		// The CA exists but the address never reached Raft: an init was
		// interrupted. Finish it.
		if err := s.n.EnablePeers(ctx, creds, addr); err != nil {
			return nil, fmt.Errorf("init cluster: %w", err)
		}
		return s.initResponse(addr, creds.CAFingerprint()), nil
	}
	ca, err := pki.NewCA()
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := ca.Issue(s.n.ID(), addr)
	if err != nil {
		return nil, err
	}
	creds, err := pki.NewCredentials(ca.CertPEM, certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			for _, f := range []string{pki.CACertFile, pki.CAKeyFile, pki.MemberCertFile, pki.MemberKeyFile} {
				os.Remove(filepath.Join(s.pkiDir(), f))
			}
		}
	}()
	if err := pki.SaveCA(s.pkiDir(), ca); err != nil {
		return nil, err
	}
	if err := pki.SaveCredentials(s.pkiDir(), creds); err != nil {
		return nil, err
	}
	if err := s.n.EnablePeers(ctx, creds, addr); err != nil {
		return nil, fmt.Errorf("init cluster: %w", err)
	}
	s.log.Info("cluster initialised", zap.String("advertise_addr", addr), zap.String("ca_fingerprint", ca.Fingerprint()))
	return s.initResponse(addr, ca.Fingerprint()), nil
}

func (s *Server) initResponse(addr, fingerprint string) *schedulerv1.InitClusterResponse {
	st := s.n.Status()
	return &schedulerv1.InitClusterResponse{
		Member:        &schedulerv1.ClusterMember{Id: s.n.ID(), Address: addr, Leader: st.IsLeader, Self: true},
		CaFingerprint: fingerprint,
	}
}

// selfAddr is this member's address as Raft records it.
func (s *Server) selfAddr() string {
	for _, m := range s.n.Members() {
		if m.ID == s.n.ID() {
			return m.Addr
		}
	}
	return ""
}

// AddMember adds a learner at the address, issues its certificate and
// returns its join bundle. If the certificate cannot be issued, the
// member is removed again.
func (s *Server) AddMember(ctx context.Context, req *schedulerv1.AddMemberRequest) (*schedulerv1.AddMemberResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ca, err := pki.LoadCA(s.pkiDir())
	if errors.Is(err, errkind.NotFound) {
		return nil, fmt.Errorf("add member: this scheduler holds no cluster CA (run zlctl cluster init first): %w", errkind.Precondition)
	}
	if err != nil {
		return nil, err
	}
	id, err := s.n.AddMember(ctx, req.GetAddress())
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := ca.Issue(id, req.GetAddress())
	if err != nil {
		if rerr := s.n.RemoveMember(context.WithoutCancel(ctx), id); rerr != nil {
			s.log.Warn("undo of member addition failed", zap.String("target", fmt.Sprintf("%x", id)), zap.Error(rerr))
		}
		return nil, err
	}
	s.log.Info("member added", zap.String("target", fmt.Sprintf("%x", id)), zap.String("addr", req.GetAddress()))
	return &schedulerv1.AddMemberResponse{Bundle: &schedulerv1.JoinBundle{
		MemberId:      id,
		Address:       req.GetAddress(),
		CaCertPem:     ca.CertPEM,
		CaKeyPem:      ca.KeyPEM,
		CertPem:       certPEM,
		KeyPem:        keyPEM,
		Members:       s.members(s.n.Status()),
		CaFingerprint: ca.Fingerprint(),
	}}, nil
}

// RemoveMember removes a member through Raft.
func (s *Server) RemoveMember(ctx context.Context, req *schedulerv1.RemoveMemberRequest) (*schedulerv1.RemoveMemberResponse, error) {
	if err := s.n.RemoveMember(ctx, req.GetMemberId()); err != nil {
		return nil, err
	}
	s.log.Info("member removed", zap.String("target", fmt.Sprintf("%x", req.GetMemberId())))
	return &schedulerv1.RemoveMemberResponse{}, nil
}

// ListMembers returns the applied membership and this member's view.
func (s *Server) ListMembers(context.Context, *schedulerv1.ListMembersRequest) (*schedulerv1.ListMembersResponse, error) {
	st := s.n.Status()
	return &schedulerv1.ListMembersResponse{
		Members:      s.members(st),
		LeaderId:     st.Leader,
		Term:         st.Term,
		CommitIndex:  st.Commit,
		AppliedIndex: st.Applied,
		SelfId:       st.ID,
	}, nil
}

func (s *Server) members(st raftnode.Status) []*schedulerv1.ClusterMember {
	out := make([]*schedulerv1.ClusterMember, 0, len(st.Members))
	for _, m := range st.Members {
		out = append(out, &schedulerv1.ClusterMember{
			Id: m.ID, Address: m.Addr, Learner: m.Learner, Leader: m.ID == st.Leader, Self: m.ID == st.ID,
		})
	}
	return out
}
