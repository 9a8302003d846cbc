package spec

import (
	"encoding/json"
	"reflect"
	"slices"
	"strconv"
)

// SchemaID is the $id of the JSON Schema.
const SchemaID = "https://zlayer.dev/schemas/deployment-v1.schema.json"

// JSONSchema returns the JSON Schema (draft 2020-12) of the deployment file,
// generated from the types' struct tags: the same source the decoder and
// validator use. Editors (yaml-language-server) use it to complete field
// names and flag unknown fields and enum values. Rules that span services
// (depends naming a service, cycles, duplicate ports) are beyond JSON
// Schema; Validate checks them.
func JSONSchema() []byte {
	g := &schemaGen{defs: map[string]any{}}
	root := g.object(reflect.TypeFor[Deployment]())
	root["$schema"] = "https://json-schema.org/draft/2020-12/schema"
	root["$id"] = SchemaID
	root["title"] = "ZLayer deployment file (version v1)"
	root["$defs"] = g.defs
	b, err := json.MarshalIndent(root, "", "  ")
	if err != nil {
		panic("spec: schema: " + err.Error())
	}
	return append(b, '\n')
}

type schemaGen struct {
	defs map[string]any
}

// typeSchema describes a value of type t for field f (nil for list items
// and map values).
func (g *schemaGen) typeSchema(t reflect.Type, f *fieldInfo) map[string]any {
	t = derefType(t)
	if st, ok := reflect.New(t).Elem().Interface().(schemaType); ok {
		return st.jsonSchema()
	}
	if e, ok := reflect.New(t).Elem().Interface().(enum); ok {
		return map[string]any{"type": "string", "enum": e.Values()}
	}
	switch t.Kind() {
	case reflect.Struct:
		name := t.Name()
		if _, done := g.defs[name]; !done {
			g.defs[name] = true // placeholder against recursion
			g.defs[name] = g.object(t)
		}
		return map[string]any{"$ref": "#/$defs/" + name}
	case reflect.Map:
		s := map[string]any{"type": "object", "additionalProperties": g.typeSchema(t.Elem(), nil)}
		if t.Elem().Kind() == reflect.String && f != nil && f.keyformat == "envname" {
			s["additionalProperties"] = map[string]any{"type": []string{"string", "number", "boolean", "null"}}
		}
		if f != nil && f.keyformat != "" {
			s["propertyNames"] = map[string]any{"pattern": formatPatterns[f.keyformat]}
		}
		if f != nil && f.min != nil {
			s["minProperties"] = int(*f.min)
		}
		return s
	case reflect.Slice:
		return map[string]any{"type": "array", "items": g.typeSchema(t.Elem(), nil)}
	case reflect.String:
		s := map[string]any{"type": "string"}
		if f != nil && f.format != "" {
			s["pattern"] = formatPatterns[f.format]
		}
		return s
	case reflect.Int:
		s := map[string]any{"type": "integer"}
		if f != nil && f.min != nil {
			s["minimum"] = int(*f.min)
		}
		if f != nil && f.max != nil {
			s["maximum"] = int(*f.max)
		}
		return s
	case reflect.Float64:
		s := map[string]any{"type": "number"}
		if f != nil && f.gt != nil {
			s["exclusiveMinimum"] = *f.gt
		}
		return s
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	}
	panic("spec: no schema for " + t.String())
}

