package bundle

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"zlayer.dev/libs/errkind"
)

// rootfs makes a small real root filesystem: busybox, a script, a text
// file, symlinks absolute and relative, passwd and group.
func rootfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"bin", "etc", "usr/bin"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "bin/busybox"), bb, 0o755)
	os.Symlink("busybox", filepath.Join(dir, "bin/sh"))
	os.Symlink("/bin/busybox", filepath.Join(dir, "usr/bin/env"))
	os.WriteFile(filepath.Join(dir, "bin/script"), []byte("#!/bin/sh\necho hi\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "bin/badscript"), []byte("#!/nope\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "bin/text"), []byte("hello\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "bin/noexec"), bb[:4096], 0o644)
	os.WriteFile(filepath.Join(dir, "etc/passwd"), []byte("root:x:0:0::/:/bin/sh\nweb:x:33:44::/:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "etc/group"), []byte("root:x:0:\nwww:x:44:\nextra:x:50:web\n"), 0o644)
	return dir
}

func TestCheckExecutable(t *testing.T) {
	root := rootfs(t)
	env := []string{"PATH=/usr/bin:/bin"}
	tests := []struct{ argv0, want string }{
		{"sh", ""},
		{"/bin/sh", ""},
		{"env", ""}, // absolute symlink, resolved inside the rootfs
		{"script", ""},
		{"badscript", "interpreter"},
		{"text", "exec format error"},
		{"noexec", "not found"},
		{"nosuch", "not found in the image"},
		{"/bin/nosuch", "no such executable"},
		{"../../../bin/sh", ""}, // relative to cwd, never above the root
	}
	for _, tt := range tests {
		err := CheckExecutable(root, tt.argv0, "/", env)
		if tt.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.argv0, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, errkind.Invalid) {
			t.Errorf("%s: %v, want Invalid containing %q", tt.argv0, err, tt.want)
		}
	}
}

func TestResolveUser(t *testing.T) {
	root := rootfs(t)
	u, err := ResolveUser(root, "web")
	if err != nil || u.UID != 33 || u.GID != 44 || !slices.Equal(u.AdditionalGids, []uint32{50}) {
		t.Fatalf("web: %+v %v", u, err)
	}
	if u, err := ResolveUser(root, "1000:www"); err != nil || u.UID != 1000 || u.GID != 44 {
		t.Fatalf("1000:www: %+v %v", u, err)
	}
	if _, err := ResolveUser(root, "ghost"); !errors.Is(err, errkind.Invalid) {
		t.Fatalf("ghost: %v", err)
	}
}

func TestSpec(t *testing.T) {
	root := rootfs(t)
	c := Config{
		Rootfs: root, Hostname: "web-0",
		Image:       Image{Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo image"}, Env: []string{"A=image", "PATH=/bin"}},
		Args:        []string{"echo mine"},
		Env:         map[string]string{"A": "mine", "B": "b"},
		Limits:      Limits{CPU: 1.5, Memory: 64 << 20},
		CgroupsPath: "/zlayer/n/web-0", NetnsPath: "/run/netns/x",
		Files: map[string]string{"/etc/hosts": "/tmp/hosts"},
	}
	s, err := Spec(c)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Process.Args, []string{"/bin/sh", "-c", "echo mine"}) {
		t.Errorf("args %q", s.Process.Args)
	}
	if !slices.Equal(s.Process.Env, []string{"PATH=/bin", "HOSTNAME=web-0", "A=mine", "B=b"}) {
		t.Errorf("env %q", s.Process.Env)
	}
	r := s.Linux.Resources
	if *r.CPU.Quota != 150000 || *r.CPU.Period != 100000 || *r.Memory.Limit != 64<<20 || *r.Pids.Limit != DefaultPids {
		t.Errorf("resources %+v %+v %+v", r.CPU, r.Memory, r.Pids)
	}
	if !s.Process.NoNewPrivileges || s.Linux.Seccomp == nil || slices.Contains(s.Process.Capabilities.Bounding, "CAP_SYS_ADMIN") {
		t.Error("hardening missing")
	}
	if len(s.Linux.MaskedPaths) == 0 || len(s.Linux.ReadonlyPaths) == 0 {
		t.Error("masked/readonly paths missing")
	}
	// A new command drops the image's cmd.
	c.Command, c.Args = []string{"sh"}, nil
	if s, _ := Spec(c); !slices.Equal(s.Process.Args, []string{"sh"}) {
		t.Errorf("command override: %q", s.Process.Args)
	}
	c.Command, c.Image = nil, Image{}
	if _, err := Spec(c); !errors.Is(err, errkind.Invalid) {
		t.Errorf("no command: %v", err)
	}
}

func TestResolvConf(t *testing.T) {
	got := string(ResolvConf([]byte("# c\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch example.com\n")))
	if got != "nameserver 10.0.0.2\nsearch example.com\n" {
		t.Fatalf("%q", got)
	}
}
