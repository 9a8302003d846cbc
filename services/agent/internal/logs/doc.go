// Package logs stores a container's stdout and stderr in files and reads
// them back. The writer side runs inside zlayer-monitor (one per
// container), so it stays small: no logger, no JSON, a fixed 32 KiB buffer
// per stream. The reader side serves `zlctl logs` from the agent.
//
// Each line on disk is
//
//	<RFC 3339 nano UTC time> <stdout|stderr> <F|P> <text>
//
// where F marks a full line and P a partial one (a line longer than the
// read buffer, or the last bytes before the stream closed without a
// newline), the format CRI runtimes use. Files rotate by size: container.log
// is the current file, container.log.1 the one before, and so on. It does
// not ship logs anywhere or parse what the container writes.
package logs
