// Package errkind names the classes of error that cross process boundaries.
// Wrap one with %w (fmt.Errorf("pull %s: %w", ref, errkind.NotFound)); the
// gRPC layer in libs/rpc turns the class into a status code, and clients
// decide on the code, never on the text. It holds nothing else.
package errkind

import "errors"

var (
	// NotFound: the named thing does not exist.
	NotFound = errors.New("not found")
	// Invalid: the caller's input is wrong; retrying the same call fails again.
	Invalid = errors.New("invalid argument")
	// Conflict: the thing already exists or is in a conflicting state.
	Conflict = errors.New("conflict")
	// Precondition: the system is not in a state that allows the call.
	Precondition = errors.New("failed precondition")
	// Unavailable: a dependency is down or unreachable; retrying may work.
	Unavailable = errors.New("unavailable")
	// Unauthenticated: credentials are missing or wrong.
	Unauthenticated = errors.New("unauthenticated")
	// Denied: the caller is known but not allowed to do this.
	Denied = errors.New("permission denied")
	// Exhausted: a resource (disk, addresses, ports) has run out.
	Exhausted = errors.New("resource exhausted")
)
