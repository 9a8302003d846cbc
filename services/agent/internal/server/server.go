// Package server implements the AgentService gRPC contract by translating
// between its messages and the runner's types. It holds no logic of its
// own: every decision is the runner's, and errors keep their errkind class
// for libs/rpc's interceptor to turn into status codes.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/containerd/console"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	typesv1 "zlayer.dev/libs/api/zlayer/types/v1"
	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/agent/internal/logs"
	"zlayer.dev/services/agent/internal/netns"
	"zlayer.dev/services/agent/internal/runner"
)

var _ agentv1.AgentServiceServer = (*Server)(nil)

// Server adapts the runner to the AgentService contract.
type Server struct {
	agentv1.UnimplementedAgentServiceServer
	runner *runner.Runner
	info   func() *typesv1.DaemonInfo
	cidr   string
	ovAddr string
}

// New returns a server for rn; info, cidr (the node's container subnet)
// and overlayAddr (the subnet's address kept for the overlay, if any)
// answer GetInfo.
func New(rn *runner.Runner, info func() *typesv1.DaemonInfo, cidr, overlayAddr string) *Server {
	return &Server{runner: rn, info: info, cidr: cidr, ovAddr: overlayAddr}
}

// Register registers s on srv.
func (s *Server) Register(srv *grpc.Server) { agentv1.RegisterAgentServiceServer(srv, s) }

// GetInfo describes the daemon.
func (s *Server) GetInfo(context.Context, *agentv1.GetInfoRequest) (*agentv1.GetInfoResponse, error) {
	return &agentv1.GetInfoResponse{Info: s.info(), ContainerCidr: s.cidr, OverlayAddress: s.ovAddr}, nil
}

// RunReplica creates and starts a replica.
func (s *Server) RunReplica(ctx context.Context, req *agentv1.RunReplicaRequest) (*agentv1.RunReplicaResponse, error) {
	if req.GetSpec() == nil {
		return nil, fmt.Errorf("spec: required: %w", errkind.Invalid)
	}
	rec, err := s.runner.Run(ctx, SpecFromProto(req.GetSpec()))
	if err != nil {
		return nil, err
	}
	return &agentv1.RunReplicaResponse{Replica: ReplicaToProto(rec)}, nil
}

// StopReplica stops a replica.
func (s *Server) StopReplica(ctx context.Context, req *agentv1.StopReplicaRequest) (*agentv1.StopReplicaResponse, error) {
	grace := time.Duration(-1)
	if req.GetGrace() != nil {
		grace = req.GetGrace().AsDuration()
		if grace < 0 {
			return nil, fmt.Errorf("grace %v: must not be negative: %w", grace, errkind.Invalid)
		}
	}
	rec, err := s.runner.Stop(ctx, req.GetId(), grace)
	if err != nil {
		return nil, err
	}
	return &agentv1.StopReplicaResponse{Replica: ReplicaToProto(rec)}, nil
}

// RemoveReplica removes a replica.
func (s *Server) RemoveReplica(ctx context.Context, req *agentv1.RemoveReplicaRequest) (*agentv1.RemoveReplicaResponse, error) {
	if err := s.runner.Remove(ctx, req.GetId(), req.GetForce()); err != nil {
		return nil, err
	}
	return &agentv1.RemoveReplicaResponse{}, nil
}

// GetReplica returns one replica.
func (s *Server) GetReplica(ctx context.Context, req *agentv1.GetReplicaRequest) (*agentv1.GetReplicaResponse, error) {
	rec, err := s.runner.Get(req.GetId())
	if err != nil {
		return nil, err
	}
	return &agentv1.GetReplicaResponse{Replica: ReplicaToProto(rec)}, nil
}

// ListReplicas lists every replica.
func (s *Server) ListReplicas(context.Context, *agentv1.ListReplicasRequest) (*agentv1.ListReplicasResponse, error) {
	resp := &agentv1.ListReplicasResponse{}
	for _, r := range s.runner.List() {
		resp.Replicas = append(resp.Replicas, ReplicaToProto(r))
	}
	return resp, nil
}

