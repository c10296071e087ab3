package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
)

// Handler runs one QMP command. args is the request's "arguments" object
// ("{}" when the client sent none); decode it with Decode, or wrap a typed
// function with Typed or NoArgs. The returned value is encoded with
// encoding/json as the "return" member (nil becomes {}); a returned error
// becomes the "error" member: an *Error (or an error wrapping one) keeps its
// class and text, anything else is a GenericError with err.Error().
//
// ctx is cancelled when the client disconnects or the server closes; it is
// not meant for work that outlives the command. A panic in a handler is
// recovered and reported to the client as a GenericError.
type Handler func(ctx context.Context, args json.RawMessage) (any, error)

// VersionTriple is the numeric version in a QMP greeting and query-version.
type VersionTriple struct {
	Major int `json:"major"`
	Minor int `json:"minor"`
	Micro int `json:"micro"`
}

// VersionInfo is the "version" member of the greeting and the result of
// query-version.
type VersionInfo struct {
	QEMU    VersionTriple `json:"qemu"`
	Package string        `json:"package"`
}

// DefaultQEMUVersion is the QEMU release whose QMP dialect we follow; it is
// what clients see unless Config.Version says otherwise.
var DefaultQEMUVersion = VersionTriple{Major: 7, Minor: 2, Micro: 0}

// DefaultEventQueue is the default number of messages (responses and events)
// queued for one client before an event overflows it.
const DefaultEventQueue = 256

// Config configures a Server. The zero value is usable.
type Config struct {
	// Version is reported in the greeting and by query-version. A zero QEMU
	// triple means DefaultQEMUVersion; an empty Package means "wasmvmm".
	Version VersionInfo
	// MaxMessageSize limits one incoming JSON message, in bytes
	// (DefaultMaxMessageSize when zero).
	MaxMessageSize int
	// QueueLength is how many outgoing messages may wait for one client
	// (DefaultEventQueue when zero). See Emit for what happens on overflow.
	QueueLength int
	// WriteTimeout bounds one write to a client; a client that does not read
	// for that long is disconnected. Zero means 10 seconds.
	WriteTimeout time.Duration
	// Logger receives connection-level diagnostics (nil: discarded).
	Logger hclog.Logger
}

// Server is a QMP server. Create it with NewServer, register commands, then
// Listen on one or more unix sockets. All methods are safe for concurrent use.
//
// Commands from all clients run one at a time, in arrival order per client,
// like QEMU's single dispatcher: a handler never runs concurrently with
// another handler, so handlers may share state without their own locking
// against each other (they still need it against other goroutines of the
// machine). A handler must therefore return promptly and run long work (a
// migration) in the background, reporting progress through queries and events.
type Server struct {
	cfg      Config
	log      hclog.Logger
	greeting []byte

	execMu sync.Mutex // serializes command handlers

	mu        sync.Mutex
	commands  map[string]Handler
	clients   map[*session]struct{}
	listeners []*socketListener
	closed    bool
	nextID    uint64

	wg sync.WaitGroup // accept loops and client goroutines
}

// NewServer returns a Server with the built-in commands qmp_capabilities,
// query-commands and query-version registered.
func NewServer(cfg Config) *Server {
	if cfg.Version.QEMU == (VersionTriple{}) {
		cfg.Version.QEMU = DefaultQEMUVersion
	}
	if cfg.Version.Package == "" {
		cfg.Version.Package = "wasmvmm"
	}
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = DefaultMaxMessageSize
	}
	if cfg.QueueLength <= 0 {
		cfg.QueueLength = DefaultEventQueue
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	s := &Server{
		cfg:      cfg,
		log:      log,
		commands: make(map[string]Handler),
		clients:  make(map[*session]struct{}),
	}
	greeting := map[string]any{"QMP": map[string]any{
		"version":      cfg.Version,
		"capabilities": []string{},
	}}
	s.greeting = mustEncode(greeting)
	s.commands["qmp_capabilities"] = Typed(s.qmpCapabilities)
	s.commands["query-commands"] = NoArgs(s.queryCommands)
	s.commands["query-version"] = NoArgs(func(context.Context) (any, error) {
		return s.cfg.Version, nil
	})
	return s
}

