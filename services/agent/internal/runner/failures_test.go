package runner

import (
	"context"
	"errors"
	"strings"
	"testing"

	"zlayer.dev/libs/errkind"
)

// Every failure to create is a clear, classed error and leaves nothing.
func TestCreateFailures(t *testing.T) {
	tn := newTestNode(t, 24)
	tests := []struct {
		name    string
		spec    Spec
		kind    error
		wantErr string
	}{
		{name: "missing image", spec: Spec{Image: "nosuch"}, kind: errkind.NotFound, wantErr: "image nosuch"},
		{name: "missing entrypoint", spec: Spec{Image: "busybox", Command: []string{"/usr/bin/nosuch"}}, kind: errkind.Invalid, wantErr: "no such executable file in the image"},
		{name: "not on path", spec: Spec{Image: "busybox", Command: []string{"nosuch"}}, kind: errkind.Invalid, wantErr: "not found in the image"},
		{name: "exec format error", spec: Spec{Image: "busybox", Command: []string{"/bin/bad"}}, kind: errkind.Invalid, wantErr: "exec format error"},
		{name: "runc failure", spec: Spec{Image: "broken", Command: []string{"/bin/sh"}}, wantErr: "runc run failed"},
		// With init steps the monitor runs runc create, not runc run.
		{name: "runc failure before init steps", spec: Spec{Image: "broken", Command: []string{"/bin/sh"},
			Init: []InitStep{{ID: "never", Action: ActionRun, Command: []string{"true"}}}}, wantErr: "runc create failed"},
		{name: "invalid memory", spec: Spec{Image: "busybox", Memory: 1024}, kind: errkind.Invalid, wantErr: "below the minimum"},
		{name: "invalid cpu", spec: Spec{Image: "busybox", CPU: 1000}, kind: errkind.Invalid, wantErr: "more than the node's"},
		{name: "missing env", spec: Spec{Image: "busybox", Env: map[string]string{"A": "$E:NOT_SET_ANYWHERE"}}, kind: errkind.Invalid, wantErr: "NOT_SET_ANYWHERE (for A)"},
		{name: "bad id", spec: Spec{Image: "busybox"}, kind: errkind.Invalid, wantErr: "container id"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.spec.ID = "fail-" + string(rune('a'+i))
			if tt.name == "bad id" {
				tt.spec.ID = "../etc"
			}
			_, err := tn.rn.Run(context.Background(), tt.spec)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want %q", err, tt.wantErr)
			}
			if tt.kind != nil && !errors.Is(err, tt.kind) {
				t.Fatalf("error %v is not %v", err, tt.kind)
			}
			tn.assertClean(t)
		})
	}
}

// A full subnet is errkind.Exhausted, and the failed container leaves no
// lease, namespace or mount.
func TestAddressExhaustion(t *testing.T) {
	tn := newTestNode(t, 30) // a /30: one address for containers
	ctx := context.Background()
	if _, err := tn.rn.Run(ctx, Spec{ID: "one", Image: "busybox", Command: []string{"sleep", "1000"}}); err != nil {
		t.Fatal(err)
	}
	_, err := tn.rn.Run(ctx, Spec{ID: "two", Image: "busybox", Command: []string{"sleep", "1000"}})
	if !errors.Is(err, errkind.Exhausted) {
		t.Fatalf("second container: %v, want Exhausted", err)
	}
	if err := tn.rn.Remove(ctx, "one", true); err != nil {
		t.Fatal(err)
	}
	tn.assertClean(t)
	// The freed address is usable again.
	if _, err := tn.rn.Run(ctx, Spec{ID: "three", Image: "busybox", Command: []string{"sleep", "1000"}}); err != nil {
		t.Fatal(err)
	}
}
