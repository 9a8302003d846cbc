// Package unpack applies one uncompressed layer tar to its own directory,
// the way overlayfs expects a lower layer to look: OCI whiteouts (.wh.NAME)
// become 0:0 character devices, opaque markers (.wh..wh..opq) become the
// trusted.overlay.opaque xattr. It restores hardlinks, symlinks, device
// nodes, ownership, modes (setuid included), xattrs and timestamps.
//
// Every path is resolved with openat2(RESOLVE_IN_ROOT) against the layer
// directory, so neither "../" nor a symlink in the layer (absolute or not)
// can make a write land outside it: a hostile layer is confined, as if it
// were unpacked in a chroot. The package does not decompress, verify digests
// or decide where layers live; the store does that.
package unpack

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"zlayer.dev/libs/errkind"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	// overlayXattrPrefix names xattrs that overlayfs interprets; a layer
	// may not carry them itself (it could fake whiteouts or redirects).
	overlayXattrPrefix = "trusted.overlay."
	paxXattrPrefix     = "SCHILY.xattr."
)

// Stats counts what Apply wrote.
type Stats struct {
	Entries int   // tar entries applied (whiteouts included)
	Bytes   int64 // regular-file content written
}

// Apply reads the tar stream r and writes its entries under dir, which must
// exist. The stream is read to its end, so a caller hashing r sees every
// byte. On error dir holds a partial layer: the caller removes it.
func Apply(ctx context.Context, dir string, r io.Reader) (Stats, error) {
	var st Stats
	rootfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return st, fmt.Errorf("open layer dir %s: %w", dir, err)
	}
	defer unix.Close(rootfd)
	a := &applier{root: rootfd, buf: make([]byte, 1<<20)}

	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return st, fmt.Errorf("read tar: %w: %w", errkind.Invalid, err)
		}
		n, err := a.entry(hdr, tr)
		if err != nil {
			return st, fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		st.Entries++
		st.Bytes += n
	}
	// Directory times last: creating entries inside a directory changes its
	// mtime.
	for i := len(a.dirTimes) - 1; i >= 0; i-- {
		d := a.dirTimes[i]
		if err := a.setTimes(d.rel, d.ts); err != nil {
			return st, fmt.Errorf("entry %q: %w", d.rel, err)
		}
	}
	if _, err := io.CopyBuffer(io.Discard, r, a.buf); err != nil {
		return st, fmt.Errorf("read tar padding: %w", err)
	}
	return st, nil
}

type dirTime struct {
	rel string
	ts  []unix.Timespec
}

type applier struct {
	root     int
	buf      []byte
	dirTimes []dirTime
}

