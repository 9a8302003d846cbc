package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
)

func TestLogs(t *testing.T) {
	n := startAgentDaemon(t)
	// stderr first, and a pause: the two streams are read separately, so
	// only their order in time makes "two" the last line for --tail 1.
	n.run(t, "logs-1", "sh", "-c", `echo err >&2; sleep 0.3; echo one; echo two; trap "echo three; exit 0" HUP; sleep 100000 & wait`)
	// Wait (through the API, not sleeping) until the first lines are kept.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _, err := execute(t, newLogsCmd(n.g), "", "logs-1")
		if err == nil && strings.Contains(out, "two") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("logs never showed the output: %q %v", out, err)
		}
		<-time.After(20 * time.Millisecond)
	}
	out, errOut, err := execute(t, newLogsCmd(n.g), "", "logs-1")
	if err != nil || out != "one\ntwo\n" || errOut != "err\n" {
		t.Fatalf("logs: %q %q %v", out, errOut, err)
	}
	out, _, err = execute(t, newLogsCmd(n.g), "", "--tail", "1", "app/svc")
	if err != nil || out != "two\n" {
		t.Fatalf("logs --tail 1 by deployment/service: %q %v", out, err)
	}
	out, _, err = execute(t, newLogsCmd(n.g), "", "--since", "1h", "-t", "app/svc/0")
	if err != nil || !strings.Contains(out, "Z one\n") {
		t.Fatalf("logs --since -t: %q %v", out, err)
	}
	if _, _, err := execute(t, newLogsCmd(n.g), "", "--since", "yesterday", "logs-1"); err == nil {
		t.Fatal("bad --since accepted")
	}
	if _, _, err := execute(t, newLogsCmd(n.g), "", "nosuch"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("unknown container: %v", err)
	}

	// -f follows until the container exits (its init exits on SIGHUP).
	done := make(chan struct{})
	var fout string
	var ferr error
	go func() {
		defer close(done)
		fout, _, ferr = execute(t, newLogsCmd(n.g), "", "-f", "--tail", "0", "logs-1")
	}()
	st, err := n.c.Exec(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&agentv1.ExecRequest{Input: &agentv1.ExecRequest_Start{Start: &agentv1.ExecStart{Id: "logs-1", Args: []string{"sh", "-c", "kill -HUP 1"}}}})
	st.CloseSend()
	for {
		if _, err := st.Recv(); err != nil {
			break
		}
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("logs -f did not end when the container exited")
	}
	if ferr != nil {
		t.Fatalf("logs -f: %q %v", fout, ferr)
	}
}