// Register adds a command. It fails if the name is empty or already taken
// (the built-ins included). Commands may be registered at any time; a client
// sees them from its next request on.
func (s *Server) Register(name string, h Handler) error {
	if name == "" {
		return errors.New("qmp: register: empty command name")
	}
	if h == nil {
		return fmt.Errorf("qmp: register %q: nil handler", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.commands[name]; dup {
		return fmt.Errorf("qmp: register %q: command already registered", name)
	}
	s.commands[name] = h
	return nil
}

// Commands returns the registered command names, sorted.
func (s *Server) Commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.commands))
	for name := range s.commands {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

func (s *Server) lookup(name string) Handler {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.commands[name]
}

// Listen creates a unix socket at path, mode 0600, and starts accepting
// clients on it in the background. A stale socket at path (nobody accepting)
// is replaced; a live one, or a file that is not a socket, is refused. The
// socket file is removed by Close.
func (s *Server) Listen(path string) error {
	sl, err := listenUnix(path)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		sl.close()
		return errors.New("qmp: listen: server closed")
	}
	s.listeners = append(s.listeners, sl)
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		s.acceptLoop(sl.l)
	}()
	return nil
}

// Serve accepts clients on l until l fails or the server is closed. It is
// for listeners made elsewhere (an inherited fd, a test); Listen is the usual
// way. The server closes l on Close.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("qmp: serve: server closed")
	}
	s.listeners = append(s.listeners, &socketListener{l: l})
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	return s.acceptLoop(l)
}

