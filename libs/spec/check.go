package spec

import (
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// checker holds the state of one validation pass.
type checker struct {
	d    *Deployment
	errs Errors
}

// Validate checks d against every rule of the format and returns all
// problems as Errors, in file order, or nil. It works on a Deployment from
// Parse as well as on one built in code (whose errors have no line).
func (d *Deployment) Validate() error {
	c := &checker{d: d}
	c.walkStruct(reflect.ValueOf(d).Elem(), "", reflect.Value{})
	c.semantic()
	return c.errs.orNil()
}

// posFor returns where path was written, or where its nearest written
// ancestor was. val selects the value's place rather than the key's.
func (d *Deployment) posFor(path string, val bool) Pos {
	for p := path; ; p = parentPath(p) {
		if np, ok := d.pos[p]; ok {
			if val && p == path {
				return np.Val
			}
			return np.Key
		}
		if p == "" {
			return Pos{}
		}
	}
}

// parentPath strips the last element of a path: a.b[0].c → a.b[0] → a.b.
func parentPath(p string) string {
	if strings.HasSuffix(p, `"]`) { // a quoted key may hold dots
		return p[:strings.LastIndex(p, `["`)]
	}
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// isBad reports whether path or an ancestor failed to decode.
func (d *Deployment) isBad(path string) bool {
	for p := path; p != ""; p = parentPath(p) {
		if d.bad[p] {
			return true
		}
	}
	return false
}

// isSet reports whether the field at path was given: written in the file,
// or, for a Deployment built in code, non-zero.
func (d *Deployment) isSet(path string, v reflect.Value) bool {
	if np, ok := d.pos[path]; ok && !np.Null {
		return true
	}
	if d.bad[path] {
		return true
	}
	return !v.IsZero()
}

func (c *checker) add(path string, val bool, msg string) {
	if c.d.isBad(path) {
		return
	}
	p := c.d.posFor(path, val)
	c.errs = append(c.errs, &FieldError{File: c.d.file, Line: p.Line, Col: p.Col, Path: path, Msg: msg})
}

// discValue returns the effective value of the discriminator named by cd in
// the object v (or parent), its default when unset, and whether it is a
// known value; an invalid value is reported elsewhere.
func discValue(cd cond, v, parent reflect.Value) (string, bool) {
	s := v
	if cd.parent {
		s = parent
	}
	if !s.IsValid() {
		return "", false
	}
	f := field(s.Type(), cd.field)
	fv := s.Field(f.index)
	str := fv.String()
	if str == "" {
		if !f.hasDef {
			return "", false
		}
		str = f.def
	}
	if e, ok := fv.Interface().(enum); ok && !validEnum(e, str) {
		return str, false
	}
	return str, true
}

// condsHold reports whether every condition holds. When one does not, it
// returns that condition and the discriminator's value. known is false when
// a discriminator is unset or invalid, so no verdict can be given.
func condsHold(conds []cond, v, parent reflect.Value) (ok bool, failed cond, val string, known bool) {
	for _, cd := range conds {
		s, k := discValue(cd, v, parent)
		if !k {
			return false, cd, s, false
		}
		if !slices.Contains(cd.values, s) {
			return false, cd, s, true
		}
	}
	return true, cond{}, "", true
}

// walkStruct applies the tag rules (required, when, enums, formats, bounds)
// to the object v at path; parent is the object holding v.
func (c *checker) walkStruct(v reflect.Value, path string, parent reflect.Value) {
	t := v.Type()
	for _, f := range fieldsOf(t) {
		fv := v.Field(f.index)
		fp := joinPath(path, f.name)
		set := c.d.isSet(fp, fv)
		if set && f.when != nil {
			if ok, cd, val, known := condsHold(f.when, v, parent); !ok {
				if known {
					c.add(fp, false, whenMsg(f, cd, val, v, parent))
				}
				continue
			}
		}
		if !set {
			need, msg := f.required, "required"
			if f.reqWhen != nil {
				if ok, _, _, known := condsHold(f.reqWhen, v, parent); ok && known {
					need = true
					cd := f.reqWhen[0]
					val, _ := discValue(cd, v, parent)
					if cd.parent {
						msg = "required by " + val
					} else {
						msg = fmt.Sprintf("required when %s is %s", cd.field, val)
					}
				}
			}
			if need {
				if f.eg != "" {
					msg += fmt.Sprintf(" (e.g. %s: %s)", f.name, yamlQuote(f.eg))
				}
				c.add(fp, false, msg)
			}
			continue
		}
		c.checkValue(fv, fp, f, v)
	}
}

// whenMsg explains why a field is not allowed here.
func whenMsg(f *fieldInfo, cd cond, val string, v, parent reflect.Value) string {
	if cd.parent {
		var takes []string
		for _, g := range fieldsOf(v.Type()) {
			if ok, _, _, _ := condsHold(g.when, v, parent); ok {
				takes = append(takes, g.name)
			}
		}
		return fmt.Sprintf("%s does not take %s (it takes: %s)", val, f.name, strings.Join(takes, ", "))
	}
	msg := fmt.Sprintf("not allowed when %s is %s", cd.field, val)
	// alt holds one fix per condition, separated by |.
	alts := strings.Split(f.alt, "|")
	alt := alts[0]
	if i := slices.IndexFunc(f.when, func(w cond) bool { return w.field == cd.field }); i > 0 && i < len(alts) {
		alt = alts[i]
	}
	if alt != "" {
		msg += " (" + alt + ")"
	}
	return msg
}

var plainYAML = regexp.MustCompile(`^[A-Za-z0-9_./-][A-Za-z0-9_./:-]*$`)

func yamlQuote(s string) string {
	if plainYAML.MatchString(s) || strings.HasPrefix(s, "{") {
		return s
	}
	return strconv.Quote(s)
}

// checkValue checks a set value: its enum, format and bounds, then what is
// inside it.
func (c *checker) checkValue(fv reflect.Value, fp string, f *fieldInfo, holder reflect.Value) {
	if c.d.isBad(fp) {
		return
	}
	for fv.Kind() == reflect.Pointer {
		if fv.IsNil() {
			return
		}
		fv = fv.Elem()
	}
	if e, ok := fv.Interface().(enum); ok {
		if s := fv.String(); !validEnum(e, s) {
			c.add(fp, true, enumMsg(e, s))
		}
		return
	}
	if fv.Kind() == reflect.String {
		if msg := checkFormat(f.format, fv.String()); msg != "" {
			c.add(fp, true, msg)
		}
		return
	}
	if msg := boundsMsg(fv, f); msg != "" {
		c.add(fp, true, msg)
		return
	}
	switch {
	case fv.Kind() == reflect.Map:
		if f.min != nil && float64(fv.Len()) < *f.min {
			c.add(fp, false, "must not be empty")
		}
		keys := fv.MapKeys()
		slices.SortFunc(keys, func(a, b reflect.Value) int { return strings.Compare(a.String(), b.String()) })
		for _, k := range keys {
			kp := joinPath(fp, k.String())
			if msg := checkFormat(f.keyformat, k.String()); msg != "" {
				c.add(kp, false, msg)
			}
			if ev := reflect.Indirect(fv.MapIndex(k)); ev.IsValid() && isStructType(ev.Type()) {
				c.walkStruct(ev, kp, holder)
			}
		}
	case fv.Kind() == reflect.Slice:
		if isStructType(fv.Type().Elem()) {
			for i := range fv.Len() {
				c.walkStruct(fv.Index(i), indexPath(fp, i), holder)
			}
		}
	case isStructType(fv.Type()):
		c.walkStruct(fv, fp, holder)
	}
}

// enumMsg explains an unknown enum value.
func enumMsg(e enum, s string) string {
	allowed := strings.Join(e.Values(), ", ")
	if _, ok := e.(Version); ok {
		return fmt.Sprintf("unsupported version %q (supported: %s)", s, allowed)
	}
	if sug := closest(s, e.Values()); sug != "" {
		return fmt.Sprintf("unknown value %q; did you mean %q? (allowed: %s)", s, sug, allowed)
	}
	return fmt.Sprintf("unknown value %q (allowed: %s)", s, allowed)
}

// boundsMsg checks a number against the min, max and gt tags.
func boundsMsg(v reflect.Value, f *fieldInfo) string {
	var x float64
	switch v.Kind() {
	case reflect.Int, reflect.Int64:
		x = float64(v.Int())
	case reflect.Float64:
		x = v.Float()
	default:
		return ""
	}
	show := func(n float64) string {
		nv := reflect.New(v.Type()).Elem()
		if v.Kind() == reflect.Float64 {
			nv.SetFloat(n)
		} else {
			nv.SetInt(int64(n))
		}
		if s, ok := nv.Interface().(fmt.Stringer); ok {
			return s.String()
		}
		return strconv.FormatFloat(n, 'f', -1, 64)
	}
	got := show(x)
	switch {
	case f.gt != nil && x <= *f.gt:
		return fmt.Sprintf("must be greater than %s, got %s", show(*f.gt), got)
	case f.min != nil && f.max != nil && (x < *f.min || x > *f.max):
		return fmt.Sprintf("must be %s-%s, got %s", show(*f.min), show(*f.max), got)
	case f.min != nil && x < *f.min:
		return fmt.Sprintf("must be at least %s, got %s", show(*f.min), got)
	case f.max != nil && x > *f.max:
		return fmt.Sprintf("must be at most %s, got %s", show(*f.max), got)
	}
	return ""
}
