package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Greeting is what a QMP server announces on connection.
type Greeting struct {
	Version      VersionInfo `json:"version"`
	Capabilities []string    `json:"capabilities"`
}

// Event is an asynchronous QMP event received by a Client.
type Event struct {
	// Name is the event name, e.g. "STOP".
	Name string
	// Data is the event's "data" member (nil when absent).
	Data json.RawMessage
	// Timestamp is when the server says the event happened.
	Timestamp time.Time
}

// clientEventBuffer is how many events a Client holds for a slow reader of
// Events before it drops new ones.
const clientEventBuffer = 256

// Client is a QMP client for tools (the wasmvmm CLI, tests): it connects,
// negotiates capabilities, runs commands and delivers events. Commands may
// be executed from several goroutines at once; responses are matched by id.
type Client struct {
	conn     net.Conn
	greeting Greeting

	writeMu sync.Mutex

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan clientReply
	readErr error

	events  chan Event
	dropped atomic.Uint64
	done    chan struct{}
}

type clientReply struct {
	ret json.RawMessage
	err error
}

// Dial connects to the QMP unix socket at path, reads the greeting and
// negotiates capabilities (none are enabled). ctx bounds the whole handshake.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
	}
	c, err := NewClient(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: %s: %w", path, err)
	}
	return c, nil
}

// NewClient runs the QMP handshake on an established connection and returns
// a client that owns it.
func NewClient(ctx context.Context, conn net.Conn) (*Client, error) {
	// Cancelling ctx interrupts the handshake.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	dec := json.NewDecoder(conn)
	var hello struct {
		QMP *Greeting `json:"QMP"`
	}
	if err := dec.Decode(&hello); err != nil {
		return nil, fmt.Errorf("read greeting: %w", err)
	}
	if hello.QMP == nil {
		return nil, errors.New("read greeting: no \"QMP\" member")
	}
	c := &Client{
		conn:     conn,
		greeting: *hello.QMP,
		pending:  make(map[uint64]chan clientReply),
		events:   make(chan Event, clientEventBuffer),
		done:     make(chan struct{}),
	}
	go c.readLoop(dec)
	if _, err := c.Execute(ctx, "qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("capabilities negotiation: %w", err)
	}
	if !stop() {
		// ctx ended just as the handshake finished: the deadline may be set.
		c.Close()
		return nil, fmt.Errorf("capabilities negotiation: %w", context.Cause(ctx))
	}
	return c, nil
}

// Greeting returns the server's greeting.
func (c *Client) Greeting() Greeting { return c.greeting }

// Events delivers the server's events in order. The channel is closed when
// the connection ends. If the reader falls more than a buffer behind, new
// events are dropped and counted by DroppedEvents.
func (c *Client) Events() <-chan Event { return c.events }

// DroppedEvents counts events dropped because Events was not read.
func (c *Client) DroppedEvents() uint64 { return c.dropped.Load() }

// Execute runs a command and returns its "return" member. args (encoded with
// encoding/json, nil for none) must encode to a JSON object. A QMP error
// response is returned as an *Error.
func (c *Client) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	req := struct {
		Execute   string          `json:"execute"`
		Arguments json.RawMessage `json:"arguments,omitempty"`
		ID        uint64          `json:"id"`
	}{Execute: command}
	if args != nil {
		raw, err := json.Marshal(args)
		if err != nil {
			return nil, fmt.Errorf("qmp: %s: encode arguments: %w", command, err)
		}
		req.Arguments = raw
	}
	ch := make(chan clientReply, 1)
	c.mu.Lock()
	if c.readErr != nil {
		err := c.readErr
		c.mu.Unlock()
		return nil, fmt.Errorf("qmp: %s: %w", command, err)
	}
	c.nextID++
	req.ID = c.nextID
	c.pending[req.ID] = ch
	c.mu.Unlock()

	line, err := json.Marshal(req)
	if err != nil {
		c.forget(req.ID)
		return nil, fmt.Errorf("qmp: %s: encode request: %w", command, err)
	}
	c.writeMu.Lock()
	if deadline, ok := ctx.Deadline(); ok {
		c.conn.SetWriteDeadline(deadline)
	} else {
		c.conn.SetWriteDeadline(time.Time{})
	}
	_, err = c.conn.Write(append(line, '\n'))
	c.writeMu.Unlock()
	if err != nil {
		c.forget(req.ID)
		return nil, fmt.Errorf("qmp: %s: send: %w", command, err)
	}
	select {
	case r := <-ch:
		if r.err != nil {
			var qerr *Error
			if errors.As(r.err, &qerr) {
				return nil, r.err
			}
			return nil, fmt.Errorf("qmp: %s: %w", command, r.err)
		}
		return r.ret, nil
	case <-ctx.Done():
		c.forget(req.ID)
		return nil, fmt.Errorf("qmp: %s: %w", command, ctx.Err())
	}
}

// Close ends the connection.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func (c *Client) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// incoming is any message a QMP server sends.
type incoming struct {
	Event     *string         `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	ID     json.RawMessage `json:"id"`
}

func (c *Client) readLoop(dec *json.Decoder) {
	defer close(c.done)
	defer close(c.events)
	var err error
	for {
		var m incoming
		if err = dec.Decode(&m); err != nil {
			break
		}
		if m.Event != nil {
			ev := Event{Name: *m.Event, Data: m.Data}
			if m.Timestamp != nil {
				ev.Timestamp = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
			}
			select {
			case c.events <- ev:
			default:
				c.dropped.Add(1)
			}
			continue
		}
		id, perr := strconv.ParseUint(string(m.ID), 10, 64)
		if perr != nil {
			continue // not one of ours (no id: a parse error we did not cause)
		}
		c.mu.Lock()
		ch := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if ch == nil {
			continue
		}
		switch {
		case m.Error != nil:
			ch <- clientReply{err: m.Error}
		case m.Return != nil:
			ch <- clientReply{ret: m.Return}
		default:
			ch <- clientReply{err: errors.New("response has neither return nor error")}
		}
	}
	c.mu.Lock()
	c.readErr = fmt.Errorf("connection closed: %w", err)
	for id, ch := range c.pending {
		ch <- clientReply{err: c.readErr}
		delete(c.pending, id)
	}
	c.mu.Unlock()
}