// object describes struct type t, with its when- and required-conditions as
// if/then rules.
func (g *schemaGen) object(t reflect.Type) map[string]any {
	props := map[string]any{}
	var required []string
	rules := newRuleSet()
	for _, f := range fieldsOf(t) {
		s := g.typeSchema(f.typ, f)
		if _, isRef := s["$ref"]; isRef && (f.doc != "" || f.hasDef) {
			s = map[string]any{"allOf": []any{s}}
		}
		if f.doc != "" {
			s["description"] = f.doc
		}
		if f.hasDef && f.def != "{}" {
			s["default"] = jsonDefault(f)
		}
		props[f.name] = s
		if f.required {
			required = append(required, f.name)
		}
		for _, cd := range f.when {
			if !cd.parent {
				rules.add(t, cd, true, map[string]any{"properties": map[string]any{f.name: false}})
			}
		}
		for _, cd := range f.reqWhen {
			if !cd.parent {
				rules.add(t, cd, false, map[string]any{"required": []string{f.name}})
			}
		}
		// Conditions of a child object on this object's fields (^uses).
		if ct := derefType(f.typ); isStructType(ct) {
			for _, cf := range fieldsOf(ct) {
				for _, cd := range cf.when {
					if cd.parent {
						rules.add(t, cond{field: cd.field, values: cd.values}, true,
							map[string]any{"properties": map[string]any{f.name: map[string]any{"properties": map[string]any{cf.name: false}}}})
					}
				}
				for _, cd := range cf.reqWhen {
					if cd.parent {
						rules.add(t, cond{field: cd.field, values: cd.values}, false,
							map[string]any{"properties": map[string]any{f.name: map[string]any{"required": []string{cf.name}}}})
					}
				}
			}
		}
	}
	s := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
	if required != nil {
		s["required"] = required
	}
	if all := rules.list(); len(all) > 0 {
		s["allOf"] = all
	}
	return s
}

// ruleSet collects if/then rules in order, one per distinct condition.
type ruleSet struct {
	keys  []string
	ifs   map[string]map[string]any
	thens map[string][]map[string]any
}

func newRuleSet() *ruleSet {
	return &ruleSet{ifs: map[string]map[string]any{}, thens: map[string][]map[string]any{}}
}

// add records then for the condition cd on object t: when negate, for "the
// discriminator is not one of the values", else for "it is one of them".
// An absent discriminator counts as its default.
func (r *ruleSet) add(t reflect.Type, cd cond, negate bool, then map[string]any) {
	df := field(t, cd.field)
	defIn := df.hasDef && slices.Contains(cd.values, df.def)
	match := map[string]any{"enum": cd.values}
	if negate {
		match = map[string]any{"not": match}
	}
	ifs := map[string]any{"properties": map[string]any{cd.field: match}}
	// Absent means the default: require the field in the if when absent
	// would otherwise wrongly match.
	if !df.hasDef || defIn == negate {
		ifs["required"] = []string{cd.field}
	}
	kb, _ := json.Marshal(ifs)
	key := string(kb)
	if _, ok := r.ifs[key]; !ok {
		r.keys = append(r.keys, key)
		r.ifs[key] = ifs
	}
	r.thens[key] = append(r.thens[key], then)
}

func (r *ruleSet) list() []any {
	var out []any
	for _, k := range r.keys {
		then := mergeSchemas(r.thens[k])
		out = append(out, map[string]any{"if": r.ifs[k], "then": then})
	}
	return out
}

// mergeSchemas merges then-clauses: properties and required are combined.
func mergeSchemas(list []map[string]any) map[string]any {
	out := map[string]any{}
	props := map[string]any{}
	var req []string
	for _, s := range list {
		if p, ok := s["properties"].(map[string]any); ok {
			for k, v := range p {
				if prev, ok := props[k].(map[string]any); ok {
					if vm, ok := v.(map[string]any); ok {
						props[k] = mergeSchemas([]map[string]any{prev, vm})
						continue
					}
				}
				props[k] = v
			}
		}
		if r, ok := s["required"].([]string); ok {
			req = append(req, r...)
		}
	}
	if len(props) > 0 {
		out["properties"] = props
	}
	if len(req) > 0 {
		out["required"] = req
	}
	return out
}

// jsonDefault is a default tag as a JSON value of the field's type.
func jsonDefault(f *fieldInfo) any {
	switch derefType(f.typ).Kind() {
	case reflect.Int:
		n, _ := strconv.Atoi(f.def)
		return n
	case reflect.Bool:
		return f.def == "true"
	}
	return f.def
}
