package pull_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"zlayer.dev/libs/errkind"
	"zlayer.dev/libs/testkit/fixtures"
	"zlayer.dev/libs/testkit/registry"
	"zlayer.dev/services/registry/internal/pull"
	"zlayer.dev/services/registry/internal/store"
)

func TestParseReference(t *testing.T) {
	tests := []struct{ in, want, wantErr string }{
		{in: "nginx", want: "docker.io/library/nginx:latest"},
		{in: "nginx:1.27", want: "docker.io/library/nginx:1.27"},
		{in: "team/app", want: "docker.io/team/app:latest"},
		{in: "127.0.0.1:5000/app", want: "127.0.0.1:5000/app:latest"},
		{in: "ghcr.io/o/app:v1@sha256:" + strings.Repeat("a", 64), want: "ghcr.io/o/app@sha256:" + strings.Repeat("a", 64)},
		{in: "", wantErr: "empty"},
		{in: "UPPER/case", wantErr: "invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := pull.Name(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, errkind.Invalid) {
					t.Fatalf("Name(%q) = %q, %v; want error %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Name(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func readLayerFile(t *testing.T, st *store.Store, l store.Layer, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(st.LayerPath(l.DiffID), rel))
	if err != nil {
		t.Fatalf("layer %s: %v", l.DiffID, err)
	}
	return string(b)
}

func TestPullByTagUnpacksEveryLayer(t *testing.T) {
	e := newEnv(t, "", pull.Options{})
	var reports atomic.Int32
	img, cached, err := e.p.Pull(ctxT(t), imgs[fixtures.Multilayer].Ref, pull.IfNotPresent, func(ls []pull.LayerProgress) {
		reports.Add(1)
		if len(ls) != 3 {
			t.Errorf("progress has %d layers, want 3", len(ls))
		}
	})
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	if cached {
		t.Error("first pull reported cached")
	}
	if reports.Load() == 0 {
		t.Error("no progress reported")
	}
	if img.Name != imgs[fixtures.Multilayer].Ref || img.Digest.String() != imgs[fixtures.Multilayer].Digest {
		t.Errorf("record %s@%s, want %s@%s", img.Name, img.Digest, imgs[fixtures.Multilayer].Ref, imgs[fixtures.Multilayer].Digest)
	}
	if len(img.Layers) != 3 || img.Platform != "linux/amd64" || img.Config.Cmd[0] != "sh" || img.Size() == 0 {
		t.Errorf("record: %+v", img)
	}
	if got, _ := e.st.Get(img.Name); got.Digest != img.Digest {
		t.Errorf("store has %s, want %s", got.Digest, img.Digest)
	}
	// Layer 2: a hardlink; layer 3: a whiteout and an opaque directory, in
	// overlayfs form.
	l2, l3 := e.st.LayerPath(img.Layers[1].DiffID), e.st.LayerPath(img.Layers[2].DiffID)
	var a, link, wh unix.Stat_t
	if err := unix.Lstat(filepath.Join(l2, "data/a.txt"), &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(filepath.Join(l2, "data/a-link"), &link); err != nil {
		t.Fatal(err)
	}
	if a.Ino != link.Ino {
		t.Error("data/a-link is not a hardlink of data/a.txt")
	}
	if err := unix.Lstat(filepath.Join(l3, "data/b.txt"), &wh); err != nil || wh.Mode&unix.S_IFMT != unix.S_IFCHR || wh.Rdev != 0 {
		t.Errorf("data/b.txt whiteout: mode %o rdev %d err %v", wh.Mode, wh.Rdev, err)
	}
	buf := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(l3, "opt/old"), "trusted.overlay.opaque", buf); err != nil || string(buf[:n]) != "y" {
		t.Errorf("opt/old not opaque: %v", err)
	}
	if got := readLayerFile(t, e.st, img.Layers[2], "data/c.txt"); got != fixtures.MultilayerMessage {
		t.Errorf("data/c.txt = %q", got)
	}

	// Pulled again with the default policy: nothing fetched.
	again, cached, err := e.p.Pull(ctxT(t), imgs[fixtures.Multilayer].Ref, pull.IfNotPresent, nil)
	if err != nil || !cached || again.Digest != img.Digest {
		t.Fatalf("second pull: cached=%v digest=%s err=%v", cached, again.Digest, err)
	}
}

func TestPullByDigest(t *testing.T) {
	e := newEnv(t, "", pull.Options{})
	ref := imgs[fixtures.Multilayer].DigestRef()
	img, _, err := e.p.Pull(ctxT(t), ref, pull.IfNotPresent, nil)
	if err != nil {
		t.Fatalf("Pull(%s): %v", ref, err)
	}
	if img.Name != ref || img.Digest.String() != imgs[fixtures.Multilayer].Digest {
		t.Errorf("got %s@%s, want %s", img.Name, img.Digest, ref)
	}
	// A digest that is not in the registry.
	bad := strings.TrimSuffix(ref, imgs[fixtures.Multilayer].Digest) + digest.FromString("nothing").String()
	_, _, err = e.p.Pull(ctxT(t), bad, pull.IfNotPresent, nil)
	if !errors.Is(err, errkind.NotFound) {
		t.Errorf("Pull(unknown digest) = %v, want NotFound", err)
	}
}

// TestPullFormatsShareLayers pulls the same content as an OCI manifest with
// gzip, zstd and uncompressed layers and as Docker schema 2: every variant
// unpacks to the same diff ids, so each layer directory exists once.
func TestPullFormatsShareLayers(t *testing.T) {
	e := newEnv(t, "", pull.Options{})
	var first store.Image
	for i, name := range []string{fixtures.Multilayer, fixtures.MultilayerV2S2, fixtures.MultilayerZstd, fixtures.MultilayerPlain} {
		img, _, err := e.p.Pull(ctxT(t), imgs[name].Ref, pull.IfNotPresent, nil)
		if err != nil {
			t.Fatalf("Pull(%s): %v", name, err)
		}
		if i == 0 {
			first = img
			continue
		}
		for j, l := range img.Layers {
			if l.DiffID != first.Layers[j].DiffID {
				t.Errorf("%s layer %d: diff id %s, want %s", name, j, l.DiffID, first.Layers[j].DiffID)
			}
		}
		if got := readLayerFile(t, e.st, img.Layers[2], "data/c.txt"); got != fixtures.MultilayerMessage {
			t.Errorf("%s: data/c.txt = %q", name, got)
		}
	}
	if n := countDir(t, filepath.Join(e.st.Root(), "layers/sha256")); n != 3 {
		t.Errorf("%d layer directories, want 3 (one per distinct layer)", n)
	}
	// gzip (shared by OCI and schema 2), zstd and plain: 3 blobs per layer.
	// Plus configs (OCI and Docker schema 2 have the same config bytes
	// here) and 4 manifests.
	blobs := map[digest.Digest]bool{}
	for _, name := range []string{fixtures.Multilayer, fixtures.MultilayerV2S2, fixtures.MultilayerZstd, fixtures.MultilayerPlain} {
		img, err := e.st.Get(imgs[name].Ref)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range img.Blobs() {
			blobs[d] = true
		}
	}
	if n := countDir(t, filepath.Join(e.st.Root(), "blobs/sha256")); n != len(blobs) {
		t.Errorf("%d blob files for %d distinct blobs", n, len(blobs))
	}
}

func countDir(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestPullIndexPicksPlatform(t *testing.T) {
	for _, arch := range []string{runtime.GOARCH, "arm64"} {
		t.Run(arch, func(t *testing.T) {
			e := newEnv(t, "", pull.Options{Platform: "linux/" + arch})
			img, _, err := e.p.Pull(ctxT(t), imgs[fixtures.Multiarch].Ref, pull.IfNotPresent, nil)
			if err != nil {
				t.Fatalf("Pull: %v", err)
			}
			if img.Digest.String() != imgs[fixtures.Multiarch].Digest || img.ManifestDigest == img.Digest {
				t.Errorf("digest %s manifest %s; want the index digest %s and a different manifest", img.Digest, img.ManifestDigest, imgs[fixtures.Multiarch].Digest)
			}
			if img.Platform != "linux/"+arch {
				t.Errorf("platform %s, want linux/%s", img.Platform, arch)
			}
			if got := readLayerFile(t, e.st, img.Layers[1], "etc/platform"); got != "linux/"+arch+"\n" {
				t.Errorf("/etc/platform = %q", got)
			}
		})
	}
	t.Run("no match", func(t *testing.T) {
		e := newEnv(t, "", pull.Options{Platform: "linux/s390x"})
		_, _, err := e.p.Pull(ctxT(t), imgs[fixtures.Multiarch].Ref, pull.IfNotPresent, nil)
		if !errors.Is(err, errkind.NotFound) {
			t.Errorf("Pull = %v, want NotFound", err)
		}
	})
}

func TestPullMissingImageNamesIt(t *testing.T) {
	e := newEnv(t, "", pull.Options{})
	for _, ref := range []string{reg.Addr + "/no-such-repo:latest", reg.Addr + "/multilayer:no-such-tag"} {
		_, _, err := e.p.Pull(ctxT(t), ref, pull.IfNotPresent, nil)
		if !errors.Is(err, errkind.NotFound) || !strings.Contains(err.Error(), ref) {
			t.Errorf("Pull(%s) = %v; want NotFound naming the reference", ref, err)
		}
		t.Logf("the error a user sees: %v", err)
	}
	if len(e.st.List()) != 0 {
		t.Error("a failed pull recorded an image")
	}
}

func TestPullPolicy(t *testing.T) {
	own := registry.StartT(t, registry.Options{})
	img, err := fixtures.Build(ctxT(t), t.TempDir(), own.Addr, fixtures.Spec{Repo: "policy", Tag: "v1",
		Layers: [][]fixtures.Entry{{fixtures.File("hello", 0o644, "policy\n")}}})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, "", pull.Options{}, own.Addr)

	_, _, err = e.p.Pull(ctxT(t), img.Ref, pull.Never, nil)
	if !errors.Is(err, errkind.NotFound) || !strings.Contains(err.Error(), "never") {
		t.Errorf("Never on an absent image = %v, want NotFound mentioning the policy", err)
	}
	if _, cached, err := e.p.Pull(ctxT(t), img.Ref, pull.Always, nil); err != nil || cached {
		t.Fatalf("Always, absent: cached=%v err=%v", cached, err)
	}
	// Always asks the registry again but fetches no stored blob.
	if _, cached, err := e.p.Pull(ctxT(t), img.Ref, pull.Always, nil); err != nil || !cached {
		t.Errorf("Always, present: cached=%v err=%v; want a check with nothing fetched", cached, err)
	}
	if err := own.Stop(); err != nil {
		t.Fatal(err)
	}
	// Registry gone: the stored image still serves IfNotPresent and Never,
	// while Always fails as Unavailable.
	for _, pol := range []pull.Policy{pull.IfNotPresent, pull.Never} {
		if _, cached, err := e.p.Pull(ctxT(t), img.Ref, pol, nil); err != nil || !cached {
			t.Errorf("policy %d with the registry down: cached=%v err=%v", pol, cached, err)
		}
	}
	if _, _, err := e.p.Pull(ctxT(t), img.Ref, pull.Always, nil); !errors.Is(err, errkind.Unavailable) {
		t.Errorf("Always with the registry down = %v, want Unavailable", err)
	}
}

func TestPullWithAuth(t *testing.T) {
	own := registry.StartT(t, registry.Options{Users: map[string]string{"alice": "s3cret"}})
	img, err := fixtures.Build(ctxT(t), t.TempDir(), own.Addr, fixtures.Spec{Repo: "private", Tag: "v1", Creds: "alice:s3cret",
		Layers: [][]fixtures.Entry{{fixtures.File("secret", 0o600, "auth\n")}}})
	if err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	e := newEnv(t, data, pull.Options{}, own.Addr)

	_, _, err = e.p.Pull(ctxT(t), img.Ref, pull.IfNotPresent, nil)
	if !errors.Is(err, errkind.Unauthenticated) {
		t.Errorf("anonymous pull = %v, want Unauthenticated", err)
	}
	if _, err := e.p.Login(ctxT(t), own.Addr, "alice", "wrong"); !errors.Is(err, errkind.Unauthenticated) {
		t.Errorf("login with a wrong password = %v, want Unauthenticated", err)
	}
	if _, err := os.Stat(filepath.Join(data, "auth.json")); err == nil {
		t.Error("wrong credentials were stored")
	}
	if _, err := e.p.Login(ctxT(t), own.Addr, "alice", "s3cret"); err != nil {
		t.Fatalf("login: %v", err)
	}
	if _, _, err := e.p.Pull(ctxT(t), img.Ref, pull.IfNotPresent, nil); err != nil {
		t.Fatalf("pull after login: %v", err)
	}

	// A docker config.json with wrong credentials: a clear error.
	bad := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(bad, []byte(fmt.Sprintf(`{"auths":{%q:{"auth":"YWxpY2U6bm9wZQ=="}}}`, own.Addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	e2 := newEnv(t, "", pull.Options{AuthFile: bad}, own.Addr)
	_, _, err = e2.p.Pull(ctxT(t), img.Ref, pull.IfNotPresent, nil)
	if !errors.Is(err, errkind.Unauthenticated) || !strings.Contains(err.Error(), img.Ref) {
		t.Errorf("pull with a wrong config.json = %v, want Unauthenticated naming the image", err)
	}
	t.Logf("the error a user sees: %v", err)
}

func TestPullOverTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key, err := registry.SelfSignedCert(dir)
	if err != nil {
		t.Fatal(err)
	}
	own := registry.StartT(t, registry.Options{TLSCert: cert, TLSKey: key})
	plain := registry.StartT(t, registry.Options{})
	img, err := fixtures.Build(ctxT(t), t.TempDir(), plain.Addr, fixtures.Spec{Repo: "tls", Tag: "v1",
		Layers: [][]fixtures.Entry{{fixtures.File("tls", 0o644, "tls\n")}}})
	if err != nil {
		t.Fatal(err)
	}
	// Copy it over TLS with skopeo, trusting the test certificate.
	certs := filepath.Join(dir, "certs.d")
	if err := os.MkdirAll(filepath.Join(certs, own.Addr), 0o755); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(cert); err != nil || os.WriteFile(filepath.Join(certs, own.Addr, "ca.crt"), b, 0o644) != nil {
		t.Fatal(err)
	}
	target := own.Addr + "/tls:v1"
	if out, err := exec.Command("skopeo", "copy", "--insecure-policy", "--src-tls-verify=false", "--dest-cert-dir", filepath.Join(certs, own.Addr),
		"docker://"+img.Ref, "docker://"+target).CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v: %s", err, out)
	}
	untrusted := newEnv(t, "", pull.Options{}, "127.0.0.1:1")
	if _, _, err := untrusted.p.Pull(ctxT(t), target, pull.IfNotPresent, nil); !errors.Is(err, errkind.Unavailable) {
		t.Errorf("pull with an untrusted certificate = %v, want Unavailable", err)
	}
	trusted := newEnv(t, "", pull.Options{CertsDir: certs}, "127.0.0.1:1")
	if _, _, err := trusted.p.Pull(ctxT(t), target, pull.IfNotPresent, nil); err != nil {
		t.Errorf("pull over TLS: %v", err)
	}
}

// TestPullCorruptBlob damages a layer in the registry's storage: the
// download must fail naming the blob, and nothing may be stored for it.
func TestPullCorruptBlob(t *testing.T) {
	own := registry.StartT(t, registry.Options{})
	img, err := fixtures.Build(ctxT(t), t.TempDir(), own.Addr, fixtures.Spec{Repo: "corrupt", Tag: "v1",
		Layers: [][]fixtures.Entry{{fixtures.File("payload", 0o644, strings.Repeat("zlayer ", 50000))}}})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, "", pull.Options{}, own.Addr)
	probe, _, err := e.p.Pull(ctxT(t), img.Ref, pull.IfNotPresent, nil)
	if err != nil {
		t.Fatal(err)
	}
	layer := probe.Layers[0].Digest
	data := filepath.Join(own.Dir, "storage/docker/registry/v2/blobs/sha256", layer.Encoded()[:2], layer.Encoded(), "data")
	b, err := os.ReadFile(data)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff // same size, one byte off: the stream may still decompress
	if err := os.WriteFile(data, b, 0o644); err != nil {
		t.Fatal(err)
	}

	e2 := newEnv(t, "", pull.Options{}, own.Addr)
	_, _, err = e2.p.Pull(ctxT(t), img.Ref, pull.IfNotPresent, nil)
	if !errors.Is(err, store.ErrDigestMismatch) || !strings.Contains(err.Error(), layer.String()) {
		t.Fatalf("pull of a corrupt blob = %v; want a digest mismatch naming %s", err, layer)
	}
	t.Logf("the error a user sees: %v", err)
	if e2.st.HasBlob(layer) || e2.st.HasLayer(probe.Layers[0].DiffID) || len(e2.st.List()) != 0 {
		t.Error("the corrupt layer (or its image) was stored")
	}
	if n := countDir(t, filepath.Join(e2.st.Root(), "tmp")); n != 0 {
		t.Errorf("%d leftovers in tmp", n)
	}
}

// countingProxy forwards to a registry and counts blob downloads.
type countingProxy struct {
	*httptest.Server
	mu    sync.Mutex
	blobs map[string]int
}

func newCountingProxy(t *testing.T, target string, wrap func(path string, body io.ReadCloser) io.ReadCloser) *countingProxy {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{blobs: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ErrorLog = log.New(io.Discard, "", 0) // the kill test breaks connections on purpose
	rp.ModifyResponse = func(r *http.Response) error {
		if r.Request.Method == http.MethodGet && strings.Contains(r.Request.URL.Path, "/blobs/") {
			p.mu.Lock()
			p.blobs[r.Request.URL.Path]++
			p.mu.Unlock()
			if wrap != nil {
				r.Body = wrap(r.Request.URL.Path, r.Body)
			}
		}
		return nil
	}
	p.Server = httptest.NewServer(rp)
	t.Cleanup(p.Close)
	return p
}

func (p *countingProxy) addr() string { return strings.TrimPrefix(p.URL, "http://") }

func TestConcurrentPullsShareOneDownload(t *testing.T) {
	proxy := newCountingProxy(t, reg.URL(), nil)
	e := newEnv(t, "", pull.Options{}, proxy.addr())
	ref := proxy.addr() + "/multilayer:latest"
	const n = 6
	var wg sync.WaitGroup
	digests := make([]digest.Digest, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			img, _, err := e.p.Pull(ctxT(t), ref, pull.IfNotPresent, nil)
			digests[i], errs[i] = img.Digest, err
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || digests[i].String() != imgs[fixtures.Multilayer].Digest {
			t.Errorf("pull %d: %s, %v", i, digests[i], errs[i])
		}
	}
	proxy.mu.Lock()
	defer proxy.mu.Unlock()
	if len(proxy.blobs) != 4 { // config + 3 layers
		t.Errorf("%d distinct blobs fetched, want 4", len(proxy.blobs))
	}
	for path, c := range proxy.blobs {
		if c != 1 {
			t.Errorf("%s fetched %d times, want once", path, c)
		}
	}
}

func TestPruneFreesExactlyTheUnused(t *testing.T) {
	e := newEnv(t, "", pull.Options{})
	bb, _, err := e.p.Pull(ctxT(t), imgs[fixtures.Busybox].Ref, pull.IfNotPresent, nil)
	if err != nil {
		t.Fatal(err)
	}
	ml, _, err := e.p.Pull(ctxT(t), imgs[fixtures.Multilayer].Ref, pull.IfNotPresent, nil)
	if err != nil {
		t.Fatal(err)
	}
	if bb.Layers[0].DiffID != ml.Layers[0].DiffID {
		t.Fatal("fixtures: busybox and multilayer should share their base layer")
	}
	none := func() ([]digest.Digest, error) { return nil, nil }
	if res, err := e.st.Prune(none); err != nil || len(res.Blobs)+len(res.Layers) != 0 {
		t.Fatalf("prune with everything in use: %+v, %v", res, err)
	}
	if err := e.st.Remove(ml.Name); err != nil {
		t.Fatal(err)
	}
	// Layer 2 stays: a root filesystem uses it (InUseLayers says so).
	keep := func() ([]digest.Digest, error) { return []digest.Digest{ml.Layers[1].DiffID}, nil }
	var wantFreed int64
	wantBlobs := map[digest.Digest]bool{ml.Digest: true, ml.ConfigDigest: true, ml.Layers[1].Digest: true, ml.Layers[2].Digest: true}
	for d := range wantBlobs {
		fi, err := os.Stat(e.st.BlobPath(d))
		if err != nil {
			t.Fatal(err)
		}
		wantFreed += fi.Size()
	}
	fi, err := os.Stat(filepath.Join(e.st.LayerPath(ml.Layers[2].DiffID), "data/c.txt"))
	if err != nil {
		t.Fatal(err)
	}
	wantFreed += fi.Size() // layer 3's only regular file (whiteouts are devices)
	fi, err = os.Stat(filepath.Join(e.st.LayerPath(ml.Layers[2].DiffID), "opt/old/new.txt"))
	if err != nil {
		t.Fatal(err)
	}
	wantFreed += fi.Size()

	res, err := e.st.Prune(keep)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Blobs) != len(wantBlobs) {
		t.Errorf("removed blobs %v, want %v", res.Blobs, wantBlobs)
	}
	for _, d := range res.Blobs {
		if !wantBlobs[d] {
			t.Errorf("removed blob %s, which is in use", d)
		}
	}
	if len(res.Layers) != 1 || res.Layers[0] != ml.Layers[2].DiffID {
		t.Errorf("removed layers %v, want only %s", res.Layers, ml.Layers[2].DiffID)
	}
	if res.FreedBytes != wantFreed {
		t.Errorf("freed %d bytes, want %d", res.FreedBytes, wantFreed)
	}
	for _, d := range bb.Blobs() {
		if !e.st.HasBlob(d) {
			t.Errorf("busybox blob %s was removed", d)
		}
	}
	if !e.st.HasLayer(bb.Layers[0].DiffID) || !e.st.HasLayer(ml.Layers[1].DiffID) {
		t.Error("a layer in use was removed")
	}
	// The freed image comes back with a pull.
	if _, cached, err := e.p.Pull(ctxT(t), ml.Name, pull.IfNotPresent, nil); err != nil || cached {
		t.Errorf("pull after prune: cached=%v err=%v", cached, err)
	}
}

// TestPullDiskFull pulls into a 1 MiB tmpfs: a real full disk.
func TestPullDiskFull(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount tmpfs: %v", err)
		}
	})
	e := newEnv(t, dir, pull.Options{})
	_, _, err := e.p.Pull(ctxT(t), imgs[fixtures.Busybox].Ref, pull.IfNotPresent, nil)
	if !errors.Is(err, store.ErrDiskFull) || !errors.Is(err, errkind.Exhausted) || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("pull onto a full disk = %v, want disk full", err)
	}
	t.Logf("the error a user sees: %v", err)
	if len(e.st.List()) != 0 || countDir(t, filepath.Join(e.st.Root(), "layers/sha256")) != 0 {
		t.Error("something was registered")
	}
	if n := countDir(t, filepath.Join(e.st.Root(), "tmp")); n != 0 {
		t.Errorf("%d leftovers in tmp", n)
	}
}

