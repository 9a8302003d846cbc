// Package rootfs makes container root filesystems: an overlayfs mount whose
// lower layers are an image's unpacked layers (read-only, shared by every
// container of the image) and whose upper and work directories belong to
// one container. Each container's directory holds a record (rootfs.json)
// naming the image and layers, written before the mount, so the store's
// garbage collection keeps those layers and a restart can tell a complete
// root filesystem from debris.
//
// It never downloads or unpacks; the image must already be in the store.
package rootfs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"zlayer.dev/libs/errkind"
	"zlayer.dev/libs/obs"
	"zlayer.dev/services/registry/internal/store"
)

// Rootfs is one container's root filesystem.
type Rootfs struct {
	ContainerID string          `json:"container_id"`
	Image       string          `json:"image"`  // normalized name
	Digest      digest.Digest   `json:"digest"` // image digest
	Layers      []digest.Digest `json:"layers"` // diff ids, bottom first
	Path        string          `json:"-"`      // the mounted overlay
}

// Manager prepares and releases root filesystems under one directory.
type Manager struct {
	dir string
	st  *store.Store
	log *zap.Logger
	mu  sync.Mutex // one Prepare/Release at a time: they are quick
}

const recordName = "rootfs.json"

var validID = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// New returns a Manager for dir and removes container directories that
// have no record (a Prepare interrupted by a crash).
func New(dir string, st *store.Store, log *zap.Logger) (*Manager, error) {
	m := &Manager{dir: dir, st: st, log: log.Named("rootfs")}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if _, err := os.Stat(filepath.Join(p, recordName)); err == nil && validID.MatchString(e.Name()) {
			continue
		}
		m.log.Warn("removing incomplete root filesystem", zap.String(obs.KeyContainer, e.Name()))
		if err := destroy(p); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Manager) containerDir(id string) string { return filepath.Join(m.dir, id) }

// Prepare mounts a root filesystem of img for container id and returns it.
// It is idempotent for the same image; another image is a Conflict.
func (m *Manager) Prepare(img store.Image, id string) (r Rootfs, err error) {
	if !validID.MatchString(id) {
		return Rootfs{}, fmt.Errorf("container id %q: %w: want [A-Za-z0-9_.-], at most 128", id, errkind.Invalid)
	}
	release := m.st.Hold() // no prune between checking layers and recording them
	defer release()
	m.mu.Lock()
	defer m.mu.Unlock()

	cdir := m.containerDir(id)
	merged := filepath.Join(cdir, "merged")
	if old, err := readRecord(cdir); err == nil {
		if old.Digest != img.Digest || old.Image != img.Name {
			return Rootfs{}, fmt.Errorf("container %s: %w: has a root filesystem of %s@%s", id, errkind.Conflict, old.Image, old.Digest)
		}
		old.Path = merged
		if mounted(merged) {
			return old, nil
		}
		if err := m.mount(cdir, old.Layers); err != nil { // e.g. after a reboot
			return Rootfs{}, fmt.Errorf("container %s: %w", id, err)
		}
		return old, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return Rootfs{}, fmt.Errorf("container %s: %w", id, err)
	}

	r = Rootfs{ContainerID: id, Image: img.Name, Digest: img.Digest, Path: merged}
	for _, l := range img.Layers {
		if !m.st.HasLayer(l.DiffID) {
			return Rootfs{}, fmt.Errorf("container %s: image %s: layer %s is missing (pull again): %w", id, img.Name, l.DiffID, errkind.Precondition)
		}
		r.Layers = append(r.Layers, l.DiffID)
	}

	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	if err := os.Mkdir(cdir, 0o700); err != nil {
		return Rootfs{}, fmt.Errorf("container %s: %w", id, err)
	}
	undo = append(undo, func() { _ = destroy(cdir) })
	for _, d := range []string{"upper", "work", "merged", "empty"} {
		// The upper dir's root is the container's "/": 0755 whatever the
		// daemon's umask.
		if err := os.Mkdir(filepath.Join(cdir, d), 0o755); err != nil {
			return Rootfs{}, fmt.Errorf("container %s: %w", id, err)
		}
		if err := os.Chmod(filepath.Join(cdir, d), 0o755); err != nil {
			return Rootfs{}, fmt.Errorf("container %s: %w", id, err)
		}
	}
	b, err := json.Marshal(r)
	if err != nil {
		return Rootfs{}, err
	}
	if err := store.WriteFileAtomic(filepath.Join(cdir, recordName), b, 0o600); err != nil {
		return Rootfs{}, fmt.Errorf("container %s: %w", id, err)
	}
	if err := m.mount(cdir, r.Layers); err != nil {
		return Rootfs{}, fmt.Errorf("container %s: %w", id, err)
	}
	m.log.Info("root filesystem prepared", zap.String(obs.KeyContainer, id), zap.String(obs.KeyImage, img.Name), zap.Int("layers", len(r.Layers)))
	return r, nil
}

