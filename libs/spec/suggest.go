package spec

import (
	"fmt"
	"reflect"
	"strings"
)

// unknownFieldMsg explains an unknown key in an object of type t: a close
// spelling, another tool's name for a field, the same field one level down,
// or else the list of allowed keys.
func unknownFieldMsg(key string, t reflect.Type) string {
	fields := fieldsOf(t)
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.name
	}
	if s := closest(key, names); s != "" {
		return fmt.Sprintf("unknown field; did you mean %q?", s)
	}
	lk := strings.ToLower(key)
	for _, f := range fields {
		for _, a := range f.aliases {
			if a == lk {
				return fmt.Sprintf("unknown field; did you mean %q?", f.name)
			}
		}
	}
	if deep := deepPaths(t, lk, "", 3); len(deep) > 0 && len(deep) <= 3 {
		q := make([]string, len(deep))
		for i, p := range deep {
			q[i] = fmt.Sprintf("%q", p)
		}
		return "unknown field; did you mean " + strings.Join(q, " or ") + "?"
	}
	return "unknown field (allowed: " + strings.Join(names, ", ") + ")"
}

// deepPaths finds fields named key below t (not at its top level), as paths
// relative to t such as "scale.replicas".
func deepPaths(t reflect.Type, key, prefix string, depth int) []string {
	if depth == 0 {
		return nil
	}
	var out []string
	for _, f := range fieldsOf(t) {
		p := f.name
		if prefix != "" {
			p = prefix + "." + f.name
			if f.name == key {
				out = append(out, p)
				continue
			}
		}
		ft := derefType(f.typ)
		switch {
		case ft.Kind() == reflect.Slice && isStructType(ft.Elem()):
			out = append(out, deepPaths(derefType(ft.Elem()), key, p+"[]", depth-1)...)
		case ft.Kind() == reflect.Map && isStructType(ft.Elem()):
			out = append(out, deepPaths(derefType(ft.Elem()), key, p+".<name>", depth-1)...)
		case isStructType(ft):
			out = append(out, deepPaths(ft, key, p, depth-1)...)
		}
	}
	return out
}

// closest returns the candidate a typo of s most likely meant, or "".
func closest(s string, candidates []string) string {
	ls := strings.ToLower(s)
	best, bestD := "", 1<<30
	for _, c := range candidates {
		lc := strings.ToLower(c)
		d := editDistance(ls, lc)
		limit := 1
		if len(lc) >= 5 {
			limit = 2
		}
		if len(lc) >= 10 {
			limit = 3
		}
		ok := d <= limit
		// "expect" for "expect_status", "on_fail" for "on_failure".
		if !ok && len(ls) >= 4 && (strings.HasPrefix(lc, ls) || strings.HasPrefix(ls, lc)) {
			ok, d = true, limit+1
		}
		if ok && d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the optimal-string-alignment distance: insertions,
// deletions, substitutions and swaps of neighbours each cost 1.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	if len(ra) > 64 || len(rb) > 64 {
		if a == b {
			return 0
		}
		return 1 << 20
	}
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}
