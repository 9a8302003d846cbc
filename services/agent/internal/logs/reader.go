package logs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
	"time"
)

// Entry is one record read back.
type Entry struct {
	Time    time.Time
	Stream  Stream
	Partial bool // the text did not end with a newline
	Text    []byte
}

// ReadOptions selects records.
type ReadOptions struct {
	Since  time.Time // records before Since are skipped; zero means all
	Tail   int       // only the last Tail records before following; < 0 means all
	Follow bool      // keep reading new records until Done reports true or ctx ends
	// Done reports whether the writer has finished for good (the container
	// has exited and its monitor drained the pipes). Only used with Follow.
	Done func() bool
	// Poll is how often a follower looks for new data; 0 means 100ms.
	Poll time.Duration
	// Idle, if set, is called whenever Read has sent everything there is
	// so far and is about to wait (a caller batching entries flushes).
	Idle func() error
}

// ParseLine parses one on-disk line (without its newline).
func ParseLine(line []byte) (Entry, error) {
	f := bytes.SplitN(line, []byte{' '}, 4)
	if len(f) < 3 {
		return Entry{}, fmt.Errorf("log line %q: too few fields", truncate(line))
	}
	t, err := time.Parse(time.RFC3339Nano, string(f[0]))
	if err != nil {
		return Entry{}, fmt.Errorf("log line %q: time: %w", truncate(line), err)
	}
	e := Entry{Time: t, Stream: Stream(f[1]), Partial: string(f[2]) == "P"}
	if len(f) == 4 {
		e.Text = f[3]
	}
	return e, nil
}

func truncate(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}

// files lists the existing log files for path, oldest first.
func files(path string) []string {
	var out []string
	for i := 1; ; i++ {
		p := path + "." + strconv.Itoa(i)
		if _, err := os.Stat(p); err != nil {
			break
		}
		out = append([]string{p}, out...)
	}
	return append(out, path)
}

// Read sends the records of the log at path to emit, in order. A missing
// log is an empty one.
func Read(ctx context.Context, path string, o ReadOptions, emit func(Entry) error) error {
	var tail []Entry
	send := func(e Entry) error {
		if !o.Since.IsZero() && e.Time.Before(o.Since) {
			return nil
		}
		if o.Tail >= 0 {
			if o.Tail == 0 {
				return nil
			}
			if len(tail) == o.Tail {
				tail = tail[1:]
			}
			tail = append(tail, e)
			return nil
		}
		return emit(e)
	}
	all := files(path)
	for _, p := range all[:len(all)-1] {
		if err := readFile(p, send); err != nil {
			return err
		}
	}
	cur, err := os.Open(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("open log: %w", err)
	}
	var rest []byte
	if cur != nil {
		defer func() { cur.Close() }()
		if rest, err = drain(cur, nil, send); err != nil {
			return err
		}
	}
	for _, e := range tail {
		if err := emit(e); err != nil {
			return err
		}
	}
	if !o.Follow {
		return nil
	}
	o.Tail = -1
	poll := o.Poll
	if poll == 0 {
		poll = 100 * time.Millisecond
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		// Done is read before draining so that nothing written before the
		// writer finished is missed.
		done := o.Done != nil && o.Done()
		if cur != nil {
			if rest, err = drain(cur, rest, send); err != nil {
				return err
			}
		}
		if rotated(cur, path) {
			if cur != nil {
				cur.Close()
			}
			cur, rest = nil, nil
			if f, err := os.Open(path); err == nil {
				cur = f
			}
			continue
		}
		if done {
			return nil
		}
		if o.Idle != nil {
			if err := o.Idle(); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// rotated reports whether path now names a different file than cur.
func rotated(cur *os.File, path string) bool {
	st, err := os.Stat(path)
	if err != nil {
		return false
	}
	if cur == nil {
		return true
	}
	cst, err := cur.Stat()
	if err != nil {
		return true
	}
	return st.Sys().(*syscall.Stat_t).Ino != cst.Sys().(*syscall.Stat_t).Ino
}

func readFile(p string, send func(Entry) error) error {
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil // rotated away while listing
		}
		return fmt.Errorf("open log: %w", err)
	}
	defer f.Close()
	_, err = drain(f, nil, send)
	return err
}

// drain reads f to its current end, sending each complete line; it returns
// the bytes of an incomplete last line, to be prefixed to the next read.
func drain(f *os.File, rest []byte, send func(Entry) error) ([]byte, error) {
	r := bufio.NewReaderSize(f, 64<<10)
	for {
		line, err := r.ReadSlice('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			full := line[:len(line)-1]
			if len(rest) > 0 {
				full = append(rest, full...)
				rest = nil
			}
			e, perr := ParseLine(full)
			if perr == nil {
				e.Text = bytes.Clone(e.Text)
				if serr := send(e); serr != nil {
					return nil, serr
				}
			}
			continue
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			rest = append(rest, line...)
			continue
		}
		rest = append(rest, line...)
		if err == io.EOF || err == nil {
			return rest, nil
		}
		return rest, fmt.Errorf("read log: %w", err)
	}
}
