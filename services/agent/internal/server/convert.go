package server

import (
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"slices"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	"zlayer.dev/services/agent/internal/images"
	"zlayer.dev/services/agent/internal/runner"
)

// SpecFromProto converts a wire spec to the runner's. Validation is the
// runner's; this only copies.
func SpecFromProto(p *agentv1.ReplicaSpec) runner.Spec {
	s := runner.Spec{
		ID: p.GetId(),
		Identity: runner.Identity{
			Deployment: p.GetIdentity().GetDeployment(),
			Service:    p.GetIdentity().GetService(),
			Index:      int(p.GetIdentity().GetIndex()),
		},
		Image:     p.GetImage(),
		Pull:      policyFromProto(p.GetPullPolicy()),
		Env:       p.GetEnv(),
		CPU:       p.GetResources().GetCpu(),
		Memory:    p.GetResources().GetMemoryBytes(),
		Groups:    slices.Clone(p.GetOverlayGroups()),
		GroupsSet: p.GetOverlayGroupsSet(),
	}
	if p.GetCommand() != nil {
		s.Command = append([]string{}, p.GetCommand().GetValues()...)
	}
	if p.GetArgs() != nil {
		s.Args = append([]string{}, p.GetArgs().GetValues()...)
	}
	for _, e := range p.GetEndpoints() {
		s.Ports = append(s.Ports, runner.Port{Name: e.GetName(), Protocol: e.GetProtocol(), Port: e.GetPort()})
	}
	for _, st := range p.GetInitSteps() {
		s.Init = append(s.Init, runner.InitStep{
			ID: st.GetId(), Action: st.GetAction(), Host: st.GetHost(), Port: int(st.GetPort()), URL: st.GetUrl(),
			ExpectStatus: int(st.GetExpectStatus()), Command: st.GetCommand(), Retry: int(st.GetRetry()),
			Timeout: st.GetTimeout().AsDuration(), OnFailure: st.GetOnFailure(),
		})
	}
	return s
}

// SpecToProto is the inverse of SpecFromProto.
func SpecToProto(s runner.Spec) *agentv1.ReplicaSpec {
	p := &agentv1.ReplicaSpec{
		Id: s.ID,
		Identity: &agentv1.ReplicaIdentity{
			Deployment: s.Identity.Deployment, Service: s.Identity.Service, Index: int32(s.Identity.Index),
		},
		Image:            s.Image,
		PullPolicy:       policyToProto(s.Pull),
		Env:              s.Env,
		OverlayGroups:    s.Groups,
		OverlayGroupsSet: s.GroupsSet,
	}
	if s.CPU != 0 || s.Memory != 0 {
		p.Resources = &agentv1.Resources{Cpu: s.CPU, MemoryBytes: s.Memory}
	}
	if s.Command != nil {
		p.Command = &agentv1.Argv{Values: s.Command}
	}
	if s.Args != nil {
		p.Args = &agentv1.Argv{Values: s.Args}
	}
	for _, e := range s.Ports {
		p.Endpoints = append(p.Endpoints, &agentv1.Endpoint{Name: e.Name, Protocol: e.Protocol, Port: e.Port})
	}
	for _, st := range s.Init {
		p.InitSteps = append(p.InitSteps, &agentv1.InitStep{
			Id: st.ID, Action: st.Action, Host: st.Host, Port: uint32(st.Port), Url: st.URL,
			ExpectStatus: uint32(st.ExpectStatus), Command: st.Command, Retry: uint32(st.Retry),
			Timeout: durationpb.New(st.Timeout), OnFailure: st.OnFailure,
		})
	}
	return p
}

func policyFromProto(p agentv1.PullPolicy) images.Policy {
	switch p {
	case agentv1.PullPolicy_PULL_POLICY_ALWAYS:
		return images.PolicyAlways
	case agentv1.PullPolicy_PULL_POLICY_NEVER:
		return images.PolicyNever
	default:
		return images.PolicyIfNotPresent
	}
}

func policyToProto(p images.Policy) agentv1.PullPolicy {
	switch p {
	case images.PolicyAlways:
		return agentv1.PullPolicy_PULL_POLICY_ALWAYS
	case images.PolicyNever:
		return agentv1.PullPolicy_PULL_POLICY_NEVER
	default:
		return agentv1.PullPolicy_PULL_POLICY_IF_NOT_PRESENT
	}
}

// StateToProto maps every runner state; the test over
// agentv1.ReplicaState_name fails when either side gains a value.
func StateToProto(s runner.State) agentv1.ReplicaState {
	switch s {
	case runner.StateCreating:
		return agentv1.ReplicaState_REPLICA_STATE_CREATING
	case runner.StateRunning:
		return agentv1.ReplicaState_REPLICA_STATE_RUNNING
	case runner.StateStopping:
		return agentv1.ReplicaState_REPLICA_STATE_STOPPING
	case runner.StateExited:
		return agentv1.ReplicaState_REPLICA_STATE_EXITED
	case runner.StateLost:
		return agentv1.ReplicaState_REPLICA_STATE_LOST
	}
	return agentv1.ReplicaState_REPLICA_STATE_UNSPECIFIED
}

func ts(t interface{ IsZero() bool }, p *timestamppb.Timestamp) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return p
}

// ReplicaToProto converts a record.
func ReplicaToProto(r runner.Record) *agentv1.Replica {
	p := &agentv1.Replica{
		Spec:        SpecToProto(r.Spec),
		State:       StateToProto(r.State),
		ImageDigest: r.ImageDigest,
		Ip:          r.IP,
		Pid:         int32(r.Pid),
		CreatedAt:   ts(r.CreatedAt, timestamppb.New(r.CreatedAt)),
		StartedAt:   ts(r.StartedAt, timestamppb.New(r.StartedAt)),
		Reason:      r.Reason,
	}
	if r.Exit != nil {
		p.Exit = &agentv1.ExitStatus{
			Code:      int32(r.Exit.Code),
			Signal:    int32(r.Exit.Signal),
			ExitedAt:  timestamppb.New(r.Exit.At),
			OomKilled: r.Exit.OOMKilled,
		}
	}
	for _, res := range r.Init {
		p.Init = append(p.Init, &agentv1.InitStepResult{
			Id: res.ID, Outcome: res.Outcome, Attempts: uint32(res.Attempts),
			Duration: durationpb.New(res.Duration), Output: res.Output,
		})
	}
	return p
}
