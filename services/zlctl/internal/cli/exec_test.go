package cli

import (
	"errors"
	"strings"
	"testing"
)

func TestExec(t *testing.T) {
	n := startAgentDaemon(t)
	n.run(t, "exec-1", "sleep", "100000")

	out, errOut, err := execute(t, newExecCmd(n.g), "", "exec-1", "--", "sh", "-c", "echo hi; echo oops >&2; exit 3")
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 3 || out != "hi\n" || errOut != "oops\n" {
		t.Fatalf("exec: %q %q %v", out, errOut, err)
	}
	out, _, err = execute(t, newExecCmd(n.g), "from stdin\n", "-i", "app/svc/0", "--", "cat")
	if err != nil || out != "from stdin\n" {
		t.Fatalf("exec -i: %q %v", out, err)
	}
	out, _, err = execute(t, newExecCmd(n.g), "", "-e", "GREETING=hello", "-w", "/tmp", "exec-1", "--", "sh", "-c", "echo $GREETING $(pwd)")
	if err != nil || out != "hello /tmp\n" {
		t.Fatalf("exec -e -w: %q %v", out, err)
	}
	// -t: the command gets a terminal (stdin here is not one, so zlctl
	// leaves its own terminal alone).
	out, _, err = execute(t, newExecCmd(n.g), "", "-t", "exec-1", "--", "tty")
	if err != nil || !strings.HasPrefix(out, "/dev/pts/") {
		t.Fatalf("exec -t: %q %v", out, err)
	}
	if _, _, err := execute(t, newExecCmd(n.g), "", "exec-1", "sh"); err == nil {
		t.Fatal("exec without -- accepted")
	}
	if _, _, err := execute(t, newExecCmd(n.g), "", "nosuch", "--", "true"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("exec in unknown container: %v", err)
	}
}
