package httpproxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"zlayer.dev/services/proxy/internal/balance"
	"zlayer.dev/services/proxy/internal/routes"
)

// Event loops. On the plain HTTP listener the fast path can run on a few
// event loops (Front.Loops, one per CPU in the daemon) instead of a
// goroutine per connection. Each loop owns an epoll instance and the
// client and replica sockets registered in it (edge-triggered, once), and
// forwards a request with four system calls: read the head, write it to a
// pooled replica connection, read the answer, write it to the client. A
// goroutine per connection costs a park and a wake-up, often an OS thread
// switch, and a read that fails with EAGAIN for every request; on a small
// machine that is a quarter of the proxy's time.
//
// The loops forward what the fast path forwards (see request.parse) when
// the answer's body is at most loopMaxBody bytes with a Content-Length, or
// absent. Anything else leaves the loop: a request the fast path does not
// take hands the connection to net/http as the goroutine path does, and an
// answer with a chunked, close-delimited or larger body hands both
// connections to a goroutine (Front.adopt), which streams the body and
// serves the connection from then on.

const (
	loopClientBuf  = 8 << 10
	loopBackendBuf = 16 << 10
	// loopMaxBody is the largest answer body the loops forward themselves.
	loopMaxBody = 64 << 10
	// loopTick is how often a loop with connections checks their deadlines.
	loopTick   = 100 * time.Millisecond
	epollFlags = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET
)

// eventLoop serves client connections of one listener.
type eventLoop struct {
	f      *Front
	p      *Proxy
	epfd   int
	wakefd int
	woken  atomic.Bool

	mu      sync.Mutex
	pending []accepted // connections the acceptor gave this loop
	stopped bool

	socks   []sockRef // by file descriptor
	nextID  int32
	clients int
	idle    map[string][]*bconn // pooled replica connections by address
	addrs   map[string]unix.Sockaddr
	now     time.Time
	swept   time.Time
	events  []unix.EpollEvent
}

// accepted is a connection for a loop: a plain one as accepted, or a TLS
// one after its handshake.
type accepted struct {
	fd   int
	addr netip.AddrPort
	tls  *tls.Conn
	mc   *memConn
}

// sockRef is what a descriptor in the epoll set is; id tells a socket from
// an earlier one that had the same descriptor (events of one batch can
// name a descriptor closed and reused meanwhile).
type sockRef struct {
	id int32
	c  *lconn
	b  *bconn
}

func newEventLoop(f *Front) (*eventLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	return &eventLoop{f: f, p: f.p, epfd: epfd, wakefd: wakefd, idle: map[string][]*bconn{},
		addrs: map[string]unix.Sockaddr{}, events: make([]unix.EpollEvent, 256)}, nil
}

// startLoops starts f.Loops event loops.
func (f *Front) startLoops() ([]*eventLoop, error) {
	loops := make([]*eventLoop, 0, f.Loops)
	for range f.Loops {
		l, err := newEventLoop(f)
		if err != nil {
			for _, l := range loops {
				l.closeFDs()
			}
			return nil, fmt.Errorf("start event loop: %w", err)
		}
		loops = append(loops, l)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.shutdown.Load() { // Shutdown, which reads f.loops under f.mu, came first
		for _, l := range loops {
			l.closeFDs()
		}
		return nil, http.ErrServerClosed
	}
	f.loops = loops
	for _, l := range loops {
		f.wg.Add(1)
		go l.run()
	}
	return loops, nil
}

// acceptorDone tells the loops that no more connections come from the
// listener (those of TLS handshakes still running are refused).
func (f *Front) acceptorDone(loops []*eventLoop) {
	close(f.acceptDone)
	for _, l := range loops {
		l.wake()
	}
}

// nextLoop picks the loop for a new connection, in turn.
func (f *Front) nextLoop() *eventLoop {
	return f.loops[f.loopTurn.Add(1)%uint32(len(f.loops))]
}

// serveLoops accepts connections on ln and gives them to f.Loops event
// loops in turn, until ln is closed.
func (f *Front) serveLoops(ln *net.TCPListener) error {
	// A listener's RawConn cannot wait for connections: accept on a
	// duplicate of its socket as a pollable file, closed by Shutdown.
	lrc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	dupfd, derr := -1, error(nil)
	if err := lrc.Control(func(fd uintptr) { dupfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || derr != nil {
		return fmt.Errorf("duplicate the listening socket: %w", errors.Join(err, derr))
	}
	lf := os.NewFile(uintptr(dupfd), "listener")
	defer lf.Close()
	f.mu.Lock()
	f.lnDup = lf
	f.mu.Unlock()
	if f.shutdown.Load() {
		return http.ErrServerClosed
	}
	rc, err := lf.SyscallConn()
	if err != nil {
		return err
	}
	loops, err := f.startLoops()
	if err != nil {
		return err
	}
	defer f.acceptorDone(loops)
	var delay time.Duration
	for {
		var fd int
		var sa unix.Sockaddr
		var aerr error
		err := rc.Read(func(lfd uintptr) bool {
			fd, sa, aerr = unix.Accept4(int(lfd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			return !errors.Is(aerr, unix.EAGAIN)
		})
		if err != nil {
			if f.shutdown.Load() {
				return http.ErrServerClosed
			}
			f.handoff.Close()
			return err
		}
		switch {
		case aerr == nil:
		case errors.Is(aerr, unix.EINTR), errors.Is(aerr, unix.ECONNABORTED):
			continue
		case errors.Is(aerr, unix.EMFILE), errors.Is(aerr, unix.ENFILE), errors.Is(aerr, unix.ENOBUFS), errors.Is(aerr, unix.ENOMEM):
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			f.log.Warn("accept failed; retrying", zap.Error(aerr), zap.Duration("in", delay))
			time.Sleep(delay)
			continue
		default:
			f.handoff.Close()
			return fmt.Errorf("accept: %w", aerr)
		}
		delay = 0
		if f.shutdown.Load() {
			unix.Close(fd)
			return http.ErrServerClosed
		}
		// As net.Listen's connections: no Nagle, keep-alive probes.
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)    //nolint:errcheck // best effort
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)    //nolint:errcheck // best effort
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 15)  //nolint:errcheck // best effort
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 15) //nolint:errcheck // best effort
		if !f.nextLoop().add(accepted{fd: fd, addr: addrPort(sa)}) {
			unix.Close(fd)
		}
	}
}

func addrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// add gives the loop a connection; false when the loop has stopped.
func (l *eventLoop) add(a accepted) bool {
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return false
	}
	l.pending = append(l.pending, a)
	l.mu.Unlock()
	l.wake()
	return true
}

