package netlab

import (
	"context"
	"os"
	"testing"
)

func TestLabHostsReachEachOtherUntilCut(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("netlab needs root")
	}
	l, err := New("nlt", "10.250.77.0/24")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	a, err := l.AddHost("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.AddHost("b")
	if err != nil {
		t.Fatal(err)
	}
	if a.Addr.String() != "10.250.77.2" || b.Addr.String() != "10.250.77.3" {
		t.Fatalf("addresses %s %s", a.Addr, b.Addr)
	}
	ping := func() error {
		return a.Command(context.Background(), "ping", "-c1", "-W1", b.Addr.String()).Run()
	}
	if err := ping(); err != nil {
		t.Fatalf("a cannot reach b: %v", err)
	}
	if err := b.Cut(); err != nil {
		t.Fatal(err)
	}
	if err := ping(); err == nil {
		t.Fatal("a reaches b after b was cut")
	}
	if err := b.Restore(); err != nil {
		t.Fatal(err)
	}
	if err := ping(); err != nil {
		t.Fatalf("a cannot reach b after restore: %v", err)
	}
}
