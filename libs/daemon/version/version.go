// Package version holds the build's version string, set at link time by the
// Makefile: -ldflags "-X zlayer.dev/libs/daemon/version.Version=...".
package version

// Version is the build's version; "dev" when not set at link time.
var Version = "dev"
