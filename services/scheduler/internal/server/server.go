// Package server adapts the scheduler to the SchedulerService gRPC
// contract: it validates requests, turns them into Raft commands, and builds
// status answers from the replicated state. Decisions (placement, rollouts)
// are the reconciler's, not this package's.
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	typesv1 "zlayer.dev/libs/api/zlayer/types/v1"
	"zlayer.dev/libs/errkind"
	"zlayer.dev/libs/spec"
	"zlayer.dev/services/scheduler/internal/fsm"
	"zlayer.dev/services/scheduler/internal/specinfo"
)

var _ schedulerv1.SchedulerServiceServer = (*Server)(nil)

// Raft is the replicated log as the server uses it.
type Raft interface {
	// Propose commits data and returns the state machine's result.
	Propose(ctx context.Context, data []byte) (any, error)
	// LinearizableRead returns once this member has applied every write
	// committed before the call.
	LinearizableRead(ctx context.Context) error
}

// Info describes the daemon; daemon.Env satisfies it.
type Info interface {
	Info() *typesv1.DaemonInfo
}

// Server implements schedulerv1.SchedulerServiceServer.
type Server struct {
	schedulerv1.UnimplementedSchedulerServiceServer
	info  Info
	raft  Raft
	state *fsm.FSM
	specs *specinfo.Cache
	local Local
	now   func() time.Time
}

// Local is this node as the server reaches it, for the calls that act on
// replicas (logs, exec) and on this node (join, leave).
type Local struct {
	// Node is this node's name.
	Node string
	// Agent is this node's agent.
	Agent agentv1.AgentServiceClient
	// DialMember connects to another member's peer listener, where the
	// server's PeerServer answers for that member's node.
	DialMember func(id uint64) (*grpc.ClientConn, error)
}

// New returns a Server. Calls made while the cluster has no leader (an
// election is under way) wait for one, up to electionWait.
func New(info Info, raft Raft, state *fsm.FSM, specs *specinfo.Cache, local Local) *Server {
	return &Server{info: info, raft: &patientRaft{Raft: raft, wait: electionWait}, state: state, specs: specs, local: local, now: time.Now}
}

// electionWait bounds how long a call waits for a leader: a few election
// timeouts at the default tick.
const electionWait = 6 * time.Second

// patientRaft retries calls that fail for want of a leader, so a client
// calling during an election (at start, or after a leader died) waits a
// moment instead of failing. A member cut off from the majority still
// answers Unavailable, after the wait.
type patientRaft struct {
	Raft
	wait time.Duration
}

