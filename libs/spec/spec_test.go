package spec

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"zlayer.dev/libs/errkind"
)

var update = flag.Bool("update", false, "rewrite testdata/invalid/*.golden and schema/deployment.schema.json")

// cmpDeployment compares the typed content of two deployments, not where
// they were read from.
var cmpDeployment = cmpopts.IgnoreUnexported(Deployment{})

func glob(t testing.TB, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no files match %s", pattern)
	}
	return files
}

// validFiles are every file that must parse: the shipped examples and
// testdata/valid.
func validFiles(t testing.TB) []string {
	return append(glob(t, "../../deploy/examples/*.yaml"), glob(t, "testdata/valid/*.yaml")...)
}

func TestValidFiles(t *testing.T) {
	for _, f := range validFiles(t) {
		t.Run(f, func(t *testing.T) {
			d, err := Load(f)
			if err != nil {
				t.Fatalf("Load(%s):\n%v", f, err)
			}
			if err := d.Validate(); err != nil {
				t.Errorf("Validate after Load:\n%v", err)
			}
			// Round trip: the printed form parses back to the same values.
			out, err := d.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			again, err := Parse("printed.yaml", out)
			if err != nil {
				t.Fatalf("printed form does not parse:\n%v\n---\n%s", err, out)
			}
			if diff := cmp.Diff(d, again, cmpDeployment); diff != "" {
				t.Errorf("round trip mismatch (-loaded +reparsed):\n%s", diff)
			}
			// Printing is stable.
			out2, err := again.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, out2) {
				t.Errorf("second print differs:\n%s\n---\n%s", out, out2)
			}
			for name, s := range d.Services {
				if s.Hash() != again.Services[name].Hash() {
					t.Errorf("service %s: hash changed over a round trip", name)
				}
			}
		})
	}
}

// TestQuickStartIsSpecs keeps deploy/examples/quickstart.yaml byte for byte
// the quick-start file of SPEC.md (copied below), which must stay valid
// unchanged.
func TestQuickStartIsSpecs(t *testing.T) {
	got, err := os.ReadFile("../../deploy/examples/quickstart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := "version: v1\ndeployment: my-app\nservices:\n  web:\n    rtype: service\n    image:\n      name: nginx:latest\n    endpoints:\n      - name: http\n        protocol: http\n        port: 80\n        expose: public\n    scale:\n      mode: adaptive\n      min: 1\n      max: 5\n    health:\n      check:\n        type: http\n        url: /health\n        expect_status: 200\n"
	if string(got) != want {
		t.Errorf("quickstart.yaml differs from SPEC.md's quick-start:\n%s", cmp.Diff(want, string(got)))
	}
}

func TestInvalidFiles(t *testing.T) {
	files := glob(t, "testdata/invalid/*.yaml")
	if len(files) < 40 {
		t.Errorf("only %d invalid cases; keep at least 40", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			d, err := Parse(filepath.Base(f), data)
			if err == nil {
				t.Fatalf("Parse accepted an invalid file")
			}
			if d != nil {
				t.Errorf("Parse returned a Deployment with errors")
			}
			var list Errors
			if !errors.As(err, &list) {
				t.Fatalf("error is %T, want Errors", err)
			}
			if !errors.Is(err, errkind.Invalid) {
				t.Errorf("errors.Is(err, errkind.Invalid) = false")
			}
			for _, e := range list {
				if e.Line == 0 || e.Col == 0 {
					t.Errorf("error without a place: %v", e)
				}
			}
			golden := strings.TrimSuffix(f, ".yaml") + ".golden"
			got := err.Error() + "\n"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("errors differ from %s (-want +got):\n%s", golden, diff)
			}
		})
	}
}

func TestErrorFormat(t *testing.T) {
	tests := []struct {
		name string
		err  FieldError
		want string
	}{
		{"full", FieldError{File: "d.yaml", Line: 14, Col: 9, Path: "services.web.scale.replicas", Msg: "not allowed"}, "d.yaml:14:9: services.web.scale.replicas: not allowed"},
		{"no path", FieldError{File: "d.yaml", Line: 1, Col: 1, Msg: "empty file"}, "d.yaml:1:1: empty file"},
		{"built in code", FieldError{Path: "services.web.image.name", Msg: "required"}, "services.web.image.name: required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
		})
	}
}

func intp(i int) *int    { return &i }
func boolp(b bool) *bool { return &b }