// wake interrupts the loop's wait.
func (l *eventLoop) wake() {
	l.mu.Lock() // not after closeFDs: the descriptor's number may be another file's by then
	defer l.mu.Unlock()
	if l.stopped || l.woken.Swap(true) {
		return
	}
	one := [8]byte{1}
	unix.Write(l.wakefd, one[:]) //nolint:errcheck // a full counter wakes the loop too
}

func (l *eventLoop) run() {
	defer l.f.wg.Done()
	defer l.closeFDs()
	for {
		timeout := -1
		if l.clients > 0 || len(l.idle) > 0 {
			timeout = int(loopTick / time.Millisecond)
		}
		n, err := unix.EpollWait(l.epfd, l.events, timeout)
		if err != nil && !errors.Is(err, unix.EINTR) {
			l.f.log.Error("event loop failed; closing its connections", zap.Error(err))
			l.closeAll()
			return
		}
		l.now = time.Now()
		for i := range max(n, 0) {
			ev := l.events[i]
			fd := int(ev.Fd)
			if fd == l.wakefd {
				// Reset the counter, then the flag: a wake between the two
				// finds the flag still set and its connection is taken below.
				var b [8]byte
				unix.Read(l.wakefd, b[:]) //nolint:errcheck // resets the counter
				l.woken.Store(false)
				l.accept()
				continue
			}
			if fd >= len(l.socks) || l.socks[fd].id != ev.Pad {
				continue
			}
			switch s := l.socks[fd]; {
			case s.c != nil:
				s.c.event(ev.Events)
			case s.b != nil:
				s.b.event(ev.Events)
			}
		}
		if l.now.Sub(l.swept) >= loopTick {
			l.sweep()
		}
		if l.f.shutdown.Load() {
			if l.f.force.Load() {
				l.closeAll()
			}
			l.closeIdleClients()
			if l.clients == 0 && l.acceptorDone() {
				l.mu.Lock()
				more := len(l.pending) > 0
				l.stopped = !more
				l.mu.Unlock()
				if !more {
					return
				}
			}
		}
	}
}

func (l *eventLoop) acceptorDone() bool {
	select {
	case <-l.f.acceptDone:
		return true
	default:
		return false
	}
}

// accept registers the connections the acceptor gave the loop.
func (l *eventLoop) accept() {
	l.mu.Lock()
	pending := l.pending
	l.pending = nil
	l.mu.Unlock()
	for _, a := range pending {
		c := &lconn{l: l, fd: a.fd, addr: a.addr, remote: a.addr.Addr().String(), in: make([]byte, 0, loopClientBuf),
			tls: a.tls, mc: a.mc}
		if c.tls != nil {
			c.readable, c.rawReadable = true, true // the handshake may have read the first request
		}
		if err := l.register(a.fd, c, nil); err != nil {
			l.f.log.Warn("event loop cannot take a connection", zap.Error(err))
			unix.Close(a.fd)
			continue
		}
		l.clients++
		c.run()
	}
}

func (l *eventLoop) register(fd int, c *lconn, b *bconn) error {
	if fd >= len(l.socks) {
		l.socks = append(l.socks, make([]sockRef, fd+64-len(l.socks))...)
	}
	l.nextID++
	id := l.nextID
	ev := unix.EpollEvent{Events: epollFlags, Fd: int32(fd), Pad: id}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	l.socks[fd] = sockRef{id: id, c: c, b: b}
	return nil
}

// detach takes fd out of the loop and returns it as a net.Conn; fd is
// closed either way.
func (l *eventLoop) detach(fd int) (net.Conn, error) {
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil) //nolint:errcheck // the descriptor is closed below
	l.socks[fd] = sockRef{}
	f := os.NewFile(uintptr(fd), "")
	c, err := net.FileConn(f)
	f.Close()
	return c, err
}

