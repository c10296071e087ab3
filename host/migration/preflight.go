package migration

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"wasmvmm/abi"
	"wasmvmm/host/guestmem"
	"wasmvmm/host/vmstate"
)

// The pre-flight check ("beyond QEMU"): before any RAM moves, the source
// describes its machine (type, RAM blocks, every section's schema as its
// properties make it) and the destination compares that description with
// its own and answers yes, or no with the precise reason. QEMU finds such
// breaks only when the device state arrives, after the guest was stopped.
//
// This is wasmvmm framing, not QEMU's: it precedes the QEMU stream on the
// same connection. A source with the "x-preflight" capability off sends the
// plain QEMU stream, and a destination that sees the QEMU magic first skips
// the check, so either side still talks to a QEMU-framed peer.
//
//	source -> destination  "WVMMPRE1" be32 len  JSON machineDesc
//	destination -> source  "WVMMACK1" be32 len  JSON verdict   (refusal: then close)
//	source -> destination  the QEMU stream (QEVM ... EOF vmdesc)
//	destination -> source  "WVMMACK1" be32 len  JSON verdict   (loaded and owning its disks, or why not)
//
// The second verdict is the return path's completion message: the source
// keeps the guest (and takes its disks back) until the destination says it
// has loaded the state and owns the disks.

const (
	preambleMagic = "WVMMPRE1"
	verdictMagic  = "WVMMACK1"
	maxPreamble   = 16 << 20
)

// machineDesc is the source's description of itself.
type machineDesc struct {
	Machine  string        `json:"machine"`
	RAM      []ramDesc     `json:"ram"`
	Sections []sectionDesc `json:"sections"`
	// Populated lists, per RAM block, the runs of pages the first pass
	// will send (first page, count): a fresh destination faults them in
	// ahead of the stream. Absent when there are too many runs.
	Populated [][][2]uint64 `json:"populated,omitempty"`
	// Multifd asks for parallel RAM channels (multifd.go); absent when the
	// source's multifd capability is off.
	Multifd *multifdDesc `json:"multifd,omitempty"`
}

// maxRuns bounds the populated-page runs a description carries.
const maxRuns = 1 << 16

// pageRuns turns per-block page bitmaps into runs, or nil past maxRuns.
func pageRuns(bms [][]uint64) [][][2]uint64 {
	out := make([][][2]uint64, len(bms))
	n := 0
	for i, bm := range bms {
		out[i] = [][2]uint64{}
		var start, count uint64
		for w, word := range bm {
			for b := 0; b < 64; b++ {
				pg := uint64(w)*64 + uint64(b)
				if word&(1<<b) != 0 {
					if count == 0 {
						start = pg
					}
					count++
					continue
				}
				if count > 0 {
					if n++; n > maxRuns {
						return nil
					}
					out[i] = append(out[i], [2]uint64{start, count})
					count = 0
				}
				if word>>b == 0 {
					break
				}
			}
		}
		if count > 0 {
			out[i] = append(out[i], [2]uint64{start, count})
		}
	}
	return out
}

type ramDesc struct {
	Name string `json:"name"`
	Size uint64 `json:"size"`
}

// sectionDesc is one section's schema: what the wire carries.
type sectionDesc struct {
	Name        string        `json:"name"`
	Instance    int32         `json:"instance_id"`
	Version     uint32        `json:"version_id"`
	MinVersion  uint32        `json:"minimum_version_id"`
	Fields      []fieldDesc   `json:"fields"`
	Subsections []sectionDesc `json:"subsections,omitempty"`
}

type fieldDesc struct {
	Name    string      `json:"field"`
	Type    string      `json:"type"`
	Size    uint32      `json:"size"`
	Count   uint32      `json:"num"`
	Version uint32      `json:"version_id"`
	Struct  []fieldDesc `json:"struct,omitempty"`
}

// verdict is the destination's answer.
type verdict struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// FreshRAM (pre-flight answer) says the destination's RAM was never
	// written: pages the source knows are zero need not be sent.
	FreshRAM bool `json:"fresh_ram,omitempty"`
}

var fieldTypeNames = map[abi.FieldType]string{
	abi.FieldU8: "uint8", abi.FieldU16: "uint16", abi.FieldU32: "uint32", abi.FieldU64: "uint64",
	abi.FieldI8: "int8", abi.FieldI16: "int16", abi.FieldI32: "int32", abi.FieldI64: "int64",
	abi.FieldBool: "bool", abi.FieldBuffer: "buffer", abi.FieldStruct: "struct",
}