func TestDefaults(t *testing.T) {
	d, err := Parse("d.yaml", []byte("version: v1\ndeployment: a\nservices:\n  web:\n    image: {name: nginx}\n    endpoints:\n      - {name: http, protocol: http, port: 8080}\n      - {name: raw, protocol: tcp, port: 9000, expose: public}\n    health:\n      check: {type: http, url: /}\n    depends:\n      - service: db\n    init:\n      steps:\n        - {id: w, uses: init.wait_http, with: {url: 'http://db.global/'}}\n  db:\n    rtype: job\n    image: {name: postgres}\n"))
	if err != nil {
		t.Fatal(err)
	}
	net := Network{
		Overlays: Overlays{
			Service: ServiceOverlay{Enabled: boolp(true), Encrypted: boolp(true), Isolated: boolp(true)},
			Global:  GlobalOverlay{Enabled: boolp(true), Encrypted: boolp(true)},
		},
		Join: Join{Mode: JoinToken, Scope: ScopeService},
	}
	errPol := ErrorPolicy{OnInitFailure: InitFailurePolicy{Action: InitFail}, OnPanic: PanicPolicy{Action: PanicRestart}}
	want := map[string]*Service{
		"web": {
			Name:    "web",
			RType:   RTypeService,
			Image:   Image{Name: "nginx", PullPolicy: PullIfNotPresent},
			Network: net,
			Endpoints: []Endpoint{
				{Name: "http", Protocol: ProtocolHTTP, Port: 8080, Path: "/", Expose: ExposeInternal},
				{Name: "raw", Protocol: ProtocolTCP, Port: 9000, Expose: ExposePublic, PublicPort: 9000},
			},
			Scale: &Scale{Mode: ScaleAdaptive, Min: intp(1), Max: intp(10), Cooldown: Duration(30e9), Targets: &Targets{CPU: 70}},
			Depends: []Dependency{
				{Service: "db", Condition: ConditionHealthy, Timeout: Duration(5 * 60e9), OnTimeout: FailureFail},
			},
			Health: &Health{StartGrace: Duration(5e9), Interval: Duration(10e9), Timeout: Duration(5e9), Retries: 3,
				Check: Check{Type: CheckHTTP, Port: 8080, URL: "/", ExpectStatus: 200}},
			Init: Init{Steps: []Step{{ID: "w", Uses: ActionWaitHTTP, With: StepInputs{URL: "http://db.global/", ExpectStatus: 200},
				Timeout: Duration(30e9), OnFailure: FailureFail}}},
			Errors: errPol,
		},
		"db": {
			Name:    "db",
			RType:   RTypeJob,
			Image:   Image{Name: "postgres", PullPolicy: PullIfNotPresent},
			Network: net,
			Errors:  errPol,
		},
	}
	if diff := cmp.Diff(want, d.Services); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
	if got := d.ServiceNames(); !cmp.Equal(got, []string{"web", "db"}) {
		t.Errorf("ServiceNames() = %v, want file order [web db]", got)
	}
}

func TestManualDefaultReplicas(t *testing.T) {
	d, err := Parse("d.yaml", []byte("version: v1\ndeployment: a\nservices:\n  w:\n    image: {name: x}\n    scale: {mode: manual}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := &Scale{Mode: ScaleManual, Replicas: intp(1)}
	if diff := cmp.Diff(want, d.Services["w"].Scale); diff != "" {
		t.Errorf("manual scale defaults (-want +got):\n%s", diff)
	}
}

func TestExplicitZerosKept(t *testing.T) {
	d, err := Parse("d.yaml", []byte("version: v1\ndeployment: a\nservices:\n  w:\n    image: {name: x}\n    scale: {min: 0, max: 0}\n    health:\n      start_grace: 0s\n      check: {type: command, command: [true]}\n    network:\n      overlays:\n        service: {isolated: false}\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := d.Services["w"]
	if *s.Scale.Min != 0 || *s.Scale.Max != 0 || s.Health.StartGrace != 0 || *s.Network.Overlays.Service.Isolated {
		t.Errorf("explicit zero replaced by a default: min %d max %d start_grace %v isolated %v",
			*s.Scale.Min, *s.Scale.Max, s.Health.StartGrace, *s.Network.Overlays.Service.Isolated)
	}
}

// TestValidateBuiltInCode checks Validate on a Deployment that was never a
// file: the rules are the same, the errors have no place.
func TestValidateBuiltInCode(t *testing.T) {
	d := &Deployment{
		Version:    V1,
		Deployment: "a",
		Services: map[string]*Service{
			"web": {
				Image: Image{Name: "nginx"},
				Scale: &Scale{Mode: ScaleFixed},
				Depends: []Dependency{
					{Service: "web"},
				},
				Endpoints: []Endpoint{{Name: "x", Protocol: ProtocolTCP, Port: 1, Path: "/a"}},
			},
		},
	}
	err := d.Validate()
	want := "services.web.depends[0].service: a service cannot depend on itself\n" +
		"services.web.endpoints[0].path: not allowed when protocol is tcp (only http, https and websocket endpoints route by path)\n" +
		"services.web.scale.replicas: required when mode is fixed (e.g. replicas: 3)"
	if err == nil || err.Error() != want {
		t.Errorf("Validate() =\n%v\nwant\n%s", err, want)
	}
	d.Services["web"].Depends = nil
	d.Services["web"].Endpoints[0].Path = ""
	d.Services["web"].Scale.Replicas = intp(2)
	if err := d.Validate(); err != nil {
		t.Errorf("Validate() after fixing = %v", err)
	}
	d.ApplyDefaults()
	if err := d.Validate(); err != nil {
		t.Errorf("Validate() after ApplyDefaults = %v", err)
	}
}

func TestJSONOfErrors(t *testing.T) {
	_, err := Parse("d.yaml", []byte("version: v1\ndeployment: a\nservices:\n  web:\n    helth: {}\n    image: {name: x}\n"))
	var list Errors
	if !errors.As(err, &list) {
		t.Fatalf("got %v, want Errors", err)
	}
	b, _ := json.Marshal(list)
	want := `[{"file":"d.yaml","line":5,"col":5,"path":"services.web.helth","message":"unknown field; did you mean \"health\"?"}]`
	if string(b) != want {
		t.Errorf("JSON = %s\nwant %s", b, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want a not-exist error", err)
	}
}