// sweep enforces deadlines: idle and header timeouts of clients, connect
// and response timeouts of replicas, clients that left during a slow
// answer, and pooled replica connections idle too long.
func (l *eventLoop) sweep() {
	l.swept = l.now
	slow := slowAnswer(l.p.cfg.ResponseTimeout)
	for _, s := range l.socks {
		c := s.c
		if c == nil || c.closed {
			continue
		}
		switch b := c.bc; {
		case c.busy && b != nil && b.connecting && !b.deadline.IsZero() && l.now.After(b.deadline):
			c.backendLost(b, failDial, &net.OpError{Op: "dial", Net: "tcp", Addr: tcpAddr(b.addr), Err: errTimeout})
			c.run()
		// The response timeout and the watch for a client that left cover
		// the wait for the answer's head, not its body (as on a goroutine).
		case c.busy && b != nil && b.awaiting && !b.headDone && !b.deadline.IsZero() && l.now.After(b.deadline):
			c.backendLost(b, failTimeout, errTimeout)
			c.run()
		case c.busy && b != nil && b.awaiting && !b.headDone && c.hup && l.now.Sub(b.sent) >= slow && c.gone():
			c.abort()
		case !c.busy && !c.pendingOutput() && !c.deadline.IsZero() && l.now.After(c.deadline):
			c.close()
		}
	}
	idleFor := l.p.cfg.BackendIdleTimeout
	for addr, conns := range l.idle {
		keep := conns[:0]
		for _, b := range conns {
			if l.now.Sub(b.idleAt) < idleFor {
				keep = append(keep, b)
			} else {
				l.closeBackend(b)
			}
		}
		l.setIdle(addr, keep)
	}
}

// errTimeout is a deadline the loop enforced.
var errTimeout = &timeoutError{}

func tcpAddr(addr string) net.Addr {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil
	}
	return net.TCPAddrFromAddrPort(ap)
}

// closeIdleClients closes, on shutdown, connections waiting for a request.
func (l *eventLoop) closeIdleClients() {
	for _, s := range l.socks {
		if c := s.c; c != nil && !c.closed && !c.busy && !c.pendingOutput() && c.r == len(c.in) {
			c.close()
		}
	}
}

// closeAll closes every connection: the loop is stopping.
func (l *eventLoop) closeAll() {
	for _, s := range l.socks {
		if c := s.c; c != nil && !c.closed {
			c.drop()
		}
	}
}

func (l *eventLoop) closeFDs() {
	for _, conns := range l.idle {
		for _, b := range conns {
			l.closeBackend(b)
		}
	}
	l.idle = map[string][]*bconn{}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
	for _, a := range l.pending {
		unix.Close(a.fd)
	}
	l.pending = nil
	unix.Close(l.epfd)
	unix.Close(l.wakefd)
}

// --- client connections ---

// lconn is a client connection on an event loop.
type lconn struct {
	l      *eventLoop
	fd     int
	addr   netip.AddrPort
	remote string // client IP, for the forwarding headers

	in  []byte // bytes read; in[r:] not yet consumed
	r   int
	out outBuf // to write to the client
	off int    // out[:off] is written

	// TLS: the session, over mc, whose buffers the loop fills and drains.
	tls *tls.Conn
	mc  *memConn

	readable, writable bool // for TLS, readable: the session may have more to read
	rawReadable        bool // TLS: the socket may have bytes
	hup                bool // the client shut its side
	closing            bool // close once out is written
	closed             bool
	deadline           time.Time // of the wait for a request (idle or header timeout)
	headerWait         bool      // deadline is the header timeout

	// The request in flight.
	busy    bool
	headLen int
	req     request
	resp    response
	e       *routes.Entry
	be      *balance.Backend
	bc      *bconn
	start   time.Time
	retried bool
}

func (c *lconn) remoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.addr) }

func (c *lconn) event(ev uint32) {
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.readable, c.rawReadable = true, true
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.writable = true
	}
	if ev&unix.EPOLLRDHUP != 0 {
		c.hup = true
	}
	if ev&(unix.EPOLLHUP|unix.EPOLLERR) != 0 && c.busy {
		c.abort() // reset: the client is gone
		return
	}
	c.run()
}

// run makes what progress it can: writes pending output, then reads and
// starts requests until it must wait.
func (c *lconn) run() {
	for !c.closed {
		if c.pendingOutput() && !c.flush() {
			return
		}
		if c.closing {
			c.close()
			return
		}
		if c.busy {
			return
		}
		if !c.next() {
			if !c.closed && c.pendingOutput() { // TLS: a reply the session made while reading
				c.flush()
			}
			return
		}
	}
}

// flush writes pending output; false when it must wait (or the
// connection closed).
func (c *lconn) flush() bool {
	out, off := &c.out, &c.off
	if c.tls != nil {
		if len(c.out) > 0 {
			if _, err := c.tls.Write(c.out); err != nil { // encrypts into c.mc.out
				c.drop()
				return false
			}
			c.out = trimBuf(c.out)
		}
		out, off = &c.mc.out, &c.mc.off
	}
	for *off < len(*out) {
		if !c.writable {
			return false
		}
		n, err := sysWrite(c.fd, (*out)[*off:])
		if errors.Is(err, unix.EAGAIN) {
			c.writable = false
			return false
		}
		if err != nil {
			c.drop()
			return false
		}
		*off += n
	}
	*off = 0
	*out = trimBuf(*out)
	return true
}

