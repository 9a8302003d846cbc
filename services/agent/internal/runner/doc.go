// Package runner runs containers on this node with runc: it records each
// container's intent durably before making anything, builds its bundle,
// network namespace and address, starts it under a zlayer-monitor, stops
// and removes it, and on start re-adopts what an earlier agent left
// running and cleans up what a crash left half-made. Every create either
// finishes or undoes what it made, in reverse order. A warm pool of
// network namespaces, made and attached ahead of time, keeps CNI off the
// start path (pool.go).
//
// It does not talk gRPC (package server translates), pull images (the
// registry does, behind images.Images) or decide what should run (the
// scheduler does).
package runner
