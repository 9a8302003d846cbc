package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestJoinModes: network.join's three modes and two scopes through zlctl on
// one node: open services take any node by name, closed ones none, token
// services a token (a global one enrols the node for the whole
// deployment); revoked tokens stop working.
func TestJoinModes(t *testing.T) {
	reg := demoRegistry(t)
	n := startNode(t, "--arg", "registry:--insecure-registry="+reg.Addr)
	n.explainOnFailure(t, "modes")
	file := filepath.Join(t.TempDir(), "modes.yaml")
	svc := func(name, mode, scope string) string {
		return fmt.Sprintf(`  %s:
    image:
      name: %s/demo-http:latest
    network:
      join:
        mode: %s
        scope: %s
    scale:
      mode: manual
      replicas: 0
`, name, reg.Addr, mode, scope)
	}
	text := "version: v1\ndeployment: modes\nservices:\n" + svc("open", "open", "service") + svc("closed", "closed", "service") + svc("glob", "token", "global")
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := n.zlctl(t, "deploy", file); code != 0 {
		t.Fatalf("deploy: exit %d\n%s", code, out)
	}
	eventually(t, 30*time.Second, "the node registered", func() bool {
		out, _ := n.zlctl(t, "node", "ls")
		return strings.Contains(out, n.name)
	})
	expect := func(ok bool, want string, args ...string) string {
		t.Helper()
		out, code := n.zlctl(t, args...)
		if (code == 0) != ok || !strings.Contains(out, want) {
			t.Errorf("zlctl %s: exit %d, want success %v and %q in:\n%s", strings.Join(args, " "), code, ok, want, out)
		}
		return strings.TrimSpace(out)
	}
	expect(true, "joined modes/open", "node", "join", "modes/open")
	expect(false, "closed", "node", "join", "modes/closed")
	expect(false, "token", "node", "join", "modes/glob")
	expect(false, "open", "token", "create", "modes/open")
	tok := expect(true, ":glob", "token", "create", "modes/glob")
	expect(true, "joined modes/*", "node", "join", tok)
	expect(true, "modes/*", "node", "ls")
	expect(false, "leave modes/*", "node", "leave", "modes/glob")
	expect(true, "left", "node", "leave", "modes/*")
	expect(true, tok, "token", "ls", "modes")
	expect(true, "revoked", "token", "revoke", tok)
	expect(false, "unknown", "node", "join", tok)
	if out, code := n.zlctl(t, "delete", "modes"); code != 0 {
		t.Fatalf("delete: %s", out)
	}
}