func (p *patientRaft) retry(ctx context.Context, fn func(context.Context) error) error {
	deadline := time.Now().Add(p.wait)
	for {
		err := fn(ctx)
		if err == nil || !errors.Is(err, errkind.Unavailable) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (p *patientRaft) Propose(ctx context.Context, data []byte) (any, error) {
	var res any
	err := p.retry(ctx, func(ctx context.Context) error {
		var err error
		res, err = p.Raft.Propose(ctx, data)
		return err
	})
	return res, err
}

func (p *patientRaft) LinearizableRead(ctx context.Context) error {
	return p.retry(ctx, p.Raft.LinearizableRead)
}

// GetInfo returns the daemon's version, node and uptime.
func (s *Server) GetInfo(context.Context, *schedulerv1.GetInfoRequest) (*schedulerv1.GetInfoResponse, error) {
	return &schedulerv1.GetInfoResponse{Info: s.info.Info()}, nil
}

// propose wraps c in a command, proposes it and returns the result.
func (s *Server) propose(ctx context.Context, c *schedulerv1.Command) (fsm.Result, error) {
	c.ProposedAt = timestamppb.New(s.now())
	data, err := proto.Marshal(c)
	if err != nil {
		return fsm.Result{}, err
	}
	res, err := s.raft.Propose(ctx, data)
	if err != nil {
		return fsm.Result{}, fmt.Errorf("propose: %w", err)
	}
	r, _ := res.(fsm.Result)
	return r, r.Err
}

// invalidSpec turns validation errors into INVALID_ARGUMENT with one field
// violation per problem; the message has every problem, one per line.
func invalidSpec(err error) error {
	var list spec.Errors
	if !errors.As(err, &list) {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	st := status.New(codes.InvalidArgument, list.Error())
	br := &errdetails.BadRequest{}
	for _, fe := range list {
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{
			Field: fe.Path, Description: fe.Error(),
		})
	}
	if withDetails, derr := st.WithDetails(br); derr == nil {
		st = withDetails
	}
	return st.Err()
}

// Deploy validates the file and proposes it as the next version.
func (s *Server) Deploy(ctx context.Context, req *schedulerv1.DeployRequest) (*schedulerv1.DeployResponse, error) {
	name := req.GetFileName()
	if name == "" {
		name = "deployment.yaml"
	}
	parsed, err := specinfo.Parse(name, req.GetSpecYaml())
	if err != nil {
		return nil, invalidSpec(err)
	}
	if err := s.raft.LinearizableRead(ctx); err != nil {
		return nil, err
	}
	st := s.state.Copy()
	depName := parsed.Spec.Deployment
	hashes := map[string]string{}
	scale := map[string]uint32{}
	old := st.Deployments[depName]
	var oldHashes map[string]string
	if old != nil && !old.Deleting {
		oldHashes = fsm.Version(old, old.Current).GetServiceHashes()
	}
	var changed []string
	for _, svcName := range parsed.ServiceNames() {
		svc := parsed.Services[svcName]
		hashes[svcName] = svc.Hash
		prev, had := uint32(0), false
		if old != nil && oldHashes != nil {
			prev, had = old.Scale[svcName]
		}
		scale[svcName] = svc.InitialScale(prev, had)
		if oldHashes[svcName] != svc.Hash || (had && prev != scale[svcName]) {
			changed = append(changed, svcName)
		}
	}
	if oldHashes != nil && maps.Equal(oldHashes, hashes) && len(changed) == 0 {
		return &schedulerv1.DeployResponse{Deployment: depName, Version: old.Current, Unchanged: true}, nil
	}
	res, err := s.propose(ctx, &schedulerv1.Command{Kind: &schedulerv1.Command_PutDeployment{PutDeployment: &schedulerv1.PutDeploymentCommand{
		Name: depName, SpecYaml: req.GetSpecYaml(), FileName: name, ServiceHashes: hashes, InitialScale: scale,
	}}})
	if err != nil {
		return nil, err
	}
	return &schedulerv1.DeployResponse{Deployment: depName, Version: res.Version, Changed: changed}, nil
}

// GetStatus returns deployments' status after a linearizable read.
func (s *Server) GetStatus(ctx context.Context, req *schedulerv1.GetStatusRequest) (*schedulerv1.GetStatusResponse, error) {
	if err := s.raft.LinearizableRead(ctx); err != nil {
		return nil, err
	}
	st := s.state.Copy()
	resp := &schedulerv1.GetStatusResponse{}
	if name := req.GetDeployment(); name != "" {
		d := st.Deployments[name]
		if d == nil {
			return nil, fmt.Errorf("deployment %q: %w", name, errkind.NotFound)
		}
		resp.Deployments = append(resp.Deployments, s.deploymentStatus(st, d))
		return resp, nil
	}
	for _, name := range slices.Sorted(maps.Keys(st.Deployments)) {
		resp.Deployments = append(resp.Deployments, s.deploymentStatus(st, st.Deployments[name]))
	}
	return resp, nil
}

// DeploymentStatus builds the status of d from state st.
func (s *Server) deploymentStatus(st *fsm.State, d *schedulerv1.Deployment) *schedulerv1.DeploymentStatus {
	out := &schedulerv1.DeploymentStatus{Name: d.Name, Version: d.Current, Deleting: d.Deleting}
	v := fsm.Version(d, d.Current)
	out.Outcome, out.Reason = v.GetOutcome(), v.GetReason()
	out.Replicas = st.ReplicasOf(d.Name)
	parsed, err := s.specs.Get(v.GetFileName(), v.GetSpecYaml())
	if err != nil {
		return out
	}
	for _, name := range parsed.ServiceNames() {
		svc := parsed.Services[name]
		ss := &schedulerv1.ServiceStatus{Name: name, Rtype: svc.RType, Endpoints: svc.Endpoints, Image: svc.Image}
		if svc.RType == string(spec.RTypeService) && !d.Deleting {
			ss.Desired = d.Scale[name]
		}
		for _, r := range out.Replicas {
			if r.Service != name || r.DesiredStop || r.Phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING {
				continue
			}
			ss.Running++
			if r.Health == schedulerv1.Health_HEALTH_HEALTHY {
				ss.Healthy++
			}
			if r.SpecHash == svc.Hash {
				ss.Updated++
			}
		}
		out.Services = append(out.Services, ss)
	}
	return out
}

// WatchDeployment streams the deployment's status on every change.
func (s *Server) WatchDeployment(req *schedulerv1.WatchDeploymentRequest, stream schedulerv1.SchedulerService_WatchDeploymentServer) error {
	ctx := stream.Context()
	if err := s.raft.LinearizableRead(ctx); err != nil {
		return err
	}
	var last *schedulerv1.DeploymentStatus
	for {
		changed := s.state.Changed()
		st := s.state.Copy()
		d := st.Deployments[req.GetDeployment()]
		if d == nil {
			if last != nil {
				return nil // deleted and gone
			}
			return fmt.Errorf("deployment %q: %w", req.GetDeployment(), errkind.NotFound)
		}
		cur := s.deploymentStatus(st, d)
		if last == nil || !proto.Equal(cur, last) {
			if err := stream.Send(&schedulerv1.WatchDeploymentResponse{Status: cur}); err != nil {
				return err
			}
			last = cur
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// currentService finds a service in the current version of a live
// deployment, after a linearizable read.
func (s *Server) currentService(ctx context.Context, deployment, service string) (*schedulerv1.Deployment, specinfo.Service, error) {
	if err := s.raft.LinearizableRead(ctx); err != nil {
		return nil, specinfo.Service{}, err
	}
	d := s.state.Copy().Deployments[deployment]
	if d == nil || d.Deleting {
		return nil, specinfo.Service{}, fmt.Errorf("deployment %q: %w", deployment, errkind.NotFound)
	}
	v := fsm.Version(d, d.Current)
	parsed, err := s.specs.Get(v.GetFileName(), v.GetSpecYaml())
	if err != nil {
		return nil, specinfo.Service{}, fmt.Errorf("deployment %q: stored file does not parse: %v: %w", d.Name, err, errkind.Precondition)
	}
	svc, ok := parsed.Services[service]
	if !ok {
		return nil, specinfo.Service{}, fmt.Errorf("service %q of deployment %q: %w (services: %s)", service, d.Name, errkind.NotFound, strings.Join(parsed.ServiceNames(), ", "))
	}
	return d, svc, nil
}

// Scale sets a service's replica count.
func (s *Server) Scale(ctx context.Context, req *schedulerv1.ScaleRequest) (*schedulerv1.ScaleResponse, error) {
	d, svc, err := s.currentService(ctx, req.GetDeployment(), req.GetService())
	if err != nil {
		return nil, err
	}
	n := req.GetReplicas()
	switch {
	case svc.RType != string(spec.RTypeService):
		return nil, fmt.Errorf("%s/%s is a %s: jobs and cron jobs run once per trigger and take no replica count: %w", d.Name, svc.Name, svc.RType, errkind.Invalid)
	case svc.Mode == spec.ScaleFixed:
		return nil, fmt.Errorf("%s/%s has fixed scale (%d replicas): change scale.replicas in the file, or use mode: manual to scale by hand: %w", d.Name, svc.Name, svc.Replicas, errkind.Invalid)
	case svc.Mode == spec.ScaleAdaptive && (n < svc.Min || n > svc.Max):
		return nil, fmt.Errorf("%s/%s scales adaptively between %d and %d replicas; %d is outside (change scale in the file to go beyond): %w", d.Name, svc.Name, svc.Min, svc.Max, n, errkind.Invalid)
	}
	res, err := s.propose(ctx, &schedulerv1.Command{Kind: &schedulerv1.Command_Scale{Scale: &schedulerv1.ScaleCommand{
		Deployment: d.Name, Service: svc.Name, Replicas: n, Reason: "zlctl scale",
	}}})
	if err != nil {
		return nil, err
	}
	return &schedulerv1.ScaleResponse{Previous: res.Previous, Replicas: n}, nil
}

// DeleteDeployment stops a deployment's replicas and forgets it.
func (s *Server) DeleteDeployment(ctx context.Context, req *schedulerv1.DeleteDeploymentRequest) (*schedulerv1.DeleteDeploymentResponse, error) {
	_, err := s.propose(ctx, &schedulerv1.Command{Kind: &schedulerv1.Command_DeleteDeployment{DeleteDeployment: &schedulerv1.DeleteDeploymentCommand{
		Name: req.GetDeployment(),
	}}})
	if err != nil {
		return nil, err
	}
	return &schedulerv1.DeleteDeploymentResponse{}, nil
}

// Rollback deploys an earlier version's file again.
func (s *Server) Rollback(ctx context.Context, req *schedulerv1.RollbackRequest) (*schedulerv1.RollbackResponse, error) {
	res, err := s.propose(ctx, &schedulerv1.Command{Kind: &schedulerv1.Command_Rollback{Rollback: &schedulerv1.RollbackCommand{
		Deployment: req.GetDeployment(), ToVersion: req.GetToVersion(), Reason: "zlctl rollback",
	}}})
	if err != nil {
		return nil, err
	}
	return &schedulerv1.RollbackResponse{Version: res.Version, FromVersion: uint64(res.Previous)}, nil
}

// GetHistory lists a deployment's versions without their files.
func (s *Server) GetHistory(ctx context.Context, req *schedulerv1.GetHistoryRequest) (*schedulerv1.GetHistoryResponse, error) {
	if err := s.raft.LinearizableRead(ctx); err != nil {
		return nil, err
	}
	d := s.state.Copy().Deployments[req.GetDeployment()]
	if d == nil {
		return nil, fmt.Errorf("deployment %q: %w", req.GetDeployment(), errkind.NotFound)
	}
	resp := &schedulerv1.GetHistoryResponse{Current: d.Current}
	for _, v := range d.Versions {
		v.SpecYaml = nil
		resp.Versions = append(resp.Versions, v)
	}
	return resp, nil
}

// ListNodes lists nodes and their live replica counts.
func (s *Server) ListNodes(ctx context.Context, _ *schedulerv1.ListNodesRequest) (*schedulerv1.ListNodesResponse, error) {
	if err := s.raft.LinearizableRead(ctx); err != nil {
		return nil, err
	}
	st := s.state.Copy()
	resp := &schedulerv1.ListNodesResponse{Replicas: map[string]uint32{}}
	for _, name := range slices.Sorted(maps.Keys(st.Nodes)) {
		resp.Nodes = append(resp.Nodes, st.Nodes[name])
	}
	for _, r := range st.Replicas {
		if r.Node != "" && !fsm.Forgettable(r) {
			resp.Replicas[r.Node]++
		}
	}
	return resp, nil
}

// ListEvents sends recent events and, with follow, new ones.
func (s *Server) ListEvents(req *schedulerv1.ListEventsRequest, stream schedulerv1.SchedulerService_ListEventsServer) error {
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = 100
	}
	if err := s.raft.LinearizableRead(stream.Context()); err != nil {
		return err
	}
	var after uint64
	for {
		changed := s.state.Changed()
		events, newest := s.state.Events(req.GetDeployment(), after, limit)
		for _, e := range events {
			if err := stream.Send(&schedulerv1.ListEventsResponse{Event: e}); err != nil {
				return err
			}
		}
		// Later rounds send only what came after everything seen now.
		after = newest
		if !req.GetFollow() {
			return nil
		}
		limit = 0
		select {
		case <-stream.Context().Done():
			return nil
		case <-changed:
		}
	}
}

// FindReplica resolves deployment/service[/index] or a replica id.
func (s *Server) FindReplica(ctx context.Context, req *schedulerv1.FindReplicaRequest) (*schedulerv1.FindReplicaResponse, error) {
	r, err := s.findReplica(s.state.Copy(), req.GetTarget())
	if err != nil {
		return nil, err
	}
	return &schedulerv1.FindReplicaResponse{Replica: r}, nil
}

// findReplica resolves deployment/service[/index] or a replica id: with no
// index, the lowest-index running replica (or any placed one).
func (s *Server) findReplica(st *fsm.State, target string) (*schedulerv1.Replica, error) {
	if r := st.Replicas[target]; r != nil {
		return r, nil
	}
	parts := strings.Split(target, "/")
	if len(parts) == 1 {
		return nil, fmt.Errorf("no replica %q: %w", target, errkind.NotFound)
	}
	if len(parts) > 3 {
		return nil, fmt.Errorf("target %q: want deployment/service[/index] or a replica id: %w", target, errkind.Invalid)
	}
	index := -1
	if len(parts) == 3 {
		i, err := strconv.Atoi(parts[2])
		if err != nil || i < 0 {
			return nil, fmt.Errorf("target %q: index %q is not a number: %w", target, parts[2], errkind.Invalid)
		}
		index = i
	}
	var best *schedulerv1.Replica
	for _, r := range st.ReplicasOf(parts[0]) {
		if r.Service != parts[1] || (index >= 0 && int(r.Index) != index) || r.Node == "" || fsm.Forgettable(r) {
			continue
		}
		if best == nil || (r.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING && best.Phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING) {
			best = r
		}
	}
	if best == nil {
		return nil, fmt.Errorf("no replica of %s runs on any node: %w", target, errkind.NotFound)
	}
	return best, nil
}

// RunJob starts a run of a job or cron job and returns it once placed (or
// after a few seconds, still pending with the reason).
func (s *Server) RunJob(ctx context.Context, req *schedulerv1.RunJobRequest) (*schedulerv1.RunJobResponse, error) {
	d, svc, err := s.currentService(ctx, req.GetDeployment(), req.GetService())
	if err != nil {
		return nil, err
	}
	if svc.RType == string(spec.RTypeService) {
		return nil, fmt.Errorf("%s/%s is a long-running service, not a job: %w", d.Name, svc.Name, errkind.Invalid)
	}
	id := fmt.Sprintf("%s-%s-run-%s", d.Name, svc.Name, randomSuffix())
	trigger := req.GetTrigger()
	if trigger == "" {
		trigger = "zlctl"
	}
	if _, err := s.propose(ctx, &schedulerv1.Command{Kind: &schedulerv1.Command_RunJob{RunJob: &schedulerv1.RunJobCommand{
		Deployment: d.Name, Service: svc.Name, ReplicaId: id, Trigger: trigger, Node: req.GetNode(),
	}}}); err != nil {
		return nil, err
	}
	deadline := time.After(5 * time.Second)
	for {
		changed := s.state.Changed()
		r := s.state.Copy().Replicas[id]
		if r != nil && (r.Node != "" || r.Phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_PENDING) {
			return &schedulerv1.RunJobResponse{Run: r}, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-deadline:
			return &schedulerv1.RunJobResponse{Run: r}, nil
		case <-changed:
		}
	}
}

// ListJobRuns lists a job's kept runs, newest first.
func (s *Server) ListJobRuns(ctx context.Context, req *schedulerv1.ListJobRunsRequest) (*schedulerv1.ListJobRunsResponse, error) {
	if err := s.raft.LinearizableRead(ctx); err != nil {
		return nil, err
	}
	st := s.state.Copy()
	if st.Deployments[req.GetDeployment()] == nil {
		return nil, fmt.Errorf("deployment %q: %w", req.GetDeployment(), errkind.NotFound)
	}
	resp := &schedulerv1.ListJobRunsResponse{}
	for _, r := range st.ReplicasOf(req.GetDeployment()) {
		if r.Run && r.Service == req.GetService() {
			resp.Runs = append(resp.Runs, r)
		}
	}
	slices.Reverse(resp.Runs)
	return resp, nil
}

func randomSuffix() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
