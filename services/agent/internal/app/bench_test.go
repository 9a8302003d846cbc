package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	registryv1 "zlayer.dev/libs/api/zlayer/registry/v1"
	"zlayer.dev/libs/rpc"
)

// benchRounds is how many times each start is measured (median reported).
var benchRounds = envInt("BENCH_ROUNDS", 7)

func envInt(k string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(k)); err == nil && v > 0 {
		return v
	}
	return def
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkStart measures request → process running with the image
// cached: RunReplica through the agent (rootfs from the registry daemon,
// a network namespace from the agent's warm pool — its default size, made
// and attached through CNI ahead of time — or, when the pool is empty,
// netns + CNI; monitor, runc run) against `runc run -d` of the same bundle
// (the agent's config.json on its own rootfs from the same registry, in a
// new network namespace runc makes, with no CNI at all), for 1 container
// and for 20 at once. It also measures the CPU time (user+sys) each start
// costs, of every process involved, including the pool's refill after it
// (the CNI work moved off the start path, not saved), and from it the
// least wall time 20 starts at once can take on this machine's CPUs. The
// runc side is measured only once the pool is full again, so the refill
// never runs during it. It prints a table and reports the ratios as
// metrics. Run it through scripts/bench/agent.sh.
func BenchmarkStart(b *testing.B) {
	// Before the agent starts, so that it and everything it starts
	// (monitors, runc, CNI plugins) are accounted too.
	acct := newCPUAcct(b)
	// BENCH_WARM_NETNS sets the pool's size; 0 measures the start path
	// without it (CNI on every start).
	warm := 2 // the agent's default
	if v, err := strconv.Atoi(os.Getenv("BENCH_WARM_NETNS")); err == nil && v >= 0 {
		warm = v
	}
	a := startAgentWarm(b, warm)
	ctx := context.Background()
	spec := func(id string) *agentv1.ReplicaSpec {
		return &agentv1.ReplicaSpec{Id: id, Image: busyboxRef, Command: &agentv1.Argv{Values: []string{"sleep", "100000"}},
			Resources: &agentv1.Resources{Cpu: 0.5, MemoryBytes: 64 << 20}}
	}
	// Warm: pull the image and make the bridge.
	a.runB(b, spec("warm"))
	cfg := readBundle(b, filepath.Join(a.dataDir, "containers", "warm", "config.json"))
	// The bind-mounted files (hosts, resolv.conf, hostname) go with the
	// container: keep copies for the runc bundles.
	files := b.TempDir()
	for i, m := range cfg.Mounts {
		if m.Type == "bind" {
			data, err := os.ReadFile(m.Source)
			if err != nil {
				b.Fatal(err)
			}
			dst := filepath.Join(files, filepath.Base(m.Source))
			if err := os.WriteFile(dst, data, 0o644); err != nil {
				b.Fatal(err)
			}
			cfg.Mounts[i].Source = dst
		}
	}
	a.removeB(b, "warm")
	a.waitPool()

	regc, err := rpc.Dial(rpc.SocketPath(regRunDir, "registry"))
	if err != nil {
		b.Fatal(err)
	}
	defer regc.Close()
	reg := registryv1.NewRegistryServiceClient(regc)
	runcRoot := b.TempDir()
	bundles := b.TempDir()
	// runcBundle prepares (untimed) a bundle for a plain runc container:
	// the agent's config, a rootfs from the registry, a new netns, its own
	// cgroup.
	runcBundle := func(id string) string {
		r, err := reg.PrepareRootfs(ctx, &registryv1.PrepareRootfsRequest{Image: busyboxRef, ContainerId: id})
		if err != nil {
			b.Fatal(err)
		}
		c := cfg
		c.Root = &specs.Root{Path: r.GetRootfsPath()}
		lin := *cfg.Linux
		lin.CgroupsPath = "/zlayer-bench/" + id
		lin.Namespaces = slices.Clone(cfg.Linux.Namespaces)
		for i := range lin.Namespaces {
			lin.Namespaces[i].Path = ""
		}
		c.Linux = &lin
		dir := filepath.Join(bundles, id)
		os.MkdirAll(dir, 0o700)
		out, _ := json.Marshal(&c)
		if err := os.WriteFile(filepath.Join(dir, "config.json"), out, 0o600); err != nil {
			b.Fatal(err)
		}
		return dir
	}
	runcRun := func(id, dir string) time.Duration {
		// runc passes its stdio to the container: /dev/null, so nothing
		// waits on a pipe the container holds; errors go to a log file.
		log := filepath.Join(dir, "runc.log")
		start := time.Now()
		err := exec.Command("runc", "--root", runcRoot, "--log", log, "run", "-d", "--bundle", dir, id).Run()
		d := time.Since(start)
		if err != nil {
			out, _ := os.ReadFile(log)
			b.Fatalf("runc run: %v: %s", err, out)
		}
		return d
	}
	runcCPU := func(id string) time.Duration { return cgroupCPU(b, "/zlayer-bench/"+id) }
	agentCPU := func(id string) time.Duration { return cgroupCPU(b, path.Join("/zlayer", a.node, id)) }
	runcClean := func(id string) {
		exec.Command("runc", "--root", runcRoot, "delete", "-f", id).Run()
		reg.ReleaseRootfs(ctx, &registryv1.ReleaseRootfsRequest{ContainerId: id})
	}
	agentRun := func(id string) time.Duration {
		start := time.Now()
		if _, err := a.c.RunReplica(ctx, &agentv1.RunReplicaRequest{Spec: spec(id)}); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}

	// CPU time of a start: what the processes in the benchmark's cpuacct
	// group used meanwhile (the agent, registry daemon, monitors, runc,
	// runc init until it moves into the container's cgroup, CNI plugins,
	// and this process: the gRPC client, or the fork and exec of runc),
	// plus what the container's own cgroup used (runc init after it moved
	// there; `sleep` itself uses none).
	var one, oneRunc, twenty, twentyRunc []time.Duration
	var cpu, cpuPath, cpuRunc, cpu20, cpu20Runc []time.Duration
	for round := range benchRounds {
		// Alternate the order so neither side always runs on a warmer cache.
		sides := []func(){
			func() {
				id := fmt.Sprintf("one-%d", round)
				u := acct.usage()
				one = append(one, agentRun(id))
				cpuPath = append(cpuPath, acct.usage()-u+agentCPU(id))
				a.waitPool() // the refill is part of the start's cost
				cpu = append(cpu, acct.usage()-u+agentCPU(id))
			},
			func() {
				id := fmt.Sprintf("runc-%d", round)
				dir := runcBundle(id)
				u := acct.usage()
				oneRunc = append(oneRunc, runcRun(id, dir))
				cpuRunc = append(cpuRunc, acct.usage()-u+runcCPU(id))
			},
		}
		if round%2 == 1 {
			slices.Reverse(sides)
		}
		for _, f := range sides {
			f()
		}
		a.removeB(b, fmt.Sprintf("one-%d", round))
		runcClean(fmt.Sprintf("runc-%d", round))
	}
	for round := range max(benchRounds/2, 3) {
		var wg sync.WaitGroup
		u := acct.usage()
		start := time.Now()
		for i := range 20 {
			wg.Go(func() { agentRun(fmt.Sprintf("many-%d-%d", round, i)) })
		}
		wg.Wait()
		twenty = append(twenty, time.Since(start))
		a.waitPool()
		used := acct.usage() - u
		for i := range 20 {
			used += agentCPU(fmt.Sprintf("many-%d-%d", round, i))
		}
		cpu20 = append(cpu20, used/20)
		for i := range 20 {
			a.removeB(b, fmt.Sprintf("many-%d-%d", round, i))
		}
		dirs := make([]string, 20)
		for i := range 20 {
			dirs[i] = runcBundle(fmt.Sprintf("rmany-%d-%d", round, i))
		}
		u = acct.usage()
		start = time.Now()
		for i := range 20 {
			wg.Go(func() { runcRun(fmt.Sprintf("rmany-%d-%d", round, i), dirs[i]) })
		}
		wg.Wait()
		twentyRunc = append(twentyRunc, time.Since(start))
		used = acct.usage() - u
		for i := range 20 {
			used += runcCPU(fmt.Sprintf("rmany-%d-%d", round, i))
		}
		cpu20Runc = append(cpu20Runc, used/20)
		for i := range 20 {
			runcClean(fmt.Sprintf("rmany-%d-%d", round, i))
		}
	}
	for _, c := range []string{"blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids", "systemd", "unified"} {
		os.Remove(filepath.Join("/sys/fs/cgroup", c, "zlayer-bench"))
	}
	m1, r1, m20, r20 := median(one), median(oneRunc), median(twenty), median(twentyRunc)
	fmt.Printf("\nstart latency, request → process running (median; %d rounds for 1, %d for 20)\n", len(one), len(twenty))
	fmt.Printf("  zlayer: --warm-netns %d (the agent's default is 2); runc run: a new empty netns, no CNI at all\n", a.warm)
	fmt.Printf("  %-28s %10s %10s %8s\n", "", "zlayer", "runc run", "ratio")
	fmt.Printf("  %-28s %10s %10s %8.2f\n", "1 container", m1.Round(100*time.Microsecond), r1.Round(100*time.Microsecond), float64(m1)/float64(r1))
	fmt.Printf("  %-28s %10s %10s %8.2f\n", "20 at once (wall)", m20.Round(100*time.Microsecond), r20.Round(100*time.Microsecond), float64(m20)/float64(r20))
	fmt.Printf("  20 at once / 1: zlayer %.2f, runc %.2f\n", float64(m20)/float64(m1), float64(r20)/float64(r1))

	// However the starts are scheduled, 20 of them cannot finish before
	// the CPUs have done 20 starts' work: wall(20) ≥ 20 × CPU(1) / CPUs.
	// CPU(1) is measured one start at a time (no contention), so this is
	// the most favourable bound; it ignores waits (fsync, pipes) and
	// serial steps, which only add to it.
	cpus := runtime.NumCPU()
	c1, cr1, c20, cr20 := median(cpu), median(cpuRunc), median(cpu20), median(cpu20Runc)
	floor := func(c time.Duration) time.Duration { return 20 * c / time.Duration(cpus) }
	ms := func(d time.Duration) string { return d.Round(100 * time.Microsecond).String() }
	fmt.Printf("\nCPU time per start, user+sys of every process involved, the warm pool's refill included (median)\n")
	fmt.Printf("  %-28s %10s %10s %8s\n", "", "zlayer", "runc run", "ratio")
	fmt.Printf("  %-28s %10s %10s %8.2f\n", "1 at a time", ms(c1), ms(cr1), float64(c1)/float64(cr1))
	fmt.Printf("  %-28s %10s %10s %8.2f\n", "  of it until the reply", ms(median(cpuPath)), ms(cr1), float64(median(cpuPath))/float64(cr1))
	fmt.Printf("  %-28s %10s %10s %8.2f\n", "in the 20 at once", ms(c20), ms(cr20), float64(c20)/float64(cr20))
	fmt.Printf("  %-28s %10s %10s\n", fmt.Sprintf("floor for 20, %d CPUs", cpus), ms(floor(c1)), ms(floor(cr1)))
	fmt.Printf("  %-28s %10s %10s\n", "20 at once measured (wall)", ms(m20), ms(r20))
	fmt.Printf("  %-28s %10s %10s\n", "2 × 1 container (the goal)", ms(2*m1), ms(2*r1))
	// The goal needs 20 × CPU(1) / CPUs < 2 × wall(1).
	fmt.Printf("  CPUs needed before 20 at once can take < 2 × one: zlayer %.1f, runc %.1f (this machine: %d)\n",
		20*float64(c1)/(2*float64(m1)), 20*float64(cr1)/(2*float64(r1)), cpus)
	b.ReportMetric(float64(m1)/float64(r1), "ratio-1")
	b.ReportMetric(float64(m20)/float64(m1), "20/1")
	b.ReportMetric(float64(c1)/float64(cr1), "cpu-ratio-1")
}

