// Package qmp is a QEMU Machine Protocol server on unix sockets, plus a small
// client. It speaks the protocol as QEMU documents it (docs/interop/qmp-spec.rst)
// and knows nothing about the virtual machine: the machine registers command
// handlers and emits events.
//
// Protocol, as implemented:
//
//   - On connection the server sends the greeting
//     {"QMP": {"version": {"qemu": {...}, "package": "..."}, "capabilities": []}}.
//     No capability is offered (no "oob"): "exec-oob" is refused as an
//     unexpected member, and qmp_capabilities with "enable" fails the way
//     QEMU fails for an unavailable capability.
//   - Until qmp_capabilities succeeds, every other command gets
//     CommandNotFound "Expecting capabilities negotiation with
//     'qmp_capabilities'" and no events are delivered. Afterwards
//     qmp_capabilities itself gets CommandNotFound "Capabilities negotiation
//     is already complete, command ignored".
//   - Input is a stream of JSON values, not lines: a message ends where its
//     outermost object closes. Any "id" is echoed in the response. Output is
//     one JSON object per line, ASCII only, terminated by CRLF.
//   - Malformed input gets GenericError "JSON parse error, ..." and the
//     connection goes on. A control character other than tab, CR or LF
//     (or a 0xFF byte) resets the parser, as the spec recommends to clients.
//   - A message larger than Config.MaxMessageSize (1 MiB by default) gets one
//     GenericError "JSON token size limit exceeded: ..."; the rest of that
//     message is read and discarded, and the connection goes on with the
//     next message. Nesting deeper than MaxNesting is handled the same way.
//   - Argument checking follows QEMU's input visitor (see Decode): wrong types,
//     missing and unknown members are refused before the handler runs.
//   - Events are {"event": ..., "data": ..., "timestamp": {"seconds", "microseconds"}}
//     with wall-clock time.
//
// Concurrency: each client has a reader and a writer goroutine; handlers run
// one at a time across all clients (see Server). Emit never blocks: a client
// whose bounded queue overflows is disconnected (see Emit). A panicking
// handler produces a GenericError, not a crash.
package qmp