func (s *Server) acceptLoop(l net.Listener) error {
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isClosed() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and friends: back off instead of spinning.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff < time.Second {
				backoff *= 2
			}
			s.log.Warn("qmp accept failed", "error", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !s.startSession(nc) {
			nc.Close()
			return nil
		}
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close stops accepting, disconnects every client, waits for running
// handlers to return and removes the socket files. It is idempotent. Close
// must not be called from inside a handler (it waits for handlers); use
// AfterReply for that.
// closeFlushTimeout bounds how long Close waits for queued messages.
const closeFlushTimeout = time.Second

func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	listeners := s.listeners
	s.listeners = nil
	clients := make([]*session, 0, len(s.clients))
	for c := range s.clients {
		clients = append(clients, c)
	}
	s.mu.Unlock()

	var errs []error
	for _, sl := range listeners {
		if err := sl.close(); err != nil {
			errs = append(errs, err)
		}
	}
	// Let queued replies and events reach each client, briefly.
	deadline := time.Now().Add(closeFlushTimeout)
	for _, c := range clients {
		for c.unsent.Load() > 0 && time.Now().Before(deadline) {
			select {
			case <-c.done:
				c.unsent.Store(0)
			case <-time.After(time.Millisecond):
			}
		}
	}
	for _, c := range clients {
		c.shutdown()
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

// ClientCount is the number of connected clients.
func (s *Server) ClientCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.clients)
}

// eventTimestamp is QEMU's event timestamp: wall-clock time since the epoch.
type eventTimestamp struct {
	Seconds      int64 `json:"seconds"`
	Microseconds int64 `json:"microseconds"`
}

type eventMessage struct {
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data,omitempty"`
	Timestamp eventTimestamp  `json:"timestamp"`
}

// Emit sends an asynchronous event to every client in command mode, stamped
// with the current wall-clock time. data (encoded with encoding/json; nil
// omits the "data" member) should be a JSON object, as QMP requires.
//
// Emit never blocks on a client: each client has a bounded queue of outgoing
// messages (Config.QueueLength). A client whose queue is full when an event
// arrives is not reading its socket; it is disconnected rather than allowed
// to stall the machine or to miss events silently. Emit fails only if data
// cannot be encoded as a JSON object.
func (s *Server) Emit(name string, data any) error {
	return s.EmitAt(name, data, time.Now())
}

// EmitAt is Emit with an explicit timestamp (when the event happened).
func (s *Server) EmitAt(name string, data any, when time.Time) error {
	msg := eventMessage{Event: name, Timestamp: eventTimestamp{
		Seconds:      when.Unix(),
		Microseconds: int64(when.Nanosecond() / 1000),
	}}
	if data != nil {
		raw, err := json.Marshal(data)
		if err != nil {
			return fmt.Errorf("qmp: emit %s: encode data: %w", name, err)
		}
		if len(raw) == 0 || raw[0] != '{' {
			return fmt.Errorf("qmp: emit %s: data must encode to a JSON object, not %.20s", name, raw)
		}
		msg.Data = raw
	}
	encoded, err := encodeASCII(msg)
	if err != nil {
		return fmt.Errorf("qmp: emit %s: %w", name, err)
	}
	s.mu.Lock()
	targets := make([]*session, 0, len(s.clients))
	for c := range s.clients {
		if c.commandMode.Load() {
			targets = append(targets, c)
		}
	}
	s.mu.Unlock()
	for _, c := range targets {
		if !c.tryEnqueue(outMessage{data: encoded}) {
			s.log.Warn("qmp client not reading; event queue full, disconnecting", "client", c.id, "event", name)
			c.shutdown()
		}
	}
	return nil
}

// session is one connected client.
type session struct {
	// unsent counts messages queued but not yet written, so Close can let
	// the last events (SHUTDOWN after quit) reach the client.
	unsent atomic.Int64

	s           *Server
	id          uint64
	nc          net.Conn
	out         chan outMessage
	done        chan struct{}
	closeOnce   sync.Once
	commandMode atomic.Bool
	ctx         context.Context
	cancel      context.CancelFunc
}

// outMessage is one line to write to a client, and what to run once it has
// been written (or dropped).
type outMessage struct {
	data  []byte
	after []func()
}

func (s *Server) startSession(nc net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.nextID++
	ctx, cancel := context.WithCancel(context.Background())
	c := &session{
		s:      s,
		id:     s.nextID,
		nc:     nc,
		out:    make(chan outMessage, s.cfg.QueueLength),
		done:   make(chan struct{}),
		ctx:    ctx,
		cancel: cancel,
	}
	s.clients[c] = struct{}{}
	s.wg.Add(2)
	go c.writeLoop()
	go c.readLoop()
	return true
}

// shutdown disconnects the client; its goroutines exit soon after.
func (c *session) shutdown() {
	c.closeOnce.Do(func() {
		close(c.done)
		c.cancel()
		c.nc.Close()
		c.s.mu.Lock()
		delete(c.s.clients, c)
		c.s.mu.Unlock()
	})
}

// enqueue queues a message, waiting for room; it gives up (running the
// message's after functions) if the client goes away.
func (c *session) enqueue(m outMessage) {
	c.unsent.Add(1)
	select {
	case c.out <- m:
	case <-c.done:
		c.unsent.Add(-1)
		c.runAfter(m.after)
	}
}

// tryEnqueue queues a message if there is room.
func (c *session) tryEnqueue(m outMessage) bool {
	select {
	case <-c.done:
		return true // already gone; nothing to report
	default:
	}
	c.unsent.Add(1)
	select {
	case c.out <- m:
		return true
	default:
		c.unsent.Add(-1)
		return false
	}
}

// runAfter starts the AfterReply functions of a response, each in its own
// goroutine; a panic in one is logged, not fatal.
func (c *session) runAfter(fns []func()) {
	for _, fn := range fns {
		go func() {
			defer func() {
				if r := recover(); r != nil {
					c.s.log.Error("qmp after-reply function panicked", "panic", r, "stack", string(debug.Stack()))
				}
			}()
			fn()
		}()
	}
}

func (c *session) writeLoop() {
	defer c.s.wg.Done()
	defer func() {
		// Drop whatever is left but honour after functions.
		for {
			select {
			case m := <-c.out:
				c.runAfter(m.after)
			default:
				return
			}
		}
	}()
	for {
		select {
		case <-c.done:
			return
		case m := <-c.out:
			c.nc.SetWriteDeadline(time.Now().Add(c.s.cfg.WriteTimeout))
			_, err := c.nc.Write(m.data)
			c.unsent.Add(-1)
			c.runAfter(m.after)
			if err != nil {
				c.s.log.Debug("qmp client write failed", "client", c.id, "error", err)
				c.shutdown()
				return
			}
		}
	}
}

func (c *session) readLoop() {
	defer c.s.wg.Done()
	defer c.shutdown()
	c.enqueue(outMessage{data: c.s.greeting})
	f := newFramer(c.s.cfg.MaxMessageSize)
	buf := make([]byte, 32<<10)
	for {
		n, err := c.nc.Read(buf)
		if n > 0 {
			f.feed(buf[:n], c.handleFrame)
		}
		if err != nil {
			return
		}
		select {
		case <-c.done:
			return
		default:
		}
	}
}

// afterKey is the context key under which a handler finds its reply hooks.
type afterKey struct{}

// replyHooks collects AfterReply functions for one command.
type replyHooks struct {
	fns         []func()
	commandMode bool // set by qmp_capabilities on success
}

// AfterReply arranges for fn to run, in a new goroutine, once the response
// to the command being handled has been written to the client's socket (or
// the client has gone away). It is how a handler for "quit" answers before
// the server or the process goes down:
//
//	qmp.AfterReply(ctx, func() { srv.Close(); vm.Shutdown() })
//
// It reports false (and does nothing) when ctx is not a handler's context.
func AfterReply(ctx context.Context, fn func()) bool {
	h, ok := ctx.Value(afterKey{}).(*replyHooks)
	if !ok || fn == nil {
		return false
	}
	h.fns = append(h.fns, fn)
	return true
}

type response struct {
	Return json.RawMessage `json:"return,omitempty"`
	Error  *Error          `json:"error,omitempty"`
	ID     json.RawMessage `json:"id,omitempty"`
}

func (c *session) handleFrame(fr frameResult) {
	if fr.err != nil {
		c.reply(response{Error: fr.err}, nil)
		return
	}
	req, id, qerr := ParseRequest(fr.msg)
	if qerr != nil {
		c.reply(response{Error: qerr, ID: id}, nil)
		return
	}
	inCommandMode := c.commandMode.Load()
	if !inCommandMode && req.Execute != "qmp_capabilities" {
		c.reply(response{ID: req.ID, Error: Errorf(ClassCommandNotFound,
			"Expecting capabilities negotiation with 'qmp_capabilities'")}, nil)
		return
	}
	h := c.s.lookup(req.Execute)
	if h == nil {
		c.reply(response{ID: req.ID, Error: Errorf(ClassCommandNotFound,
			"The command %s has not been found", req.Execute)}, nil)
		return
	}
	hooks := &replyHooks{}
	ctx := context.WithValue(c.ctx, afterKey{}, hooks)
	ctx = context.WithValue(ctx, sessionKey{}, c)
	result, err := c.s.run(ctx, req.Execute, h, req.Arguments)
	resp := response{ID: req.ID}
	if err != nil {
		resp.Error = toQMPError(err)
	} else {
		raw, encErr := encodeResult(result)
		if encErr != nil {
			resp.Error = genericf("internal error: encoding the result of %s: %v", req.Execute, encErr)
		} else {
			resp.Return = raw
		}
	}
	c.reply(resp, hooks.fns)
	if hooks.commandMode && resp.Error == nil {
		// Only after the reply is queued: no event may overtake it.
		c.commandMode.Store(true)
	}
}

// run calls a handler under the dispatcher lock, turning a panic into an error.
func (s *Server) run(ctx context.Context, name string, h Handler, args json.RawMessage) (result any, err error) {
	s.execMu.Lock()
	defer s.execMu.Unlock()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("qmp command panicked", "command", name, "panic", r, "stack", string(debug.Stack()))
			result = nil
			err = genericf("command %s failed: internal error: %v", name, r)
		}
	}()
	return h(ctx, args)
}

