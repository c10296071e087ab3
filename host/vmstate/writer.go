package vmstate

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/bits"

	"wasmvmm/host/guestmem"
)

// WriterBufferSize is the size of the Writer's output buffer.
const WriterBufferSize = 1 << 20

// zeroPage is compared against, never written.
var zeroPage [PageSize]byte

// RAMStats counts what a RAM call sent.
type RAMStats struct {
	Pages     uint64 // PAGE records (4 KiB of data each)
	ZeroPages uint64 // ZERO records
	Bytes     int64  // stream bytes written, headers and footer included
}

// Writer writes one migration stream. Use: NewWriter (header and
// configuration), then for RAM RAMStart, any number of RAMPart, RAMEnd; then
// Complete with the device registry (device sections, EOF, vmdesc, flush).
// A stream without RAM (cpr-transfer) skips the RAM calls. A Writer is not
// safe for concurrent use; after an error it refuses further calls.
type Writer struct {
	bw  *bufio.Writer
	off int64
	err error

	machine   string
	blocks    []*guestmem.Block
	lastBlock *guestmem.Block
	ramState  int // 0 none, 1 started, 2 ended
	hdr       []byte

	// caps are the capabilities named in the configuration section;
	// mapped and base are set by NewMappedWriter (mapped.go).
	caps   []string
	mapped MappedFile
	base   int64
	align  int64 // where pages regions start; 0 is MappedRAMAlign (tests make compact files)

	// MappedWorkers is the number of goroutines RAMMapped scans and
	// writes pages with (0 and 1: one).
	MappedWorkers int

	// SuppressVMDesc ends the stream right after EOF, without the JSON
	// vmdesc (QEMU's suppress-vmdesc): a reader loads it with
	// LoadOptions.AllowMissingVMDesc. cpr-transfer sets it, since its
	// destination compared the schemas before the pause.
	SuppressVMDesc bool
}

// NewWriter starts a stream on w: magic, version, and the configuration
// section naming the machine type.
func NewWriter(w io.Writer, machine string) (*Writer, error) {
	return newWriter(w, machine, nil)
}

// newWriter is NewWriter with the capabilities subsection when caps is not
// empty.
func newWriter(w io.Writer, machine string, caps []string) (*Writer, error) {
	if machine == "" || len(machine) > MaxMachineNameLen {
		return nil, fmt.Errorf("vmstate writer: machine type name %q must have 1 to %d bytes", machine, MaxMachineNameLen)
	}
	wr := &Writer{bw: bufio.NewWriterSize(w, WriterBufferSize), machine: machine, caps: caps}
	b := appendBE32(nil, FileMagic)
	b = appendBE32(b, FileVersion)
	b = append(b, SectionConfiguration)
	b = appendBE32(b, uint32(len(machine)))
	b = append(b, machine...)
	if len(caps) > 0 {
		b = appendCapabilities(b, caps)
	}
	wr.write(b)
	return wr, wr.err
}

// Offset returns the number of bytes written so far.
func (w *Writer) Offset() int64 { return w.off }

func (w *Writer) write(b []byte) {
	if w.err != nil {
		return
	}
	n, err := w.bw.Write(b)
	w.off += int64(n)
	if err != nil {
		w.err = fmt.Errorf("vmstate writer: %w", err)
	}
}

func (w *Writer) footer(id uint32) {
	w.write(appendBE32([]byte{SectionFooter}, id))
}

// RAMStart writes the RAM section's START: the list of blocks (name and
// size) that every page record refers to. Block names must have 1 to 255
// bytes and block sizes be multiples of PageSize.
func (w *Writer) RAMStart(blocks []*guestmem.Block) error {
	if w.err != nil {
		return w.err
	}
	if w.ramState != 0 {
		return errors.New("vmstate writer: RAM section already started")
	}
	if w.mapped != nil {
		return errors.New("vmstate writer: a mapped-ram stream writes RAM with RAMMapped")
	}
	b, err := ramStartHeader(blocks)
	if err != nil {
		return err
	}
	for _, blk := range blocks {
		b = append(b, byte(len(blk.Name)))
		b = append(b, blk.Name...)
		b = appendBE64(b, blk.Size())
	}
	b = appendBE64(b, RAMFlagEOS)
	w.write(b)
	w.footer(RAMSectionID)
	w.blocks = append([]*guestmem.Block(nil), blocks...)
	w.ramState = 1
	w.lastBlock = nil
	return w.err
}

