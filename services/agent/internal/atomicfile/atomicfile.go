// Package atomicfile writes files that must survive a crash whole: the
// data goes to a temporary file in the same directory, is fsynced (by
// Write; WriteUnsynced skips it), and is renamed over the target, so
// readers see the old file or the new one, never a mix. It does nothing
// else (it does not fsync the directory: a crash may lose the rename,
// never corrupt the file).
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write replaces path with b, durably: once it returns, the new file
// survives a power loss.
func Write(path string, b []byte, mode os.FileMode) error { return write(path, b, mode, true) }

// WriteUnsynced replaces path with b atomically for readers and for a
// crash of the writing process, without waiting for the disk: after a
// power loss the file may still be the old one (or, on a file system that
// does not write data before a rename, empty). It is for files whose
// loss on power failure is harmless.
func WriteUnsynced(path string, b []byte, mode os.FileMode) error {
	return write(path, b, mode, false)
}

func write(path string, b []byte, mode os.FileMode, sync bool) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	name := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(name)
		}
	}()
	if _, err := tmp.Write(b); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if sync {
		if err := tmp.Sync(); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(name, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	ok = true
	return nil
}
