package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/errkind"
	"zlayer.dev/libs/spec"
	"zlayer.dev/services/scheduler/internal/fsm"
)

// Join tokens (SPEC.md, network.join): a service whose join mode is token
// accepts a node that presents <key>:<service>; open accepts any member's
// node; closed accepts none. A token of scope global enrols the node for
// every service of the deployment. Joined nodes are preferred by placement.

// CreateJoinToken makes a join token for a service whose join mode is token.
func (s *Server) CreateJoinToken(ctx context.Context, req *schedulerv1.CreateJoinTokenRequest) (*schedulerv1.CreateJoinTokenResponse, error) {
	d, svc, err := s.currentService(ctx, req.GetDeployment(), req.GetService())
	if err != nil {
		return nil, err
	}
	if mode := svc.Spec.Network.Join.Mode; mode != spec.JoinToken {
		return nil, fmt.Errorf("%s/%s: network.join.mode is %s, not token: %s: %w", d.Name, svc.Name, mode, joinModeHint(mode), errkind.Precondition)
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("join token: %w", err)
	}
	key := hex.EncodeToString(b[:])
	if _, err := s.propose(ctx, &schedulerv1.Command{Kind: &schedulerv1.Command_JoinToken{JoinToken: &schedulerv1.JoinTokenCommand{
		Deployment: d.Name, Service: svc.Name, Key: key, Global: svc.Spec.Network.Join.Scope == spec.ScopeGlobal,
	}}}); err != nil {
		return nil, err
	}
	return &schedulerv1.CreateJoinTokenResponse{Token: key + ":" + svc.Name}, nil
}

func joinModeHint(mode spec.JoinMode) string {
	if mode == spec.JoinOpen {
		return "any node may join it without a token (zlctl node join DEPLOYMENT/SERVICE)"
	}
	return "no node may join it; only the scheduler places its replicas"
}

// ListJoinTokens lists join tokens.
func (s *Server) ListJoinTokens(ctx context.Context, req *schedulerv1.ListJoinTokensRequest) (*schedulerv1.ListJoinTokensResponse, error) {
	if err := s.raft.LinearizableRead(ctx); err != nil {
		return nil, err
	}
	st := s.state.Copy()
	if name := req.GetDeployment(); name != "" && st.Deployments[name] == nil {
		return nil, fmt.Errorf("deployment %q: %w", name, errkind.NotFound)
	}
	out := &schedulerv1.ListJoinTokensResponse{}
	for _, name := range slices.Sorted(maps.Keys(st.Deployments)) {
		d := st.Deployments[name]
		if req.GetDeployment() != "" && name != req.GetDeployment() {
			continue
		}
		var toks []*schedulerv1.JoinTokenInfo
		for key, tok := range d.GetJoinTokens() {
			toks = append(toks, &schedulerv1.JoinTokenInfo{Deployment: name, Token: key + ":" + tok.Service, CreatedAt: tok.CreatedAt})
		}
		slices.SortFunc(toks, func(a, b *schedulerv1.JoinTokenInfo) int {
			if c := a.CreatedAt.AsTime().Compare(b.CreatedAt.AsTime()); c != 0 {
				return c
			}
			return strings.Compare(a.Token, b.Token)
		})
		out.Tokens = append(out.Tokens, toks...)
	}
	return out, nil
}

// RevokeJoinToken deletes a join token.
func (s *Server) RevokeJoinToken(ctx context.Context, req *schedulerv1.RevokeJoinTokenRequest) (*schedulerv1.RevokeJoinTokenResponse, error) {
	if err := s.raft.LinearizableRead(ctx); err != nil {
		return nil, err
	}
	key, _, _ := strings.Cut(req.GetToken(), ":")
	d, _ := s.state.Copy().FindJoinToken(key)
	if key == "" || d == nil {
		return nil, fmt.Errorf("join token %q: no such token (zlctl token ls): %w", redact(req.GetToken()), errkind.NotFound)
	}
	if _, err := s.propose(ctx, &schedulerv1.Command{Kind: &schedulerv1.Command_JoinToken{JoinToken: &schedulerv1.JoinTokenCommand{
		Deployment: d.Name, Key: key, Revoke: true,
	}}}); err != nil {
		return nil, err
	}
	return &schedulerv1.RevokeJoinTokenResponse{}, nil
}

// JoinService enrols this node for a service.
func (s *Server) JoinService(ctx context.Context, req *schedulerv1.JoinServiceRequest) (*schedulerv1.JoinServiceResponse, error) {
	dep, name := req.GetDeployment(), req.GetService()
	var key string
	if tok := req.GetToken(); tok != "" {
		k, tokService, ok := strings.Cut(tok, ":")
		if !ok || k == "" || tokService == "" {
			return nil, fmt.Errorf("join token %q: want <key>:<service>: %w", redact(tok), errkind.Invalid)
		}
		if err := s.raft.LinearizableRead(ctx); err != nil {
			return nil, err
		}
		d, t := s.state.Copy().FindJoinToken(k)
		if d == nil || t.Service != tokService {
			return nil, fmt.Errorf("join token %q: unknown, revoked or not for service %q: %w", redact(tok), tokService, errkind.Denied)
		}
		if dep != "" && dep != d.Name || name != "" && name != tokService {
			return nil, fmt.Errorf("join token %q is for %s/%s, not %s/%s: %w", redact(tok), d.Name, tokService, dep, name, errkind.Denied)
		}
		dep, name, key = d.Name, tokService, k
	}
	d, svc, err := s.currentService(ctx, dep, name)
	if err != nil {
		return nil, err
	}
	join := svc.Spec.Network.Join
	switch {
	case join.Mode == spec.JoinClosed:
		return nil, fmt.Errorf("%s/%s: network.join.mode is closed: no node may join it: %w", d.Name, svc.Name, errkind.Denied)
	case join.Mode == spec.JoinToken && key == "":
		return nil, fmt.Errorf("%s/%s: network.join.mode is token: join with a token from `zlctl token create %s/%s`: %w", d.Name, svc.Name, d.Name, svc.Name, errkind.Denied)
	}
	target := svc.Name
	if join.Scope == spec.ScopeGlobal {
		target = fsm.AllServices
	}
	if _, err := s.propose(ctx, &schedulerv1.Command{Kind: &schedulerv1.Command_Join{Join: &schedulerv1.JoinCommand{
		Node: s.local.Node, Deployment: d.Name, Service: target, Key: key,
	}}}); err != nil {
		return nil, err
	}
	return &schedulerv1.JoinServiceResponse{Node: s.local.Node, Joined: d.Name + "/" + target}, nil
}

// LeaveService takes this node out of a service it joined.
func (s *Server) LeaveService(ctx context.Context, req *schedulerv1.LeaveServiceRequest) (*schedulerv1.LeaveServiceResponse, error) {
	if req.GetDeployment() == "" || req.GetService() == "" {
		return nil, fmt.Errorf("leave: want a deployment and a service (or *): %w", errkind.Invalid)
	}
	if _, err := s.propose(ctx, &schedulerv1.Command{Kind: &schedulerv1.Command_Join{Join: &schedulerv1.JoinCommand{
		Node: s.local.Node, Deployment: req.GetDeployment(), Service: req.GetService(), Leave: true,
	}}}); err != nil {
		return nil, err
	}
	return &schedulerv1.LeaveServiceResponse{}, nil
}

// redact shows a token's service and the start of its key only.
func redact(tok string) string {
	key, svc, ok := strings.Cut(tok, ":")
	if len(key) > 8 {
		key = key[:8] + "…"
	}
	if !ok {
		return key
	}
	return key + ":" + svc
}
