// Package agentclient is the node side's view of the local zlayer-agent: it
// turns a replica placed by the scheduler into the agent's ReplicaSpec, and
// the agent's replica states into the cluster's phases. It holds no state.
package agentclient

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/spec"
	"zlayer.dev/services/scheduler/internal/specinfo"
)

// Client talks to the local agent.
type Client struct {
	agent agentv1.AgentServiceClient
	// StopGrace is how long a replica gets between SIGTERM and SIGKILL.
	StopGrace time.Duration
}

// New returns a Client on cc (the agent's socket).
func New(cc grpc.ClientConnInterface) *Client {
	return &Client{agent: agentv1.NewAgentServiceClient(cc), StopGrace: 10 * time.Second}
}

var pullPolicies = map[spec.PullPolicy]agentv1.PullPolicy{
	spec.PullAlways:       agentv1.PullPolicy_PULL_POLICY_ALWAYS,
	spec.PullIfNotPresent: agentv1.PullPolicy_PULL_POLICY_IF_NOT_PRESENT,
	spec.PullNever:        agentv1.PullPolicy_PULL_POLICY_NEVER,
}

// ReplicaSpec builds what the agent runs for replica r of service svc.
func ReplicaSpec(r *schedulerv1.Replica, svc specinfo.Service) *agentv1.ReplicaSpec {
	s := svc.Spec
	out := &agentv1.ReplicaSpec{
		Id:               r.Id,
		Identity:         &agentv1.ReplicaIdentity{Deployment: r.Deployment, Service: r.Service, Index: int32(r.Index)},
		Image:            s.Image.Name,
		PullPolicy:       pullPolicies[s.Image.PullPolicy],
		Env:              s.Env,
		Resources:        &agentv1.Resources{Cpu: s.Resources.CPU, MemoryBytes: s.Resources.Memory.Bytes()},
		OverlayGroups:    specinfo.OverlayGroups(r.Deployment, r.Service, s),
		OverlayGroupsSet: true,
	}
	if s.Command != nil {
		out.Command = &agentv1.Argv{Values: s.Command}
	}
	if s.Args != nil {
		out.Args = &agentv1.Argv{Values: s.Args}
	}
	for _, e := range s.Endpoints {
		out.Endpoints = append(out.Endpoints, &agentv1.Endpoint{Name: e.Name, Protocol: string(e.Protocol), Port: uint32(e.Port)})
	}
	for _, st := range s.Init.Steps {
		out.InitSteps = append(out.InitSteps, &agentv1.InitStep{
			Id: st.ID, Action: string(st.Uses), Host: st.With.Host, Port: uint32(st.With.Port), Url: st.With.URL,
			ExpectStatus: uint32(st.With.ExpectStatus), Command: st.With.Command.Argv(), Retry: uint32(st.Retry),
			Timeout: durationpb.New(st.Timeout.D()), OnFailure: string(st.OnFailure),
		})
	}
	return out
}

// ErrInitFailed is returned by Run when the replica's init steps failed.
var ErrInitFailed = errors.New("init failed")

// Run asks the agent to run r (idempotent on the agent's side).
func (c *Client) Run(ctx context.Context, r *schedulerv1.Replica, _ *specinfo.Deployment, svc specinfo.Service) error {
	if svc.Spec == nil {
		return fmt.Errorf("replica %s: service %q is not in its deployment version", r.Id, r.Service)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute) // includes the image pull
	defer cancel()
	_, err := c.agent.RunReplica(ctx, &agentv1.RunReplicaRequest{Spec: ReplicaSpec(r, svc)})
	if err != nil {
		msg := status.Convert(err).Message()
		if status.Code(err) == codes.FailedPrecondition && strings.Contains(msg, "init step failed") {
			return fmt.Errorf("%w: %s", ErrInitFailed, msg)
		}
		return fmt.Errorf("run replica %s: %s", r.Id, msg)
	}
	return nil
}

// Remove stops and removes replica id; one the agent does not have is fine.
func (c *Client) Remove(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, c.StopGrace+30*time.Second)
	defer cancel()
	_, err := c.agent.StopReplica(ctx, &agentv1.StopReplicaRequest{Id: id})
	if err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("stop replica %s: %s", id, status.Convert(err).Message())
	}
	_, err = c.agent.RemoveReplica(ctx, &agentv1.RemoveReplicaRequest{Id: id})
	if err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("remove replica %s: %s", id, status.Convert(err).Message())
	}
	return nil
}

