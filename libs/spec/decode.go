package spec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// maxNodes bounds the work of decoding one file, aliases expanded, so that a
// small file with nested aliases cannot make the decoder run for ever.
const maxNodes = 200_000

// decoder turns a YAML node tree into a Deployment, strictly: unknown keys,
// duplicate keys and values of the wrong type are errors. It records where
// every field was written so later checks can point at it.
type decoder struct {
	file     string
	errs     Errors
	pos      map[string]nodePos
	bad      map[string]bool
	budget   int
	overflow bool
}

func posOf(n *yaml.Node) Pos { return Pos{Line: n.Line, Col: n.Column} }

func (d *decoder) errAt(p Pos, path, msg string) {
	d.errs = append(d.errs, &FieldError{File: d.file, Line: p.Line, Col: p.Col, Path: path, Msg: msg})
}

// fail reports a bad value and marks its path so later checks skip it.
func (d *decoder) fail(n *yaml.Node, path, msg string) {
	d.errAt(posOf(n), path, msg)
	d.bad[path] = true
}

// resolve follows aliases and charges the node budget.
func (d *decoder) resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	if n == nil || n.Kind == yaml.AliasNode {
		return nil
	}
	d.budget--
	if d.budget < 0 {
		if !d.overflow {
			d.overflow = true
			d.errAt(posOf(n), "", "file too large or too many alias expansions")
		}
		return nil
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// decodeFile reads one YAML document into a Deployment. It returns nil when
// the file is not a YAML mapping at all.
func decodeFile(file string, data []byte) (dep *Deployment, errs Errors) {
	d := &decoder{file: file, pos: map[string]nodePos{}, bad: map[string]bool{}, budget: maxNodes}
	defer func() {
		// yaml.v3 is mature but not ours; a crash inside it is a bad file,
		// not a crashed agent.
		if r := recover(); r != nil {
			dep = nil
			errs = Errors{{File: file, Line: 1, Col: 1, Msg: fmt.Sprintf("not valid YAML (the parser failed: %v)", r)}}
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	err := dec.Decode(&doc)
	if errors.Is(err, io.EOF) {
		return nil, Errors{{File: file, Line: 1, Col: 1, Msg: "empty file; expected a deployment with version, deployment and services"}}
	}
	if err != nil {
		return nil, Errors{syntaxError(file, data, err)}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		p := posOf(&extra)
		if len(extra.Content) > 0 {
			p = posOf(extra.Content[0])
		}
		d.errAt(p, "", "a second YAML document; put one deployment in each file")
	} else if !errors.Is(err, io.EOF) {
		d.errs = append(d.errs, syntaxError(file, data, err))
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = root.Content[0]
	}
	root = d.resolve(root)
	if root == nil || isNull(root) {
		return nil, Errors{{File: file, Line: 1, Col: 1, Msg: "empty file; expected a deployment with version, deployment and services"}}
	}
	if root.Kind != yaml.MappingNode {
		return nil, Errors{{File: file, Line: root.Line, Col: root.Column, Msg: "expected a mapping with version, deployment and services, got " + kindName(root)}}
	}
	d.pos[""] = nodePos{Key: posOf(root), Val: posOf(root)}
	dep = &Deployment{file: file}
	d.value(root, reflect.ValueOf(dep).Elem(), "")
	dep.pos, dep.bad = d.pos, d.bad
	return dep, d.errs
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError turns a yaml.v3 parse error into a FieldError. yaml.v3 gives
// the line only; the column is that of the line's first character.
func syntaxError(file string, data []byte, err error) *FieldError {
	msg := err.Error()
	m := yamlLineRE.FindStringSubmatch(msg)
	if m == nil {
		return &FieldError{File: file, Msg: "not valid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
	}
	line, _ := strconv.Atoi(m[1])
	col := 1
	lines := bytes.Split(data, []byte("\n"))
	if line >= 1 && line <= len(lines) {
		text := lines[line-1]
		col = len(text) - len(bytes.TrimLeft(text, " \t")) + 1
	}
	hint := ""
	if strings.Contains(m[2], "cannot start any token") && bytes.Contains(data, []byte("\t")) {
		hint = " (YAML indents with spaces, not tabs)"
	}
	return &FieldError{File: file, Line: line, Col: col, Msg: "not valid YAML: " + m[2] + hint}
}

type pair struct{ key, val *yaml.Node }

// pairs returns a mapping's entries with merge keys (<<) expanded, reporting
// duplicate keys. Explicit keys win over merged ones.
func (d *decoder) pairs(n *yaml.Node, path string, depth int) []pair {
	var out []pair
	seen := map[string]*yaml.Node{}
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.Tag == "!!merge" {
			merges = append(merges, v)
			continue
		}
		if k.Kind != yaml.ScalarNode {
			d.errAt(posOf(k), path, "keys must be strings, got "+kindName(k))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.errAt(posOf(k), joinPath(path, k.Value), fmt.Sprintf("duplicate key %q (first at line %d); remove one", k.Value, first.Line))
			continue
		}
		seen[k.Value] = k
		out = append(out, pair{k, v})
	}
	for _, m := range merges {
		if d.overflow {
			break
		}
		m = d.resolve(m)
		if m == nil {
			continue
		}
		srcs := []*yaml.Node{m}
		if m.Kind == yaml.SequenceNode {
			srcs = m.Content
		}
		for _, src := range srcs {
			src = d.resolve(src)
			if d.overflow {
				break
			}
			if src == nil || src.Kind != yaml.MappingNode || depth > 10 {
				d.errAt(posOf(m), path, "a merge key (<<) needs a mapping or a list of mappings")
				continue
			}
			for _, p := range d.pairs(src, path, depth+1) {
				if _, dup := seen[p.key.Value]; !dup {
					seen[p.key.Value] = p.key
					out = append(out, p)
				}
			}
		}
	}
	return out
}

// value decodes n into v (addressable), reporting problems under path.
func (d *decoder) value(at *yaml.Node, v reflect.Value, path string) {
	if d.overflow {
		return
	}
	n := d.resolve(at) // at is where the value was written: an alias, perhaps
	if n == nil {
		return
	}
	if s, ok := v.Addr().Interface().(scalar); ok {
		if msg := s.decodeNode(n); msg != "" {
			d.fail(at, path, msg)
		}
		return
	}
	t := v.Type()
	switch t.Kind() {
	case reflect.Pointer:
		e := reflect.New(t.Elem())
		d.value(n, e.Elem(), path)
		v.Set(e)
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			d.fail(at, path, "expected a mapping, got "+kindName(n)+structHint(t, n))
			return
		}
		for _, p := range d.pairs(n, path, 0) {
			f := field(t, p.key.Value)
			if f == nil {
				d.errAt(posOf(p.key), joinPath(path, p.key.Value), unknownFieldMsg(p.key.Value, t))
				continue
			}
			d.field(p, v.Field(f.index), joinPath(path, f.name))
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.fail(at, path, "expected a mapping, got "+kindName(n))
			return
		}
		m := reflect.MakeMap(t)
		for _, p := range d.pairs(n, path, 0) {
			kp := joinPath(path, p.key.Value)
			e := reflect.New(t.Elem()).Elem()
			d.field(p, e, kp)
			if e.Kind() == reflect.Pointer && e.IsNil() { // "web:" with nothing under it
				e.Set(reflect.New(t.Elem().Elem()))
			}
			m.SetMapIndex(reflect.ValueOf(p.key.Value), e)
		}
		if m.Len() > 0 { // env: {} is no env, as in the printed form
			v.Set(m)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(at, path, "expected a list, got "+kindName(n)+listHint(t, n))
			return
		}
		if len(n.Content) == 0 {
			return // endpoints: [] is no endpoints, as in the printed form
		}
		s := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, it := range n.Content {
			ip := indexPath(path, i)
			d.pos[ip] = nodePos{Key: posOf(it), Val: posOf(it)}
			if r := d.resolve(it); r != nil && isNull(r) {
				d.fail(it, ip, "empty list entry")
				continue
			}
			d.value(it, s.Index(i), ip)
		}
		v.Set(s)
	case reflect.String:
		_, isEnum := v.Interface().(enum)
		switch {
		case n.Kind != yaml.ScalarNode:
			d.fail(at, path, "expected a string, got "+kindName(n))
		case n.Tag != "!!str" && !isEnum && !looseString(path):
			d.fail(at, path, fmt.Sprintf("expected a string, got %s (quote it: %q)", kindName(n), n.Value))
		default:
			v.SetString(n.Value)
		}
	case reflect.Int:
		var i int64
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&i) != nil || i > math.MaxInt32 || i < math.MinInt32 {
			d.fail(at, path, "expected an integer, got "+kindName(n))
			return
		}
		v.SetInt(i)
	case reflect.Float64:
		var f float64
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") || n.Decode(&f) != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			d.fail(at, path, "expected a number, got "+kindName(n))
			return
		}
		v.SetFloat(f)
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&b) != nil {
			d.fail(at, path, "expected true or false, got "+kindName(n))
			return
		}
		v.SetBool(b)
	default:
		panic("spec: no decoder for " + t.String())
	}
}

