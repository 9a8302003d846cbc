package spec

import (
	"fmt"
	"sort"
	"strings"
)

// FieldError is one problem in a deployment file. Line and Col are 1-based;
// they are 0 when the problem has no place in a file (a Deployment built in
// code). Path is the dotted path of the field ("services.web.scale.min"),
// empty for problems with the file as a whole.
type FieldError struct {
	File string `json:"file"`
	Line int    `json:"line"`
	Col  int    `json:"col"`
	Path string `json:"path"`
	Msg  string `json:"message"`
}

// Error formats e as FILE:LINE:COL: path: message.
func (e *FieldError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(":")
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, "%d:%d:", e.Line, e.Col)
	}
	if b.Len() > 0 {
		b.WriteString(" ")
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in a file, in file order. It is the error
// type Parse, Load and Validate return; use errors.As to get at it.
type Errors []*FieldError

// Error formats the problems one per line.
func (l Errors) Error() string {
	lines := make([]string, len(l))
	for i, e := range l {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// sort puts l in file order; problems without a place go last, by path.
func (l Errors) sort() {
	sort.SliceStable(l, func(i, j int) bool {
		a, b := l[i], l[j]
		if (a.Line == 0) != (b.Line == 0) {
			return b.Line == 0
		}
		if a.Line == 0 {
			return a.Path < b.Path
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
}

// orNil sorts l, drops repeats (a mapping merged in twice reports its
// problems twice) and returns nil for no problems.
func (l Errors) orNil() error {
	if len(l) == 0 {
		return nil
	}
	l.sort()
	out := l[:1]
	for _, e := range l[1:] {
		if *e != *out[len(out)-1] {
			out = append(out, e)
		}
	}
	return out
}

// Pos is a place in a file.
type Pos struct{ Line, Col int }

// nodePos records where a field was written: its key and its value.
type nodePos struct {
	Key, Val Pos
	Null     bool // the key was written with no value
}
