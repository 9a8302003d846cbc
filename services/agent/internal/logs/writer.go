package logs

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"
)

// Stream names the standard stream a line came from.
type Stream string

// The two streams a container writes.
const (
	Stdout Stream = "stdout"
	Stderr Stream = "stderr"
)

// readBuf bounds one read from a container pipe and so the longest line
// written as one record; longer lines are split into partial records.
const readBuf = 32 << 10

// Writer appends timestamped lines to a rotating set of files. It is safe
// for concurrent use by the copiers of both streams.
type Writer struct {
	mu      sync.Mutex
	path    string
	maxSize int64
	keep    int
	f       *os.File
	size    int64
	now     func() time.Time
}

// NewWriter opens (appending) path. When the file reaches maxSize bytes it
// is rotated; keep is how many rotated files are kept besides the current
// one (keep 0 truncates in place).
func NewWriter(path string, maxSize int64, keep int) (*Writer, error) {
	if maxSize <= 0 {
		return nil, fmt.Errorf("log max size %d: must be positive", maxSize)
	}
	w := &Writer{path: path, maxSize: maxSize, keep: keep, now: time.Now}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Writer) open() error {
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("stat log: %w", err)
	}
	w.f, w.size = f, st.Size()
	return nil
}

// rotate shifts path.N-1 → path.N … path → path.1 and opens a new path.
func (w *Writer) rotate() error {
	w.f.Close()
	if w.keep == 0 {
		if err := os.Truncate(w.path, 0); err != nil {
			return fmt.Errorf("truncate log: %w", err)
		}
		return w.open()
	}
	os.Remove(w.path + "." + strconv.Itoa(w.keep))
	for i := w.keep - 1; i >= 1; i-- {
		os.Rename(w.path+"."+strconv.Itoa(i), w.path+"."+strconv.Itoa(i+1))
	}
	if err := os.Rename(w.path, w.path+".1"); err != nil {
		return fmt.Errorf("rotate log: %w", err)
	}
	return w.open()
}

// record writes one record; full says whether text ended with a newline.
func (w *Writer) record(s Stream, text []byte, full bool) error {
	tag := " P "
	if full {
		tag = " F "
	}
	var b bytes.Buffer
	b.Grow(len(text) + 48)
	b.WriteString(w.now().UTC().Format(time.RFC3339Nano))
	b.WriteByte(' ')
	b.WriteString(string(s))
	b.WriteString(tag)
	b.Write(text)
	b.WriteByte('\n')
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.size > 0 && w.size+int64(b.Len()) > w.maxSize {
		if err := w.rotate(); err != nil {
			return err
		}
	}
	n, err := w.f.Write(b.Bytes())
	w.size += int64(n)
	if err != nil {
		return fmt.Errorf("write log: %w", err)
	}
	return nil
}

// Copy reads r until EOF and writes what it reads as records of stream s.
// Write errors (a full disk) drop lines but keep draining r, so a
// container never blocks on a full pipe because its logs cannot be kept.
func (w *Writer) Copy(s Stream, r io.Reader) error {
	buf := make([]byte, readBuf)
	n := 0
	var werr error
	for {
		m, err := r.Read(buf[n:])
		n += m
		for {
			i := bytes.IndexByte(buf[:n], '\n')
			if i < 0 {
				break
			}
			if e := w.record(s, buf[:i], true); e != nil && werr == nil {
				werr = e
			}
			n = copy(buf, buf[i+1:n])
		}
		if n == len(buf) || (err != nil && n > 0) {
			if e := w.record(s, buf[:n], false); e != nil && werr == nil {
				werr = e
			}
			n = 0
		}
		if err == io.EOF {
			return werr
		}
		if err != nil {
			return err
		}
	}
}

// Close closes the current file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.f.Close()
}
