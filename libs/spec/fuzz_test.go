package spec

import (
	"errors"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzParse checks that Parse and Validate never panic, that every error
// has a message, and that what parses prints and parses back the same.
// CI runs it for a short bounded time (make fuzz); the corpus is under
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	for _, pattern := range []string{"../../deploy/examples/*.yaml", "testdata/valid/*.yaml", "testdata/invalid/*.yaml"} {
		for _, p := range glob(f, pattern) {
			data, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse("fuzz.yaml", data)
		if err != nil {
			var list Errors
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("error %v (%T) is not a non-empty Errors", err, err)
			}
			for _, e := range list {
				if e.Msg == "" {
					t.Fatalf("error without a message: %#v", e)
				}
			}
			return
		}
		if err := d.Validate(); err != nil {
			t.Fatalf("Validate after a successful Parse: %v", err)
		}
		out, err := d.Marshal()
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		again, err := Parse("printed.yaml", out)
		if err != nil {
			t.Fatalf("printed form does not parse: %v\n%s", err, out)
		}
		if diff := cmp.Diff(d, again, cmpDeployment); diff != "" {
			t.Fatalf("round trip mismatch (-parsed +reparsed):\n%s\n%s", diff, out)
		}
		for name, s := range d.Services {
			if s.Hash() != again.Services[name].Hash() {
				t.Fatalf("service %s: hash changed over a round trip", name)
			}
		}
	})
}
