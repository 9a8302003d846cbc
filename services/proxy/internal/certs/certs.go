// Package certs chooses the certificate for each TLS handshake of the HTTPS
// listener: a static certificate from a directory when one covers the name,
// else a certificate from an ACME CA obtained and renewed by certmagic for
// the hosts of public https routes, else a self-signed certificate made on
// the spot (for local use, and while an ACME certificate is on its way).
// ACME certificates, keys and the account live under the data directory, so
// a restart loads them instead of asking the CA again. The package answers
// ACME's HTTP-01 and TLS-ALPN-01 challenges on the proxy's own listeners; it
// does not open listeners itself.
package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"go.uber.org/zap"

	"zlayer.dev/services/proxy/internal/routes"
)

// Config configures a Manager.
type Config struct {
	// StorageDir keeps ACME accounts, certificates and keys.
	StorageDir string
	// StaticDir holds static certificates: every NAME.crt (PEM chain) with
	// its NAME.key; each serves the DNS names it carries. "" = none.
	StaticDir string
	// ACMECA is the ACME directory URL; "" disables ACME.
	ACMECA string
	// ACMEEmail is the account's contact address (may be empty).
	ACMEEmail string
	// ACMERoots, when set, are the only roots trusted for the ACME server
	// (e.g. pebble's test certificate).
	ACMERoots *x509.CertPool
	// HTTPAddr and HTTPSAddr are the proxy's listeners, where the CA's
	// HTTP-01 and TLS-ALPN-01 validations arrive.
	HTTPAddr, HTTPSAddr string
	Log                 *zap.Logger
}

// Manager serves certificates; it is a routes.Applier so that new public
// https hosts get ACME certificates as soon as they are routed.
type Manager struct {
	log    *zap.Logger
	static map[string]*tls.Certificate // by DNS name, "*.example.com" for wildcards

	magic  *certmagic.Config // nil without ACME
	issuer *certmagic.ACMEIssuer
	cache  *certmagic.Cache
	ctx    context.Context // ends ACME work at Close
	cancel context.CancelFunc

	mu      sync.Mutex
	managed map[string]bool

	selfMu sync.Mutex
	self   map[string]*tls.Certificate
}

var _ routes.Applier = (*Manager)(nil)

// New loads the static certificates and sets up ACME.
func New(cfg Config) (*Manager, error) {
	m := &Manager{log: cfg.Log.Named("certs"), static: map[string]*tls.Certificate{}, managed: map[string]bool{}, self: map[string]*tls.Certificate{}}
	if cfg.StaticDir != "" {
		if err := m.loadStatic(cfg.StaticDir); err != nil {
			return nil, err
		}
	}
	if cfg.ACMECA == "" {
		return m, nil
	}
	httpPort, err := port(cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("http address %q: %w", cfg.HTTPAddr, err)
	}
	tlsPort, err := port(cfg.HTTPSAddr)
	if err != nil {
		return nil, fmt.Errorf("https address %q: %w", cfg.HTTPSAddr, err)
	}
	host, _, _ := net.SplitHostPort(cfg.HTTPAddr)
	log := cfg.Log.Named("certmagic")
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return m.magic, nil },
		Logger:           log,
	})
	m.magic = certmagic.New(m.cache, certmagic.Config{
		Storage: &certmagic.FileStorage{Path: cfg.StorageDir},
		Logger:  log,
	})
	m.issuer = certmagic.NewACMEIssuer(m.magic, certmagic.ACMEIssuer{
		CA:           cfg.ACMECA,
		TestCA:       cfg.ACMECA,
		Email:        cfg.ACMEEmail,
		Agreed:       true,
		TrustedRoots: cfg.ACMERoots,
		// The challenges arrive on the proxy's own listeners: certmagic
		// finds these addresses taken and leaves the answering to
		// HTTPHandler and the TLS config.
		ListenHost:     host,
		AltHTTPPort:    httpPort,
		AltTLSALPNPort: tlsPort,
		Logger:         log,
	})
	m.magic.Issuers = []certmagic.Issuer{m.issuer}
	return m, nil
}

func port(addr string) (int, error) {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(p)
}

// Close stops ACME work and certificate maintenance.
func (m *Manager) Close() {
	if m.magic != nil {
		m.cancel()
		m.cache.Stop()
	}
}

