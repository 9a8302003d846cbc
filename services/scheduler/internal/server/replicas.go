package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/errkind"
	"zlayer.dev/libs/runs"
)

// Logs and exec reach a replica wherever it runs. A replica on this node is
// this node's agent's; one elsewhere is reached through its node's
// scheduler, on that member's peer listener (mutual TLS, members only),
// where PeerServer answers for its own node only, so a call never bounces
// further.

// PeerServer is what a member offers the others on its peer listener: logs
// and exec of its own node's replicas. It is registered when the Raft node
// is made, before the Server exists; Serve connects the two.
type PeerServer struct {
	schedulerv1.UnimplementedSchedulerServiceServer
	s atomic.Pointer[Server]
}

// Serve makes p answer with s.
func (p *PeerServer) Serve(s *Server) { p.s.Store(s) }

func (p *PeerServer) server() (*Server, error) {
	s := p.s.Load()
	if s == nil {
		return nil, fmt.Errorf("scheduler still starting: %w", errkind.Unavailable)
	}
	return s, nil
}

// ReplicaLogs streams the output of a replica of this node.
func (p *PeerServer) ReplicaLogs(req *schedulerv1.ReplicaLogsRequest, stream schedulerv1.SchedulerService_ReplicaLogsServer) error {
	s, err := p.server()
	if err != nil {
		return err
	}
	return s.replicaLogs(req, stream, true)
}

// ReplicaExec runs a command in a replica of this node.
func (p *PeerServer) ReplicaExec(stream schedulerv1.SchedulerService_ReplicaExecServer) error {
	s, err := p.server()
	if err != nil {
		return err
	}
	return s.replicaExec(stream, true)
}

// ReplicaLogs streams a replica's output from whichever node runs it.
func (s *Server) ReplicaLogs(req *schedulerv1.ReplicaLogsRequest, stream schedulerv1.SchedulerService_ReplicaLogsServer) error {
	return s.replicaLogs(req, stream, false)
}

// ReplicaExec runs a command in a replica on whichever node runs it.
func (s *Server) ReplicaExec(stream schedulerv1.SchedulerService_ReplicaExecServer) error {
	return s.replicaExec(stream, false)
}

// route finds target's replica and, when it runs on another node, a
// connection to that node's scheduler (nil for this node).
func (s *Server) route(target string, localOnly bool) (*schedulerv1.Replica, *grpc.ClientConn, error) {
	st := s.state.Copy()
	rep, err := s.findReplica(st, target)
	if err != nil {
		return nil, nil, err
	}
	if rep.Node == "" {
		return nil, nil, fmt.Errorf("replica %s is not on a node yet (%s): %w", rep.Id, rep.Reason, errkind.NotFound)
	}
	if rep.Node == s.local.Node {
		return rep, nil, nil
	}
	if localOnly {
		return nil, nil, fmt.Errorf("replica %s runs on node %s, not on %s: %w", rep.Id, rep.Node, s.local.Node, errkind.Precondition)
	}
	n := st.Nodes[rep.Node]
	if n.GetMemberId() == 0 {
		return nil, nil, fmt.Errorf("replica %s runs on node %s, whose scheduler has not told the cluster how to reach it: %w", rep.Id, rep.Node, errkind.Unavailable)
	}
	if s.local.DialMember == nil {
		return nil, nil, fmt.Errorf("replica %s runs on node %s: this scheduler cannot reach other nodes: %w", rep.Id, rep.Node, errkind.Precondition)
	}
	cc, err := s.local.DialMember(n.GetMemberId())
	if err != nil {
		return nil, nil, fmt.Errorf("replica %s runs on node %s: %w", rep.Id, rep.Node, err)
	}
	return rep, cc, nil
}

func (s *Server) replicaLogs(req *schedulerv1.ReplicaLogsRequest, stream schedulerv1.SchedulerService_ReplicaLogsServer, localOnly bool) error {
	ctx := stream.Context()
	rep, cc, err := s.route(req.GetTarget(), localOnly)
	if err != nil {
		return err
	}
	first := &schedulerv1.ReplicaLogsResponse{Replica: rep.Id, Node: rep.Node}
	logs := runs.AgentLogs(s.local.Agent, req.GetOptions())
	where := "agent"
	if cc != nil {
		defer cc.Close()
		logs = runs.ClusterLogs(schedulerv1.NewSchedulerServiceClient(cc), req.GetOptions())
		where = "node " + rep.Node
	}
	recv, err := logs(ctx, rep.Id)
	if err != nil {
		return fmt.Errorf("logs of %s: %s: %w", rep.Id, where, err)
	}
	// The first message names the replica and node, even before any line.
	if err := stream.Send(first); err != nil {
		return err
	}
	for {
		entries, err := recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&schedulerv1.ReplicaLogsResponse{Entries: entries}); err != nil {
			return err
		}
	}
}

func (s *Server) replicaExec(stream schedulerv1.SchedulerService_ReplicaExecServer, localOnly bool) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	in, err := stream.Recv()
	if err != nil {
		return err
	}
	start := in.GetExec().GetStart()
	if start == nil {
		return fmt.Errorf("exec: the first message must carry start: %w", errkind.Invalid)
	}
	rep, cc, err := s.route(in.GetTarget(), localOnly)
	if err != nil {
		return err
	}
	start = proto.CloneOf(start)
	start.Id = rep.Id
	var (
		send      func(*agentv1.ExecRequest) error
		closeSend func() error
		recv      func() (*agentv1.ExecResponse, error)
	)
	if cc == nil {
		up, err := s.local.Agent.Exec(ctx)
		if err != nil {
			return fmt.Errorf("exec in %s: agent: %w", rep.Id, err)
		}
		send, closeSend = up.Send, up.CloseSend
		recv = up.Recv
	} else {
		defer cc.Close()
		up, err := schedulerv1.NewSchedulerServiceClient(cc).ReplicaExec(ctx)
		if err != nil {
			return fmt.Errorf("exec in %s: node %s: %w", rep.Id, rep.Node, err)
		}
		send = func(m *agentv1.ExecRequest) error {
			return up.Send(&schedulerv1.ReplicaExecRequest{Target: rep.Id, Exec: m})
		}
		closeSend = up.CloseSend
		recv = func() (*agentv1.ExecResponse, error) {
			m, err := up.Recv()
			return m.GetExec(), err
		}
	}
	if err := send(&agentv1.ExecRequest{Input: &agentv1.ExecRequest_Start{Start: start}}); err != nil {
		return fmt.Errorf("exec in %s: %w", rep.Id, err)
	}
	// Caller → replica, until the caller stops sending. A send error means
	// the upstream stream ended; its Recv below reports why.
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				closeSend()
				return
			}
			if m.GetExec() == nil {
				continue // nothing for the replica (a target repeated alone)
			}
			if send(m.GetExec()) != nil {
				return
			}
		}
	}()
	for {
		out, err := recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&schedulerv1.ReplicaExecResponse{Exec: out}); err != nil {
			return err
		}
	}
}
