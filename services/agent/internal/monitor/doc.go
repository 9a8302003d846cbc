// Package monitor is the per-container supervisor, zlayer-monitor, and the
// agent's side of talking to it.
//
// Why a monitor process per container (like conmon) rather than the agent
// as subreaper: a subreaper's orphans go to init when it dies, so with the
// agent as subreaper, an exit that happens while the agent is down (crashed,
// being upgraded) would be reaped by init and its exit code lost. A monitor
// outlives the agent: it is started in its own session, sets itself as
// child subreaper, waits for the agent's go-ahead on a pipe (so that its
// exec overlaps with the agent's other preparations), runs `runc run -d`
// (or `runc create`, when the container has init steps to run before it
// starts) through go-runc, becomes the parent of the container's init
// when runc exits, copies the container's stdout and stderr into rotating
// log files, and on exit writes the exit status, time and OOM kill count
// to an exit file atomically before it exits itself. The agent learns of
// the exit through a pidfd on the monitor and reads the file — also after
// a restart, when the monitor is no longer its child. One process per
// container also bounds the damage of a bug to one container, and needs
// no protocol beyond argv, two pipes (go-ahead in, report out) and two
// files. The monitor is kept small (no logger, no gRPC, GOMAXPROCS 1, a
// tight GC target); docs/BENCHMARKS.md has its measured memory.
//
// The package does not start, stop or kill containers (runner does, with
// runc), and never talks to the agent over a socket.
package monitor
