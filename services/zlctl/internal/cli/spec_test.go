package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"

	"zlayer.dev/libs/spec"
)

func TestSpecSchema(t *testing.T) {
	code, stdout, stderr := runZlctl(t, "", "spec", "schema")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if stdout != string(spec.JSONSchema()) {
		t.Errorf("zlctl spec schema differs from spec.JSONSchema()")
	}
	// It is the schema checked in next to the library.
	checkedIn, err := os.ReadFile("../../../../libs/spec/schema/deployment.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(checkedIn, []byte(stdout)) {
		t.Errorf("zlctl spec schema differs from libs/spec/schema/deployment.schema.json")
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	if doc["$schema"] != "https://json-schema.org/draft/2020-12/schema" {
		t.Errorf("$schema = %v", doc["$schema"])
	}
}

func TestSpecSchemaRejectsArgs(t *testing.T) {
	if code, _, _ := runZlctl(t, "", "spec", "schema", "extra"); code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
}
