package spec

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"
)

const schemaFile = "schema/deployment.schema.json"

// TestSchemaUpToDate fails when the checked-in schema differs from the one
// the types generate; go test -update rewrites it.
func TestSchemaUpToDate(t *testing.T) {
	got := JSONSchema()
	if *update {
		if err := os.WriteFile(schemaFile, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(schemaFile)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(want, got) {
		t.Errorf("%s is stale; run go test -update in libs/spec:\n%s", schemaFile, cmp.Diff(string(want), string(got)))
	}
}

func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(JSONSchema()))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if err := c.AddResource(SchemaID, doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(SchemaID) // checks the schema against the draft 2020-12 meta-schema
	if err != nil {
		t.Fatalf("the schema does not compile: %v", err)
	}
	return s
}

// yamlToJSON reads a file the way an editor's YAML language server does:
// one document, anchors and merge keys resolved.
func yamlToJSON(data []byte) (any, error) {
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		return nil, err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return jsonschema.UnmarshalJSON(bytes.NewReader(b))
}

func TestSchemaAcceptsValidFiles(t *testing.T) {
	s := compileSchema(t)
	for _, f := range validFiles(t) {
		t.Run(f, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			v, err := yamlToJSON(data)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Validate(v); err != nil {
				t.Errorf("schema rejects a valid file: %v", err)
			}
		})
	}
}

// schemaBlind are the invalid cases JSON Schema cannot express: rules
// across services or list entries, and arithmetic between fields. Validate
// catches them; the schema must accept them (so this list stays true).
var schemaBlind = map[string]string{
	"depends-unknown":              "names another service",
	"depends-self-and-duplicate":   "compares a value with the service's own name",
	"depends-cycle":                "a graph property",
	"depends-cycle-three":          "a graph property",
	"duplicate-endpoints":          "uniqueness of a field across list entries",
	"duplicate-step-ids":           "uniqueness of a field across list entries",
	"public-port-conflict":         "uniqueness across services",
	"targets-memory-without-limit": "a field that depends on another object's field",
	"cpu-target-over-100":          "arithmetic between two fields",
	"health-no-endpoint":           "looks at the endpoints",
	"multi-document":               "editors validate each document on its own",
}

func TestSchemaRejectsInvalidFiles(t *testing.T) {
	s := compileSchema(t)
	for _, f := range glob(t, "testdata/invalid/*.yaml") {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			v, err := yamlToJSON(data)
			rejected := err != nil || s.Validate(v) != nil
			_, blind := schemaBlind[name]
			switch {
			case blind && rejected:
				t.Errorf("listed in schemaBlind, but the schema rejects it; remove it from the list")
			case !blind && !rejected:
				t.Errorf("the schema accepts an invalid file")
			}
		})
	}
}

// TestEveryFieldDocumented makes sure editors show a description for every
// field.
func TestEveryFieldDocumented(t *testing.T) {
	seen := map[reflect.Type]bool{}
	var visit func(t reflect.Type)
	visit = func(rt reflect.Type) {
		rt = derefType(rt)
		switch rt.Kind() {
		case reflect.Slice, reflect.Map:
			visit(rt.Elem())
			return
		}
		if !isStructType(rt) || seen[rt] {
			return
		}
		seen[rt] = true
		for _, f := range fieldsOf(rt) {
			if f.doc == "" {
				t.Errorf("%s.%s has no doc tag", rt.Name(), f.name)
			}
			visit(f.typ)
		}
	}
	visit(reflect.TypeFor[Deployment]())
}
