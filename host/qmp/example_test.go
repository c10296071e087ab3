package qmp_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"wasmvmm/host/qmp"
)

// A machine registers its commands, listens, and emits events; a tool talks
// to it with Dial. quit answers first and closes the server after the reply.
func Example() {
	dir, _ := os.MkdirTemp("", "qmp-example")
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "qmp.sock")

	srv := qmp.NewServer(qmp.Config{Version: qmp.VersionInfo{
		QEMU: qmp.VersionTriple{Major: 7, Minor: 2}, Package: "wasmvmm 0.1.0"}})
	running := true
	srv.Register("query-status", qmp.NoArgs(func(context.Context) (any, error) {
		return map[string]any{"running": running, "singlestep": false, "status": map[bool]string{true: "running", false: "paused"}[running]}, nil
	}))
	srv.Register("stop", qmp.NoArgs(func(context.Context) (any, error) {
		running = false
		return nil, srv.Emit("STOP", nil)
	}))
	quitDone := make(chan struct{})
	srv.Register("quit", qmp.NoArgs(func(ctx context.Context) (any, error) {
		qmp.AfterReply(ctx, func() {
			srv.Close()
			close(quitDone)
		})
		return nil, nil
	}))
	if err := srv.Listen(sock); err != nil {
		fmt.Println(err)
		return
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, sock)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	ret, _ := c.Execute(ctx, "stop", nil)
	fmt.Println("stop:", string(ret))
	fmt.Println("event:", (<-c.Events()).Name)
	ret, _ = c.Execute(ctx, "query-status", nil)
	fmt.Println("query-status:", string(ret))
	_, err = c.Execute(ctx, "migrate", map[string]string{"uri": "unix:/tmp/x"})
	fmt.Println("migrate:", err)
	ret, _ = c.Execute(ctx, "quit", nil)
	fmt.Println("quit:", string(ret))
	<-quitDone
	// Output:
	// stop: {}
	// event: STOP
	// query-status: {"running":false,"singlestep":false,"status":"paused"}
	// migrate: CommandNotFound: The command migrate has not been found
	// quit: {}
}
