package unpack

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"zlayer.dev/libs/errkind"
)

type entry struct {
	hdr  tar.Header
	body string
}

func buildTar(t *testing.T, entries []entry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.Format == tar.FormatUnknown {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("write header %s: %v", h.Name, err)
		}
		if e.body != "" {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (ownership, device nodes, trusted xattrs)")
	}
}

var mtime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

func TestApplyRestoresEverything(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	tarball := buildTar(t, []entry{
		{hdr: tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime}},
		{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o750, Uid: 0, Gid: 42, ModTime: mtime}},
		{hdr: tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644, Uid: 1000, Gid: 1001, ModTime: mtime,
			PAXRecords: map[string]string{"SCHILY.xattr.user.note": "hello", "SCHILY.xattr.trusted.overlay.opaque": "y"}}, body: "root:x:0:0\n"},
		{hdr: tar.Header{Name: "bin/su", Typeflag: tar.TypeReg, Mode: 0o4755, ModTime: mtime}, body: "#!suid"},
		{hdr: tar.Header{Name: "bin/su-link", Typeflag: tar.TypeLink, Linkname: "bin/su", ModTime: mtime}},
		{hdr: tar.Header{Name: "bin/sh", Typeflag: tar.TypeSymlink, Linkname: "/bin/busybox", Uid: 7, Gid: 8, ModTime: mtime}},
		{hdr: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: mtime}},
		{hdr: tar.Header{Name: "run/fifo", Typeflag: tar.TypeFifo, Mode: 0o620, ModTime: mtime}},
		{hdr: tar.Header{Name: "usr/.wh.gone", Typeflag: tar.TypeReg, ModTime: mtime}},
		{hdr: tar.Header{Name: "opt/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime}},
		{hdr: tar.Header{Name: "opt/.wh..wh..opq", Typeflag: tar.TypeReg, ModTime: mtime}},
		{hdr: tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777, ModTime: mtime}},
	})
	st, err := Apply(context.Background(), dir, tarball)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if st.Entries != 12 {
		t.Errorf("entries = %d, want 12", st.Entries)
	}
	if tarball.Len() != 0 {
		t.Errorf("%d bytes of the stream left unread", tarball.Len())
	}

	lstat := func(rel string) unix.Stat_t {
		t.Helper()
		var s unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, rel), &s); err != nil {
			t.Fatalf("lstat %s: %v", rel, err)
		}
		return s
	}
	if s := lstat("etc/passwd"); s.Uid != 1000 || s.Gid != 1001 || s.Mode&0o7777 != 0o644 || s.Mtim.Sec != mtime.Unix() {
		t.Errorf("etc/passwd: uid %d gid %d mode %o mtime %d", s.Uid, s.Gid, s.Mode&0o7777, s.Mtim.Sec)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "etc/passwd")); string(b) != "root:x:0:0\n" {
		t.Errorf("etc/passwd content %q", b)
	}
	xb := make([]byte, 64)
	if n, err := unix.Lgetxattr(filepath.Join(dir, "etc/passwd"), "user.note", xb); err != nil || string(xb[:n]) != "hello" {
		t.Errorf("xattr user.note = %q, %v", xb[:max(n, 0)], err)
	}
	if _, err := unix.Lgetxattr(filepath.Join(dir, "etc/passwd"), "trusted.overlay.opaque", xb); !errors.Is(err, unix.ENODATA) {
		t.Errorf("overlay xattr from the tar was applied (err %v); it must be dropped", err)
	}
	if s := lstat("etc"); s.Gid != 42 || s.Mode&0o7777 != 0o750 || s.Mtim.Sec != mtime.Unix() {
		t.Errorf("etc: gid %d mode %o mtime %d", s.Gid, s.Mode&0o7777, s.Mtim.Sec)
	}
	su, link := lstat("bin/su"), lstat("bin/su-link")
	if su.Mode&0o7777 != 0o4755 {
		t.Errorf("bin/su mode %o, want 4755 (setuid kept)", su.Mode&0o7777)
	}
	if su.Ino != link.Ino || su.Nlink != 2 {
		t.Errorf("hardlink: inodes %d/%d nlink %d", su.Ino, link.Ino, su.Nlink)
	}
	if target, _ := os.Readlink(filepath.Join(dir, "bin/sh")); target != "/bin/busybox" {
		t.Errorf("symlink target %q", target)
	}
	if s := lstat("bin/sh"); s.Uid != 7 || s.Gid != 8 {
		t.Errorf("symlink owner %d:%d", s.Uid, s.Gid)
	}
	if s := lstat("dev/null"); s.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(s.Rdev) != 1 || unix.Minor(s.Rdev) != 3 || s.Mode&0o777 != 0o666 {
		t.Errorf("dev/null: mode %o rdev %d:%d", s.Mode, unix.Major(s.Rdev), unix.Minor(s.Rdev))
	}
	if s := lstat("run/fifo"); s.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("run/fifo mode %o", s.Mode)
	}
	if s := lstat("usr/gone"); s.Mode&unix.S_IFMT != unix.S_IFCHR || s.Rdev != 0 {
		t.Errorf("whiteout usr/gone: mode %o rdev %d, want a 0:0 char device", s.Mode, s.Rdev)
	}
	if _, err := os.Lstat(filepath.Join(dir, "usr/.wh.gone")); !os.IsNotExist(err) {
		t.Errorf("the .wh. file itself was written")
	}
	if n, err := unix.Lgetxattr(filepath.Join(dir, "opt"), "trusted.overlay.opaque", xb); err != nil || string(xb[:n]) != "y" {
		t.Errorf("opaque opt: %v", err)
	}
	if s := lstat("tmp"); s.Mode&0o7777 != 0o1777 {
		t.Errorf("tmp mode %o, want sticky 1777", s.Mode&0o7777)
	}
}