const helperEnv = "ZLAYER_PULL_TEST_HELPER"

// helperMain is the child of TestKillDuringPull: it pulls one image into a
// data dir and is killed with SIGKILL in the middle.
func helperMain() int {
	data, ref, insecure := os.Getenv("HELPER_DATA"), os.Getenv("HELPER_REF"), os.Getenv("HELPER_INSECURE")
	st, err := store.Open(filepath.Join(data, "store"), zap.NewNop())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	p, err := pull.New(st, zap.NewNop(), pull.Options{Platform: "linux/" + runtime.GOARCH, AuthFile: filepath.Join(data, "auth.json"),
		ConfigDir: filepath.Join(data, "config"), InsecureRegistries: []string{insecure}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, _, err := p.Pull(context.Background(), ref, pull.IfNotPresent, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestKillDuringPull SIGKILLs a process in the middle of downloading and
// unpacking a layer (the proxy stalls that layer half way), then checks
// that nothing looks complete and that the next pull repairs everything.
func TestKillDuringPull(t *testing.T) {
	stalled := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	base := imgs[fixtures.Busybox]
	e0 := newEnv(t, "", pull.Options{})
	probe, _, err := e0.p.Pull(ctxT(t), base.Ref, pull.IfNotPresent, nil)
	if err != nil {
		t.Fatal(err)
	}
	big := probe.Layers[0].Digest.String()
	proxy := newCountingProxy(t, reg.URL(), func(path string, body io.ReadCloser) io.ReadCloser {
		if !strings.HasSuffix(path, big) {
			return body
		}
		first := false
		once.Do(func() { first = true })
		if !first {
			return body
		}
		return &stallingBody{rc: body, after: 256 << 10, stalled: stalled, release: release}
	})
	t.Cleanup(func() { close(release) }) // before the proxy's Close, which waits for the stalled handler
	data := t.TempDir()
	ref := proxy.addr() + "/multilayer:latest"
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", "HELPER_DATA="+data, "HELPER_REF="+ref, "HELPER_INSECURE="+proxy.addr())
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	select {
	case <-stalled:
	case <-time.After(time.Minute):
		t.Fatal("the helper never reached the middle of the layer")
	}
	// Wait until part of the layer is on disk in tmp/.
	eventually(t, time.Minute, func() bool {
		ms, _ := filepath.Glob(filepath.Join(data, "store/tmp/layer-*/blob"))
		for _, m := range ms {
			if fi, err := os.Stat(m); err == nil && fi.Size() > 0 {
				return true
			}
		}
		return false
	}, "a partial layer in tmp before the kill")
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	e := newEnv(t, data, pull.Options{}, proxy.addr())
	if n := countDir(t, filepath.Join(data, "store/tmp")); n != 0 {
		t.Errorf("%d leftovers in tmp after reopening", n)
	}
	if len(e.st.List()) != 0 {
		t.Error("an image record exists after the kill")
	}
	if e.st.HasBlob(probe.Layers[0].Digest) || e.st.HasLayer(probe.Layers[0].DiffID) {
		t.Error("the interrupted layer looks complete")
	}
	img, _, err := e.p.Pull(ctxT(t), ref, pull.IfNotPresent, nil)
	if err != nil {
		t.Fatalf("pull after the kill: %v", err)
	}
	for _, l := range img.Layers {
		if !e.st.HasLayer(l.DiffID) || !e.st.HasBlob(l.Digest) {
			t.Errorf("layer %s missing after the repair pull", l.Digest)
		}
	}
}

// stallingBody passes `after` bytes, then signals and blocks until release.
type stallingBody struct {
	rc      io.ReadCloser
	after   int
	n       int
	stalled chan struct{}
	release chan struct{}
}

func (s *stallingBody) Read(p []byte) (int, error) {
	if s.n >= s.after {
		if s.stalled != nil {
			close(s.stalled)
			s.stalled = nil
		}
		<-s.release
		return 0, net.ErrClosed
	}
	if len(p) > s.after-s.n {
		p = p[:s.after-s.n]
	}
	n, err := s.rc.Read(p)
	s.n += n
	return n, err
}

func (s *stallingBody) Close() error { return s.rc.Close() }

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", within, what)
		}
		<-tick.C
	}
}

// TestPullHostileImage pulls, from a real registry, an image whose layer
// tries every way out of its directory; nothing outside may change, and a
// root filesystem built from it stays confined too (checked by the unpack
// tests; here the whole path from registry to disk is covered).
func TestPullHostileImage(t *testing.T) {
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("intact"), 0o644); err != nil {
		t.Fatal(err)
	}
	up := strings.Repeat("../", 12)
	own := registry.StartT(t, registry.Options{})
	img, err := fixtures.Build(ctxT(t), t.TempDir(), own.Addr, fixtures.Spec{Repo: "hostile", Tag: "v1", Layers: [][]fixtures.Entry{
		{
			fixtures.File(up+victim[1:], 0o644, "pwned by dotdot"),
			fixtures.Symlink("abs", filepath.Dir(victim)),
			fixtures.File("abs/victim", 0o644, "pwned by absolute symlink"),
			fixtures.Symlink("rel", up+filepath.Dir(victim)[1:]),
			fixtures.File("rel/victim", 0o644, "pwned by relative symlink"),
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, "", pull.Options{}, own.Addr)
	got, _, err := e.p.Pull(ctxT(t), img.Ref, pull.IfNotPresent, nil)
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "intact" {
		t.Fatalf("host file changed: %q, %v", b, err)
	}
	// Every write landed inside the layer, at the path the link names
	// there.
	inside := filepath.Join(e.st.LayerPath(got.Layers[0].DiffID), victim[1:])
	if b, err := os.ReadFile(inside); err != nil || !strings.HasPrefix(string(b), "pwned by") {
		t.Errorf("confined write: %q, %v", b, err)
	}
}

// TestPullRepairsMissingLayerFromBlob removes an unpacked layer (as a crash
// between storing the blob and renaming the layer would leave it): the next
// pull unpacks it again from the stored blob, downloading nothing.
func TestPullRepairsMissingLayerFromBlob(t *testing.T) {
	proxy := newCountingProxy(t, reg.URL(), nil)
	e := newEnv(t, "", pull.Options{}, proxy.addr())
	ref := proxy.addr() + "/busybox:latest"
	img, _, err := e.p.Pull(ctxT(t), ref, pull.IfNotPresent, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(e.st.LayerPath(img.Layers[0].DiffID)); err != nil {
		t.Fatal(err)
	}
	proxy.mu.Lock()
	before := len(proxy.blobs)
	proxy.mu.Unlock()
	if _, _, err := e.p.Pull(ctxT(t), ref, pull.IfNotPresent, nil); err != nil {
		t.Fatalf("repair pull: %v", err)
	}
	if !e.st.HasLayer(img.Layers[0].DiffID) {
		t.Fatal("layer not repaired")
	}
	proxy.mu.Lock()
	defer proxy.mu.Unlock()
	for p, n := range proxy.blobs {
		if n > 1 {
			t.Errorf("%s downloaded %d times; the stored blob should have been used", p, n)
		}
	}
	if len(proxy.blobs) != before {
		t.Errorf("new blobs fetched: %v", proxy.blobs)
	}
}

// TestPullFetchesLayersInParallel holds every layer download at the proxy
// until two are open at once: a puller fetching one layer at a time would
// never get there.
func TestPullFetchesLayersInParallel(t *testing.T) {
	e0 := newEnv(t, "", pull.Options{})
	probe, _, err := e0.p.Pull(ctxT(t), imgs[fixtures.Multilayer].Ref, pull.IfNotPresent, nil)
	if err != nil {
		t.Fatal(err)
	}
	layers := map[string]bool{}
	for _, l := range probe.Layers {
		layers[l.Digest.String()] = true
	}
	var mu sync.Mutex
	open := 0
	both := make(chan struct{})
	proxy := newCountingProxy(t, reg.URL(), func(path string, body io.ReadCloser) io.ReadCloser {
		if !layers[path[strings.LastIndex(path, "/")+1:]] {
			return body
		}
		mu.Lock()
		open++
		if open == 2 {
			close(both)
		}
		mu.Unlock()
		select {
		case <-both:
		case <-time.After(30 * time.Second):
			t.Error("layer downloads never overlapped")
		}
		return body
	})
	e := newEnv(t, "", pull.Options{Parallel: 4}, proxy.addr())
	if _, _, err := e.p.Pull(ctxT(t), proxy.addr()+"/multilayer:latest", pull.IfNotPresent, nil); err != nil {
		t.Fatal(err)
	}
}