// field records where a key was written and decodes its value; a key with
// no value (or ~) counts as absent.
func (d *decoder) field(p pair, v reflect.Value, path string) {
	val := d.resolve(p.val)
	if val == nil {
		return
	}
	null := isNull(val)
	d.pos[path] = nodePos{Key: posOf(p.key), Val: posOf(p.val), Null: null}
	if null {
		return // absent; in env, the empty string
	}
	d.value(p.val, v, path)
}

// looseString reports whether path is an env value, where numbers and
// booleans are taken as written (PORT: 8080).
func looseString(path string) bool {
	return strings.HasSuffix(parentPath(path), ".env")
}

// structHint suggests the mapping form when a scalar is given where an
// object with one required string field is expected (image: nginx).
func structHint(t reflect.Type, n *yaml.Node) string {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		return ""
	}
	for _, f := range fieldsOf(t) {
		if f.required && f.typ.Kind() == reflect.String {
			return fmt.Sprintf(" (write {%s: %s})", f.name, strconv.Quote(n.Value))
		}
	}
	return ""
}

// listHint suggests the list form when a string is given where a list of
// strings is expected (command: /bin/app --flag).
func listHint(t reflect.Type, n *yaml.Node) string {
	if t.Elem().Kind() != reflect.String || n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		return ""
	}
	words := strings.Fields(n.Value)
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = strconv.Quote(w)
	}
	return " (write a list: [" + strings.Join(q, ", ") + "])"
}
