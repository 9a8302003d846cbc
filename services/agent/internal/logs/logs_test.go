package logs

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func readAll(t *testing.T, path string, o ReadOptions) []string {
	t.Helper()
	var out []string
	if err := Read(context.Background(), path, o, func(e Entry) error {
		s := string(e.Stream) + ":" + string(e.Text)
		if e.Partial {
			s += "…"
		}
		out = append(out, s)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestWriteReadRotate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	w, err := NewWriter(path, 200, 2)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	w.now = func() time.Time { now = now.Add(time.Second); return now }
	var lines []string
	for i := range 20 {
		lines = append(lines, strings.Repeat("x", i))
	}
	if err := w.Copy(Stdout, strings.NewReader(strings.Join(lines, "\n")+"\nno newline")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	for _, p := range []string{path, path + ".1", path + ".2"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
	}
	if _, err := os.Stat(path + ".3"); err == nil {
		t.Fatal("kept more rotated files than asked")
	}
	got := readAll(t, path, ReadOptions{Tail: -1})
	if got[len(got)-1] != "stdout:no newline…" {
		t.Fatalf("last entry %q", got[len(got)-1])
	}
	if tail := readAll(t, path, ReadOptions{Tail: 2}); len(tail) != 2 || tail[0] != "stdout:"+lines[19] {
		t.Fatalf("tail 2: %q", tail)
	}
	since := readAll(t, path, ReadOptions{Tail: -1, Since: now.Add(-time.Second)})
	if len(since) != 2 {
		t.Fatalf("since: %q", since)
	}
}

func TestLongLineSplit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	w, err := NewWriter(path, 1<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("y", readBuf+10)
	if err := w.Copy(Stderr, strings.NewReader(long+"\n")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	got := readAll(t, path, ReadOptions{Tail: -1})
	if len(got) != 2 || !strings.HasSuffix(got[0], "…") || got[1] != "stderr:"+strings.Repeat("y", 10) {
		t.Fatalf("split: %d entries, last %q", len(got), got[len(got)-1])
	}
}

// A follower sees lines written after it started, across a rotation, and
// stops once the writer is done.
func TestFollow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	w, err := NewWriter(path, 120, 1)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	copied := make(chan struct{})
	go func() { w.Copy(Stdout, pr); close(copied) }()
	finished := func() bool {
		select {
		case <-copied:
			return true
		default:
			return false
		}
	}
	got := make(chan string, 100)
	done := make(chan error, 1)
	go func() {
		done <- Read(context.Background(), path, ReadOptions{Tail: -1, Follow: true, Done: finished, Poll: 5 * time.Millisecond},
			func(e Entry) error { got <- string(e.Text); return nil })
	}()
	for i := range 6 {
		line := strings.Repeat(string(rune('a'+i)), 30)
		pw.Write([]byte(line + "\n"))
		select {
		case g := <-got:
			if g != line {
				t.Fatalf("line %d: %q", i, g)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("line %d not followed", i)
		}
	}
	pw.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follower did not stop when the writer finished")
	}
}