// TestApplyHostileLayerStaysInside feeds a layer written to escape: "../"
// names, an absolute symlink used as a parent, a relative symlink climbing
// out, and a hardlink to a host file. Every write must land inside the
// layer directory.
func TestApplyHostileLayerStaysInside(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	dir := filepath.Join(base, "layer")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{dir, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		entries []entry
		inside  string // the path, relative to the layer, that must hold "pwned"
		wantErr error
	}{
		{
			name:    "dotdot name",
			entries: []entry{{hdr: tar.Header{Name: "../outside/secret", Typeflag: tar.TypeReg, Mode: 0o644}, body: "pwned"}},
			inside:  "outside/secret",
		},
		{
			name: "absolute symlink as parent",
			entries: []entry{
				{hdr: tar.Header{Name: "evil", Typeflag: tar.TypeSymlink, Linkname: outside}},
				{hdr: tar.Header{Name: "evil/secret", Typeflag: tar.TypeReg, Mode: 0o644}, body: "pwned"},
			},
			inside: filepath.Join(outside[1:], "secret"),
		},
		{
			name: "relative symlink climbing out",
			entries: []entry{
				{hdr: tar.Header{Name: "up", Typeflag: tar.TypeSymlink, Linkname: "../../../../../../../.." + outside}},
				{hdr: tar.Header{Name: "up/secret", Typeflag: tar.TypeReg, Mode: 0o644}, body: "pwned"},
			},
			inside: filepath.Join(outside[1:], "secret"),
		},
		{
			name: "symlink to root then dotdot",
			entries: []entry{
				{hdr: tar.Header{Name: "r", Typeflag: tar.TypeSymlink, Linkname: "/"}},
				{hdr: tar.Header{Name: "r/../../outside/secret", Typeflag: tar.TypeReg, Mode: 0o644}, body: "pwned"},
			},
			inside: "outside/secret",
		},
		{
			name:    "hardlink to a host file",
			entries: []entry{{hdr: tar.Header{Name: "steal", Typeflag: tar.TypeLink, Linkname: secret}}},
			wantErr: errkind.Invalid, // the target is not in the layer
		},
		{
			name: "hardlink through a symlink",
			entries: []entry{
				{hdr: tar.Header{Name: "h", Typeflag: tar.TypeSymlink, Linkname: outside}},
				{hdr: tar.Header{Name: "steal", Typeflag: tar.TypeLink, Linkname: "h/secret"}},
			},
			wantErr: errkind.Invalid,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			_, err := Apply(context.Background(), dir, buildTar(t, tt.entries))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Apply error = %v, want %v", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if b, err := os.ReadFile(secret); err != nil || string(b) != "keep" {
				t.Fatalf("host file changed: %q, %v", b, err)
			}
			if tt.inside != "" {
				if b, err := os.ReadFile(filepath.Join(dir, tt.inside)); err != nil || string(b) != "pwned" {
					t.Errorf("write not confined to %s: %q, %v", tt.inside, b, err)
				}
			}
		})
	}
}

func TestApplyLaterEntryWins(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	_, err := Apply(context.Background(), dir, buildTar(t, []entry{
		{hdr: tar.Header{Name: "a/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{hdr: tar.Header{Name: "a/x", Typeflag: tar.TypeReg, Mode: 0o644}, body: "x"},
		{hdr: tar.Header{Name: "a", Typeflag: tar.TypeReg, Mode: 0o644}, body: "file now"},
		{hdr: tar.Header{Name: "b", Typeflag: tar.TypeSymlink, Linkname: "a"}},
		{hdr: tar.Header{Name: "b", Typeflag: tar.TypeReg, Mode: 0o644}, body: "not through the link"},
	}))
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	for rel, want := range map[string]string{"a": "file now", "b": "not through the link"} {
		if b, err := os.ReadFile(filepath.Join(dir, rel)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", rel, b, err, want)
		}
	}
}

func TestApplyRejectsGarbage(t *testing.T) {
	dir := t.TempDir()
	_, err := Apply(context.Background(), dir, bytes.NewReader(bytes.Repeat([]byte("not a tar"), 200)))
	if !errors.Is(err, errkind.Invalid) {
		t.Fatalf("Apply(garbage) = %v, want Invalid", err)
	}
}
