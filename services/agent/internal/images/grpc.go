package images

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	registryv1 "zlayer.dev/libs/api/zlayer/registry/v1"
	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/agent/internal/bundle"
)

// Registry is Images through the registry daemon's gRPC API.
type Registry struct {
	c registryv1.RegistryServiceClient
}

var _ Images = (*Registry)(nil)

// NewRegistry uses cc, a connection to the registry daemon.
func NewRegistry(cc grpc.ClientConnInterface) *Registry {
	return &Registry{c: registryv1.NewRegistryServiceClient(cc)}
}

func policyToProto(p Policy) registryv1.PullPolicy {
	switch p {
	case PolicyAlways:
		return registryv1.PullPolicy_PULL_POLICY_ALWAYS
	case PolicyNever:
		return registryv1.PullPolicy_PULL_POLICY_NEVER
	default:
		return registryv1.PullPolicy_PULL_POLICY_IF_NOT_PRESENT
	}
}

// Prepare pulls ref as policy says, then mounts a root filesystem for the
// container. Unless the policy is Always, it asks for the root filesystem
// first, which works exactly when the image is present: one call instead
// of two in the usual case. When that fails (not present, or any other
// error) it goes the long way, pull then prepare, so the outcome and its
// error are the same as always pulling first.
func (r *Registry) Prepare(ctx context.Context, ref string, p Policy, id string) (Rootfs, error) {
	if p != PolicyAlways {
		if rf, err := r.prepare(ctx, ref, id); err == nil {
			return rf, nil
		}
	}
	st, err := r.c.PullImage(ctx, &registryv1.PullImageRequest{Image: ref, PullPolicy: policyToProto(p)})
	if err != nil {
		return Rootfs{}, fmt.Errorf("pull %s: %w", ref, fromStatus(err))
	}
	for {
		if _, err := st.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return Rootfs{}, fmt.Errorf("pull %s: %w", ref, fromStatus(err))
		}
	}
	return r.prepare(ctx, ref, id)
}

// prepare mounts a root filesystem of ref, which must be present.
func (r *Registry) prepare(ctx context.Context, ref, id string) (Rootfs, error) {
	resp, err := r.c.PrepareRootfs(ctx, &registryv1.PrepareRootfsRequest{Image: ref, ContainerId: id})
	if err != nil {
		return Rootfs{}, fmt.Errorf("prepare rootfs of %s: %w", ref, fromStatus(err))
	}
	c := resp.GetConfig()
	return Rootfs{
		Path:   resp.GetRootfsPath(),
		Digest: resp.GetImageDigest(),
		Config: bundle.Image{
			Entrypoint: c.GetEntrypoint(),
			Cmd:        c.GetCmd(),
			Env:        c.GetEnv(),
			WorkingDir: c.GetWorkingDir(),
			User:       c.GetUser(),
		},
	}, nil
}

// Release unmounts and deletes the container's root filesystem.
func (r *Registry) Release(ctx context.Context, id string) error {
	if _, err := r.c.ReleaseRootfs(ctx, &registryv1.ReleaseRootfsRequest{ContainerId: id}); err != nil {
		return fmt.Errorf("release rootfs of %s: %w", id, fromStatus(err))
	}
	return nil
}

// classed keeps a status error's text and adds its errkind class, so the
// agent's own callers get the same code the registry gave.
type classed struct {
	msg  string
	kind error
}

func (c *classed) Error() string { return c.msg }
func (c *classed) Unwrap() error { return c.kind }

// fromStatus turns a registry status into an error of the matching class.
func fromStatus(err error) error {
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	var kind error
	switch s.Code() {
	case codes.NotFound:
		kind = errkind.NotFound
	case codes.InvalidArgument:
		kind = errkind.Invalid
	case codes.AlreadyExists:
		kind = errkind.Conflict
	case codes.FailedPrecondition:
		kind = errkind.Precondition
	case codes.Unavailable:
		kind = errkind.Unavailable
	case codes.Unauthenticated, codes.PermissionDenied:
		kind = errkind.Unauthenticated
	case codes.ResourceExhausted:
		kind = errkind.Exhausted
	default:
		return errors.New(s.Message())
	}
	return &classed{msg: s.Message(), kind: kind}
}
