package spec

import (
	"reflect"
	"strconv"
	"strings"
	"sync"
)

// fieldInfo is one struct field's tags, parsed (see the comment in types.go).
type fieldInfo struct {
	index     int
	name      string
	typ       reflect.Type
	doc       string
	def       string
	hasDef    bool
	required  bool
	reqWhen   []cond
	when      []cond
	alt       string
	eg        string
	format    string
	keyformat string
	aliases   []string
	min, max  *float64
	gt        *float64
}

// cond is "field is one of values"; parent means the field belongs to the
// enclosing object.
type cond struct {
	parent bool
	field  string
	values []string
}

var fieldCache sync.Map // reflect.Type → []*fieldInfo

// fieldsOf returns the yaml fields of struct type t, in declaration order.
func fieldsOf(t reflect.Type) []*fieldInfo {
	if v, ok := fieldCache.Load(t); ok {
		return v.([]*fieldInfo)
	}
	var out []*fieldInfo
	for i := range t.NumField() {
		sf := t.Field(i)
		name := sf.Tag.Get("yaml")
		if name == "" || name == "-" || !sf.IsExported() {
			continue
		}
		f := &fieldInfo{
			index:     i,
			name:      name,
			typ:       sf.Type,
			doc:       sf.Tag.Get("doc"),
			alt:       sf.Tag.Get("alt"),
			eg:        sf.Tag.Get("eg"),
			format:    sf.Tag.Get("format"),
			keyformat: sf.Tag.Get("keyformat"),
			when:      parseConds(sf.Tag.Get("when")),
		}
		f.def, f.hasDef = sf.Tag.Lookup("default")
		if r, ok := sf.Tag.Lookup("required"); ok {
			if r == "" {
				f.required = true
			} else {
				f.reqWhen = parseConds(r)
			}
		}
		if a := sf.Tag.Get("alias"); a != "" {
			f.aliases = strings.Split(a, ",")
		}
		f.min = parseBound(sf.Tag.Get("min"))
		f.max = parseBound(sf.Tag.Get("max"))
		f.gt = parseBound(sf.Tag.Get("gt"))
		out = append(out, f)
	}
	fieldCache.Store(t, out)
	return out
}

func parseConds(s string) []cond {
	if s == "" {
		return nil
	}
	var out []cond
	for part := range strings.SplitSeq(s, ";") {
		k, v, _ := strings.Cut(part, "=")
		c := cond{field: k, values: strings.Split(v, ",")}
		if rest, ok := strings.CutPrefix(k, "^"); ok {
			c.parent, c.field = true, rest
		}
		out = append(out, c)
	}
	return out
}

func parseBound(s string) *float64 {
	if s == "" {
		return nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		panic("spec: bad bound tag " + strconv.Quote(s))
	}
	return &f
}

// field returns the field of t named name, or nil.
func field(t reflect.Type, name string) *fieldInfo {
	for _, f := range fieldsOf(t) {
		if f.name == name {
			return f
		}
	}
	return nil
}

// derefType strips pointers.
func derefType(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// isStructType reports whether t (after pointers) is an object of the
// format, as opposed to a scalar value type.
func isStructType(t reflect.Type) bool {
	t = derefType(t)
	if t.Kind() != reflect.Struct {
		return false
	}
	_, isScalar := reflect.New(t).Interface().(scalar)
	return !isScalar
}

// joinPath appends key to a dotted path, quoting keys that are not plain.
func joinPath(path, key string) string {
	plain := key != ""
	for _, r := range key {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			plain = false
			break
		}
	}
	if !plain {
		return path + "[" + strconv.Quote(key) + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func indexPath(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}
