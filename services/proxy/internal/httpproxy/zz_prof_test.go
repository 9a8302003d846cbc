package httpproxy

import (
	"os"
	"os/exec"
	"runtime/pprof"
	"testing"

	"zlayer.dev/services/proxy/internal/routes"
)

func TestZZProfile(t *testing.T) {
	if os.Getenv("ZZPROF") == "" {
		return
	}
	h := newHarness(t, func(c *Config) { c.AccessLog = nil })
	r := route("web", "", "/")
	r.Backends = []routes.Backend{{ReplicaID: "n", Addr: "127.0.0.1:18099", Healthy: true, Ready: true}}
	h.set(t, r)
	f, _ := os.Create("/tmp/zl.prof")
	pprof.StartCPUProfile(f)
	out, _ := exec.Command("wrk", "-t2", "-c64", "-d5s", "http://"+h.plain+"/").CombinedOutput()
	pprof.StopCPUProfile()
	t.Log(string(out))
}