// WatchReplicas streams every replica, then changes.
func (s *Server) WatchReplicas(_ *agentv1.WatchReplicasRequest, st grpc.ServerStreamingServer[agentv1.WatchReplicasResponse]) error {
	sub := s.runner.Subscribe() // before listing, so no change falls between
	defer sub.Cancel()
	for _, r := range s.runner.List() {
		if err := st.Send(&agentv1.WatchReplicasResponse{Replica: ReplicaToProto(r)}); err != nil {
			return err
		}
	}
	if err := st.Send(&agentv1.WatchReplicasResponse{Synced: true}); err != nil {
		return err
	}
	for {
		select {
		case <-st.Context().Done():
			return st.Context().Err()
		case ev, ok := <-sub.C:
			if !ok {
				if sub.Lagged {
					return fmt.Errorf("watch: fell behind; watch again: %w", errkind.Unavailable)
				}
				return fmt.Errorf("watch: agent stopping: %w", errkind.Unavailable)
			}
			if ev.Record.State == runner.StateCreating {
				continue
			}
			if err := st.Send(&agentv1.WatchReplicasResponse{Replica: ReplicaToProto(ev.Record), Removed: ev.Removed}); err != nil {
				return err
			}
		}
	}
}

// logBatch bounds the entries in one StreamLogs message.
const logBatch = 256

// StreamLogs streams a replica's output.
func (s *Server) StreamLogs(req *agentv1.StreamLogsRequest, st grpc.ServerStreamingServer[agentv1.StreamLogsResponse]) error {
	path, err := s.runner.LogPath(req.GetId())
	if err != nil {
		return err
	}
	done, err := s.runner.Done(req.GetId())
	if err != nil {
		return err
	}
	o := logs.ReadOptions{Tail: -1, Follow: req.GetFollow()}
	if req.Tail != nil {
		if req.GetTail() < 0 {
			return fmt.Errorf("tail %d: must not be negative: %w", req.GetTail(), errkind.Invalid)
		}
		o.Tail = int(req.GetTail())
	}
	if req.GetSince() != nil {
		o.Since = req.GetSince().AsTime()
	}
	o.Done = func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	}
	batch := &agentv1.StreamLogsResponse{}
	flush := func() error {
		if len(batch.Entries) == 0 {
			return nil
		}
		err := st.Send(batch)
		batch = &agentv1.StreamLogsResponse{}
		return err
	}
	// Entries are batched while a read catches up and flushed whenever the
	// reader waits, so a follower sees each line promptly.
	o.Idle = flush
	err = logs.Read(st.Context(), path, o, func(e logs.Entry) error {
		stream := agentv1.LogStream_LOG_STREAM_STDOUT
		if e.Stream == logs.Stderr {
			stream = agentv1.LogStream_LOG_STREAM_STDERR
		}
		batch.Entries = append(batch.Entries, &agentv1.LogEntry{
			Time: timestamppb.New(e.Time), Stream: stream, Text: e.Text, Partial: e.Partial,
		})
		if len(batch.Entries) >= logBatch {
			return flush()
		}
		return nil
	})
	if err != nil {
		return err
	}
	return flush()
}