// describeMachine describes a machine's RAM and registered sections.
func describeMachine(machineType string, blocks []*guestmem.Block, reg *vmstate.Registry) machineDesc {
	d := machineDesc{Machine: machineType, RAM: []ramDesc{}, Sections: []sectionDesc{}}
	for _, b := range blocks {
		d.RAM = append(d.RAM, ramDesc{Name: b.Name, Size: b.Size()})
	}
	for _, dev := range reg.Devices() {
		s := describeSection(dev.Schema, dev.Props)
		s.Name, s.Instance = dev.Name, dev.InstanceID
		d.Sections = append(d.Sections, s)
	}
	return d
}

func describeSection(sec *abi.Section, props map[string]uint64) sectionDesc {
	s := sectionDesc{Name: sec.Name, Instance: sec.InstanceID, Version: sec.VersionID, MinVersion: sec.MinimumVersionID,
		Fields: describeFields(sec.Fields, props)}
	for i := range sec.Subsections {
		s.Subsections = append(s.Subsections, describeSection(&sec.Subsections[i], props))
	}
	return s
}

// describeFields lists the fields that exist under props (a property-gated
// field whose condition fails is not on the wire).
func describeFields(fs []abi.Field, props map[string]uint64) []fieldDesc {
	out := []fieldDesc{}
	for _, f := range fs {
		if f.Exists != nil {
			if v, ok := props[f.Exists.Prop]; !ok || !f.Exists.Holds(v) {
				continue
			}
		}
		fd := fieldDesc{Name: f.Name, Type: fieldTypeNames[f.Type], Size: f.Size, Count: f.Count, Version: f.VersionID}
		if fd.Type == "" {
			fd.Type = fmt.Sprintf("type%d", f.Type)
		}
		if f.Struct != nil {
			fd.Struct = describeFields(f.Struct.Fields, props)
		}
		out = append(out, fd)
	}
	return out
}

// checkCompatible says why a destination described by dst cannot load what
// a source described by src sends, or nil. Every difference is listed.
func checkCompatible(src, dst machineDesc) error {
	var why []string
	if src.Machine != dst.Machine {
		why = append(why, fmt.Sprintf("machine type %q on the source, %q here", src.Machine, dst.Machine))
	}
	dstRAM := map[string]uint64{}
	for _, r := range dst.RAM {
		dstRAM[r.Name] = r.Size
	}
	for _, r := range src.RAM {
		size, ok := dstRAM[r.Name]
		switch {
		case !ok:
			why = append(why, fmt.Sprintf("RAM block %q (%d MiB) does not exist here", r.Name, r.Size>>20))
		case size != r.Size:
			why = append(why, fmt.Sprintf("RAM block %q has %d MiB on the source, %d MiB here", r.Name, r.Size>>20, size>>20))
		}
		delete(dstRAM, r.Name)
	}
	for name := range dstRAM {
		why = append(why, fmt.Sprintf("RAM block %q here is not on the source", name))
	}
	type key struct {
		name string
		id   int32
	}
	dsts := map[key]sectionDesc{}
	for _, s := range dst.Sections {
		dsts[key{s.Name, s.Instance}] = s
	}
	for _, s := range src.Sections {
		k := key{s.Name, s.Instance}
		d, ok := dsts[k]
		if !ok {
			why = append(why, fmt.Sprintf("section %q instance %d: no such device here", s.Name, s.Instance))
			continue
		}
		delete(dsts, k)
		why = append(why, compareSection(fmt.Sprintf("section %q instance %d", s.Name, s.Instance), s, d, true)...)
	}
	for _, d := range dst.Sections {
		if _, ok := dsts[key{d.Name, d.Instance}]; ok {
			why = append(why, fmt.Sprintf("section %q instance %d here has no counterpart on the source", d.Name, d.Instance))
		}
	}
	if len(why) == 0 {
		return nil
	}
	return errors.New(strings.Join(why, "; "))
}

