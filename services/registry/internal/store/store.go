// Package store is zlayer-registry's content-addressed store on disk: blobs
// named by digest (each stored once however many images share it), layers
// unpacked once each into a directory named by their diff id, and the
// records of image names. Everything becomes visible by an atomic rename
// only once complete and verified, so a crash (or SIGKILL) at any point
// leaves nothing that looks complete; leftovers in tmp/ are removed at Open.
//
// The store never talks to a registry (package pull does) and never mounts
// anything (package rootfs does).
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/containers/image/v5/pkg/compression"
	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"zlayer.dev/libs/errkind"
	"zlayer.dev/libs/obs"
	"zlayer.dev/services/registry/internal/unpack"
)

// Layer is one layer of an image.
type Layer struct {
	Digest    digest.Digest `json:"digest"`  // compressed blob, as in the manifest
	DiffID    digest.Digest `json:"diff_id"` // uncompressed tar; names the unpacked directory
	Size      int64         `json:"size"`
	MediaType string        `json:"media_type"`
}

// Config is the part of an image configuration a runtime needs.
type Config struct {
	Entrypoint   []string          `json:"entrypoint,omitempty"`
	Cmd          []string          `json:"cmd,omitempty"`
	Env          []string          `json:"env,omitempty"`
	WorkingDir   string            `json:"working_dir,omitempty"`
	User         string            `json:"user,omitempty"`
	ExposedPorts []string          `json:"exposed_ports,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	StopSignal   string            `json:"stop_signal,omitempty"`
}

// Image is the record of one image name.
type Image struct {
	Name           string        `json:"name"`            // normalized reference
	Digest         digest.Digest `json:"digest"`          // what the name resolved to (manifest or index)
	ManifestDigest digest.Digest `json:"manifest_digest"` // the platform manifest
	ConfigDigest   digest.Digest `json:"config_digest"`
	Platform       string        `json:"platform"`
	Created        time.Time     `json:"created"`
	PulledAt       time.Time     `json:"pulled_at"`
	Layers         []Layer       `json:"layers"`
	Config         Config        `json:"config"`
}

// Size is the sum of the compressed layer sizes.
func (i Image) Size() int64 {
	var n int64
	for _, l := range i.Layers {
		n += l.Size
	}
	return n
}

// Blobs lists every blob the image references.
func (i Image) Blobs() []digest.Digest {
	ds := []digest.Digest{i.Digest, i.ManifestDigest, i.ConfigDigest}
	for _, l := range i.Layers {
		ds = append(ds, l.Digest)
	}
	return ds
}

type index struct {
	Version int              `json:"version"`
	Images  map[string]Image `json:"images"`
}

// Store is safe for concurrent use.
type Store struct {
	root string
	log  *zap.Logger
	// gc is held shared by every operation that writes entries not yet
	// referenced by a record (a pull, a rootfs being prepared) and
	// exclusively by Prune, which could otherwise delete them.
	gc sync.RWMutex

	mu  sync.Mutex // guards idx and images.json
	idx index
}

// Open opens (creating if needed) the store at root and removes whatever an
// interrupted operation left in root/tmp.
func Open(root string, log *zap.Logger) (*Store, error) {
	s := &Store{root: root, log: log.Named("store")}
	if err := os.RemoveAll(s.tmpDir()); err != nil {
		return nil, fmt.Errorf("clean %s: %w", s.tmpDir(), err)
	}
	for _, d := range []string{s.tmpDir(), filepath.Join(root, "blobs", "sha256"), filepath.Join(root, "layers", "sha256")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, classify(err))
		}
	}
	b, err := os.ReadFile(s.indexPath())
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.idx = index{Version: 1, Images: map[string]Image{}}
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", s.indexPath(), err)
	default:
		if err := json.Unmarshal(b, &s.idx); err != nil {
			return nil, fmt.Errorf("parse %s: %w", s.indexPath(), err)
		}
		if s.idx.Images == nil {
			s.idx.Images = map[string]Image{}
		}
	}
	return s, nil
}

// Root is the directory the store lives in.
func (s *Store) Root() string { return s.root }

func (s *Store) tmpDir() string    { return filepath.Join(s.root, "tmp") }
func (s *Store) indexPath() string { return filepath.Join(s.root, "images.json") }

// BlobPath is where blob d is (or would be) stored.
func (s *Store) BlobPath(d digest.Digest) string {
	return filepath.Join(s.root, "blobs", d.Algorithm().String(), d.Encoded())
}

// LayerPath is where the layer with diff id d is (or would be) unpacked.
func (s *Store) LayerPath(d digest.Digest) string {
	return filepath.Join(s.root, "layers", d.Algorithm().String(), d.Encoded())
}

// HasBlob reports whether blob d is stored.
func (s *Store) HasBlob(d digest.Digest) bool {
	_, err := os.Lstat(s.BlobPath(d))
	return err == nil
}

// HasLayer reports whether the layer with diff id d is unpacked.
func (s *Store) HasLayer(d digest.Digest) bool {
	_, err := os.Lstat(s.LayerPath(d))
	return err == nil
}

// Hold keeps Prune away until the returned function is called. Hold it
// from the first write of an operation until its record is saved.
func (s *Store) Hold() (release func()) {
	s.gc.RLock()
	return s.gc.RUnlock
}

// ReadBlob returns the content of a stored blob, verified.
func (s *Store) ReadBlob(d digest.Digest) ([]byte, error) {
	b, err := os.ReadFile(s.BlobPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s: %w", d, errkind.NotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", d, err)
	}
	if got := d.Algorithm().FromBytes(b); got != d {
		return nil, fmt.Errorf("blob %s: stored content has digest %s: %w", d, got, errkind.Invalid)
	}
	return b, nil
}

// PutBlob stores b as blob d after checking its digest. Storing a blob
// that exists is a no-op.
func (s *Store) PutBlob(d digest.Digest, b []byte) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("blob digest %q: %w: %w", d, errkind.Invalid, err)
	}
	if got := d.Algorithm().FromBytes(b); got != d {
		return fmt.Errorf("blob %s: content has digest %s: %w", d, got, ErrDigestMismatch)
	}
	if s.HasBlob(d) {
		return nil
	}
	f, err := os.CreateTemp(s.tmpDir(), "blob-")
	if err != nil {
		return fmt.Errorf("store blob %s: %w", d, classify(err))
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.BlobPath(d))
	}
	if err != nil {
		return fmt.Errorf("store blob %s: %w", d, classify(err))
	}
	return nil
}

// ErrDigestMismatch is wrapped by errors about content whose digest is not
// the one announced. It is Unavailable: the source served bad bytes, and a
// retry (or another mirror) may serve good ones.
var ErrDigestMismatch error = &classed{msg: "digest mismatch (corrupt or tampered content)", class: errkind.Unavailable}

// classed is a sentinel with its own text that also is its class.
type classed struct {
	msg   string
	class error
}

func (c *classed) Error() string { return c.msg }
func (c *classed) Unwrap() error { return c.class }

// LayerResult says what PutLayer did.
type LayerResult struct {
	DiffID  digest.Digest
	Fetched bool // false: blob and layer were both already stored
}

// PutLayer makes layer blob d and its unpacked directory present. If the
// blob is stored but not unpacked (an earlier crash, or prune), it is
// unpacked from disk; otherwise open is called for the compressed stream,
// which is written to the blob, decompressed and unpacked in one pass.
// Both digests are checked before anything is renamed into place: the blob
// against d, the uncompressed stream against wantDiffID. progress is called
// with the running count of compressed bytes read.
func (s *Store) PutLayer(ctx context.Context, d digest.Digest, wantDiffID digest.Digest, open func(context.Context) (io.ReadCloser, error), progress func(int64)) (LayerResult, error) {
	if err := d.Validate(); err != nil {
		return LayerResult{}, fmt.Errorf("layer digest %q: %w: %w", d, errkind.Invalid, err)
	}
	if wantDiffID != "" {
		if err := wantDiffID.Validate(); err != nil {
			return LayerResult{}, fmt.Errorf("diff id %q: %w: %w", wantDiffID, errkind.Invalid, err)
		}
		if s.HasLayer(wantDiffID) && s.HasBlob(d) {
			return LayerResult{DiffID: wantDiffID}, nil
		}
	}
	haveBlob := s.HasBlob(d)
	var src io.ReadCloser
	var err error
	if haveBlob {
		src, err = os.Open(s.BlobPath(d))
	} else {
		src, err = open(ctx)
	}
	if err != nil {
		return LayerResult{}, fmt.Errorf("layer %s: %w", d, err)
	}
	defer src.Close()

	work, err := os.MkdirTemp(s.tmpDir(), "layer-")
	if err != nil {
		return LayerResult{}, fmt.Errorf("layer %s: %w", d, classify(err))
	}
	defer os.RemoveAll(work)
	layerDir := filepath.Join(work, "fs")
	if err := os.Mkdir(layerDir, 0o755); err != nil {
		return LayerResult{}, fmt.Errorf("layer %s: %w", d, classify(err))
	}
	if err := os.Chmod(layerDir, 0o755); err != nil { // whatever the umask
		return LayerResult{}, fmt.Errorf("layer %s: %w", d, err)
	}

	blobHash := d.Algorithm().Digester()
	var r io.Reader = &countingReader{r: src, fn: progress}
	var blobFile *os.File
	if haveBlob {
		r = io.TeeReader(r, blobHash.Hash())
	} else {
		blobFile, err = os.Create(filepath.Join(work, "blob"))
		if err != nil {
			return LayerResult{}, fmt.Errorf("layer %s: %w", d, classify(err))
		}
		defer blobFile.Close()
		r = io.TeeReader(r, io.MultiWriter(blobHash.Hash(), blobFile))
	}
	dec, _, err := compression.AutoDecompress(r)
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return LayerResult{}, fmt.Errorf("layer %s: %w", d, classify(err))
		}
		return LayerResult{}, fmt.Errorf("layer %s: %w: %w", d, errkind.Invalid, err)
	}
	plain := &onceCloser{ReadCloser: dec}
	defer plain.Close()
	diffHash := digest.Canonical.Digester()
	if _, err := unpack.Apply(ctx, layerDir, io.TeeReader(plain, diffHash.Hash())); err != nil {
		if ctx.Err() == nil && !errors.Is(err, syscall.ENOSPC) {
			// A truncated or corrupt blob shows up first as a bad tar or
			// bad compressed stream; report the digest if that is why.
			// The decompressor reads ahead in goroutines: stop it before
			// reading the rest ourselves.
			plain.Close()
			if _, cerr := io.Copy(io.Discard, r); cerr == nil && blobHash.Digest() != d {
				return LayerResult{}, fmt.Errorf("layer %s: content has digest %s: %w", d, blobHash.Digest(), ErrDigestMismatch)
			}
		}
		return LayerResult{}, fmt.Errorf("unpack layer %s: %w", d, classify(err))
	}
	// Decompressors may stop at the end of their stream: read what is left
	// so the blob digest covers every byte.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return LayerResult{}, fmt.Errorf("layer %s: %w", d, classify(err))
	}
	if got := blobHash.Digest(); got != d {
		return LayerResult{}, fmt.Errorf("layer %s: content has digest %s: %w", d, got, ErrDigestMismatch)
	}
	diffID := diffHash.Digest()
	if wantDiffID != "" && diffID != wantDiffID {
		return LayerResult{}, fmt.Errorf("layer %s: uncompressed digest %s, the image config says %s: %w", d, diffID, wantDiffID, ErrDigestMismatch)
	}

	// Everything is verified: make it durable, then visible.
	if err := syncfs(work); err != nil {
		return LayerResult{}, fmt.Errorf("layer %s: sync: %w", d, classify(err))
	}
	if blobFile != nil {
		if err := blobFile.Close(); err != nil {
			return LayerResult{}, fmt.Errorf("layer %s: %w", d, classify(err))
		}
		if err := renameNew(filepath.Join(work, "blob"), s.BlobPath(d)); err != nil {
			return LayerResult{}, fmt.Errorf("store blob %s: %w", d, classify(err))
		}
	}
	if err := renameNew(layerDir, s.LayerPath(diffID)); err != nil {
		return LayerResult{}, fmt.Errorf("store layer %s: %w", diffID, classify(err))
	}
	if err := syncDir(filepath.Dir(s.LayerPath(diffID))); err != nil {
		return LayerResult{}, err
	}
	if err := syncDir(filepath.Dir(s.BlobPath(d))); err != nil {
		return LayerResult{}, err
	}
	return LayerResult{DiffID: diffID, Fetched: !haveBlob}, nil
}

// renameNew moves src to dst unless dst already exists (a concurrent
// writer of the same content won), in which case src is left for cleanup.
func renameNew(src, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
		return nil
	}
	return err
}

// Put records img under img.Name, replacing an earlier record. Every blob
// and layer it names must be stored.
func (s *Store) Put(img Image) error {
	for _, d := range img.Blobs() {
		if !s.HasBlob(d) {
			return fmt.Errorf("record %s: blob %s missing: %w", img.Name, d, errkind.Precondition)
		}
	}
	for _, l := range img.Layers {
		if !s.HasLayer(l.DiffID) {
			return fmt.Errorf("record %s: layer %s missing: %w", img.Name, l.DiffID, errkind.Precondition)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	next := cloneIndex(s.idx)
	next.Images[img.Name] = img
	if err := s.writeIndex(next); err != nil {
		return fmt.Errorf("record %s: %w", img.Name, err)
	}
	s.idx = next
	return nil
}

// Get returns the record of name (a normalized reference).
func (s *Store) Get(name string) (Image, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	img, ok := s.idx.Images[name]
	if !ok {
		return Image{}, fmt.Errorf("image %s: %w", name, errkind.NotFound)
	}
	return img, nil
}

// List returns every record, sorted by name.
func (s *Store) List() []Image {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Image, 0, len(s.idx.Images))
	for _, img := range s.idx.Images {
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Remove deletes the record of name. Blobs and layers stay until Prune.
func (s *Store) Remove(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.idx.Images[name]; !ok {
		return fmt.Errorf("image %s: %w", name, errkind.NotFound)
	}
	next := cloneIndex(s.idx)
	delete(next.Images, name)
	if err := s.writeIndex(next); err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	s.idx = next
	return nil
}

func cloneIndex(i index) index {
	n := index{Version: i.Version, Images: make(map[string]Image, len(i.Images)+1)}
	for k, v := range i.Images {
		n.Images[k] = v
	}
	return n
}

func (s *Store) writeIndex(i index) error {
	b, err := json.MarshalIndent(i, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(s.indexPath(), b, 0o600)
}

// PruneResult says what Prune deleted.
type PruneResult struct {
	Blobs      []digest.Digest
	Layers     []digest.Digest
	FreedBytes int64
}

// Prune deletes every blob and layer that no image record references and
// that is not in keepLayers (layers under prepared root filesystems).
func (s *Store) Prune(keepLayers func() ([]digest.Digest, error)) (PruneResult, error) {
	s.gc.Lock()
	defer s.gc.Unlock()
	var res PruneResult
	keep, err := keepLayers()
	if err != nil {
		return res, fmt.Errorf("prune: %w", err)
	}
	blobs := map[digest.Digest]bool{}
	layers := map[digest.Digest]bool{}
	for _, d := range keep {
		layers[d] = true
	}
	for _, img := range s.List() {
		for _, d := range img.Blobs() {
			blobs[d] = true
		}
		for _, l := range img.Layers {
			layers[l.DiffID] = true
		}
	}
	for _, kind := range []string{"blobs", "layers"} {
		dir := filepath.Join(s.root, kind, "sha256")
		ents, err := os.ReadDir(dir)
		if err != nil {
			return res, fmt.Errorf("prune: %w", err)
		}
		for _, e := range ents {
			d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
			if d.Validate() != nil {
				continue // not ours
			}
			p := filepath.Join(dir, e.Name())
			if kind == "blobs" && !blobs[d] {
				n, err := removeCounting(p, s.tmpDir())
				if err != nil {
					return res, fmt.Errorf("prune blob %s: %w", d, err)
				}
				res.Blobs = append(res.Blobs, d)
				res.FreedBytes += n
			}
			if kind == "layers" && !layers[d] {
				n, err := removeCounting(p, s.tmpDir())
				if err != nil {
					return res, fmt.Errorf("prune layer %s: %w", d, err)
				}
				res.Layers = append(res.Layers, d)
				res.FreedBytes += n
			}
		}
	}
	slices.Sort(res.Blobs)
	slices.Sort(res.Layers)
	if len(res.Blobs)+len(res.Layers) > 0 {
		s.log.Info("pruned", zap.Int("blobs", len(res.Blobs)), zap.Int("layers", len(res.Layers)), zap.Int64("freed_bytes", res.FreedBytes))
	}
	return res, nil
}

// removeCounting moves p into tmp (so an interrupted removal never leaves a
// half-deleted entry under its digest), then deletes it, returning the
// apparent size of the regular files it held, each inode counted once.
func removeCounting(p, tmp string) (int64, error) {
	var n int64
	seen := map[uint64]bool{}
	err := filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		n += fi.Size()
		return nil
	})
	if err != nil {
		return 0, err
	}
	dead, err := os.MkdirTemp(tmp, "dead-")
	if err != nil {
		return 0, err
	}
	if err := os.Rename(p, filepath.Join(dead, "x")); err != nil {
		return 0, err
	}
	return n, os.RemoveAll(dead)
}

// DiskUsage is the apparent size of every stored blob (for metrics and ls).
func (s *Store) DiskUsage() int64 {
	var n int64
	ents, _ := os.ReadDir(filepath.Join(s.root, "blobs", "sha256"))
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// LogFields are the fields identifying an image in logs.
func LogFields(img Image) []zap.Field {
	return []zap.Field{zap.String(obs.KeyImage, img.Name), zap.String(obs.KeyDigest, img.Digest.String())}
}

// onceCloser lets the error path close a decompressor early while the
// deferred Close stays harmless.
type onceCloser struct {
	io.ReadCloser
	once sync.Once
	err  error
}

func (c *onceCloser) Close() error {
	c.once.Do(func() { c.err = c.ReadCloser.Close() })
	return c.err
}

type countingReader struct {
	r  io.Reader
	n  int64
	fn func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.fn != nil && n > 0 {
		c.fn(c.n)
	}
	return n, err
}
