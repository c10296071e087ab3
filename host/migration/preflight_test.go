package migration

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"wasmvmm/abi"
)

func testDesc() machineDesc {
	serial := &abi.Section{Name: "serial", VersionID: 3, MinimumVersionID: 2, Fields: []abi.Field{
		{Name: "ier", Type: abi.FieldU8, Size: 1, Count: 1},
		{Name: "fifo", Type: abi.FieldBuffer, Size: 16, Count: 1, VersionID: 3},
		{Name: "gated", Type: abi.FieldU32, Size: 4, Count: 1, Exists: &abi.Condition{Prop: "x", Op: abi.CondEQ, Value: 1}},
		{Name: "regs", Type: abi.FieldStruct, Size: 8, Count: 2, Struct: &abi.Section{Name: "reg", Fields: []abi.Field{
			{Name: "a", Type: abi.FieldU32, Size: 4, Count: 1}, {Name: "b", Type: abi.FieldU32, Size: 4, Count: 1},
		}}},
	}, Subsections: []abi.Section{{Name: "serial/timeout", VersionID: 1, MinimumVersionID: 1, Fields: []abi.Field{
		{Name: "ns", Type: abi.FieldU64, Size: 8, Count: 1},
	}}}}
	s := describeSection(serial, map[string]uint64{"x": 0})
	s.Instance = 0
	return machineDesc{Machine: "wasmvmm-virt-2.0", RAM: []ramDesc{{"ram-low", 128 << 20}}, Sections: []sectionDesc{s}}
}

func TestDescribeLeavesOutFieldsWhosePropertyFails(t *testing.T) {
	d := testDesc()
	for _, f := range d.Sections[0].Fields {
		if f.Name == "gated" {
			t.Fatal("a field gated on x=1 is described with x=0")
		}
	}
	if len(d.Sections[0].Fields) != 3 || len(d.Sections[0].Fields[2].Struct) != 2 {
		t.Fatalf("fields %+v", d.Sections[0].Fields)
	}
}

func TestCheckCompatibleNamesEveryDifference(t *testing.T) {
	if err := checkCompatible(testDesc(), testDesc()); err != nil {
		t.Fatalf("identical machines: %v", err)
	}
	cases := []struct {
		name   string
		change func(src, dst *machineDesc)
		want   string
	}{
		{"machine type", func(s, d *machineDesc) { d.Machine = "wasmvmm-virt-1.0" },
			`machine type "wasmvmm-virt-2.0" on the source, "wasmvmm-virt-1.0" here`},
		{"RAM size", func(s, d *machineDesc) { d.RAM[0].Size = 256 << 20 },
			`RAM block "ram-low" has 128 MiB on the source, 256 MiB here`},
		{"RAM block missing", func(s, d *machineDesc) { d.RAM[0].Name = "pc.ram" },
			`RAM block "ram-low" (128 MiB) does not exist here`},
		{"newer version", func(s, d *machineDesc) { d.Sections[0].Version = 2 },
			`section "serial" instance 0: version 3 on the source is newer than this destination's 2`},
		{"older than minimum", func(s, d *machineDesc) { s.Sections[0].Version = 1 },
			`section "serial" instance 0: version 1 on the source is older than this destination's minimum 2`},
		{"field size", func(s, d *machineDesc) { d.Sections[0].Fields[1].Size = 32 },
			`section "serial" instance 0 field "fifo": size 16 on the source, 32 here`},
		{"field type", func(s, d *machineDesc) { d.Sections[0].Fields[0].Type = "uint16" },
			`section "serial" instance 0 field "ier": type uint8 on the source, uint16 here`},
		{"struct member", func(s, d *machineDesc) { d.Sections[0].Fields[2].Struct[1].Size = 8 },
			`section "serial" instance 0 field "regs" field "b": size 4 on the source, 8 here`},
		{"extra field", func(s, d *machineDesc) {
			d.Sections[0].Fields = append(d.Sections[0].Fields, fieldDesc{Name: "lsr", Type: "uint8", Size: 1, Count: 1})
		}, `section "serial" instance 0: field "lsr" here is not on the source`},
		{"unknown subsection", func(s, d *machineDesc) { d.Sections[0].Subsections = nil },
			`section "serial" instance 0: subsection "serial/timeout" is unknown here`},
		{"missing device", func(s, d *machineDesc) { d.Sections = nil },
			`section "serial" instance 0: no such device here`},
		{"extra device", func(s, d *machineDesc) {
			d.Sections = append(d.Sections, sectionDesc{Name: "virtio-blk", Version: 1, MinVersion: 1})
		}, `section "virtio-blk" instance 0 here has no counterpart on the source`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src, dst := testDesc(), testDesc()
			c.change(&src, &dst)
			err := checkCompatible(src, dst)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v\nwant %q", err, c.want)
			}
		})
	}
	// A field introduced after the source's version is not compared.
	src, dst := testDesc(), testDesc()
	src.Sections[0].Version = 2
	src.Sections[0].Fields[1].Size = 99
	if err := checkCompatible(src, dst); err != nil {
		t.Fatalf("a field of version 3 compared for a version 2 source: %v", err)
	}
}