func (c *lconn) pendingOutput() bool {
	return c.off < len(c.out) || c.tls != nil && (len(c.out) > 0 || c.mc.off < len(c.mc.out))
}

// trimBuf empties b, dropping a large answer's buffer rather than keeping
// it for the connection's life.
func trimBuf(b outBuf) outBuf {
	if cap(b) > 2*loopBackendBuf {
		return nil
	}
	return b[:0]
}

// next reads until a request head is complete and starts the request;
// false when it must wait for the client (or gave the connection away).
func (c *lconn) next() bool {
	for {
		buf := c.in[c.r:]
		n := headEnd(buf)
		switch {
		case n == 1 || n == 2: // a leading blank line: net/http's to judge
			c.handOff()
			return false
		case n > maxHead || n == 0 && len(buf) > maxHead:
			c.handOff() // net/http answers 431
			return false
		case n > 0:
			return c.request(n)
		}
		if !c.readable {
			t := c.l.f.t
			switch {
			case len(buf) == 0 && (c.headerWait || c.deadline.IsZero()) && t.Idle > 0:
				c.deadline, c.headerWait = c.l.now.Add(t.Idle), false
			case len(buf) > 0 && !c.headerWait && t.ReadHeader > 0:
				c.deadline, c.headerWait = c.l.now.Add(t.ReadHeader), true
			}
			return false
		}
		if !c.read() {
			return false
		}
	}
}

// headEnd returns the length of the head (of a request or an answer) at
// the start of b, up to and including its first empty line; 0 while that
// has not come. 1 or 2 means b starts with an empty line.
func headEnd(b []byte) int {
	for i := 0; i < len(b); {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return 0
		}
		if j == 0 || j == 1 && b[i] == '\r' {
			return i + j + 1
		}
		i += j + 1
	}
	return 0
}

// read reads what the client sent; false when the connection ended or was
// handed off.
func (c *lconn) read() bool {
	if c.r > 0 {
		c.in = c.in[:copy(c.in, c.in[c.r:])]
		c.r = 0
	}
	if len(c.in) == cap(c.in) {
		c.in = grow(c.in)
	}
	free := c.in[len(c.in):cap(c.in)]
	if c.tls != nil {
		return c.readTLS(free)
	}
	n, err := sysRead(c.fd, free)
	switch {
	case errors.Is(err, unix.EAGAIN):
		c.readable = false
		return true
	case err != nil:
		c.close()
		return false
	case n == 0:
		if len(c.in) > 0 {
			c.handOff() // a partial head: net/http answers what it can
		} else {
			c.close()
		}
		return false
	}
	c.in = c.in[:len(c.in)+n]
	if n < len(free) && !c.hup { // drained (a later edge reports more)
		c.readable = false
	}
	return true
}

// readTLS decrypts what the session has into free, reading the socket
// when it needs more; false when the connection ended.
func (c *lconn) readTLS(free []byte) bool {
	n, err := c.tls.Read(free)
	c.in = c.in[:len(c.in)+n]
	var wb *wouldBlock
	switch {
	case err == nil:
		return true
	case errors.As(err, &wb):
	case n > 0: // the data, then the end
		c.mc.eof = true
		return true
	default:
		c.close()
		return false
	}
	if !c.rawReadable {
		c.readable = false
		return true
	}
	switch drained, err := c.readRaw(); {
	case errors.Is(err, unix.EAGAIN):
		c.rawReadable, c.readable = false, false
	case err != nil:
		c.close()
		return false
	case drained && !c.hup:
		c.rawReadable = false
	}
	return true
}

// readRaw reads what the socket has into the session's buffer (at the
// end, the session then reports it): whether that drained the socket, or
// the error.
func (c *lconn) readRaw() (bool, error) {
	m := c.mc
	if m.roff == len(m.in) {
		m.in, m.roff = m.in[:0], 0
	}
	if len(m.in) == cap(m.in) {
		m.in = grow(m.in)
	}
	raw := m.in[len(m.in):cap(m.in)]
	k, err := sysRead(c.fd, raw)
	if err != nil {
		return false, err
	}
	m.in = m.in[:len(m.in)+k]
	m.eof = m.eof || k == 0
	return k < len(raw), nil
}

// grow returns b with room for at least as much again (loopClientBuf at
// the least), its bytes kept.
func grow(b []byte) []byte {
	return append(b, make([]byte, max(cap(b), loopClientBuf))...)[:len(b)]
}

// request starts the request whose head is c.in[c.r:c.r+n].
func (c *lconn) request(n int) bool {
	c.deadline, c.headerWait = time.Time{}, false
	if !c.req.parse(c.in[c.r : c.r+n]) {
		c.handOff()
		return false
	}
	p := c.l.p
	e := p.routeFast(&c.req, c.tls != nil)
	if e == nil {
		c.handOff()
		return false
	}
	c.busy, c.headLen, c.e, c.retried = true, n, e, false
	c.start = time.Now()
	p.fastRequests.Add(1)
	e.Stats.Begin()
	c.be = e.Pool.Pick(nil)
	if c.be == nil {
		code, msg := failureAnswer(e, nil, failOther, nil)
		writeError(&c.out, &c.req, code, msg)
		c.finish(exchangeResult{status: code, keep: true})
		return !c.closed
	}
	c.send(false)
	return !c.closed
}