// clean maps a tar name onto a path relative to the layer root; "" is the
// root itself. "../x", "/x" and "a/../../x" all stay inside.
func clean(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

func (a *applier) entry(hdr *tar.Header, r io.Reader) (int64, error) {
	rel := clean(hdr.Name)
	dir, base := path.Split(rel)
	dir = strings.TrimSuffix(dir, "/")

	if rel == "" { // the layer root itself ("./")
		if hdr.Typeflag != tar.TypeDir {
			return 0, fmt.Errorf("%w: root entry is not a directory", errkind.Invalid)
		}
		return 0, a.rootMeta(hdr)
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		return 0, a.whiteout(dir, base)
	}

	pfd, err := a.mkdirAll(dir)
	if err != nil {
		return 0, err
	}
	defer unix.Close(pfd)

	switch hdr.Typeflag {
	case tar.TypeDir:
		var s unix.Stat_t
		err := unix.Fstatat(pfd, base, &s, unix.AT_SYMLINK_NOFOLLOW)
		if err == nil && s.Mode&unix.S_IFMT != unix.S_IFDIR {
			if err := removeAt(pfd, base); err != nil {
				return 0, err
			}
			err = unix.ENOENT
		}
		if errors.Is(err, unix.ENOENT) {
			if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
				return 0, fmt.Errorf("mkdir: %w", err)
			}
		} else if err != nil {
			return 0, fmt.Errorf("stat: %w", err)
		}
		if err := a.meta(pfd, base, hdr, -1); err != nil {
			return 0, err
		}
		a.dirTimes = append(a.dirTimes, dirTime{rel: rel, ts: times(hdr)})
		return 0, nil

	case tar.TypeReg:
		if err := replace(pfd, base); err != nil {
			return 0, err
		}
		fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return 0, fmt.Errorf("create: %w", err)
		}
		f := os.NewFile(uintptr(fd), base)
		n, err := io.CopyBuffer(fileWriter{f}, r, a.buf)
		if err == nil {
			err = a.meta(pfd, base, hdr, fd)
		}
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close: %w", cerr)
		}
		if err != nil {
			return n, err
		}
		if n != hdr.Size {
			return n, fmt.Errorf("%w: short file: %d of %d bytes", errkind.Invalid, n, hdr.Size)
		}
		return n, a.setTimesAt(pfd, base, times(hdr))

	case tar.TypeSymlink:
		if err := replace(pfd, base); err != nil {
			return 0, err
		}
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return 0, fmt.Errorf("symlink: %w", err)
		}
		if err := a.meta(pfd, base, hdr, -1); err != nil {
			return 0, err
		}
		return 0, a.setTimesAt(pfd, base, times(hdr))

	case tar.TypeLink:
		target := clean(hdr.Linkname)
		if target == "" {
			return 0, fmt.Errorf("%w: hardlink to the layer root", errkind.Invalid)
		}
		tdir, tbase := path.Split(target)
		tfd, err := a.resolve(strings.TrimSuffix(tdir, "/"))
		if errors.Is(err, unix.ENOENT) {
			return 0, fmt.Errorf("%w: hardlink target %q is not in this layer", errkind.Invalid, hdr.Linkname)
		}
		if err != nil {
			return 0, fmt.Errorf("hardlink target %q: %w", hdr.Linkname, err)
		}
		defer unix.Close(tfd)
		if err := replace(pfd, base); err != nil {
			return 0, err
		}
		if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return 0, fmt.Errorf("%w: hardlink target %q is not in this layer", errkind.Invalid, hdr.Linkname)
			}
			return 0, fmt.Errorf("hardlink to %q: %w", hdr.Linkname, err)
		}
		return 0, nil

	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if err := replace(pfd, base); err != nil {
			return 0, err
		}
		mode := uint32(unix.S_IFIFO)
		switch hdr.Typeflag {
		case tar.TypeChar:
			mode = unix.S_IFCHR
		case tar.TypeBlock:
			mode = unix.S_IFBLK
		}
		dev := int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
		if err := unix.Mknodat(pfd, base, mode|0o600, dev); err != nil {
			return 0, fmt.Errorf("mknod: %w", err)
		}
		if err := a.meta(pfd, base, hdr, -1); err != nil {
			return 0, err
		}
		return 0, a.setTimesAt(pfd, base, times(hdr))

	case tar.TypeXGlobalHeader:
		return 0, nil
	default:
		return 0, fmt.Errorf("%w: unsupported tar entry type %q", errkind.Invalid, hdr.Typeflag)
	}
}

// whiteout records the removal of dir/base's target in overlayfs form.
func (a *applier) whiteout(dir, base string) error {
	pfd, err := a.mkdirAll(dir)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if base == opaqueMarker {
		if err := unix.Setxattr(procPath(pfd, ""), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
			return fmt.Errorf("mark opaque: %w", err)
		}
		return nil
	}
	name := strings.TrimPrefix(base, whiteoutPrefix)
	if strings.HasPrefix(name, whiteoutPrefix) || name == "" || name == "." || name == ".." {
		return nil // other AUFS metadata (.wh..wh.plnk, …) has no meaning here
	}
	if err := replace(pfd, name); err != nil {
		return err
	}
	if err := unix.Mknodat(pfd, name, unix.S_IFCHR, 0); err != nil {
		return fmt.Errorf("whiteout %s: %w", name, err)
	}
	return nil
}

// resolve opens rel (a directory) inside the root, following symlinks as if
// the root were "/".
func (a *applier) resolve(rel string) (int, error) {
	if rel == "" {
		rel = "."
	}
	fd, err := unix.Openat2(a.root, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return -1, err
	}
	return fd, nil
}

// mkdirAll returns an O_PATH descriptor of directory rel, creating missing
// components (0755, root-owned, as tar does for implied parents). Symlinks
// met on the way are followed inside the root, so a dangling one gets its
// target created inside the layer, never outside.
func (a *applier) mkdirAll(rel string) (int, error) {
	fd, err := a.resolve(rel)
	if err == nil {
		return fd, nil
	}
	if !errors.Is(err, unix.ENOENT) {
		return -1, fmt.Errorf("resolve %q: %w", rel, err)
	}
	comps := strings.Split(rel, "/")
	cur := "" // resolved so far: only real directories, no symlinks
	links := 0
	for len(comps) > 0 {
		c := comps[0]
		comps = comps[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = strings.TrimPrefix(path.Dir("/"+cur), "/")
			continue
		}
		if err := a.step(&cur, c, &comps, &links); err != nil {
			return -1, fmt.Errorf("mkdir %q: %w", rel, err)
		}
	}
	fd, err = a.resolve(cur)
	if err != nil {
		return -1, fmt.Errorf("resolve %q: %w", rel, err)
	}
	return fd, nil
}

