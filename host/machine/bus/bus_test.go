package bus

import (
	"fmt"
	"strings"
	"testing"
)

type recorder struct {
	name string
	log  []string
}

func (d *recorder) Read(region int, off uint64, size int) uint64 {
	d.log = append(d.log, fmt.Sprintf("r%d+%#x/%d", region, off, size))
	return 0xab
}

func (d *recorder) Write(region int, off uint64, size int, v uint64) {
	d.log = append(d.log, fmt.Sprintf("w%d+%#x/%d=%#x", region, off, size, v))
}

func TestDispatch(t *testing.T) {
	b := New("pio")
	uart, pm := &recorder{name: "uart"}, &recorder{name: "pm"}
	if err := b.Add(0x3f8, 8, "uart", uart, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Add(0x600, 4, "pm-evt", pm, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Add(0x604, 2, "pm-cnt", pm, 1); err != nil {
		t.Fatal(err)
	}
	if err := b.Add(0x3fc, 8, "clash", uart, 1); err == nil || !strings.Contains(err.Error(), "overlaps uart") {
		t.Fatalf("overlap: %v", err)
	}
	if v, ok := b.Read(0x3fd, 1); !ok || v != 0xab {
		t.Fatal("read uart LSR")
	}
	b.Write(0x604, 2, 0x2000)
	if _, ok := b.Read(0x3f7, 1); ok {
		t.Fatal("read below the uart dispatched")
	}
	if _, ok := b.Read(0x3ff, 2); ok {
		t.Fatal("access straddling the region's end dispatched")
	}
	if got := strings.Join(uart.log, " ") + "|" + strings.Join(pm.log, " "); got != "r0+0x5/1|w1+0x0/2=0x2000" {
		t.Fatalf("dispatch log %q", got)
	}
}

func BenchmarkFind64(b *testing.B) {
	bus := New("mmio")
	for i := 0; i < 64; i++ {
		if err := bus.Add(0xd0000000+uint64(i)*0x1000, 0x200, fmt.Sprint(i), &recorder{}, 0); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if bus.Find(0xd0000000+uint64(i%64)*0x1000+0x10) == nil {
			b.Fatal("miss")
		}
	}
}
