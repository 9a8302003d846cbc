// Package l4 serves public tcp and udp endpoints: one listener per public
// port, each TCP connection piped to one replica, each UDP client flow (the
// client's address and port) bound to one replica until it has been idle for
// a while. It follows the route table as a routes.Applier: new ports are
// bound before a table is accepted, removed ports stop accepting, and
// connections already open stay open. It reads nothing from the streams.
package l4

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"zlayer.dev/libs/errkind"
	"zlayer.dev/libs/obs"
	"zlayer.dev/services/proxy/internal/balance"
	"zlayer.dev/services/proxy/internal/routes"
)

// Config configures a Manager.
type Config struct {
	// Host is the address the public ports listen on; "" = every address.
	Host string
	// ConnectTimeout bounds connecting to a replica.
	ConnectTimeout time.Duration
	// UDPFlowTimeout ends a UDP flow idle this long in both directions.
	UDPFlowTimeout time.Duration
	Log            *zap.Logger
}

// Manager owns the tcp and udp listeners.
type Manager struct {
	cfg Config
	log *zap.Logger

	mu     sync.Mutex
	tcp    map[uint16]*tcpListener
	udp    map[uint16]*udpListener
	conns  map[io.Closer]struct{} // open TCP connections and UDP flows, closed by Close
	closed bool
	wg     sync.WaitGroup
}

var _ routes.Applier = (*Manager)(nil)

// New returns a manager with no listeners.
func New(cfg Config) *Manager {
	return &Manager{cfg: cfg, log: cfg.Log.Named("l4"), tcp: map[uint16]*tcpListener{}, udp: map[uint16]*udpListener{}, conns: map[io.Closer]struct{}{}}
}

type tcpListener struct {
	ln    net.Listener
	entry atomic.Pointer[routes.Entry]
}

type udpListener struct {
	pc    *net.UDPConn
	entry atomic.Pointer[routes.Entry]
	mu    sync.Mutex
	flows map[netip.AddrPort]*flow
}

// Prepare binds the ports next adds; it fails, binding nothing, when one of
// them cannot be bound.
func (m *Manager) Prepare(next *routes.Table) (commit, abort func(), err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, nil, fmt.Errorf("l4 listeners are shut down: %w", errkind.Unavailable)
	}
	newTCP := map[uint16]*tcpListener{}
	newUDP := map[uint16]*udpListener{}
	closeNew := func() {
		for _, l := range newTCP {
			l.ln.Close()
		}
		for _, l := range newUDP {
			l.pc.Close()
		}
	}
	for _, port := range next.Ports(routes.TCP) {
		if m.tcp[port] != nil {
			continue
		}
		ln, err := net.Listen("tcp", m.addr(port))
		if err != nil {
			closeNew()
			return nil, nil, fmt.Errorf("public tcp port %d: %w: %w", port, err, errkind.Unavailable)
		}
		newTCP[port] = &tcpListener{ln: ln}
	}
	for _, port := range next.Ports(routes.UDP) {
		if m.udp[port] != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", m.addr(port))
		if err != nil {
			closeNew()
			return nil, nil, fmt.Errorf("public udp port %d: %w: %w", port, err, errkind.Unavailable)
		}
		newUDP[port] = &udpListener{pc: pc.(*net.UDPConn), flows: map[netip.AddrPort]*flow{}}
	}
	commit = func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		for port, l := range m.tcp {
			if e := next.TCP(port); e != nil {
				l.entry.Store(e)
			} else {
				l.ln.Close()
				delete(m.tcp, port)
				m.log.Info("tcp port closed", zap.Uint16("port", port))
			}
		}
		for port, l := range m.udp {
			if e := next.UDP(port); e != nil {
				l.entry.Store(e)
			} else {
				l.pc.Close()
				delete(m.udp, port)
				m.log.Info("udp port closed", zap.Uint16("port", port))
			}
		}
		for port, l := range newTCP {
			l.entry.Store(next.TCP(port))
			m.tcp[port] = l
			m.wg.Add(1)
			go m.serveTCP(l)
			m.log.Info("tcp port open", zap.Uint16("port", port), zap.String("addr", l.ln.Addr().String()))
		}
		for port, l := range newUDP {
			l.entry.Store(next.UDP(port))
			m.udp[port] = l
			m.wg.Add(1)
			go m.serveUDP(l)
			m.log.Info("udp port open", zap.Uint16("port", port), zap.String("addr", l.pc.LocalAddr().String()))
		}
	}
	return commit, closeNew, nil
}

func (m *Manager) addr(port uint16) string {
	return net.JoinHostPort(m.cfg.Host, strconv.Itoa(int(port)))
}

// Close stops every listener, closes every open connection and flow, and
// waits for their goroutines.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	for _, l := range m.tcp {
		l.ln.Close()
	}
	for _, l := range m.udp {
		l.pc.Close()
	}
	for c := range m.conns {
		c.Close()
	}
	m.mu.Unlock()
	m.wg.Wait()
}

// track registers c to be closed by Close; false if already closing.
func (m *Manager) track(c io.Closer) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false
	}
	m.conns[c] = struct{}{}
	return true
}

func (m *Manager) untrack(c io.Closer) {
	m.mu.Lock()
	delete(m.conns, c)
	m.mu.Unlock()
}