// send sends the request to c.be on a pooled connection (unless fresh) or
// a new one.
func (c *lconn) send(fresh bool) {
	l := c.l
	var b *bconn
	if !fresh {
		b = l.getIdle(c.be.Addr)
	}
	if b == nil {
		var err error
		if b, err = l.dial(c.be.Addr); err != nil {
			c.failed(failDial, err)
			return
		}
	}
	b.owner, c.bc = c, b
	l.p.writeRequest(&b.out, &c.req, c.in[c.r:c.r+c.headLen], c.remote, c.tls != nil)
	if !b.connecting {
		b.flush()
	}
}

// finish ends the request in flight with res; the answer is in c.out.
func (c *lconn) finish(res exchangeResult) {
	if c.be != nil {
		res.backend = c.be
		c.be.Release()
		c.be = nil
	}
	c.l.p.record(&c.req, c.e, res, c.start, c.remoteAddr)
	c.r += c.headLen
	c.busy, c.headLen, c.e, c.bc = false, 0, nil, nil
	if !res.keep || c.req.close || c.l.f.shutdown.Load() {
		c.closing = true
	}
}

// failed answers the request whose replica c.be failed, after one more
// try on another replica when it could not be reached.
func (c *lconn) failed(fail backendFailure, err error) {
	be, e := c.be, c.e
	c.bc = nil
	if next := failover(e, be, fail, err, c.retried); next != nil {
		c.be, c.retried = next, true
		c.send(false)
		return
	}
	c.be = nil
	code, msg := failureAnswer(e, be, fail, err)
	writeError(&c.out, &c.req, code, msg)
	c.finish(exchangeResult{status: code, keep: true, backend: be})
}

// backendLost closes b, which failed the request, and tries again on a
// fresh connection when a pooled one had been closed by the replica.
func (c *lconn) backendLost(b *bconn, fail backendFailure, err error) {
	reused := b.reused
	c.l.closeBackend(b)
	c.bc = nil
	if fail == failStale {
		if reused {
			c.send(true)
			return
		}
		fail = failOther
	}
	c.failed(fail, err)
}

