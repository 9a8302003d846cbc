package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"zlayer.dev/libs/spec"
)

const examples = "../../../../deploy/examples"

// runZlctl runs zlctl in-process and returns its exit code and output.
func runZlctl(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = Main(context.Background(), args, func(string) string { return "" }, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const badFile = `version: v1
deployment: my-app
services:
  web:
    image:
      name: nginx:latest
    scale:
      mode: adaptive
      replicas: 3
    helth:
      check: {type: tcp, port: 80}
`

func TestValidate(t *testing.T) {
	quick := filepath.Join(examples, "quickstart.yaml")
	bad := writeFile(t, "bad.yaml", badFile)
	tests := []struct {
		name       string
		args       []string
		stdin      string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{
			name:       "valid file",
			args:       []string{"validate", quick},
			wantStdout: quick + ": valid: deployment my-app, 1 service (web)\n",
		},
		{
			name:       "kinds counted",
			args:       []string{"validate", filepath.Join(examples, "cron.yaml")},
			wantStdout: filepath.Join(examples, "cron.yaml") + ": valid: deployment maintenance, 3 cron jobs (backup, warm-cache, weekly-report)\n",
		},
		{
			name:     "invalid file: every error with its place",
			args:     []string{"validate", bad},
			wantCode: 1,
			wantStderr: bad + ":9:7: services.web.scale.replicas: not allowed when mode is adaptive (use min/max)\n" +
				bad + ":10:5: services.web.helth: unknown field; did you mean \"health\"?\n" +
				bad + ": invalid, 2 problems\n",
		},
		{
			name:       "one bad file among good ones fails the run",
			args:       []string{"validate", quick, bad},
			wantCode:   1,
			wantStdout: quick + ": valid: deployment my-app, 1 service (web)\n",
			wantStderr: bad + ":9:7: services.web.scale.replicas: not allowed when mode is adaptive (use min/max)\n" +
				bad + ":10:5: services.web.helth: unknown field; did you mean \"health\"?\n" +
				bad + ": invalid, 2 problems\n",
		},
		{
			name:       "stdin",
			args:       []string{"validate", "-"},
			stdin:      "version: v1\ndeployment: a\nservices:\n  w: {image: {name: x}}\n",
			wantStdout: "<stdin>: valid: deployment a, 1 service (w)\n",
		},
		{
			name:       "stdin invalid",
			args:       []string{"validate", "-"},
			stdin:      "version: v2\n",
			wantCode:   1,
			wantStderr: "<stdin>:1:10: version: unsupported version \"v2\" (supported: v1)\n<stdin>: invalid, 1 problem\n",
		},
		{
			name:       "missing file",
			args:       []string{"validate", "/nonexistent/d.yaml"},
			wantCode:   1,
			wantStderr: "/nonexistent/d.yaml: cannot read: no such file or directory\n/nonexistent/d.yaml: invalid, 1 problem\n",
		},
		{
			name:       "unknown output format",
			args:       []string{"validate", "-o", "xml", quick},
			wantCode:   1,
			wantStderr: "zlctl: unknown output format \"xml\" (use text or json)\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runZlctl(t, tt.stdin, tt.args...)
			if code != tt.wantCode {
				t.Errorf("exit code = %d, want %d (stderr %q)", code, tt.wantCode, stderr)
			}
			if stdout != tt.wantStdout {
				t.Errorf("stdout =\n%s\nwant\n%s", stdout, tt.wantStdout)
			}
			if stderr != tt.wantStderr {
				t.Errorf("stderr =\n%s\nwant\n%s", stderr, tt.wantStderr)
			}
		})
	}
}

func TestValidateNoArgs(t *testing.T) {
	code, _, stderr := runZlctl(t, "", "validate")
	if code != 1 || !strings.Contains(stderr, "requires at least 1 arg") {
		t.Errorf("validate without a file: code %d, stderr %q", code, stderr)
	}
}

// TestValidatePrintRoundTrip checks that --print shows the defaults and
// that its output parses back to the same deployment, for every example.
func TestValidatePrintRoundTrip(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(examples, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			code, stdout, stderr := runZlctl(t, "", "validate", "--print", f)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			want, err := spec.Load(f)
			if err != nil {
				t.Fatal(err)
			}
			got, err := spec.Parse("printed.yaml", []byte(stdout))
			if err != nil {
				t.Fatalf("--print output does not parse: %v\n%s", err, stdout)
			}
			for _, name := range want.ServiceNames() {
				if got.Services[name] == nil || got.Services[name].Hash() != want.Services[name].Hash() {
					t.Errorf("service %s differs after --print", name)
				}
			}
			if len(got.Services) != len(want.Services) || got.Deployment != want.Deployment {
				t.Errorf("--print output is another deployment")
			}
		})
	}
	// Defaults are written out.
	_, stdout, _ := runZlctl(t, "", "validate", "--print", filepath.Join(examples, "quickstart.yaml"))
	for _, want := range []string{"pull_policy: if_not_present", "cooldown: 30s", "cpu: 70%", "retries: 3", "port: 80", "action: restart"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("--print output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestValidatePrintSeveralFiles(t *testing.T) {
	a := writeFile(t, "a.yaml", "version: v1\ndeployment: a\nservices:\n  w: {image: {name: x}}\n")
	b := writeFile(t, "b.yaml", "version: v1\ndeployment: b\nservices:\n  w: {image: {name: y}}\n")
	code, stdout, stderr := runZlctl(t, "", "validate", "--print", a, b)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	docs := strings.Split(stdout, "\n---\n")
	if len(docs) != 2 || !strings.HasPrefix(docs[0], "# "+a+"\n") || !strings.HasPrefix(docs[1], "# "+b+"\n") {
		t.Fatalf("want two documents headed by their file names, got:\n%s", stdout)
	}
	for i, doc := range docs {
		if _, err := spec.Parse("doc", []byte(doc)); err != nil {
			t.Errorf("document %d does not parse: %v", i, err)
		}
	}
}

func TestValidateJSON(t *testing.T) {
	bad := writeFile(t, "bad.yaml", badFile)
	quick := filepath.Join(examples, "quickstart.yaml")
	code, stdout, stderr := runZlctl(t, "", "validate", "-o", "json", "--print", quick, bad)
	if code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	if stderr != "" {
		t.Errorf("stderr = %q, want nothing (errors are in the JSON)", stderr)
	}
	var got []struct {
		File       string `json:"file"`
		Valid      bool   `json:"valid"`
		Deployment string `json:"deployment"`
		Services   []struct {
			Name, RType, Hash string
		} `json:"services"`
		Errors []struct {
			File    string `json:"file"`
			Line    int    `json:"line"`
			Col     int    `json:"col"`
			Path    string `json:"path"`
			Message string `json:"message"`
		} `json:"errors"`
		Resolved map[string]any `json:"resolved"`
	}
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, stdout)
	}
	if len(got) != 2 {
		t.Fatalf("got %d results, want 2", len(got))
	}
	q, b := got[0], got[1]
	if !q.Valid || q.Deployment != "my-app" || len(q.Services) != 1 || q.Services[0].Name != "web" ||
		q.Services[0].RType != "service" || !strings.HasPrefix(q.Services[0].Hash, "sha256:") {
		t.Errorf("quickstart result = %+v", q)
	}
	if q.Resolved["deployment"] != "my-app" || q.Resolved["services"] == nil {
		t.Errorf("--print in JSON: resolved = %v", q.Resolved)
	}
	if b.Valid || len(b.Errors) != 2 {
		t.Fatalf("bad result = %+v", b)
	}
	e := b.Errors[0]
	if e.File != bad || e.Line != 9 || e.Col != 7 || e.Path != "services.web.scale.replicas" || e.Message != "not allowed when mode is adaptive (use min/max)" {
		t.Errorf("first error = %+v", e)
	}
}
