package migration

import (
	"strings"
	"testing"
)

func TestCPRChannelsRefusedBeforeAnythingMoves(t *testing.T) {
	main := Channel{Type: "main", Transport: "unix", Path: "/m"}
	cprU := Channel{Type: "cpr", Transport: "unix", Path: "/c"}
	for _, c := range []struct {
		chs  []Channel
		want string
	}{
		{[]Channel{main}, "needs a cpr channel"},
		{[]Channel{cprU}, "exactly one main channel"},
		{[]Channel{main, main, cprU}, "exactly one main channel"},
		{[]Channel{main, cprU, cprU}, "one cpr channel"},
		{[]Channel{main, {Type: "cpr", Transport: "tcp", Host: "h", Port: "1"}}, "must be a unix socket"},
		{[]Channel{{Type: "main", Transport: "file", Path: "/f"}, cprU}, "must be a socket"},
		{[]Channel{main, cprU, {Type: "other"}}, "unknown channel type"},
	} {
		_, _, err := cprChannels(c.chs)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.chs, err, c.want)
		}
	}
	m, cp, err := cprChannels([]Channel{cprU, main})
	if err != nil || m != main || cp != cprU {
		t.Fatalf("good channels: %v %v %v", m, cp, err)
	}
}

func TestParseChannelJSON(t *testing.T) {
	ch, err := ParseChannelJSON([]byte(`{"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", "path": "/run/cpr.sock"}}`))
	if err != nil || ch != (Channel{Type: "cpr", Transport: "unix", Path: "/run/cpr.sock"}) {
		t.Fatalf("%+v %v", ch, err)
	}
	ch, err = ParseChannelJSON([]byte(`{"channel-type": "main", "addr": {"transport": "socket", "type": "inet", "host": "::1", "port": "4444"}}`))
	if err != nil || ch.Transport != "tcp" || ch.Host != "::1" || ch.Port != "4444" {
		t.Fatalf("%+v %v", ch, err)
	}
	for _, bad := range []string{
		`{"channel-type": "x", "addr": {"transport": "socket", "type": "unix", "path": "/p"}}`,
		`{"channel-type": "cpr", "addr": {"transport": "rdma"}}`,
		`{"channel-type": "cpr", "addr": {"transport": "socket", "type": "vsock"}}`,
		`{"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix"}}`,
		`{"channel-type": "cpr"`,
	} {
		if _, err := ParseChannelJSON([]byte(bad)); err == nil {
			t.Errorf("%s was accepted", bad)
		}
	}
}

func TestDescriptorNameIsFoundByDeviceAndBackend(t *testing.T) {
	n := DescriptorName("net0", "net", "net")
	if n != "dev/net0/net/net" || !strings.HasPrefix(n, DescriptorName("net0", "net", "")) {
		t.Fatalf("%q", n)
	}
	if strings.HasPrefix(DescriptorName("net01", "net", "x"), DescriptorName("net0", "net", "")) {
		t.Fatal("device net01 is taken for net0")
	}
}