// gone reports whether a client that shut its side has nothing more to
// say (a request pipelined before the close is not a departure).
func (c *lconn) gone() bool {
	if len(c.in) > c.r+c.headLen {
		return false // read already
	}
	if c.tls != nil {
		return c.goneTLS()
	}
	var b [1]byte
	n, _, err := unix.Recvfrom(c.fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	return n == 0 && err == nil || err != nil && !errors.Is(err, unix.EAGAIN)
}

// goneTLS decrypts what the client sent since its request: more data
// means it is still there; the end of the session (close_notify or EOF)
// means it left. c.in may grow but is not compacted: c.req points into it.
func (c *lconn) goneTLS() bool {
	for {
		if len(c.in) == cap(c.in) {
			c.in = grow(c.in)
		}
		n, err := c.tls.Read(c.in[len(c.in):cap(c.in)])
		c.in = c.in[:len(c.in)+n]
		var wb *wouldBlock
		switch {
		case n > 0:
			return false
		case !errors.As(err, &wb):
			return true
		}
		switch _, err := c.readRaw(); {
		case errors.Is(err, unix.EAGAIN):
			return false
		case err != nil:
			return true
		}
	}
}

// drop closes the connection, ending its request if one is in flight.
func (c *lconn) drop() {
	if c.busy {
		c.abort()
	} else {
		c.close()
	}
}

// abort ends the request of a client that left.
func (c *lconn) abort() {
	if c.bc != nil {
		c.l.closeBackend(c.bc)
	}
	c.out, c.off = c.out[:0], 0
	c.finish(exchangeResult{status: statusClientGone})
	c.close()
}

func (c *lconn) close() {
	if c.closed {
		return
	}
	c.closed = true
	c.l.socks[c.fd] = sockRef{}
	unix.Close(c.fd)
	c.l.clients--
}

// handOff gives the connection to the http.Server with what was read.
func (c *lconn) handOff() {
	prefix := bytes.Clone(c.in[c.r:])
	c.closed = true
	c.l.clients--
	conn, err := c.l.detach(c.fd) // closes c.fd, also on failure
	if err != nil {
		c.l.f.log.Warn("cannot hand a connection to net/http", zap.Error(err))
		return
	}
	pc := &prefixConn{Conn: conn, prefix: prefix}
	if c.tls != nil {
		pc.Conn, pc.tls = c.session(conn)
	}
	go func() {
		if !c.l.f.handoff.give(pc) {
			pc.Close()
		}
	}()
}

// answer forwards the answer in b.in when it is complete; true when the
// request ended (or left the loop), false when more must be read.
func (c *lconn) answer(b *bconn) bool {
	for {
		buf := b.in[b.r:]
		end := headEnd(buf)
		if end == 0 {
			if len(buf) > maxHead {
				c.backendLost(b, failOther, errors.New("response head too large"))
				return true
			}
			return false
		}
		c.resp.head = buf[:end]
		if err := c.resp.parse(); err != nil {
			if !b.informed && b.reused {
				// Bytes a replica sent after an earlier answer (a body
				// after HEAD or 204) spoil the connection, not the request.
				c.backendLost(b, failStale, err)
			} else {
				c.backendLost(b, failOther, err)
			}
			return true
		}
		if c.resp.status == http.StatusSwitchingProtocols {
			c.backendLost(b, failOther, errors.New("replica switched protocols without being asked to"))
			return true
		}
		if c.resp.status < 200 { // 1xx: the final answer follows
			b.r += end
			b.informed = true
			continue
		}
		bodiless, closeDelimited := c.resp.framing(&c.req)
		var length int
		if !bodiless {
			if closeDelimited || c.resp.chunked || c.resp.length > loopMaxBody {
				c.demote(b, b.r+end)
				return true
			}
			length = int(c.resp.length)
		}
		if len(buf) < end+length {
			b.want = b.r + end + length
			b.headDone, b.deadline = true, time.Time{}
			return false
		}
		c.resp.writeHead(&c.out, c.req.close || c.l.f.shutdown.Load())
		c.out = append(c.out, buf[end:end+length]...)
		reusable := !c.resp.close && len(buf) == end+length && !b.hup
		c.l.release(b, reusable)
		c.finish(exchangeResult{status: c.resp.status, bytes: int64(length), keep: true})
		return true
	}
}

// demote gives the client connection and the replica connection, whose
// answer's head ends at b.in[bodyStart], to a goroutine that streams the
// body and serves the connection from then on.
func (c *lconn) demote(b *bconn, bodyStart int) {
	l := c.l
	if l.f.force.Load() { // Shutdown ran out of time: no new goroutines
		c.abort()
		return
	}
	head := bytes.Clone(c.in[c.r : c.r+c.headLen])
	clientRest := bytes.Clone(c.in[c.r+c.headLen:])
	respHead := bytes.Clone(b.in[b.r:bodyStart])
	body := bytes.Clone(b.in[bodyStart:])
	addr := b.addr
	c.closed, b.closed = true, true
	l.clients--
	cc, cerr := l.detach(c.fd)
	bc, berr := l.detach(b.fd)
	if cerr != nil || berr != nil {
		for _, conn := range []net.Conn{cc, bc} {
			if conn != nil {
				conn.Close()
			}
		}
		l.f.log.Warn("cannot move a connection off the event loop", zap.Error(errors.Join(cerr, berr)))
		c.finish(exchangeResult{status: statusClientGone})
		return
	}
	fc := &frontConn{f: l.f, c: &prefixConn{Conn: cc, prefix: clientRest}, remote: c.remote, head: head}
	if c.tls != nil {
		sess, st := c.session(cc)
		fc.c, fc.tls = &prefixConn{Conn: sess, prefix: clientRest, tls: st}, st
	}
	fc.req.parse(fc.head)
	fc.resp.head = respHead
	if err := fc.resp.parse(); err != nil { // parsed already: cannot fail
		panic(fmt.Sprintf("reparse of a response head: %v", err))
	}
	pc := &h1Conn{c: &prefixConn{Conn: bc, prefix: body}}
	pc.br = bufio.NewReaderSize(pc.c, 16<<10)
	pc.bw = bufio.NewWriterSize(pc.c, 16<<10)
	l.f.adopt(fc, pc, addr, c.e, c.be, c.start, cc)
}

// session returns the TLS session of a connection leaving the loop, now
// over conn, and its state.
func (c *lconn) session(conn net.Conn) (net.Conn, *tls.ConnectionState) {
	c.mc.conn = conn
	st := c.tls.ConnectionState()
	return c.tls, &st
}

// memConn is what a TLS session on an event loop reads from and writes
// to: buffers the loop fills from the socket and drains to it. Reading
// with nothing buffered fails with wouldBlock, which crypto/tls takes as
// temporary (it keeps a partial record for the next read). Before the
// handshake, and after the connection leaves the loop, it is conn.
type memConn struct {
	conn  net.Conn
	in    []byte // raw bytes from the socket; in[roff:] not yet read
	roff  int
	eof   bool
	out   outBuf // raw bytes for the socket; out[off:] not yet written
	off   int
	laddr net.Addr
	raddr net.Addr
}

// wouldBlock is a read of a memConn with nothing buffered.
type wouldBlock struct{}

func (*wouldBlock) Error() string   { return "no data buffered" }
func (*wouldBlock) Timeout() bool   { return false }
func (*wouldBlock) Temporary() bool { return true }

func (m *memConn) Read(p []byte) (int, error) {
	if m.roff < len(m.in) {
		n := copy(p, m.in[m.roff:])
		m.roff += n
		return n, nil
	}
	if m.conn != nil {
		return m.conn.Read(p)
	}
	if m.eof {
		return 0, io.EOF
	}
	return 0, &wouldBlock{}
}

func (m *memConn) Write(p []byte) (int, error) {
	if m.conn != nil {
		if m.off < len(m.out) { // records the loop had not sent yet go first
			if _, err := m.conn.Write(m.out[m.off:]); err != nil {
				return 0, err
			}
			m.out, m.off = nil, 0
		}
		return m.conn.Write(p)
	}
	m.out = append(m.out, p...)
	return len(p), nil
}

func (m *memConn) Close() error {
	if m.conn != nil {
		return m.conn.Close()
	}
	return nil
}

func (m *memConn) LocalAddr() net.Addr {
	if m.conn != nil {
		return m.conn.LocalAddr()
	}
	return m.laddr
}

func (m *memConn) RemoteAddr() net.Addr {
	if m.conn != nil {
		return m.conn.RemoteAddr()
	}
	return m.raddr
}

func (m *memConn) SetDeadline(t time.Time) error {
	if m.conn != nil {
		return m.conn.SetDeadline(t)
	}
	return nil
}

func (m *memConn) SetReadDeadline(t time.Time) error {
	if m.conn != nil {
		return m.conn.SetReadDeadline(t)
	}
	return nil
}

func (m *memConn) SetWriteDeadline(t time.Time) error {
	if m.conn != nil {
		return m.conn.SetWriteDeadline(t)
	}
	return nil
}

// toLoop moves a TLS connection whose handshake is done from its goroutine
// to an event loop; false when it cannot (the goroutine keeps it).
func (f *Front) toLoop(fc *frontConn, tc *tls.Conn, mc *memConn) bool {
	raw, ok := mc.conn.(*net.TCPConn)
	if !ok || len(f.loops) == 0 {
		return false
	}
	// Under f.mu: a forced Shutdown must find the connection either among
	// fc's (and close it) or on a loop.
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.force.Load() {
		return false
	}
	ap := raw.RemoteAddr().(*net.TCPAddr).AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) // an IPv4 client of a dual-stack listener
	rc, err := raw.SyscallConn()
	if err != nil {
		return false
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || derr != nil {
		return false
	}
	mc.laddr, mc.raddr = raw.LocalAddr(), raw.RemoteAddr()
	mc.conn = nil
	raw.Close() // the duplicate stays open
	if !f.nextLoop().add(accepted{fd: fd, addr: ap, tls: tc, mc: mc}) {
		unix.Close(fd)
	}
	delete(f.conns, fc) // the loop's now; its goroutine ends with untrack
	return true
}

// --- replica connections ---

// bconn is a connection to a replica owned by an event loop.
type bconn struct {
	l    *eventLoop
	fd   int
	addr string

	readable, writable bool
	hup                bool
	closed             bool
	connecting         bool
	reused             bool
	idleAt             time.Time

	owner    *lconn // the client whose request it carries; nil when pooled
	out      outBuf // the request
	off      int
	awaiting bool      // the request was sent
	sent     time.Time // when
	deadline time.Time // connect or response timeout
	in       []byte    // the answer; in[r:] not consumed
	r        int
	want     int  // bytes the answer needs in in
	informed bool // a 1xx answer came first
	headDone bool // the final answer's head came; its body is awaited
}

func (b *bconn) event(ev uint32) {
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		b.readable = true
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		b.writable = true
	}
	if ev&unix.EPOLLRDHUP != 0 {
		b.hup = true
	}
	c := b.owner
	if c == nil {
		// Pooled: bytes or a close from the replica spoil the connection.
		if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			b.l.dropIdle(b)
		}
		return
	}
	if b.connecting {
		if !b.writable {
			return
		}
		b.connecting = false
		if errno, err := unix.GetsockoptInt(b.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || errno != 0 {
			if err == nil {
				err = unix.Errno(errno)
			}
			c.backendLost(b, failDial, &net.OpError{Op: "dial", Net: "tcp", Addr: tcpAddr(b.addr), Err: os.NewSyscallError("connect", err)})
			c.run()
			return
		}
	}
	switch {
	case !b.awaiting:
		b.flush()
	case b.readable:
		b.receive()
	}
	c.run()
}

