package bundle

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"zlayer.dev/libs/errkind"
)

// maxSymlinks bounds symlink hops while resolving a path in a rootfs.
const maxSymlinks = 40

// resolve returns the host path of p inside rootfs, following symlinks as
// the container would see them (an absolute target is relative to the
// rootfs, ".." never leaves it).
func resolve(rootfs, p string) (string, error) {
	hops := 0
	parts := strings.Split(path.Clean("/"+p), "/")
	cur := "/"
	for i := 0; i < len(parts); i++ {
		c := parts[i]
		if c == "" || c == "." {
			continue
		}
		next := path.Join(cur, c)
		fi, err := os.Lstat(filepath.Join(rootfs, next))
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			cur = next
			continue
		}
		hops++
		if hops > maxSymlinks {
			return "", fmt.Errorf("%s: too many levels of symbolic links", p)
		}
		target, err := os.Readlink(filepath.Join(rootfs, next))
		if err != nil {
			return "", err
		}
		if path.IsAbs(target) {
			cur = "/"
		}
		rest := append(strings.Split(target, "/"), parts[i+1:]...)
		parts, i = rest, -1
	}
	return filepath.Join(rootfs, cur), nil
}

// CheckExecutable checks that argv0 would start inside rootfs: found (on
// the PATH in env when it has no slash), a regular executable file, and an
// ELF binary for this machine or a script whose interpreter passes the
// same check. Failures are errkind.Invalid and say which it was.
func CheckExecutable(rootfs, argv0, cwd string, env []string) error {
	return checkExec(rootfs, argv0, cwd, env, 0)
}

func checkExec(rootfs, argv0, cwd string, env []string, depth int) error {
	p, err := lookPath(rootfs, argv0, cwd, env)
	if err != nil {
		return err
	}
	host, err := resolve(rootfs, p)
	if err != nil {
		return fmt.Errorf("executable %s: %v: %w", argv0, err, errkind.Invalid)
	}
	f, err := os.Open(host)
	if err != nil {
		return fmt.Errorf("executable %s: %v: %w", argv0, err, errkind.Invalid)
	}
	defer f.Close()
	head := make([]byte, 256)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte("\x7fELF")):
		ef, err := elf.NewFile(f)
		if err != nil {
			return fmt.Errorf("executable %s: exec format error: broken ELF header: %w", argv0, errkind.Invalid)
		}
		defer ef.Close()
		if want := machine(); want != elf.EM_NONE && ef.Machine != want {
			return fmt.Errorf("executable %s: exec format error: built for %s, this node is %s: %w",
				argv0, ef.Machine, runtime.GOARCH, errkind.Invalid)
		}
		return nil
	case bytes.HasPrefix(head, []byte("#!")) && depth < 4:
		line, _, _ := bytes.Cut(head[2:], []byte("\n"))
		fields := strings.Fields(string(line))
		if len(fields) == 0 {
			return fmt.Errorf("executable %s: exec format error: empty #! line: %w", argv0, errkind.Invalid)
		}
		if err := checkExec(rootfs, fields[0], "/", nil, depth+1); err != nil {
			return fmt.Errorf("script %s: interpreter: %w", argv0, err)
		}
		return nil
	default:
		return fmt.Errorf("executable %s: exec format error: neither an ELF binary nor a #! script: %w", argv0, errkind.Invalid)
	}
}

func machine() elf.Machine {
	switch runtime.GOARCH {
	case "amd64":
		return elf.EM_X86_64
	case "arm64":
		return elf.EM_AARCH64
	}
	return elf.EM_NONE
}

// lookPath finds argv0 the way execvp in the container would.
func lookPath(rootfs, argv0, cwd string, env []string) (string, error) {
	isExec := func(p string) bool {
		host, err := resolve(rootfs, p)
		if err != nil {
			return false
		}
		fi, err := os.Stat(host)
		return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
	}
	if strings.Contains(argv0, "/") {
		p := argv0
		if !path.IsAbs(p) {
			p = path.Join(cwd, p)
		}
		if !isExec(p) {
			return "", fmt.Errorf("executable %s: no such executable file in the image: %w", argv0, errkind.Invalid)
		}
		return p, nil
	}
	pathEnv := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathEnv = v
		}
	}
	for _, dir := range strings.Split(pathEnv, ":") {
		if dir == "" {
			dir = "."
		}
		p := path.Join(dir, argv0)
		if !path.IsAbs(p) {
			p = path.Join(cwd, p)
		}
		if isExec(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("executable %s: not found in the image (PATH=%s): %w", argv0, pathEnv, errkind.Invalid)
}

// ResolveUser turns an image's user field ("", "uid", "uid:gid", "name",
// "name:group") into ids, reading the rootfs's /etc/passwd and /etc/group
// for names and supplementary groups.
func ResolveUser(rootfs, u string) (specs.User, error) {
	if u == "" {
		u = "0"
	}
	name, group, hasGroup := strings.Cut(u, ":")
	var out specs.User
	uid, err := strconv.ParseUint(name, 10, 32)
	gid := uint64(0)
	userName := ""
	if err == nil {
		out.UID = uint32(uid)
		if e, ok := findEntry(rootfs, "/etc/passwd", func(f []string) bool { return len(f) > 3 && f[2] == name }); ok {
			gid, _ = strconv.ParseUint(e[3], 10, 32)
			userName = e[0]
		}
	} else {
		e, ok := findEntry(rootfs, "/etc/passwd", func(f []string) bool { return len(f) > 3 && f[0] == name })
		if !ok {
			return out, fmt.Errorf("user %q: not in the image's /etc/passwd: %w", name, errkind.Invalid)
		}
		uid, _ = strconv.ParseUint(e[2], 10, 32)
		gid, _ = strconv.ParseUint(e[3], 10, 32)
		out.UID, userName = uint32(uid), name
	}
	if hasGroup {
		g, err := strconv.ParseUint(group, 10, 32)
		if err != nil {
			e, ok := findEntry(rootfs, "/etc/group", func(f []string) bool { return len(f) > 2 && f[0] == group })
			if !ok {
				return out, fmt.Errorf("group %q: not in the image's /etc/group: %w", group, errkind.Invalid)
			}
			g, _ = strconv.ParseUint(e[2], 10, 32)
		}
		gid = g
	}
	out.GID = uint32(gid)
	if userName != "" {
		forEachEntry(rootfs, "/etc/group", func(f []string) {
			if len(f) < 4 {
				return
			}
			for _, m := range strings.Split(f[3], ",") {
				if m == userName {
					if g, err := strconv.ParseUint(f[2], 10, 32); err == nil && uint32(g) != out.GID {
						out.AdditionalGids = append(out.AdditionalGids, uint32(g))
					}
				}
			}
		})
	}
	return out, nil
}

func findEntry(rootfs, file string, match func([]string) bool) ([]string, bool) {
	var found []string
	forEachEntry(rootfs, file, func(f []string) {
		if found == nil && match(f) {
			found = f
		}
	})
	return found, found != nil
}

func forEachEntry(rootfs, file string, fn func([]string)) {
	host, err := resolve(rootfs, file)
	if err != nil {
		return
	}
	f, err := os.Open(host)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fn(strings.Split(line, ":"))
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.EOF) {
		return
	}
}