// TLSConfig is the HTTPS listener's configuration: HTTP/2 and HTTP/1.1 by
// ALPN, and the ACME TLS-ALPN-01 protocol.
func (m *Manager) TLSConfig() *tls.Config {
	return &tls.Config{
		GetCertificate: m.GetCertificate,
		NextProtos:     []string{"h2", "http/1.1", acmez.ACMETLS1Protocol},
		MinVersion:     tls.VersionTLS12,
	}
}

// HTTPHandler answers ACME HTTP-01 challenges and hands every other request
// to next.
func (m *Manager) HTTPHandler(next http.Handler) http.Handler {
	if m.issuer == nil {
		return next
	}
	return m.issuer.HTTPChallengeHandler(next)
}

// GetCertificate chooses the certificate for a handshake.
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if m.magic != nil && slices.Contains(hello.SupportedProtos, acmez.ACMETLS1Protocol) {
		return m.magic.GetCertificate(hello)
	}
	name := strings.TrimSuffix(strings.ToLower(hello.ServerName), ".")
	if c := m.lookupStatic(name); c != nil {
		return c, nil
	}
	if m.magic != nil && m.isManaged(name) {
		if c, err := m.magic.GetCertificate(hello); err == nil {
			return c, nil
		}
	}
	return m.selfSigned(name)
}

func (m *Manager) lookupStatic(name string) *tls.Certificate {
	if len(m.static) == 0 || name == "" {
		return nil
	}
	if c := m.static[name]; c != nil {
		return c
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		return m.static["*"+name[i:]]
	}
	return nil
}

func (m *Manager) isManaged(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.managed[name]
}

// Prepare has nothing to refuse; its commit starts ACME management of the
// table's public https hosts that no static certificate covers.
func (m *Manager) Prepare(next *routes.Table) (commit, abort func(), err error) {
	return func() { m.manage(next.PublicHosts()) }, func() {}, nil
}

func (m *Manager) manage(hosts []string) {
	if m.magic == nil {
		return
	}
	var add []string
	m.mu.Lock()
	for _, h := range hosts {
		if m.managed[h] || m.lookupStatic(h) != nil || net.ParseIP(h) != nil {
			continue
		}
		m.managed[h] = true
		add = append(add, h)
	}
	m.mu.Unlock()
	if len(add) == 0 {
		return
	}
	m.log.Info("managing certificates", zap.Strings("hosts", add))
	// ManageAsync loads stored certificates and obtains or renews the
	// others in the background, retrying with backoff until ctx ends.
	if err := m.magic.ManageAsync(m.ctx, add); err != nil {
		m.log.Error("certificate management not started", zap.Strings("hosts", add), zap.Error(err))
	}
}

func (m *Manager) loadStatic(dir string) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.crt"))
	if err != nil {
		return err
	}
	var errs []error
	for _, crt := range files {
		key := strings.TrimSuffix(crt, ".crt") + ".key"
		c, err := tls.LoadX509KeyPair(crt, key)
		if err != nil {
			errs = append(errs, fmt.Errorf("static certificate %s: %w", crt, err))
			continue
		}
		for _, n := range c.Leaf.DNSNames {
			m.static[strings.ToLower(n)] = &c
		}
		for _, ip := range c.Leaf.IPAddresses {
			m.static[ip.String()] = &c
		}
		m.log.Info("static certificate loaded", zap.String("file", crt), zap.Strings("names", c.Leaf.DNSNames))
	}
	if len(files) == 0 {
		if _, err := os.Stat(dir); err != nil {
			errs = append(errs, fmt.Errorf("static certificate directory: %w", err))
		}
	}
	return errors.Join(errs...)
}

// selfSigned returns a self-signed certificate for name, made once.
func (m *Manager) selfSigned(name string) (*tls.Certificate, error) {
	if name == "" {
		name = "localhost"
	}
	m.selfMu.Lock()
	defer m.selfMu.Unlock()
	if c := m.self[name]; c != nil {
		return c, nil
	}
	c, err := SelfSigned(name, time.Now())
	if err != nil {
		return nil, err
	}
	if len(m.self) > 10000 { // names come from clients: bound the memory
		clear(m.self)
	}
	m.self[name] = c
	return c, nil
}

// SelfSigned makes a certificate for name (a DNS name or IP address), valid
// for a year from now.
func SelfSigned(name string, now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"zlayer-proxy self-signed"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if ip := net.ParseIP(name); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{name}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-signed certificate for %s: %w", name, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}
