// Package images is the agent's view of the node's registry daemon: a
// root filesystem for a container from an image reference, and its
// release. The registry does the pulling, storing and mounting; this
// package only asks. It has a gRPC implementation (the registry daemon on
// <run-dir>/registry.sock) and no other logic.
package images

import (
	"context"

	"zlayer.dev/services/agent/internal/bundle"
)

// Policy is when the registry pulls (SPEC.md image.pull_policy).
type Policy uint8

// Pull policies; the zero value behaves as IfNotPresent.
const (
	PolicyIfNotPresent Policy = iota
	PolicyAlways
	PolicyNever
)

// Rootfs is a mounted root filesystem and the image config it came with.
type Rootfs struct {
	Path   string
	Config bundle.Image
	Digest string
}

// Images prepares and releases container root filesystems. Prepare of an
// image that is not present and cannot be pulled is errkind.NotFound;
// Release of an unknown container succeeds.
type Images interface {
	Prepare(ctx context.Context, ref string, p Policy, containerID string) (Rootfs, error)
	Release(ctx context.Context, containerID string) error
}
