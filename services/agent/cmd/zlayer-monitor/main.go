// Command zlayer-monitor supervises one container for zlayer-agent: it runs
// `runc create`, reaps the container's init, keeps its logs and records how
// it exited. See package monitor.
package main

import (
	"os"

	"zlayer.dev/services/agent/internal/monitor"
)

func main() { os.Exit(monitor.Main(os.Args[1:])) }