// List returns the agent's replicas as cluster statuses.
func (c *Client) List(ctx context.Context) (map[string]*schedulerv1.ReplicaStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := c.agent.ListReplicas(ctx, &agentv1.ListReplicasRequest{})
	if err != nil {
		return nil, fmt.Errorf("list agent replicas: %s", status.Convert(err).Message())
	}
	out := make(map[string]*schedulerv1.ReplicaStatus, len(resp.Replicas))
	for _, r := range resp.Replicas {
		s := Status(r)
		out[s.Id] = s
	}
	return out, nil
}

// Status maps an agent replica to the cluster's view of it.
func Status(r *agentv1.Replica) *schedulerv1.ReplicaStatus {
	s := &schedulerv1.ReplicaStatus{Id: r.GetSpec().GetId(), Ip: r.GetIp(), Reason: r.GetReason()}
	switch r.GetState() {
	case agentv1.ReplicaState_REPLICA_STATE_CREATING:
		s.Phase, s.Health = schedulerv1.ReplicaPhase_REPLICA_PHASE_STARTING, schedulerv1.Health_HEALTH_STARTING
	case agentv1.ReplicaState_REPLICA_STATE_RUNNING:
		// Running counts as healthy for a service without a health check;
		// the node side replaces this with its checks' results otherwise.
		s.Phase, s.Health = schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING, schedulerv1.Health_HEALTH_HEALTHY
		if len(r.GetInit()) > 0 && s.Reason == "" {
			var steps []string
			for _, st := range r.GetInit() {
				steps = append(steps, fmt.Sprintf("%s %s (%d attempts, %s)", st.GetId(), st.GetOutcome(), st.GetAttempts(), st.GetDuration().AsDuration().Round(time.Millisecond)))
			}
			s.Reason = "init: " + strings.Join(steps, "; ")
		}
	case agentv1.ReplicaState_REPLICA_STATE_STOPPING:
		s.Phase = schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPING
	default: // exited, lost
		s.Phase = schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED
		if e := r.GetExit(); e != nil {
			s.ExitCode = e.GetCode()
			if e.GetOomKilled() && s.Reason == "" {
				s.Reason = "killed: out of memory"
			}
			if s.Reason == "" {
				s.Reason = fmt.Sprintf("exited with code %d", e.GetCode())
			}
		}
		if s.Reason == "" {
			s.Reason = "lost by the agent"
		}
	}
	return s
}

// Exec runs argv inside replica's container through the agent and returns
// its exit code (health checks of type command).
func (c *Client) Exec(ctx context.Context, replica string, argv []string) (int, error) {
	stream, err := c.agent.Exec(ctx)
	if err != nil {
		return 0, fmt.Errorf("exec in %s: %s", replica, status.Convert(err).Message())
	}
	if err := stream.Send(&agentv1.ExecRequest{Input: &agentv1.ExecRequest_Start{Start: &agentv1.ExecStart{Id: replica, Args: argv}}}); err != nil {
		return 0, fmt.Errorf("exec in %s: %w", replica, err)
	}
	if err := stream.Send(&agentv1.ExecRequest{Input: &agentv1.ExecRequest_CloseStdin{CloseStdin: true}}); err != nil {
		return 0, fmt.Errorf("exec in %s: %w", replica, err)
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return 0, fmt.Errorf("exec in %s: %s", replica, status.Convert(err).Message())
		}
		if code, ok := msg.GetOutput().(*agentv1.ExecResponse_ExitCode); ok {
			return int(code.ExitCode), nil
		}
	}
}

// Stats returns each replica's CPU and memory use in percent of its limits
// (CPU of one core without a limit).
func (c *Client) Stats(ctx context.Context) (map[string][2]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := c.agent.GetStats(ctx, &agentv1.GetStatsRequest{})
	if err != nil {
		return nil, fmt.Errorf("agent stats: %s", status.Convert(err).Message())
	}
	out := make(map[string][2]float64, len(resp.Stats))
	for _, s := range resp.Stats {
		out[s.Id] = [2]float64{s.CpuPercent, s.MemoryPercent}
	}
	return out, nil
}
