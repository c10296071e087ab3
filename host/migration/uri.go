package migration

import (
	"fmt"
	"strings"
)

// Channel is one migration channel in QEMU's terms: a type ("main" or
// "cpr") and an address.
type Channel struct {
	Type      string // "main" or "cpr"
	Transport string // "file", "unix", "tcp", "fd"
	Path      string // file and unix
	Host      string // tcp
	Port      string // tcp
	FD        string // fd: number or name
	Offset    int64  // file: byte offset
}

// String formats the channel as a URI.
func (c Channel) String() string {
	switch c.Transport {
	case "file":
		if c.Offset != 0 {
			return fmt.Sprintf("file:%s,offset=%d", c.Path, c.Offset)
		}
		return "file:" + c.Path
	case "unix":
		return "unix:" + c.Path
	case "tcp":
		return "tcp:" + c.Host + ":" + c.Port
	case "fd":
		return "fd:" + c.FD
	}
	return c.Transport + ":?"
}

// ParseURI parses QEMU's URI syntax: file:PATH[,offset=N], unix:PATH,
// tcp:HOST:PORT, fd:N. A "cpr," prefix makes it a cpr channel.
func ParseURI(uri string) (Channel, error) {
	ch := Channel{Type: "main"}
	if rest, ok := strings.CutPrefix(uri, "cpr,"); ok {
		ch.Type, uri = "cpr", rest
	}
	scheme, rest, ok := strings.Cut(uri, ":")
	if !ok || rest == "" {
		return ch, fmt.Errorf("invalid migration URI %q: want file:PATH, unix:PATH, tcp:HOST:PORT or fd:N", uri)
	}
	ch.Transport = scheme
	switch scheme {
	case "file":
		path, opts, _ := strings.Cut(rest, ",")
		ch.Path = path
		if opts != "" {
			var off int64
			if _, err := fmt.Sscanf(opts, "offset=%d", &off); err != nil || off < 0 {
				return ch, fmt.Errorf("invalid migration URI %q: bad option %q", uri, opts)
			}
			ch.Offset = off
		}
	case "unix":
		ch.Path = rest
	case "tcp":
		i := strings.LastIndexByte(rest, ':')
		if i < 0 || i == len(rest)-1 {
			return ch, fmt.Errorf("invalid migration URI %q: want tcp:HOST:PORT", uri)
		}
		ch.Host, ch.Port = strings.Trim(rest[:i], "[]"), rest[i+1:]
	case "fd":
		ch.FD = rest
	default:
		return ch, fmt.Errorf("invalid migration URI %q: unknown transport %q", uri, scheme)
	}
	return ch, nil
}