// flush writes the request; once written it awaits the answer.
func (b *bconn) flush() {
	for b.off < len(b.out) {
		if !b.writable {
			return
		}
		n, err := sysWrite(b.fd, b.out[b.off:])
		if errors.Is(err, unix.EAGAIN) {
			b.writable = false
			return
		}
		if err != nil {
			b.owner.backendLost(b, failStale, err)
			return
		}
		b.off += n
	}
	b.out, b.off = b.out[:0], 0
	b.awaiting, b.sent = true, time.Now()
	b.deadline = time.Time{}
	if t := b.l.p.cfg.ResponseTimeout; t > 0 {
		b.deadline = b.sent.Add(t)
	}
	if b.readable {
		b.receive()
	}
}

// receive reads the answer and forwards it once complete.
func (b *bconn) receive() {
	c := b.owner
	for {
		if c.answer(b) {
			return
		}
		if !b.readable {
			return
		}
		if b.r > 0 && b.r == len(b.in) {
			b.in, b.r, b.want = b.in[:0], 0, 0
		}
		if need := max(b.want, len(b.in)+1); need > cap(b.in) {
			b.in = append(make([]byte, 0, max(need, 2*cap(b.in))), b.in...)
		}
		free := b.in[len(b.in):cap(b.in)]
		n, err := sysRead(b.fd, free)
		switch {
		case errors.Is(err, unix.EAGAIN):
			b.readable = false
			return
		case err != nil || n == 0:
			eof := err == nil
			if eof {
				err = errors.New("replica closed the connection before its answer ended")
			}
			// As on a goroutine: a connection that ends or resets before any
			// of the answer, or a pooled one that fails in the first head, was
			// stale (a pooled one is tried again on a fresh connection).
			stale := b.reused && !b.informed && !b.headDone
			if len(b.in) == 0 && !b.informed {
				stale = eof || isReset(err)
			}
			if stale {
				c.backendLost(b, failStale, err)
			} else {
				c.backendLost(b, failOther, err)
			}
			return
		}
		b.in = b.in[:len(b.in)+n]
		if n < len(free) && !b.hup {
			b.readable = false
		}
	}
}