// dial connects to a replica of e, trying a second one when the first
// refuses; the returned backend must be released.
func (m *Manager) dial(ctx context.Context, e *routes.Entry, network string) (net.Conn, *balance.Backend, error) {
	d := net.Dialer{Timeout: m.cfg.ConnectTimeout}
	b := e.Pool.Pick(nil)
	if b == nil {
		return nil, nil, errors.New("no healthy replica")
	}
	for attempt := 0; ; attempt++ {
		c, err := d.DialContext(ctx, network, b.Addr)
		if err == nil {
			return c, b, nil
		}
		b.Release()
		e.Pool.Eject(b)
		if attempt == 0 {
			if next := e.Pool.Pick(b); next != nil {
				b = next
				continue
			}
		}
		return nil, nil, fmt.Errorf("replica %s at %s: %w", b.ID, b.Addr, err)
	}
}

func (m *Manager) serveTCP(l *tcpListener) {
	defer m.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			m.log.Warn("tcp accept failed", zap.Error(err))
			continue
		}
		if !m.track(c) {
			c.Close()
			return
		}
		m.wg.Add(1)
		go m.handleTCP(l.entry.Load(), c)
	}
}

func (m *Manager) handleTCP(e *routes.Entry, c net.Conn) {
	defer m.wg.Done()
	defer m.untrack(c)
	defer c.Close()
	e.Stats.Opened()
	defer e.Stats.Closed()
	log := m.log.With(zap.String(obs.KeyDeployment, e.Deployment), zap.String(obs.KeyService, e.Service), zap.String("endpoint", e.Endpoint))
	up, b, err := m.dial(context.Background(), e, "tcp")
	if err != nil {
		log.Warn("tcp connection not proxied", zap.String("remote", c.RemoteAddr().String()), zap.Error(err))
		return
	}
	defer b.Release()
	if !m.track(up) {
		up.Close()
		return
	}
	defer m.untrack(up)
	defer up.Close()
	done := make(chan error, 1)
	go func() { done <- pipe(up, c) }()
	err1 := pipe(c, up)
	err2 := <-done
	if isReset(err1) || isReset(err2) {
		e.Pool.Eject(b)
	}
}

// pipe copies src to dst, then half-closes dst so the peer sees EOF.
func pipe(dst, src net.Conn) error {
	_, err := io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	return err
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED)
}

// flow is one UDP client bound to one replica.
type flow struct {
	client  netip.AddrPort
	up      *net.UDPConn
	backend *balance.Backend
	entry   *routes.Entry
	last    atomic.Int64 // unix nanoseconds of the last packet either way
	once    sync.Once
}

func (f *flow) Close() error {
	return f.up.Close()
}

func (m *Manager) serveUDP(l *udpListener) {
	defer m.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, client, err := l.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			m.log.Warn("udp read failed", zap.Error(err))
			continue
		}
		f := m.flowFor(l, client)
		if f == nil {
			continue
		}
		f.last.Store(time.Now().UnixNano())
		if _, err := f.up.Write(buf[:n]); err != nil {
			if isReset(err) {
				f.entry.Pool.Eject(f.backend)
			}
			m.endFlow(l, f)
		}
	}
}

// flowFor returns client's flow, starting one on a replica if needed; nil
// when no replica can take it (the packet is dropped).
func (m *Manager) flowFor(l *udpListener, client netip.AddrPort) *flow {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f := l.flows[client]; f != nil {
		return f
	}
	e := l.entry.Load()
	c, b, err := m.dial(context.Background(), e, "udp")
	if err != nil {
		m.log.Warn("udp flow not proxied", zap.String(obs.KeyService, e.Service), zap.String("remote", client.String()), zap.Error(err))
		return nil
	}
	f := &flow{client: client, up: c.(*net.UDPConn), backend: b, entry: e}
	if !m.track(f) {
		c.Close()
		b.Release()
		return nil
	}
	e.Stats.Opened()
	l.flows[client] = f
	m.wg.Add(1)
	go m.flowReplies(l, f)
	return f
}

// flowReplies sends the replica's datagrams back to the client until the
// flow is idle for the flow timeout or fails.
func (m *Manager) flowReplies(l *udpListener, f *flow) {
	defer m.wg.Done()
	defer m.endFlow(l, f)
	buf := make([]byte, 64<<10)
	timeout := m.cfg.UDPFlowTimeout
	for {
		_ = f.up.SetReadDeadline(time.Unix(0, f.last.Load()).Add(timeout))
		n, err := f.up.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && time.Since(time.Unix(0, f.last.Load())) < timeout {
				continue // the client spoke meanwhile
			}
			if isReset(err) {
				f.entry.Pool.Eject(f.backend)
			}
			return
		}
		f.last.Store(time.Now().UnixNano())
		if _, err := l.pc.WriteToUDPAddrPort(buf[:n], f.client); err != nil {
			return
		}
	}
}

func (m *Manager) endFlow(l *udpListener, f *flow) {
	f.once.Do(func() {
		l.mu.Lock()
		if l.flows[f.client] == f {
			delete(l.flows, f.client)
		}
		l.mu.Unlock()
		m.untrack(f)
		f.up.Close()
		f.backend.Release()
		f.entry.Stats.Closed()
	})
}
