package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"zlayer.dev/libs/errkind"
)

// WriteFileAtomic writes b to path through a temp file in the same
// directory, fsynced and renamed, so readers (and a restart after a crash)
// see the old content or the new, never a mix.
func WriteFileAtomic(path string, b []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, classify(err))
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, classify(err))
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, classify(err))
	}
	return nil
}

// syncfs flushes the filesystem holding dir: one call makes a whole
// unpacked layer durable, far cheaper than an fsync per file.
func syncfs(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}

// ErrDiskFull is wrapped by errors caused by a full disk or quota.
var ErrDiskFull error = &classed{msg: "disk full", class: errkind.Exhausted}

// classify marks out-of-space errors as ErrDiskFull so callers and the
// gRPC layer see RESOURCE_EXHAUSTED with a clear message.
func classify(err error) error {
	if errors.Is(err, ErrDiskFull) {
		return err
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		// %v, not %w: the cause may carry another class (a write error
		// surfacing through the tar reader is wrapped as Invalid), and
		// the class of this error is Exhausted only.
		return fmt.Errorf("%w: %v", ErrDiskFull, err)
	}
	return err
}
