package qmp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"unicode/utf8"
)

// DefaultMaxMessageSize is the default limit on one incoming JSON message.
// QEMU caps a message at 64 MiB of tokens; no QMP command needs more than a
// few KiB, so we refuse far earlier.
const DefaultMaxMessageSize = 1 << 20

// MaxNesting is the deepest nesting of objects and arrays accepted in one
// message, the same limit as QEMU's JSON streamer.
const MaxNesting = 1024

// Request is one decoded QMP command.
type Request struct {
	// Execute is the command name.
	Execute string
	// Arguments is the "arguments" object, or "{}" when the client sent none.
	Arguments json.RawMessage
	// ID is the client's "id" member, compacted, or nil when absent.
	ID json.RawMessage
}

// ParseRequest decodes one complete JSON message into a Request, checking the
// members the way QEMU's dispatcher does. On failure it returns the error to
// send and, when the message carried one, the id to echo with it.
func ParseRequest(msg []byte) (*Request, json.RawMessage, *Error) {
	if !utf8.Valid(msg) {
		return nil, nil, genericf("JSON parse error, invalid UTF-8 sequence")
	}
	var raw json.RawMessage
	if err := json.Unmarshal(msg, &raw); err != nil {
		return nil, nil, genericf("JSON parse error, %s", err.Error())
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return nil, nil, genericf("QMP input must be a JSON object")
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(raw, &members); err != nil {
		return nil, nil, genericf("JSON parse error, %s", err.Error())
	}
	var id json.RawMessage
	if v, ok := members["id"]; ok {
		var buf bytes.Buffer
		if err := json.Compact(&buf, v); err != nil {
			return nil, nil, genericf("JSON parse error, %s", err.Error())
		}
		id = buf.Bytes()
	}

	names := make([]string, 0, len(members))
	for name := range members {
		names = append(names, name)
	}
	sort.Strings(names)
	req := &Request{ID: id, Arguments: json.RawMessage("{}")}
	haveExecute := false
	for _, name := range names {
		value := bytes.TrimSpace(members[name])
		switch name {
		case "execute":
			if len(value) == 0 || value[0] != '"' {
				return nil, id, genericf("QMP input member 'execute' must be a string")
			}
			if err := json.Unmarshal(value, &req.Execute); err != nil {
				return nil, id, genericf("QMP input member 'execute' must be a string")
			}
			haveExecute = true
		case "arguments":
			if len(value) == 0 || value[0] != '{' {
				return nil, id, genericf("QMP input member 'arguments' must be an object")
			}
			req.Arguments = value
		case "id":
		default:
			// "exec-oob" lands here too: we do not offer the oob capability.
			return nil, id, genericf("QMP input member '%s' is unexpected", name)
		}
	}
	if !haveExecute {
		return nil, id, genericf("QMP input lacks member 'execute'")
	}
	return req, id, nil
}

// framer splits a byte stream into JSON messages the way QEMU's streamer
// does: a message ends when its outermost object or array closes, or when a
// top-level scalar ends. It never interprets the JSON beyond that; the parser
// does. Control characters (other than tab, CR and LF) and the bytes 0xFE and
// 0xFF are lexical errors that reset it, which is how a client brings a
// confused parser back to a known state.
type framer struct {
	maxSize int
	buf     []byte

	depth      int  // open objects and arrays
	inString   bool // inside a string literal
	escape     bool // the previous byte was a backslash inside a string
	inScalar   bool // inside a top-level number or literal
	discarding bool // the current message broke a limit; skip to its end
}

// frameResult is what the framer hands to its consumer for each message:
// either a complete message, or an error to report.
type frameResult struct {
	msg []byte
	err *Error
}

func newFramer(maxSize int) *framer {
	if maxSize <= 0 {
		maxSize = DefaultMaxMessageSize
	}
	return &framer{maxSize: maxSize}
}

func (f *framer) reset() {
	if cap(f.buf) > 64<<10 {
		f.buf = nil
	} else {
		f.buf = f.buf[:0]
	}
	f.depth = 0
	f.inString = false
	f.escape = false
	f.inScalar = false
	f.discarding = false
}

// finish ends the current message and hands it to emit unless it was being
// discarded.
func (f *framer) finish(emit func(frameResult)) {
	discarding := f.discarding
	msg := append([]byte(nil), f.buf...)
	f.reset()
	if !discarding {
		emit(frameResult{msg: msg})
	}
}

// fail reports err for the current message and skips the rest of it.
func (f *framer) fail(err *Error, emit func(frameResult)) {
	if f.discarding {
		return
	}
	f.discarding = true
	f.buf = f.buf[:0]
	emit(frameResult{err: err})
}

func isJSONSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\r' || c == '\n'
}

func isDelimiter(c byte) bool {
	switch c {
	case '{', '}', '[', ']', '"', ',', ':':
		return true
	}
	return isJSONSpace(c)
}

// feed consumes data and calls emit once for every message or error found.
// Bytes after the last complete message stay buffered for the next call.
func (f *framer) feed(data []byte, emit func(frameResult)) {
	for i := 0; i < len(data); i++ {
		c := data[i]
		if (c < 0x20 && c != '\t' && c != '\r' && c != '\n') || c == 0xFE || c == 0xFF {
			f.reset()
			emit(frameResult{err: genericf("JSON parse error, stray byte 0x%02x", c)})
			continue
		}
		switch {
		case f.inString:
			f.appendByte(c, emit)
			switch {
			case f.escape:
				f.escape = false
			case c == '\\':
				f.escape = true
			case c == '"':
				f.inString = false
				if f.depth == 0 {
					f.finish(emit)
				}
			}
		case f.inScalar:
			if isDelimiter(c) {
				f.finish(emit)
				i-- // the delimiter starts whatever comes next
				continue
			}
			f.appendByte(c, emit)
		case f.depth == 0:
			switch {
			case isJSONSpace(c):
			case c == '{' || c == '[':
				f.depth = 1
				f.appendByte(c, emit)
			case c == '"':
				f.inString = true
				f.appendByte(c, emit)
			case c == '}' || c == ']' || c == ',' || c == ':':
				f.appendByte(c, emit)
				f.finish(emit)
			default:
				f.inScalar = true
				f.appendByte(c, emit)
			}
		default:
			f.appendByte(c, emit)
			switch c {
			case '"':
				f.inString = true
			case '{', '[':
				f.depth++
				if f.depth > MaxNesting {
					f.fail(genericf("JSON nesting depth limit exceeded"), emit)
				}
			case '}', ']':
				f.depth--
				if f.depth == 0 {
					f.finish(emit)
				}
			}
		}
	}
}

// appendByte adds c to the current message, enforcing the size limit.
func (f *framer) appendByte(c byte, emit func(frameResult)) {
	if f.discarding {
		return
	}
	if len(f.buf) >= f.maxSize {
		f.fail(genericf("JSON token size limit exceeded: message larger than %d bytes", f.maxSize), emit)
		return
	}
	f.buf = append(f.buf, c)
}

// String describes the framer state, for debugging.
func (f *framer) String() string {
	return fmt.Sprintf("framer{buffered=%d depth=%d string=%v scalar=%v discarding=%v}",
		len(f.buf), f.depth, f.inString, f.inScalar, f.discarding)
}