// cpuAcct is a cpuacct cgroup (v1) that the benchmark process and the
// registry daemon are moved into; every process they start afterwards
// is in it too, until runc moves a container's process into the
// container's own cgroup.
type cpuAcct struct{ dir string }

const cpuacctRoot = "/sys/fs/cgroup/cpuacct"

func newCPUAcct(b *testing.B) *cpuAcct {
	c := &cpuAcct{dir: filepath.Join(cpuacctRoot, fmt.Sprintf("zlayer-bench-cpu-%d", os.Getpid()))}
	if err := os.Mkdir(c.dir, 0o755); err != nil {
		b.Fatalf("cpu accounting: %v", err)
	}
	move := func(dir string, pid int) {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			b.Fatalf("cpu accounting: move %d to %s: %v", pid, dir, err)
		}
	}
	move(c.dir, os.Getpid())
	move(c.dir, regPid)
	b.Cleanup(func() {
		// Everything else in it has exited by now (the agent's cleanup
		// ran first).
		move(cpuacctRoot, os.Getpid())
		move(cpuacctRoot, regPid)
		if err := os.Remove(c.dir); err != nil {
			b.Logf("cpu accounting: %v", err)
		}
	})
	return c
}

func (c *cpuAcct) usage() time.Duration { return readUsage(c.dir) }