// ramStartHeader checks blocks (checkBlocks) and returns the RAM section's
// START header up to its first record's word: MEM_SIZE with the total of
// the blocks' sizes. The block list follows it.
func ramStartHeader(blocks []*guestmem.Block) ([]byte, error) {
	total, err := checkBlocks(blocks)
	if err != nil {
		return nil, err
	}
	b := []byte{SectionStart}
	b = appendBE32(b, RAMSectionID)
	b = append(b, byte(len(RAMSectionName)))
	b = append(b, RAMSectionName...)
	b = appendBE32(b, 0)
	b = appendBE32(b, RAMSectionVersion)
	return appendBE64(b, total|RAMFlagMemSize), nil
}

// checkBlocks checks the blocks of a RAM section: names of 1 to 255 bytes,
// unique, sizes positive multiples of PageSize. It returns the total size.
func checkBlocks(blocks []*guestmem.Block) (uint64, error) {
	var total uint64
	seen := map[string]bool{}
	for _, blk := range blocks {
		if blk.Name == "" || len(blk.Name) > 255 || seen[blk.Name] {
			return 0, fmt.Errorf("vmstate writer: RAM block name %q must be unique and have 1 to 255 bytes", blk.Name)
		}
		seen[blk.Name] = true
		if blk.Size() == 0 || blk.Size()%PageSize != 0 {
			return 0, fmt.Errorf("vmstate writer: RAM block %q size %#x is not a positive multiple of %d", blk.Name, blk.Size(), PageSize)
		}
		total += blk.Size()
	}
	if total == 0 {
		return 0, errors.New("vmstate writer: no RAM blocks")
	}
	return total, nil
}

// RAMPart writes one PART section with the pages selected by dirty: one
// bitmap per block in RAMStart's order (bit i of word i/64 is page i, as
// guestmem.Block.TakeDirty fills them); a nil bitmap selects every page of
// its block, a nil dirty slice every page of every block.
func (w *Writer) RAMPart(dirty [][]uint64) (RAMStats, error) {
	return w.ramSection(SectionPart, dirty)
}

// RAMEnd writes the END section with the last pages (like RAMPart) and
// closes the RAM section.
func (w *Writer) RAMEnd(dirty [][]uint64) (RAMStats, error) {
	st, err := w.ramSection(SectionEnd, dirty)
	if err == nil {
		w.ramState = 2
	}
	return st, err
}

// RAMFlush writes a RAM section (PART, or END when end is set, which closes
// the RAM section) holding only a MULTIFD_FLUSH record: the pages sent on
// parallel channels up to here must be in place before the reader goes on.
func (w *Writer) RAMFlush(end bool) error {
	if w.err != nil {
		return w.err
	}
	if w.ramState != 1 {
		return errors.New("vmstate writer: RAM flush outside a started RAM section")
	}
	kind := SectionPart
	if end {
		kind = SectionEnd
	}
	b := appendBE32([]byte{kind}, RAMSectionID)
	b = appendBE64(b, RAMFlagMultifdFlush)
	b = appendBE64(b, RAMFlagEOS)
	w.write(b)
	w.footer(RAMSectionID)
	if end && w.err == nil {
		w.ramState = 2
	}
	return w.err
}

func (w *Writer) ramSection(kind byte, dirty [][]uint64) (RAMStats, error) {
	var st RAMStats
	if w.err != nil {
		return st, w.err
	}
	if w.ramState != 1 {
		return st, errors.New("vmstate writer: RAM pages outside a started RAM section")
	}
	if dirty != nil && len(dirty) != len(w.blocks) {
		return st, fmt.Errorf("vmstate writer: %d dirty bitmaps for %d RAM blocks", len(dirty), len(w.blocks))
	}
	for i, blk := range w.blocks {
		if dirty != nil && dirty[i] != nil && uint64(len(dirty[i])) < (blk.Pages()+63)/64 {
			return st, fmt.Errorf("vmstate writer: dirty bitmap of RAM block %q has %d words, need %d", blk.Name, len(dirty[i]), (blk.Pages()+63)/64)
		}
	}
	start := w.off
	w.write(appendBE32([]byte{kind}, RAMSectionID))
	for i, blk := range w.blocks {
		var bm []uint64
		if dirty != nil {
			bm = dirty[i]
		}
		pages := blk.Pages()
		if bm == nil {
			for p := uint64(0); p < pages && w.err == nil; p++ {
				w.page(blk, p, &st)
			}
			continue
		}
		for wi, word := range bm {
			for word != 0 && w.err == nil {
				p := uint64(wi)*64 + uint64(bits.TrailingZeros64(word))
				word &= word - 1
				if p >= pages {
					break
				}
				w.page(blk, p, &st)
			}
		}
	}
	w.write(appendBE64(nil, RAMFlagEOS))
	w.footer(RAMSectionID)
	st.Bytes = w.off - start
	return st, w.err
}