func toQMPError(err error) *Error {
	var qerr *Error
	if errors.As(err, &qerr) && qerr != nil {
		return qerr
	}
	return genericf("%s", err.Error())
}

func encodeResult(result any) (json.RawMessage, error) {
	if result == nil {
		return json.RawMessage("{}"), nil
	}
	raw, err := json.Marshal(result)
	if err != nil {
		return nil, err
	}
	if string(raw) == "null" {
		return json.RawMessage("{}"), nil
	}
	return raw, nil
}

func (c *session) reply(r response, after []func()) {
	data, err := encodeASCII(r)
	if err != nil {
		data, _ = encodeASCII(response{ID: r.ID, Error: genericf("internal error: encoding response: %v", err)})
	}
	c.enqueue(outMessage{data: data, after: after})
}

// sessionKey is the context key for the current client.
type sessionKey struct{}

// qmpCapabilitiesArgs are the arguments of qmp_capabilities.
type qmpCapabilitiesArgs struct {
	Enable []string `json:"enable,omitempty"`
}

// knownCapabilities are the capabilities QEMU defines (QMPCapability).
var knownCapabilities = map[string]bool{"oob": true}

func (s *Server) qmpCapabilities(ctx context.Context, args qmpCapabilitiesArgs) (any, error) {
	c, _ := ctx.Value(sessionKey{}).(*session)
	if c == nil {
		return nil, genericf("internal error: qmp_capabilities outside a client session")
	}
	if c.commandMode.Load() {
		return nil, Errorf(ClassCommandNotFound, "Capabilities negotiation is already complete, command ignored")
	}
	var unavailable []string
	for _, capName := range args.Enable {
		if !knownCapabilities[capName] {
			// QEMU names a list element "null" here (its enum visitor gets
			// no name for list elements); we say the same.
			return nil, genericf("Parameter 'null' does not accept value '%s'", capName)
		}
		// We offer no capability, so every known one is unavailable.
		unavailable = append(unavailable, capName)
	}
	if len(unavailable) > 0 {
		return nil, genericf("Capability %s not available", strings.Join(unavailable, ", "))
	}
	if h, ok := ctx.Value(afterKey{}).(*replyHooks); ok {
		h.commandMode = true
	}
	return nil, nil
}

// CommandInfo is one element of the query-commands result.
type CommandInfo struct {
	Name string `json:"name"`
}

func (s *Server) queryCommands(context.Context) (any, error) {
	names := s.Commands()
	out := make([]CommandInfo, len(names))
	for i, n := range names {
		out[i] = CommandInfo{Name: n}
	}
	return out, nil
}

// encodeASCII encodes v as one line of JSON in pure ASCII (non-ASCII
// characters escaped as \uXXXX, as QEMU sends them), ending in CRLF.
func encodeASCII(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(raw)+2)
	for i := 0; i < len(raw); {
		b := raw[i]
		if b < 0x80 {
			out = append(out, b)
			i++
			continue
		}
		r, size := utf8.DecodeRune(raw[i:])
		if r > 0xFFFF {
			r -= 0x10000
			out = fmt.Appendf(out, `\u%04x\u%04x`, 0xD800+(r>>10), 0xDC00+(r&0x3FF))
		} else {
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		i += size
	}
	return append(out, '\r', '\n'), nil
}

func mustEncode(v any) []byte {
	b, err := encodeASCII(v)
	if err != nil {
		// Only fixed, known-good values are passed here.
		return []byte("{}\r\n")
	}
	return b
}
