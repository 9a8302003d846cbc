// Package bundle turns an image config and a replica's settings into an OCI
// runtime bundle (config.json) for runc: process, user, environment,
// resource limits, namespaces, mounts and the default hardening (seccomp
// profile, capability set, no_new_privs, masked and read-only kernel
// paths). It also checks, before anything is created, that the process can
// start at all (the executable exists and is a binary or script for this
// machine), so those failures are clear errors and not a container that
// dies at once. It does not mount root filesystems, create namespaces or
// run anything.
package bundle
