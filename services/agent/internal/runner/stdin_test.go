package runner

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"
)

func TestExecStdinPipe(t *testing.T) {
	tn := newTestNode(t, 24)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := tn.rn.Run(ctx, Spec{ID: "cat", Image: "busybox", Command: []string{"sleep", "1000"}}); err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	go func() { pw.Write([]byte("abc\n")); pw.Close() }()
	var out bytes.Buffer
	code, err := tn.rn.Exec(ctx, "cat", ExecSpec{Args: []string{"cat"}}, ExecIO{Stdin: pr, Stdout: &out, Stderr: &out})
	if err != nil || code != 0 || out.String() != "abc\n" {
		t.Fatalf("%d %v %q", code, err, out.String())
	}
}

func TestExecTTY(t *testing.T) {
	tn := newTestNode(t, 24)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := tn.rn.Run(ctx, Spec{ID: "tty", Image: "busybox", Command: []string{"sleep", "1000"}}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	code, err := tn.rn.Exec(ctx, "tty", ExecSpec{Args: []string{"tty"}, Tty: true}, ExecIO{Stdin: bytes.NewReader(nil), Stdout: &out})
	if err != nil || code != 0 || !bytes.HasPrefix(out.Bytes(), []byte("/dev/pts/")) {
		t.Fatalf("%d %v %q", code, err, out.String())
	}
}