// compareSection compares a section (or subsection) the source sends at its
// version with the destination's schema loading that version.
func compareSection(where string, s, d sectionDesc, top bool) []string {
	var why []string
	if top {
		if s.Version > d.Version {
			return []string{fmt.Sprintf("%s: version %d on the source is newer than this destination's %d", where, s.Version, d.Version)}
		}
		if s.Version < d.MinVersion {
			return []string{fmt.Sprintf("%s: version %d on the source is older than this destination's minimum %d", where, s.Version, d.MinVersion)}
		}
	} else if s.Version > d.Version || s.Version < d.MinVersion {
		return []string{fmt.Sprintf("%s: version %d on the source, this destination loads %d to %d", where, s.Version, d.MinVersion, d.Version)}
	}
	why = append(why, compareFields(where, atVersion(s.Fields, s.Version), atVersion(d.Fields, s.Version))...)
	dsub := map[string]sectionDesc{}
	for _, sub := range d.Subsections {
		dsub[sub.Name] = sub
	}
	for _, sub := range s.Subsections {
		dd, ok := dsub[sub.Name]
		if !ok {
			why = append(why, fmt.Sprintf("%s: subsection %q is unknown here", where, sub.Name))
			continue
		}
		why = append(why, compareSection(fmt.Sprintf("%s subsection %q", where, sub.Name), sub, dd, false)...)
	}
	return why
}

// atVersion keeps the fields a section at version v carries.
func atVersion(fs []fieldDesc, v uint32) []fieldDesc {
	var out []fieldDesc
	for _, f := range fs {
		if f.Version <= v {
			out = append(out, f)
		}
	}
	return out
}

func compareFields(where string, s, d []fieldDesc) []string {
	for i := 0; i < len(s) || i < len(d); i++ {
		switch {
		case i >= len(d):
			return []string{fmt.Sprintf("%s: field %q (%s, %d bytes) on the source is not here", where, s[i].Name, s[i].Type, s[i].Size*s[i].Count)}
		case i >= len(s):
			return []string{fmt.Sprintf("%s: field %q here is not on the source", where, d[i].Name)}
		}
		a, b := s[i], d[i]
		fw := fmt.Sprintf("%s field %q", where, a.Name)
		switch {
		case a.Name != b.Name:
			return []string{fmt.Sprintf("%s: field %d is %q on the source, %q here", where, i, a.Name, b.Name)}
		case a.Type != b.Type:
			return []string{fmt.Sprintf("%s: type %s on the source, %s here", fw, a.Type, b.Type)}
		case a.Size != b.Size:
			return []string{fmt.Sprintf("%s: size %d on the source, %d here", fw, a.Size, b.Size)}
		case a.Count != b.Count:
			return []string{fmt.Sprintf("%s: %d elements on the source, %d here", fw, a.Count, b.Count)}
		}
		if a.Type == "struct" {
			if w := compareFields(fw, a.Struct, b.Struct); len(w) > 0 {
				return w
			}
		}
	}
	return nil
}

// writeMsg writes a magic, a be32 length and a JSON body.
func writeMsg(w io.Writer, magic string, v any) error {
	js, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b := make([]byte, 0, len(magic)+4+len(js))
	b = append(b, magic...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(js)))
	b = append(b, js...)
	_, err = w.Write(b)
	return err
}

// readMsgBody reads the be32 length and JSON body after a magic.
func readMsgBody(r io.Reader, v any) error {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return err
	}
	l := binary.BigEndian.Uint32(n[:])
	if l > maxPreamble {
		return fmt.Errorf("message of %d bytes exceeds %d", l, maxPreamble)
	}
	body := make([]byte, l)
	if _, err := io.ReadFull(r, body); err != nil {
		return err
	}
	return json.Unmarshal(body, v)
}

// preflightAnswer is the destination's pre-flight verdict with what later
// versions add (an older destination leaves them false; an older source
// ignores them).
type preflightAnswer struct {
	verdict
	// VMDescOptional says the destination loads a stream that ends at EOF
	// without the trailing vmdesc.
	VMDescOptional bool `json:"vmdesc_optional,omitempty"`
	// Multifd says the destination accepts the multifd channels the
	// description asked for.
	Multifd bool `json:"multifd,omitempty"`
}

// readVerdictMsg reads a message framed with verdictMagic into v: a
// verdict, or the pre-flight answer that extends it.
func readVerdictMsg(r io.Reader, v any) error {
	var m [len(verdictMagic)]byte
	if _, err := io.ReadFull(r, m[:]); err != nil {
		return err
	}
	if string(m[:]) != verdictMagic {
		return fmt.Errorf("the destination answered %q, not a wasmvmm verdict", m[:])
	}
	if err := readMsgBody(r, v); err != nil {
		return fmt.Errorf("verdict: %w", err)
	}
	return nil
}

// readVerdict reads a verdict message.
func readVerdict(r io.Reader) (verdict, error) {
	var v verdict
	err := readVerdictMsg(r, &v)
	return v, err
}

// readAnswer reads the pre-flight answer.
func readAnswer(r io.Reader) (preflightAnswer, error) {
	var v preflightAnswer
	err := readVerdictMsg(r, &v)
	return v, err
}