// page writes one page record: ZERO with a 0 fill byte when the page reads
// as zeroes, else PAGE and the data. The block name follows the header
// unless the previous record was for the same block (CONTINUE).
func (w *Writer) page(blk *guestmem.Block, p uint64, st *RAMStats) {
	off := p * PageSize
	data := blk.Mem[off : off+PageSize]
	zero := bytes.Equal(data, zeroPage[:])
	flags := RAMFlagPage
	if zero {
		flags = RAMFlagZero
	}
	if blk == w.lastBlock {
		flags |= RAMFlagContinue
	}
	h := appendBE64(w.hdr[:0], off|flags)
	if blk != w.lastBlock {
		h = append(h, byte(len(blk.Name)))
		h = append(h, blk.Name...)
		w.lastBlock = blk
	}
	if zero {
		h = append(h, 0)
		st.ZeroPages++
	} else {
		st.Pages++
	}
	w.hdr = h
	w.write(h)
	if !zero {
		w.write(data)
	}
}

// Complete writes every registered device as a FULL section (after its
// PreSave hook), then EOF and the vmdesc, and flushes. An open RAM section
// must have been ended.
func (w *Writer) Complete(reg *Registry) error {
	if w.err != nil {
		return w.err
	}
	if w.ramState == 1 {
		return errors.New("vmstate writer: RAM section started but not ended")
	}
	root := &descRoot{Configuration: configurationDesc(w.machine), PageSize: PageSize, Devices: []*descSection{}}
	if len(w.caps) > 0 {
		root.Configuration.Subsections = []*descSection{capabilitiesDesc(w.caps)}
	}
	var body []byte
	if reg != nil {
		for _, e := range reg.entries {
			b := []byte{SectionFull}
			b = appendBE32(b, e.sectionID)
			b = append(b, byte(len(e.dev.Name)))
			b = append(b, e.dev.Name...)
			b = appendBE32(b, uint32(e.dev.InstanceID))
			b = appendBE32(b, e.plan.sec.VersionID)
			var st *sectionState
			var err error
			body, st, err = e.encodeDevice(body[:0])
			if err != nil {
				w.err = fmt.Errorf("vmstate writer: device %s (instance %d): %w", e.dev.Name, e.dev.InstanceID, err)
				return w.err
			}
			w.write(b)
			w.write(body)
			w.footer(e.sectionID)
			if !w.SuppressVMDesc {
				root.Devices = append(root.Devices, describeDevice(e, st))
			}
		}
	}
	if w.SuppressVMDesc {
		w.write([]byte{SectionEOF})
		return w.Flush()
	}
	js, err := marshalVMDesc(root)
	if err != nil {
		w.err = err
		return err
	}
	b := []byte{SectionEOF, SectionVMDescription}
	b = appendBE32(b, uint32(len(js)))
	w.write(b)
	w.write(js)
	return w.Flush()
}

// Flush writes buffered bytes to the underlying writer.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	if err := w.bw.Flush(); err != nil {
		w.err = fmt.Errorf("vmstate writer: %w", err)
	}
	return w.err
}

// Save writes a complete stream in one go (a snapshot): every page of
// blocks, then the devices. blocks may be empty for a stream without RAM.
func Save(out io.Writer, machine string, blocks []*guestmem.Block, reg *Registry) error {
	w, err := NewWriter(out, machine)
	if err != nil {
		return err
	}
	if len(blocks) > 0 {
		if err := w.RAMStart(blocks); err != nil {
			return err
		}
		if _, err := w.RAMPart(nil); err != nil {
			return err
		}
		none := make([][]uint64, len(blocks))
		for i, b := range blocks {
			none[i] = make([]uint64, (b.Pages()+63)/64)
		}
		if _, err := w.RAMEnd(none); err != nil {
			return err
		}
	}
	return w.Complete(reg)
}