// cgroupCPU is what a container's cgroup (its path, as in config.json)
// has used.
func cgroupCPU(b *testing.B, p string) time.Duration {
	d := readUsage(filepath.Join(cpuacctRoot, p))
	if d == 0 {
		b.Fatalf("cpu accounting: no usage in %s", p)
	}
	return d
}

func readUsage(dir string) time.Duration {
	data, err := os.ReadFile(filepath.Join(dir, "cpuacct.usage"))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	return time.Duration(n)
}

// BenchmarkMemory measures the agent's RSS idle and with 50 containers, and
// what each container's monitor costs (RSS, and PSS, which shares the
// monitor binary's pages among all monitors).
func BenchmarkMemory(b *testing.B) {
	a := startAgent(b)
	ctx := context.Background()
	n := envInt("BENCH_CONTAINERS", 50)
	a.runB(b, &agentv1.ReplicaSpec{Id: "warm", Image: busyboxRef, Command: &agentv1.Argv{Values: []string{"true"}}})
	a.removeB(b, "warm")
	a.waitPool()
	idle := kb(b, a.cmd.Process.Pid, "/status", "VmRSS:")
	for i := range n {
		a.runB(b, &agentv1.ReplicaSpec{Id: fmt.Sprintf("m-%d", i), Image: busyboxRef, Command: &agentv1.Argv{Values: []string{"sleep", "100000"}}})
	}
	// Let each monitor settle after start-up (log copiers parked).
	if _, err := a.c.ListReplicas(ctx, &agentv1.ListReplicasRequest{}); err != nil {
		b.Fatal(err)
	}
	loaded := kb(b, a.cmd.Process.Pid, "/status", "VmRSS:")
	var rss, pss, priv []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		c, _ := os.ReadFile(p)
		if !strings.Contains(string(c), "zlayer-monitor") || !strings.Contains(string(c), a.dataDir) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		rss = append(rss, kb(b, pid, "/smaps_rollup", "Rss:"))
		pss = append(pss, kb(b, pid, "/smaps_rollup", "Pss:"))
		priv = append(priv, kb(b, pid, "/smaps_rollup", "Private_Dirty:")+kb(b, pid, "/smaps_rollup", "Private_Clean:"))
	}
	if len(rss) != n {
		b.Fatalf("found %d monitors, want %d", len(rss), n)
	}
	avg := func(v []int) float64 {
		s := 0
		for _, x := range v {
			s += x
		}
		return float64(s) / float64(len(v)) / 1024
	}
	fmt.Printf("\nmemory (MiB)\n")
	fmt.Printf("  agent RSS idle                 %6.1f\n", float64(idle)/1024)
	fmt.Printf("  agent RSS with %d containers   %6.1f  (+%.2f per container)\n", n, float64(loaded)/1024, float64(loaded-idle)/1024/float64(n))
	fmt.Printf("  monitor RSS, mean              %6.2f\n", avg(rss))
	fmt.Printf("  monitor PSS, mean              %6.2f\n", avg(pss))
	fmt.Printf("  monitor private, mean          %6.2f\n", avg(priv))
	b.ReportMetric(avg(pss), "monitor-PSS-MiB")
	for i := range n {
		a.removeB(b, fmt.Sprintf("m-%d", i))
	}
}