// Exec runs a process in a replica.
func (s *Server) Exec(st grpc.BidiStreamingServer[agentv1.ExecRequest, agentv1.ExecResponse]) error {
	first, err := st.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil {
		return fmt.Errorf("exec: the first message must be start: %w", errkind.Invalid)
	}
	stdinR, stdinW := io.Pipe()
	resize := make(chan console.WinSize, 4)
	if sz := start.GetSize(); sz != nil {
		resize <- console.WinSize{Height: uint16(sz.GetRows()), Width: uint16(sz.GetCols())}
	}
	ctx, cancel := context.WithCancel(st.Context())
	defer cancel()
	go func() {
		defer close(resize)
		for {
			m, err := st.Recv()
			if err != nil {
				stdinW.CloseWithError(io.EOF)
				return
			}
			switch in := m.GetInput().(type) {
			case *agentv1.ExecRequest_Stdin:
				if _, err := stdinW.Write(in.Stdin); err != nil {
					return
				}
			case *agentv1.ExecRequest_CloseStdin:
				stdinW.Close()
			case *agentv1.ExecRequest_Resize:
				select {
				case resize <- console.WinSize{Height: uint16(in.Resize.GetRows()), Width: uint16(in.Resize.GetCols())}:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	sender := &streamWriter{st: st}
	code, err := s.runner.Exec(ctx, start.GetId(), runner.ExecSpec{
		Args: start.GetArgs(), Env: start.GetEnv(), Cwd: start.GetCwd(), Tty: start.GetTty(),
	}, runner.ExecIO{
		Stdin:  stdinR,
		Stdout: sender.stream(false),
		Stderr: sender.stream(true),
		Resize: resize,
	})
	stdinR.Close()
	if err != nil {
		return err
	}
	return sender.send(&agentv1.ExecResponse{Output: &agentv1.ExecResponse_ExitCode{ExitCode: int32(code)}})
}

// streamWriter serialises writes of both output streams onto the gRPC
// stream, which allows one sender at a time.
type streamWriter struct {
	mu sync.Mutex
	st grpc.BidiStreamingServer[agentv1.ExecRequest, agentv1.ExecResponse]
}

func (w *streamWriter) send(r *agentv1.ExecResponse) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.st.Send(r)
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func (w *streamWriter) stream(stderr bool) io.Writer {
	return writerFunc(func(b []byte) (int, error) {
		data := append([]byte(nil), b...)
		r := &agentv1.ExecResponse{Output: &agentv1.ExecResponse_Stdout{Stdout: data}}
		if stderr {
			r = &agentv1.ExecResponse{Output: &agentv1.ExecResponse_Stderr{Stderr: data}}
		}
		if err := w.send(r); err != nil {
			return 0, err
		}
		return len(b), nil
	})
}

// GetStats reads replicas' resource use.
func (s *Server) GetStats(ctx context.Context, req *agentv1.GetStatsRequest) (*agentv1.GetStatsResponse, error) {
	ids := req.GetIds()
	all := len(ids) == 0
	if all {
		for _, r := range s.runner.List() {
			if r.State == runner.StateRunning {
				ids = append(ids, r.ID())
			}
		}
	}
	resp := &agentv1.GetStatsResponse{}
	for _, id := range ids {
		u, err := s.runner.Stats(id)
		if err != nil {
			if all && (errors.Is(err, errkind.Precondition) || errors.Is(err, errkind.NotFound)) {
				continue // ended or removed since listing
			}
			return nil, err
		}
		resp.Stats = append(resp.Stats, &agentv1.ReplicaStats{
			Id:               id,
			SampledAt:        timestamppb.New(u.At),
			CpuUsage:         durationpb.New(time.Duration(u.CPUNanos)),
			CpuLimit:         u.CPULimit,
			CpuPercent:       u.CPUPercent,
			MemoryBytes:      u.MemoryBytes,
			MemoryLimitBytes: u.MemoryLimit,
			MemoryPercent:    u.MemoryPercent,
			OomKills:         u.OOMKills,
		})
	}
	return resp, nil
}

// SetNames replaces the node's table of service names and subnets.
func (s *Server) SetNames(_ context.Context, req *agentv1.SetNamesRequest) (*agentv1.SetNamesResponse, error) {
	names := make([]runner.Name, 0, len(req.GetNames()))
	for _, n := range req.GetNames() {
		if net.ParseIP(n.GetIp()) == nil {
			return nil, fmt.Errorf("name %s: address %q is not an IP: %w", n.GetName(), n.GetIp(), errkind.Invalid)
		}
		names = append(names, runner.Name{Deployment: n.GetDeployment(), Name: n.GetName(), IP: n.GetIp()})
	}
	subnets := make([]netip.Prefix, 0, len(req.GetSubnets()))
	for _, c := range req.GetSubnets() {
		p, err := netip.ParsePrefix(c)
		if err != nil || !p.Addr().Is4() {
			return nil, fmt.Errorf("subnet %q: not an IPv4 CIDR: %w", c, errkind.Invalid)
		}
		subnets = append(subnets, p)
	}
	members := make([]netns.Member, 0, len(req.GetMembers()))
	for _, m := range req.GetMembers() {
		ip, err := netip.ParseAddr(m.GetIp())
		if err != nil {
			return nil, fmt.Errorf("member address %q: %w", m.GetIp(), errkind.Invalid)
		}
		members = append(members, netns.Member{IP: ip, Groups: m.GetOverlayGroups()})
	}
	dev := req.GetOverlayDevice()
	if dev != "" && !netns.ValidIfName(dev) {
		return nil, fmt.Errorf("overlay device %q: not a network interface name: %w", dev, errkind.Invalid)
	}
	if err := s.runner.SetNames(names, members, subnets, dev); err != nil {
		return nil, err
	}
	return &agentv1.SetNamesResponse{}, nil
}
