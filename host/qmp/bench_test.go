package qmp

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// roundTrips runs query-version b.N times over a raw connection to path.
func roundTrips(b *testing.B, path string) {
	conn, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	readLine := func() {
		if _, err := r.ReadBytes('\n'); err != nil {
			b.Fatal(err)
		}
	}
	readLine() // greeting
	conn.Write([]byte(`{"execute":"qmp_capabilities"}`))
	readLine()
	req := []byte(`{"execute":"query-version","id":1}`)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := conn.Write(req); err != nil {
			b.Fatal(err)
		}
		readLine()
	}
}

// BenchmarkRoundTrip measures one command round trip on our server.
func BenchmarkRoundTrip(b *testing.B) {
	srv := NewServer(Config{})
	defer srv.Close()
	path := b.TempDir() + "/q.sock"
	if err := srv.Listen(path); err != nil {
		b.Fatal(err)
	}
	roundTrips(b, path)
}

// BenchmarkRoundTripQEMU measures the same round trip on the host's QEMU,
// the baseline for BenchmarkRoundTrip.
func BenchmarkRoundTripQEMU(b *testing.B) {
	path := startQEMU(b)
	roundTrips(b, path)
}

// BenchmarkEmit measures broadcasting a small event to 4 clients that read,
// from emission to the last client having read the last event. The queue
// holds the whole burst, so no client is dropped for being slower than Emit.
func BenchmarkEmit(b *testing.B) {
	srv := NewServer(Config{QueueLength: b.N + 16})
	defer srv.Close()
	path := b.TempDir() + "/q.sock"
	if err := srv.Listen(path); err != nil {
		b.Fatal(err)
	}
	const clients = 4
	done := make(chan struct{}, clients)
	for i := 0; i < clients; i++ {
		conn, err := net.Dial("unix", path)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		r.ReadBytes('\n')
		conn.Write([]byte(`{"execute":"qmp_capabilities"}`))
		r.ReadBytes('\n')
		go func() {
			for n := 0; n < b.N; n++ {
				if _, err := r.ReadBytes('\n'); err != nil {
					break
				}
			}
			done <- struct{}{}
		}()
	}
	data := map[string]any{"status": "running", "reason": "bench"}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := srv.Emit("BENCH", data); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < clients; i++ {
		<-done
	}
	if srv.ClientCount() != clients {
		b.Fatalf("clients dropped during the benchmark: %d left", srv.ClientCount())
	}
}