func kb(b *testing.B, pid int, file, key string) int {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + file)
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, key); ok {
			f := strings.Fields(v)
			n, _ := strconv.Atoi(f[0])
			return n
		}
	}
	b.Fatalf("%s: no %s", file, key)
	return 0
}

func readBundle(b *testing.B, p string) specs.Spec {
	var s specs.Spec
	data, err := os.ReadFile(p)
	if err != nil {
		b.Fatal(err)
	}
	if err := json.Unmarshal(data, &s); err != nil {
		b.Fatal(err)
	}
	return s
}

func (a *agent) runB(b *testing.B, s *agentv1.ReplicaSpec) {
	if _, err := a.c.RunReplica(context.Background(), &agentv1.RunReplicaRequest{Spec: s}); err != nil {
		b.Fatalf("run %s: %v", s.GetId(), err)
	}
}

func (a *agent) removeB(b *testing.B, id string) {
	ctx := context.Background()
	if _, err := a.c.StopReplica(ctx, &agentv1.StopReplicaRequest{Id: id, Grace: durationpb.New(0)}); err != nil {
		b.Fatalf("stop %s: %v", id, err)
	}
	if _, err := a.c.RemoveReplica(ctx, &agentv1.RemoveReplicaRequest{Id: id}); err != nil {
		b.Fatalf("remove %s: %v", id, err)
	}
}
