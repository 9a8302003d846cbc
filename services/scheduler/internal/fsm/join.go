package fsm

import (
	"fmt"
	"slices"
	"strings"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/errkind"
)

// AllServices in a node's joined entry, deployment/*, stands for every
// service of the deployment (a join token of scope global).
const AllServices = "*"

// Joined reports whether node joined service of deployment, by name or
// through deployment/*.
func Joined(n *schedulerv1.Node, deployment, service string) bool {
	return slices.Contains(n.GetJoinedServices(), deployment+"/"+service) ||
		slices.Contains(n.GetJoinedServices(), deployment+"/"+AllServices)
}

// FindJoinToken returns the deployment holding the token with key, and the
// token; nil when there is none.
func (s *State) FindJoinToken(key string) (*schedulerv1.Deployment, *schedulerv1.JoinToken) {
	for _, name := range sortedKeys(s.Deployments) {
		d := s.Deployments[name]
		if tok := d.GetJoinTokens()[key]; tok != nil && !d.Deleting {
			return d, tok
		}
	}
	return nil, nil
}

func (t *txn) joinToken(c *schedulerv1.JoinTokenCommand) Result {
	d := t.f.deployments[c.Deployment]
	if d == nil || d.Deleting {
		return Result{Err: fmt.Errorf("deployment %q: %w", c.Deployment, errkind.NotFound)}
	}
	if c.Key == "" {
		return Result{Err: fmt.Errorf("join token for %s: empty key: %w", c.Deployment, errkind.Invalid)}
	}
	if c.Revoke {
		tok := d.JoinTokens[c.Key]
		if tok == nil {
			return Result{Err: fmt.Errorf("deployment %q has no such join token: %w", c.Deployment, errkind.NotFound)}
		}
		delete(d.JoinTokens, c.Key)
		t.touchDeployment(d.Name)
		t.event(&schedulerv1.Event{Deployment: d.Name, Service: tok.Service, Kind: "join-token-revoked",
			Message: fmt.Sprintf("join token %s… revoked", keyPrefix(c.Key))})
		return Result{}
	}
	if c.Service == "" || strings.ContainsAny(c.Service, "/:") {
		return Result{Err: fmt.Errorf("join token for %s: bad service name %q: %w", c.Deployment, c.Service, errkind.Invalid)}
	}
	if d.JoinTokens == nil {
		d.JoinTokens = map[string]*schedulerv1.JoinToken{}
	}
	if _, dup := d.JoinTokens[c.Key]; dup {
		return Result{Err: fmt.Errorf("join token key already exists: %w", errkind.Conflict)}
	}
	d.JoinTokens[c.Key] = &schedulerv1.JoinToken{Service: c.Service, CreatedAt: ts(t.now), Global: c.Global}
	t.touchDeployment(d.Name)
	t.event(&schedulerv1.Event{Deployment: d.Name, Service: c.Service, Kind: "join-token-created",
		Message: fmt.Sprintf("join token %s… created", keyPrefix(c.Key))})
	return Result{}
}

func (t *txn) join(c *schedulerv1.JoinCommand) Result {
	n := t.f.nodes[c.Node]
	if n == nil {
		return Result{Err: fmt.Errorf("node %q is not registered: %w", c.Node, errkind.NotFound)}
	}
	entry := c.Deployment + "/" + c.Service
	if c.Leave {
		i := slices.Index(n.JoinedServices, entry)
		if i < 0 {
			if all := c.Deployment + "/" + AllServices; slices.Contains(n.JoinedServices, all) {
				return Result{Err: fmt.Errorf("node %s joined every service of %s, not %s alone (leave %s): %w", n.Name, c.Deployment, entry, all, errkind.NotFound)}
			}
			return Result{Err: fmt.Errorf("node %s has not joined %s: %w", n.Name, entry, errkind.NotFound)}
		}
		n.JoinedServices = slices.Delete(n.JoinedServices, i, i+1)
		t.touchNode(n.Name)
		t.event(&schedulerv1.Event{Deployment: c.Deployment, Service: c.Service, Node: n.Name, Kind: "node-left",
			Message: fmt.Sprintf("node %s left %s", n.Name, entry)})
		return Result{}
	}
	d := t.f.deployments[c.Deployment]
	if d == nil || d.Deleting {
		return Result{Err: fmt.Errorf("deployment %q: %w", c.Deployment, errkind.NotFound)}
	}
	if v := version(d, d.Current); c.Service != AllServices && v != nil {
		if _, ok := v.ServiceHashes[c.Service]; !ok {
			return Result{Err: fmt.Errorf("deployment %q has no service %q: %w", c.Deployment, c.Service, errkind.NotFound)}
		}
	}
	if c.Key != "" {
		tok := d.JoinTokens[c.Key]
		switch {
		case tok == nil:
			return Result{Err: fmt.Errorf("join token for %s: unknown or revoked: %w", c.Deployment, errkind.Denied)}
		case c.Service == AllServices && !tok.Global:
			return Result{Err: fmt.Errorf("join token for %s/%s has scope service, not global: %w", c.Deployment, tok.Service, errkind.Denied)}
		case c.Service != AllServices && tok.Service != c.Service:
			return Result{Err: fmt.Errorf("join token is for service %q, not %q: %w", tok.Service, c.Service, errkind.Denied)}
		}
	}
	if slices.Contains(n.JoinedServices, entry) {
		return Result{}
	}
	n.JoinedServices = append(n.JoinedServices, entry)
	slices.Sort(n.JoinedServices)
	t.touchNode(n.Name)
	t.event(&schedulerv1.Event{Deployment: c.Deployment, Service: c.Service, Node: n.Name, Kind: "node-joined-service",
		Message: fmt.Sprintf("node %s joined %s", n.Name, entry)})
	return Result{}
}

// forgetJoins takes every node out of a deployment's services.
func (t *txn) forgetJoins(deployment string) {
	for _, name := range sortedKeys(t.f.nodes) {
		n := t.f.nodes[name]
		before := len(n.JoinedServices)
		n.JoinedServices = slices.DeleteFunc(n.JoinedServices, func(e string) bool { return strings.HasPrefix(e, deployment+"/") })
		if len(n.JoinedServices) != before {
			t.touchNode(name)
		}
	}
}

// keyPrefix is the part of a token's key shown in events and lists.
func keyPrefix(key string) string { return key[:min(len(key), 8)] }
