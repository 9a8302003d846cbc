package app_test

import (
	"context"
	"testing"
	"time"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
)

// Exec passes stdin through and closes it on close_stdin.
func TestExecStdin(t *testing.T) {
	a := startAgent(t)
	a.run(&agentv1.ReplicaSpec{Id: "cat", Image: busyboxRef, Command: &agentv1.Argv{Values: []string{"sleep", "100000"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := a.c.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&agentv1.ExecRequest{Input: &agentv1.ExecRequest_Start{Start: &agentv1.ExecStart{Id: "cat", Args: []string{"cat"}}}})
	st.Send(&agentv1.ExecRequest{Input: &agentv1.ExecRequest_Stdin{Stdin: []byte("abc\n")}})
	st.Send(&agentv1.ExecRequest{Input: &agentv1.ExecRequest_CloseStdin{CloseStdin: true}})
	var out []byte
	for {
		m, err := st.Recv()
		if err != nil {
			t.Fatalf("recv: %v (output %q)", err, out)
		}
		out = append(out, m.GetStdout()...)
		if _, ok := m.GetOutput().(*agentv1.ExecResponse_ExitCode); ok {
			break
		}
	}
	if string(out) != "abc\n" {
		t.Fatalf("output %q", out)
	}
}