func TestPageRuns(t *testing.T) {
	bm := []uint64{0b1110, ^uint64(0), 1, 0, 1 << 63}
	runs := pageRuns([][]uint64{bm})
	want := [][2]uint64{{1, 3}, {64, 64 + 1}, {4*64 + 63, 1}}
	if len(runs) != 1 || len(runs[0]) != len(want) {
		t.Fatalf("runs %v, want %v", runs, want)
	}
	for i := range want {
		if runs[0][i] != want[i] {
			t.Fatalf("runs %v, want %v", runs, want)
		}
	}
	alt := make([]uint64, (maxRuns*2)/32+1)
	for i := range alt {
		alt[i] = 0x5555555555555555
	}
	if pageRuns([][]uint64{alt}) != nil {
		t.Fatal("too many runs were not dropped")
	}
}

func TestMessagesRoundTrip(t *testing.T) {
	var b bytes.Buffer
	if err := writeMsg(&b, verdictMagic, verdict{OK: false, Error: "no"}); err != nil {
		t.Fatal(err)
	}
	v, err := readVerdict(&b)
	if err != nil || v.OK || v.Error != "no" {
		t.Fatalf("%+v %v", v, err)
	}
	if _, err := readVerdict(strings.NewReader("QEVM\x00\x00\x00\x03")); err == nil {
		t.Fatal("a QEMU stream read as a verdict")
	}
	huge := append([]byte(verdictMagic), 0xff, 0xff, 0xff, 0xff)
	if _, err := readVerdict(bytes.NewReader(huge)); err == nil {
		t.Fatal("a 4 GiB verdict accepted")
	}
}

func TestRateLimiterPaces(t *testing.T) {
	l := &rateLimiter{rate: func() int64 { return 10 << 20 }}
	start := time.Now()
	for i := 0; i < 20; i++ {
		if err := l.wait(context.Background(), 256<<10); err != nil {
			t.Fatal(err)
		}
	}
	// 5 MiB at 10 MiB/s: about half a second (minus the burst window).
	if el := time.Since(start); el < 400*time.Millisecond || el > 2*time.Second {
		t.Fatalf("5 MiB at 10 MiB/s took %v", el)
	}
	unlimited := &rateLimiter{rate: func() int64 { return 0 }}
	start = time.Now()
	for i := 0; i < 1000; i++ {
		unlimited.wait(context.Background(), 1<<20)
	}
	if el := time.Since(start); el > 50*time.Millisecond {
		t.Fatalf("unlimited took %v", el)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	slow := &rateLimiter{rate: func() int64 { return 1 }}
	slow.wait(ctx, 1)
	if err := slow.wait(ctx, 1<<20); !errors.Is(err, errCancelled) {
		t.Fatalf("cancelled wait: %v", err)
	}
}

func TestListenAndDial(t *testing.T) {
	for _, uri := range []string{"unix:" + filepath.Join(t.TempDir(), "m.sock"), "tcp:127.0.0.1:0"} {
		ch, err := ParseURI(uri)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := listen(ch)
		if err != nil {
			t.Fatal(err)
		}
		if ch.Transport == "tcp" {
			_, port, _ := net.SplitHostPort(ln.(*netListener).ln.Addr().String())
			ch.Port = port
		}
		got := make(chan error, 1)
		go func() {
			c, err := ln.accept(context.Background())
			if err == nil {
				_, err = c.Write([]byte("hi"))
				c.Close()
			}
			got <- err
		}()
		c, err := dial(context.Background(), ch)
		if err != nil {
			t.Fatalf("%s: %v", uri, err)
		}
		buf := make([]byte, 2)
		if _, err := c.Read(buf); err != nil || string(buf) != "hi" {
			t.Fatalf("%s: %q %v", uri, buf, err)
		}
		c.Close()
		if err := <-got; err != nil {
			t.Fatal(err)
		}
		ln.close()
	}
	ch, _ := ParseURI("unix:" + filepath.Join(t.TempDir(), "nobody"))
	if _, err := dial(context.Background(), ch); err == nil || !strings.Contains(err.Error(), "connect to unix:") {
		t.Fatalf("dial to nobody: %v", err)
	}
	if _, err := ParseURI("fd:name"); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(context.Background(), Channel{Type: "main", Transport: "fd", FD: "name"}); err == nil {
		t.Fatal("named fd accepted")
	}
	// A cancelled accept returns.
	ln, _ := listen(Channel{Transport: "unix", Path: filepath.Join(t.TempDir(), "c.sock")})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := ln.accept(ctx); err == nil {
		t.Fatal("accept without a peer returned a connection")
	}
	ln.close()
}