// getIdle returns a pooled connection to addr, or nil.
func (l *eventLoop) getIdle(addr string) *bconn {
	conns := l.idle[addr]
	for len(conns) > 0 {
		b := conns[len(conns)-1]
		conns = conns[:len(conns)-1]
		if l.now.Sub(b.idleAt) < l.p.cfg.BackendIdleTimeout {
			l.setIdle(addr, conns)
			b.reused = true
			return b
		}
		l.closeBackend(b)
	}
	l.setIdle(addr, nil)
	return nil
}

// setIdle sets the pooled connections to addr.
func (l *eventLoop) setIdle(addr string, conns []*bconn) {
	if len(conns) == 0 {
		delete(l.idle, addr)
	} else {
		l.idle[addr] = conns
	}
}

// release ends b's request: back to the pool or closed.
func (l *eventLoop) release(b *bconn, reusable bool) {
	b.owner = nil
	b.awaiting, b.informed, b.headDone = false, false, false
	b.in, b.r, b.want = b.in[:0], 0, 0
	b.deadline = time.Time{}
	if cap(b.in) > loopBackendBuf {
		b.in = make([]byte, 0, loopBackendBuf)
	}
	if !reusable || len(l.idle[b.addr]) >= l.p.cfg.IdleBackendConns || l.f.shutdown.Load() {
		l.closeBackend(b)
		return
	}
	b.idleAt = l.now
	l.idle[b.addr] = append(l.idle[b.addr], b)
}

// dropIdle closes a pooled connection the replica closed or wrote to.
func (l *eventLoop) dropIdle(b *bconn) {
	l.setIdle(b.addr, slices.DeleteFunc(l.idle[b.addr], func(x *bconn) bool { return x == b }))
	l.closeBackend(b)
}

func (l *eventLoop) closeBackend(b *bconn) {
	if b.closed {
		return
	}
	b.closed = true
	b.owner = nil
	l.socks[b.fd] = sockRef{}
	unix.Close(b.fd)
}

// dial starts connecting to addr (an ip:port).
func (l *eventLoop) dial(addr string) (*bconn, error) {
	sa, ok := l.addrs[addr]
	if !ok {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, &dialError{err: fmt.Errorf("replica address %q is not ip:port: %w", addr, err)}
		}
		if ap.Addr().Is4() || ap.Addr().Is4In6() {
			sa = &unix.SockaddrInet4{Addr: ap.Addr().Unmap().As4(), Port: int(ap.Port())}
		} else {
			sa = &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
		}
		if len(l.addrs) > 4096 {
			clear(l.addrs)
		}
		l.addrs[addr] = sa
	}
	domain := unix.AF_INET
	if _, v6 := sa.(*unix.SockaddrInet6); v6 {
		domain = unix.AF_INET6
	}
	opErr := func(op string, err error) error {
		return &dialError{err: &net.OpError{Op: "dial", Net: "tcp", Addr: tcpAddr(addr), Err: os.NewSyscallError(op, err)}}
	}
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, opErr("socket", err)
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)    //nolint:errcheck // best effort
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)    //nolint:errcheck // best effort
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 30)  //nolint:errcheck // best effort
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 30) //nolint:errcheck // best effort
	b := &bconn{l: l, fd: fd, addr: addr, in: make([]byte, 0, loopBackendBuf), writable: true}
	switch err := unix.Connect(fd, sa); {
	case errors.Is(err, unix.EINPROGRESS):
		b.connecting, b.writable = true, false
		if t := l.p.cfg.ConnectTimeout; t > 0 {
			b.deadline = time.Now().Add(t)
		}
	case err != nil:
		unix.Close(fd)
		return nil, opErr("connect", err)
	}
	if err := l.register(fd, nil, b); err != nil {
		unix.Close(fd)
		return nil, &dialError{err: err}
	}
	return b, nil
}

// --- system calls on non-blocking sockets, which never block ---

func sysRead(fd int, p []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func sysWrite(fd int, p []byte) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)),
		unix.MSG_NOSIGNAL, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// outBuf collects bytes to write.
type outBuf []byte

func (b *outBuf) Write(p []byte) (int, error) {
	*b = append(*b, p...)
	return len(p), nil
}

func (b *outBuf) WriteByte(c byte) error {
	*b = append(*b, c)
	return nil
}

func (b *outBuf) WriteString(s string) (int, error) {
	*b = append(*b, s...)
	return len(s), nil
}