// step advances cur by one component c, creating it if missing; a symlink
// puts its target's components in front of the remaining ones.
func (a *applier) step(cur *string, c string, comps *[]string, links *int) error {
	cfd, err := a.resolve(*cur)
	if err != nil {
		return err
	}
	defer unix.Close(cfd)
	next := path.Join(*cur, c)
	var s unix.Stat_t
	err = unix.Fstatat(cfd, c, &s, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
		if err := unix.Mkdirat(cfd, c, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
		if err := unix.Fchmodat(cfd, c, 0o755, 0); err != nil { // whatever the umask
			return err
		}
		*cur = next
	case err != nil:
		return err
	case s.Mode&unix.S_IFMT == unix.S_IFDIR:
		*cur = next
	case s.Mode&unix.S_IFMT == unix.S_IFLNK:
		*links++
		if *links > 40 {
			return unix.ELOOP
		}
		buf := make([]byte, unix.PathMax)
		n, err := unix.Readlinkat(cfd, c, buf)
		if err != nil {
			return err
		}
		target := string(buf[:n])
		if strings.HasPrefix(target, "/") {
			*cur = ""
		}
		*comps = append(strings.Split(target, "/"), *comps...)
	default:
		return unix.ENOTDIR
	}
	return nil
}

// rootMeta applies the "./" entry to the layer root.
func (a *applier) rootMeta(hdr *tar.Header) error {
	if err := unix.Fchown(a.root, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(a.root, uint32(mode(hdr))); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	a.dirTimes = append(a.dirTimes, dirTime{rel: "", ts: times(hdr)})
	return nil
}

// meta sets owner, mode and xattrs of base in pfd. fd is the open file for
// regular files, -1 otherwise. Mode is set after the owner: chown clears
// setuid and setgid.
func (a *applier) meta(pfd int, base string, hdr *tar.Header, fd int) error {
	if fd >= 0 {
		if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	} else if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, paxXattrPrefix)
		if !ok || strings.HasPrefix(name, overlayXattrPrefix) {
			continue
		}
		var err error
		if fd >= 0 {
			err = unix.Fsetxattr(fd, name, []byte(v), 0)
		} else {
			err = unix.Lsetxattr(procPath(pfd, base), name, []byte(v), 0)
		}
		if err != nil {
			return fmt.Errorf("set xattr %s: %w", name, err)
		}
	}
	if hdr.Typeflag == tar.TypeSymlink {
		return nil // Linux symlinks have no mode
	}
	if fd >= 0 {
		if err := unix.Fchmod(fd, uint32(mode(hdr))); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
		return nil
	}
	if err := unix.Fchmodat(pfd, base, uint32(mode(hdr)), 0); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return nil
}

func (a *applier) setTimes(rel string, ts []unix.Timespec) error {
	if rel == "" {
		if err := unix.UtimesNanoAt(a.root, ".", ts, 0); err != nil {
			return fmt.Errorf("set times: %w", err)
		}
		return nil
	}
	dir, base := path.Split(rel)
	pfd, err := a.resolve(strings.TrimSuffix(dir, "/"))
	if err != nil {
		return fmt.Errorf("resolve %q: %w", dir, err)
	}
	defer unix.Close(pfd)
	return a.setTimesAt(pfd, base, ts)
}

func (a *applier) setTimesAt(pfd int, base string, ts []unix.Timespec) error {
	if err := unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// mode keeps permission, setuid, setgid and sticky bits.
func mode(hdr *tar.Header) int64 { return hdr.Mode & 0o7777 }

func times(hdr *tar.Header) []unix.Timespec {
	m := unix.NsecToTimespec(hdr.ModTime.UnixNano())
	at := m
	if !hdr.AccessTime.IsZero() {
		at = unix.NsecToTimespec(hdr.AccessTime.UnixNano())
	}
	return []unix.Timespec{at, m}
}

// procPath names base inside the directory open as pfd without resolving
// anything again: the kernel already holds the directory.
func procPath(pfd int, base string) string {
	p := "/proc/self/fd/" + strconv.Itoa(pfd)
	if base != "" {
		p += "/" + base
	}
	return p
}

// replace removes whatever is at base so a new entry can take its place (a
// later entry in a tar wins). A directory is only removed when replaced by
// a non-directory.
func replace(pfd int, base string) error {
	var s unix.Stat_t
	err := unix.Fstatat(pfd, base, &s, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	return removeAt(pfd, base)
}

func removeAt(pfd int, base string) error {
	err := unix.Unlinkat(pfd, base, 0)
	if errors.Is(err, unix.EISDIR) {
		// The directory was resolved safely; RemoveAll below it uses
		// openat with O_NOFOLLOW, so it cannot leave it either.
		err = os.RemoveAll(procPath(pfd, base))
	}
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove existing: %w", err)
	}
	return nil
}

// fileWriter hides os.File's ReadFrom so io.CopyBuffer uses our buffer
// rather than trying copy_file_range on a tar stream.
type fileWriter struct{ f *os.File }

func (w fileWriter) Write(p []byte) (int, error) { return w.f.Write(p) }
