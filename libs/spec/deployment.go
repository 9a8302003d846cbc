package spec

import (
	"fmt"
	"os"
	"reflect"
	"slices"

	"gopkg.in/yaml.v3"

	"zlayer.dev/libs/errkind"
)

// Load reads the deployment file at path and parses it with Parse, naming
// the file path in errors.
func Load(path string) (*Deployment, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load deployment: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes, validates and fills in the defaults of one deployment
// file. name is the file name used in errors. On any problem it returns a
// nil Deployment and an Errors holding every problem found, in file order.
//
// A file whose version is unsupported gets that one error: the rest of it
// is written for another format.
func Parse(name string, data []byte) (*Deployment, error) {
	d, errs := decodeFile(name, data)
	if d == nil {
		return nil, errs.orNil()
	}
	if v := string(d.Version); v != "" && !d.bad["version"] && !validEnum(d.Version, v) {
		p := d.posFor("version", true)
		return nil, Errors{{File: name, Line: p.Line, Col: p.Col, Path: "version", Msg: enumMsg(d.Version, v)}}
	}
	if err := d.Validate(); err != nil {
		errs = append(errs, err.(Errors)...)
	}
	if len(errs) > 0 {
		return nil, errs.orNil()
	}
	d.ApplyDefaults()
	return d, nil
}

// Is makes errors.Is(err, errkind.Invalid) true for validation errors.
func (l Errors) Is(target error) bool { return target == errkind.Invalid }

// File returns the name d was parsed from ("" when built in code).
func (d *Deployment) File() string { return d.file }

// Position returns where the field at path (e.g. "services.web.scale.min")
// was written, and false when it was not written in the file.
func (d *Deployment) Position(path string) (Pos, bool) {
	np, ok := d.pos[path]
	return np.Key, ok
}

// ServiceNames returns the names of the services in the order they are
// written in the file; services built in code come after, by name.
func (d *Deployment) ServiceNames() []string {
	names := make([]string, 0, len(d.Services))
	for n := range d.Services {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int {
		pa, oka := d.pos[joinPath("services", a)]
		pb, okb := d.pos[joinPath("services", b)]
		switch {
		case oka && okb && pa.Key != pb.Key:
			if pa.Key.Line != pb.Key.Line {
				return pa.Key.Line - pb.Key.Line
			}
			return pa.Key.Col - pb.Key.Col
		case oka != okb:
			if oka {
				return -1
			}
			return 1
		}
		if a < b {
			return -1
		}
		if a > b {
			return 1
		}
		return 0
	})
	return names
}

// ApplyDefaults fills in every unset field that has a default, as SPEC.md
// states them, and sets each Service's Name. Parse calls it; call it on a
// Deployment built in code, where a zero value counts as unset. It is
// idempotent.
func (d *Deployment) ApplyDefaults() {
	applyDefaults(d, reflect.ValueOf(d).Elem(), "", reflect.Value{})
	for name, s := range d.Services {
		if s == nil {
			continue
		}
		s.Name = name
		if sc := s.Scale; sc != nil && sc.Targets != nil && *sc.Targets == (Targets{}) {
			sc.Targets.CPU = 70
		}
		for i := range s.Endpoints {
			e := &s.Endpoints[i]
			if e.Expose == ExposePublic && (e.Protocol == ProtocolTCP || e.Protocol == ProtocolUDP) && e.PublicPort == 0 {
				e.PublicPort = e.Port
			}
		}
		if h := s.Health; h != nil && h.Check.Port == 0 && (h.Check.Type == CheckTCP || h.Check.Type == CheckHTTP) {
			h.Check.Port, _ = checkPortFromEndpoints(s)
		}
	}
}

func applyDefaults(d *Deployment, v reflect.Value, path string, parent reflect.Value) {
	for _, f := range fieldsOf(v.Type()) {
		fv := v.Field(f.index)
		fp := joinPath(path, f.name)
		if f.when != nil {
			if ok, _, _, _ := condsHold(f.when, v, parent); !ok {
				continue
			}
		}
		if f.hasDef && !d.isSet(fp, fv) {
			setDefault(fv, f.def)
		}
		inner := fv
		if inner.Kind() == reflect.Pointer {
			if inner.IsNil() {
				continue
			}
			inner = inner.Elem()
		}
		switch {
		case inner.Kind() == reflect.Slice && isStructType(inner.Type().Elem()):
			for i := range inner.Len() {
				applyDefaults(d, inner.Index(i), indexPath(fp, i), v)
			}
		case inner.Kind() == reflect.Map && isStructType(inner.Type().Elem()):
			for _, k := range inner.MapKeys() {
				if e := inner.MapIndex(k); !e.IsNil() {
					applyDefaults(d, e.Elem(), joinPath(fp, k.String()), v)
				}
			}
		case isStructType(inner.Type()):
			applyDefaults(d, inner, fp, v)
		}
	}
}

// setDefault sets v from a default tag, decoded like a value in a file.
func setDefault(v reflect.Value, def string) {
	if def == "{}" {
		if v.Kind() == reflect.Pointer {
			v.Set(reflect.New(v.Type().Elem()))
		}
		return
	}
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(def), &doc); err != nil || len(doc.Content) != 1 {
		panic("spec: bad default tag " + def)
	}
	dec := &decoder{pos: map[string]nodePos{}, bad: map[string]bool{}, budget: 10}
	dec.value(doc.Content[0], v, "")
	if len(dec.errs) > 0 {
		panic("spec: bad default tag " + def + ": " + dec.errs.Error())
	}
}