// mount mounts the overlay of layers (bottom first) at cdir/merged.
func (m *Manager) mount(cdir string, layers []digest.Digest) error {
	lowers := make([]string, 0, len(layers))
	for i := len(layers) - 1; i >= 0; i-- { // overlayfs lists the top layer first
		lowers = append(lowers, m.st.LayerPath(layers[i]))
	}
	if len(lowers) == 0 {
		lowers = append(lowers, filepath.Join(cdir, "empty"))
	}
	upper, work, merged := filepath.Join(cdir, "upper"), filepath.Join(cdir, "work"), filepath.Join(cdir, "merged")
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,index=off", strings.Join(lowers, ":"), upper, work)
	if len(opts) < unix.Getpagesize()-1 {
		if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
			return fmt.Errorf("mount overlay at %s: %w", merged, err)
		}
		return nil
	}
	return mountMany(lowers, upper, work, merged)
}

// mountMany mounts an overlay with more layers than fit in one page of
// mount options, adding lower directories one by one (Linux ≥ 6.8).
func mountMany(lowers []string, upper, work, merged string) error {
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("mount overlay at %s: fsopen: %w", merged, err)
	}
	defer unix.Close(fsfd)
	set := func(k, v string) error {
		if err := unix.FsconfigSetString(fsfd, k, v); err != nil {
			return fmt.Errorf("mount overlay at %s: %s: %w (%d layers need Linux 6.8 or later)", merged, k, err, len(lowers))
		}
		return nil
	}
	for _, l := range lowers {
		if err := set("lowerdir+", l); err != nil {
			return err
		}
	}
	for k, v := range map[string]string{"upperdir": upper, "workdir": work, "index": "off"} {
		if err := set(k, v); err != nil {
			return err
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fmt.Errorf("mount overlay at %s: create: %w", merged, err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("mount overlay at %s: fsmount: %w", merged, err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, merged, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("mount overlay at %s: move mount: %w", merged, err)
	}
	return nil
}

// Release unmounts and deletes container id's root filesystem. Releasing an
// unknown container is not an error.
func (m *Manager) Release(id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("container id %q: %w", id, errkind.Invalid)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cdir := m.containerDir(id)
	if _, err := os.Lstat(cdir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := destroy(cdir); err != nil {
		return fmt.Errorf("release %s: %w", id, err)
	}
	m.log.Info("root filesystem released", zap.String(obs.KeyContainer, id))
	return nil
}

// Get returns the record of container id.
func (m *Manager) Get(id string) (Rootfs, error) {
	if !validID.MatchString(id) {
		return Rootfs{}, fmt.Errorf("container id %q: %w", id, errkind.Invalid)
	}
	r, err := readRecord(m.containerDir(id))
	if errors.Is(err, fs.ErrNotExist) {
		return Rootfs{}, fmt.Errorf("container %s: %w", id, errkind.NotFound)
	}
	r.Path = filepath.Join(m.containerDir(id), "merged")
	return r, err
}

// InUseLayers lists the layers of every prepared root filesystem.
func (m *Manager) InUseLayers() ([]digest.Digest, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ents, err := os.ReadDir(m.dir)
	if err != nil {
		return nil, err
	}
	var out []digest.Digest
	for _, e := range ents {
		r, err := readRecord(filepath.Join(m.dir, e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r.Layers...)
	}
	return out, nil
}

func readRecord(cdir string) (Rootfs, error) {
	b, err := os.ReadFile(filepath.Join(cdir, recordName))
	if err != nil {
		return Rootfs{}, err
	}
	var r Rootfs
	if err := json.Unmarshal(b, &r); err != nil {
		return Rootfs{}, fmt.Errorf("read %s: %w", filepath.Join(cdir, recordName), err)
	}
	return r, nil
}

// mounted reports whether something is mounted at p: p's device differs
// from its parent's.
func mounted(p string) bool {
	var s, ps unix.Stat_t
	if unix.Lstat(p, &s) != nil || unix.Lstat(filepath.Dir(p), &ps) != nil {
		return false
	}
	return s.Dev != ps.Dev
}

// destroy unmounts cdir/merged if mounted, then removes cdir: first the
// record (so a crash halfway leaves debris New recognizes), then the rest.
func destroy(cdir string) error {
	merged := filepath.Join(cdir, "merged")
	for mounted(merged) {
		if err := unix.Unmount(merged, 0); err != nil {
			if errors.Is(err, unix.EBUSY) {
				if err := unix.Unmount(merged, unix.MNT_DETACH); err != nil {
					return fmt.Errorf("unmount %s: %w", merged, err)
				}
				continue
			}
			return fmt.Errorf("unmount %s: %w", merged, err)
		}
	}
	if err := os.Remove(filepath.Join(cdir, recordName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", cdir, err)
	}
	if err := os.RemoveAll(cdir); err != nil {
		return fmt.Errorf("remove %s: %w", cdir, err)
	}
	return nil
}
